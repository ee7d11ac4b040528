"""Database URLs, engines and schema migrations.

The URL comes from `--db`, else `ALFLOW_DB_URL`, else an SQLite file `alflow.db` in the
working directory. `postgresql://` URLs are routed to the psycopg 3 driver. Passwords are
never printed: use `redact()` for anything shown to a user.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from alflow.errors import InputError

DEFAULT_URL = "sqlite:///alflow.db"
ENV_VAR = "ALFLOW_DB_URL"


def resolve_url(url: str | None = None) -> str:
    """The URL to use, normalised (driver chosen) and checked for a known backend."""
    raw = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise InputError(f"not a database URL: {redact(raw)!r}", source="--db") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise InputError(
            f"unsupported database backend {backend!r} (use sqlite:/// or postgresql://)",
            source="--db",
        )
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """A URL safe to print: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable url>"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # with WAL, NORMAL loses no committed data on an application crash (only on power
    # loss), and spares an fsync per transaction
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@lru_cache(maxsize=16)
def get_engine(url: str | None = None) -> Engine:
    """One pooled engine per URL for the life of the process."""
    resolved = resolve_url(url)
    if resolved.startswith("sqlite"):
        engine = create_engine(resolved)
        event.listen(engine, "connect", _sqlite_pragmas)
        if make_url(resolved).database not in (None, "", ":memory:"):
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    else:
        engine = create_engine(resolved, pool_pre_ping=True)
    return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


# ------------------------------------------------------------------------- migrations
def migrations_dir() -> Path:
    """`migrations/` in a source checkout, or its copy inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("alflow's Alembic migrations directory was not found")


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # '%' must be escaped for ConfigParser interpolation (passwords may contain it)
    cfg.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
