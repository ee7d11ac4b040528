"""Database URLs, engines and schema migrations.

The URL comes from `--db`, else `ALFLOW_DB_URL`, else an SQLite file `alflow.db` in the
working directory. `postgresql://` URLs are routed to the psycopg 3 driver. Passwords are
never printed: use `redact()` for anything shown to a user.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alflow.errors import InputError, shorten

DEFAULT_URL = "sqlite:///alflow.db"
ENV_VAR = "ALFLOW_DB_URL"
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a host that drops packets fails in seconds, not minutes
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_url(url: str | None = None) -> str:
    """The URL to use, normalised (driver chosen) and checked for a known backend."""
    raw = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise InputError(f"not a database URL: {shorten(redact(raw))}", source="--db") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise InputError(
            f"unsupported database backend {shorten(backend)} (use sqlite:/// or postgresql://)",
            source="--db",
        )
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """A URL safe to print: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable url>"


def connect_timeout_args(url: str) -> dict:
    """Driver arguments that bound the wait for a PostgreSQL server (unless the URL sets one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def check_sqlite_path(url: str) -> None:
    """Refuse an SQLite `--db` that cannot be a database file before SQLite is asked to open
    it (it would say only "unable to open database file", or create a file in a surprising
    place): a path too long, a directory, a missing or unwritable parent directory, or an
    existing file that is not an SQLite database."""
    database = make_url(url).database
    if make_url(url).get_backend_name() != "sqlite" or database in (None, "", ":memory:") \
            or database.startswith("file:"):
        return
    shown = shorten(database)
    path = Path(database)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"path is too long ({len(database):,} characters)", source="--db") from None
        raise InputError(f"cannot use {shown}: {exc.strerror or exc}", source="--db") from None
    if st is None:
        parent = path.absolute().parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            raise InputError(f"cannot create {shown}: directory {shorten(str(parent))} {what}",
                             source="--db")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot create {shown}: directory {shorten(str(parent))} is not writable",
                             source="--db")
        return
    if path.is_dir():
        raise InputError(f"{shown} is a directory, not an SQLite database file", source="--db")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise InputError(f"cannot read {shown}: {exc.strerror or exc}", source="--db") from None
    if head and head != SQLITE_HEADER:
        raise InputError(f"{shown} is not an SQLite database (a file of another kind is there)",
                         source="--db")


def database_error(exc: BaseException, url: str | None = None) -> InputError:
    """One line for a database that cannot be reached or used; never shows the password."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(orig).__name__
    password = make_url(url).password if url else None
    if password:
        msg = msg.replace(str(password), "***")
    what = f"database {shorten(redact(url), 120, quote=False)}" if url else "the database"
    return InputError(f"cannot use {what}: {shorten(msg, 300, quote=False)}", source="--db")


def check_connection(url: str | None = None) -> str:
    """The resolved URL once a connection to it works (nothing is written); else InputError."""
    resolved = resolve_url(url)
    engine = get_engine(resolved)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        raise database_error(exc, resolved) from None
    return resolved


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
        check_sqlite_path(resolved)
        engine = create_engine(resolved)
        event.listen(engine, "connect", _sqlite_pragmas)
        if make_url(resolved).database not in (None, "", ":memory:"):
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            except DBAPIError as exc:
                engine.dispose()
                raise database_error(exc, resolved) from None
    else:
        engine = create_engine(resolved, pool_pre_ping=True, connect_args=connect_timeout_args(resolved))
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

    _migrate(command.upgrade, url, revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    _migrate(command.downgrade, url, revision)


def _migrate(step, url: str | None, revision: str) -> None:
    """Run an Alembic command; an unknown or unreachable revision, or a database that
    cannot be reached, is an InputError (checked before Alembic touches anything)."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    cfg = alembic_config(url)
    if revision not in ("head", "heads", "base") and not any(c in revision for c in "+-@:"):
        try:
            known = ScriptDirectory.from_config(cfg).get_revisions(revision)
        except (CommandError, RevisionError):
            known = ()
        if not known:
            raise InputError(f"unknown revision {shorten(revision)}; `alflow db current` shows the "
                             f"newest ({head_revision()})", source="revision")
    check_connection(url)  # after the revision check: an unknown revision creates no file
    try:
        step(cfg, revision)
    except (CommandError, RevisionError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(shorten(msg, 300, quote=False), source="revision") from None


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    resolved = check_connection(url)
    with get_engine(resolved).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
