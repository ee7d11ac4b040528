"""Read-only questions to the provenance database: named queries (the views) and raw SQL.

Raw SQL is refused unless it is one read statement, and it then runs inside a read-only
transaction (PostgreSQL `SET TRANSACTION READ ONLY`, SQLite `PRAGMA query_only`) that is
always rolled back, so a write can get past neither the check nor the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from alflow.db.session import current_revision, get_engine, resolve_url
from alflow.db.views import NAMED_QUERIES
from alflow.errors import InputError

READ_KEYWORDS = {"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"}
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def require_schema(url: str | None) -> str:
    """The resolved URL, if it points at a database migrated by alflow; else an InputError
    (and, for SQLite, no empty file is created by asking)."""
    resolved = resolve_url(url)
    parsed = make_url(resolved)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise InputError(
                f"no database file {parsed.database!r}; create it with `alflow db upgrade`",
                source="--db",
            )
    try:
        revision = current_revision(resolved)
    except DBAPIError as exc:
        raise InputError(f"cannot connect: {exc.orig}", source="--db") from None
    if revision is None:
        raise InputError("database has no alflow schema; run `alflow db upgrade`", source="--db")
    return resolved


def named_query(url: str | None, name: str, campaign: str | None = None,
                generation: int | None = None) -> QueryResult:
    if name not in NAMED_QUERIES:
        known = ", ".join(sorted(NAMED_QUERIES))
        raise InputError(f"unknown query {name!r}; named queries are: {known}", source="query")
    view, order, _ = NAMED_QUERIES[name]
    params = {k: v for k, v in (("campaign", campaign), ("generation", generation)) if v is not None}
    where = " AND ".join(f"{k} = :{k}" for k in params)
    sql = f"SELECT * FROM {view}{' WHERE ' + where if where else ''} ORDER BY {order}"
    return _run(require_schema(url), sql, params)


def check_read_only(sql: str) -> str:
    """The statement without a trailing ';', if it is a single read statement."""
    bare = _QUOTED.sub("''", _COMMENT.sub(" ", sql)).strip().rstrip(";").strip()
    if not bare:
        raise InputError("empty SQL statement", source="query")
    if ";" in bare:
        raise InputError("one SQL statement at a time, please (found ';' inside)", source="query")
    keyword = bare.split(None, 1)[0].upper()
    if keyword not in READ_KEYWORDS:
        raise InputError(
            f"refused: `alflow query` is read-only and {keyword} is not a read statement "
            f"(allowed: {', '.join(sorted(READ_KEYWORDS))}); nothing was changed",
            source="query",
        )
    return sql.strip().rstrip(";").strip()


def raw_query(url: str | None, sql: str) -> QueryResult:
    statement = check_read_only(sql)
    return _run(require_schema(url), statement, None)


def _run(url: str, sql: str, params: dict[str, Any] | None) -> QueryResult:
    """Run in a read-only transaction; params=None runs the SQL verbatim (raw queries)."""
    engine = get_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        try:
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = ON")
            else:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if params is not None:
                result = conn.execute(text(sql), params)
                columns, rows = list(result.keys()), [tuple(r) for r in result]
            else:  # verbatim: the driver's cursor, so '%' and ':' in the SQL mean themselves
                cur = conn.connection.driver_connection.cursor()
                try:
                    cur.execute(sql)
                    columns = [d[0] for d in cur.description or ()]
                    rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
                finally:
                    cur.close()
        except (DBAPIError, engine.dialect.loaded_dbapi.Error) as exc:
            conn.rollback()
            msg = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
            if "read-only" in msg or "readonly" in msg:
                raise InputError(
                    f"refused: `alflow query` is read-only ({msg}); nothing was changed",
                    source="query",
                ) from None
            raise InputError(f"SQL error: {msg}", source="query") from None
        finally:
            conn.rollback()
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = OFF")
    return QueryResult(columns, rows)
