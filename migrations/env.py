"""Alembic environment: one migration tree for PostgreSQL and SQLite.

`render_as_batch` makes ALTERs work on SQLite (copy-and-move tables). The URL comes from
the Alembic config (set by `alflow db upgrade`), else `-x url=`, else ALFLOW_DB_URL.
"""

from alembic import context

from alflow.db.models import Base
from alflow.db.session import get_engine, resolve_url
from alflow.db.types import PackedArray

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return (
        config.get_main_option("sqlalchemy.url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or resolve_url(None)
    )


def render_item(type_, obj, autogen_context):
    """Render alflow's PackedArray as plain LargeBinary so migrations stay frozen."""
    if type_ == "type" and isinstance(obj, PackedArray):
        return "sa.LargeBinary()"
    return False


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        render_item=render_item,
        **kw,
    )


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _configure(connection=connectable)
        with context.begin_transaction():
            context.run_migrations()
    else:
        with get_engine(_url()).connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # SQLite alters a table by copying it and dropping the original, which the
                # foreign keys of other tables refuse while they are enforced; they are
                # checked once at the end instead (a violation aborts the migration)
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise RuntimeError(f"migration left foreign keys dangling: {bad[:5]}")
            connection.commit()
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
