"""Read-only questions to the provenance database: named queries (the views) and raw SQL.

Raw SQL is read-only *by construction*, not by a parser:

- **PostgreSQL**: the statement is sent with the extended query protocol (a server-side
  prepare: psycopg ``execute(..., prepare=True)``), and the server parses it: it refuses
  more than one statement ("cannot insert multiple commands into a prepared statement"),
  so a ``;`` hidden from any client-side splitter (a comment marker inside a string, an
  ``E'\\''`` escape, dollar quoting) cannot smuggle a ``COMMIT; DELETE ...`` through. The
  connection is opened with ``default_transaction_read_only=on`` (a session read-only at
  the server, so even a ``COMMIT`` inside the text could only start another read-only
  transaction), the transaction is also ``SET TRANSACTION READ ONLY``, and it is always
  rolled back. The connection is private to the query (no pool), so nothing a statement
  sets (``set_config``) outlives it.
- **SQLite**: the driver runs one statement per call and refuses more ("You can only
  execute one statement at a time"), inside ``PRAGMA query_only``, always rolled back.

Functions that act outside the data (``lo_import``/``lo_export``, ``pg_read_file``,
``pg_terminate_backend``) are a matter of privileges, not of read-only transactions: a
user who may (a superuser) runs the query as the predefined role ``pg_read_all_data``
(PostgreSQL 14+), which reads everything and may call none of them. Anyone else has their
own privileges; a role with only SELECT rights is the safest ``--db`` for queries.

Before any of that, `check_read_only` applies one rule on both backends, for a clear
message rather than for safety: one statement, whose leading keyword is SELECT, WITH,
VALUES, TABLE or EXPLAIN (EXPLAIN only of such a statement), with no data-modifying WITH
and no ``SELECT ... INTO``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from alflow.db.session import connect_timeout_args, current_revision, get_engine, resolve_url
from alflow.db.views import NAMED_QUERIES
from alflow.errors import InputError, shorten

READ_KEYWORDS = {"SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"}
_READ_BODY = READ_KEYWORDS - {"EXPLAIN"}  # what EXPLAIN may explain
_WRITE_KEYWORDS = {"INSERT", "UPDATE", "DELETE", "MERGE"}
_MAIN_KEYWORDS = _READ_BODY | _WRITE_KEYWORDS  # the statement a WITH list leads to
_EXPLAIN_OPTIONS = {"ANALYZE", "ANALYSE", "VERBOSE", "QUERY", "PLAN"}

# One lexer for both dialects: the quoted forms of PostgreSQL and SQLite. Order matters:
# an E'...' string (backslash escapes, PostgreSQL) before a word, strings before comments.
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<block>/\*)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
  | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<semi>;)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>.)
""", re.X | re.S)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class _Tok:
    kind: str  # word, ident, literal, semi, open, close, other
    value: str  # upper-cased for words
    end: int  # offset just after the token in the SQL text


def require_schema(url: str | None) -> str:
    """The resolved URL, if it points at a database migrated by alflow; else an InputError
    (and, for SQLite, no empty file is created by asking)."""
    resolved = resolve_url(url)
    parsed = make_url(resolved)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        try:
            exists = path.is_file()
        except OSError as exc:  # e.g. a name too long for the file system
            raise InputError(f"cannot use {shorten(parsed.database)}: {exc.strerror or exc}",
                             source="--db") from None
        if not exists:
            raise InputError(
                f"no database file {shorten(parsed.database)}; create it with `alflow db upgrade`",
                source="--db",
            )
    revision = current_revision(resolved)  # unreachable/unusable database: InputError
    if revision is None:
        raise InputError("database has no alflow schema; run `alflow db upgrade`", source="--db")
    return resolved


def named_query(url: str | None, name: str, campaign: str | None = None,
                generation: int | None = None) -> QueryResult:
    if name not in NAMED_QUERIES:
        known = ", ".join(sorted(NAMED_QUERIES))
        raise InputError(f"unknown query {shorten(name)}; named queries are: {known}", source="query")
    view, order, _ = NAMED_QUERIES[name]
    params = {k: v for k, v in (("campaign", campaign), ("generation", generation)) if v is not None}
    where = " AND ".join(f"{k} = :{k}" for k in params)
    sql = f"SELECT * FROM {view}{' WHERE ' + where if where else ''} ORDER BY {order}"
    return _run(require_schema(url), sql, params)


# ------------------------------------------------------------------------ the check
def _tokens(sql: str, *, nested_comments: bool) -> list[_Tok]:
    """Significant tokens (no whitespace or comments; strings as 'literal')."""
    out: list[_Tok] = []
    pos = 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        kind = m.lastgroup
        end = m.end()
        if kind == "block":  # /* ... */, nested in PostgreSQL, not in SQLite
            depth, i = 1, end
            while depth and i < len(sql):
                if sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                elif nested_comments and sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                else:
                    i += 1
            if depth:
                raise InputError("unterminated /* comment", source="query")
            end = i
        elif kind == "dollar":  # $tag$ ... $tag$
            close = sql.find(m.group(), end)
            if close < 0:
                raise InputError(f"unterminated dollar-quoted string {m.group()}", source="query")
            end = close + len(m.group())
            out.append(_Tok("literal", "", end))
        elif kind == "other" and m.group() in "'\"`":
            raise InputError(f"unterminated quoted string or identifier ({m.group()})", source="query")
        elif kind in ("estring", "string"):
            out.append(_Tok("literal", "", end))
        elif kind == "word":
            out.append(_Tok("word", m.group().upper(), end))
        elif kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(), end))
        pos = end
    return out


def _skip_group(toks: list[_Tok], i: int) -> int:
    """Index after the parenthesised group that opens at toks[i]."""
    depth = 0
    for k in range(i, len(toks)):
        depth += {"open": 1, "close": -1}.get(toks[k].kind, 0)
        if depth == 0:
            return k + 1
    return len(toks)


def _main_keyword(toks: list[_Tok], i: int) -> tuple[str, int]:
    """The keyword of the statement starting at toks[i] (past EXPLAIN and WITH lists)."""
    if i >= len(toks) or toks[i].kind != "word":
        return (toks[i].value if i < len(toks) else ""), i
    word = toks[i].value
    if word == "EXPLAIN":
        i += 1
        if i < len(toks) and toks[i].kind == "open":  # EXPLAIN (ANALYZE, FORMAT json) ...
            i = _skip_group(toks, i)
        while i < len(toks) and toks[i].kind == "word" and toks[i].value in _EXPLAIN_OPTIONS:
            i += 1
        inner, j = _main_keyword(toks, i)
        if inner not in _READ_BODY:
            raise _refused(f"EXPLAIN {inner or '(nothing)'}".strip(), "EXPLAIN only of a read statement")
        return "EXPLAIN", j
    if word == "WITH":  # WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...) [, ...] main
        i += 1
        while i < len(toks):
            if toks[i].kind == "open":
                i = _skip_group(toks, i)
            elif toks[i].kind == "word" and toks[i].value in _MAIN_KEYWORDS and not (
                    i + 1 < len(toks) and toks[i + 1].kind == "word" and toks[i + 1].value == "AS"):
                return toks[i].value, i
            else:
                i += 1
        return "", i
    return word, i


def _refused(what: str, why: str = "") -> InputError:
    allowed = ", ".join(sorted(READ_KEYWORDS))
    return InputError(
        f"refused: `alflow query` is read-only and {what} is not a read statement"
        f"{' (' + why + ')' if why else ''} (allowed: {allowed}); nothing was changed",
        source="query",
    )


def check_read_only(sql: str, dialect: str = "postgresql") -> str:
    """The statement to send (trailing ';' and comments cut), if it is one read statement.

    This check gives clear messages; it is not what keeps the database unchanged (see the
    module docstring): a statement that fooled it would still meet the server's refusal.
    """
    toks = _tokens(sql, nested_comments=dialect != "sqlite")
    while toks and toks[-1].kind == "semi":
        toks.pop()
    if not toks:
        raise InputError("empty SQL statement", source="query")
    if any(t.kind == "semi" for t in toks):
        raise InputError("one SQL statement at a time, please (found ';' inside)", source="query")
    first = toks[0].value if toks[0].kind == "word" else toks[0].value[:1]
    if first not in READ_KEYWORDS:
        raise _refused(shorten(first, 40, quote=False))
    keyword, _ = _main_keyword(toks, 0)
    if keyword in _WRITE_KEYWORDS:
        raise _refused(f"WITH ... {keyword}")
    for k, t in enumerate(toks):
        if t.kind == "open" and k + 1 < len(toks) and toks[k + 1].value in _WRITE_KEYWORDS:
            raise _refused(f"WITH ... AS ({toks[k + 1].value} ...)", "a data-modifying WITH writes")
        if t.kind == "word" and t.value == "INTO":
            raise _refused("SELECT ... INTO", "it creates a table")
    return sql[:toks[-1].end].strip()


def raw_query(url: str | None, sql: str) -> QueryResult:
    resolved = resolve_url(url)
    statement = check_read_only(sql, make_url(resolved).get_backend_name())
    return _run(require_schema(resolved), statement, None)


# -------------------------------------------------------------------------- running
def _read_only_engine(url: str):
    """PostgreSQL: a pool-less engine whose sessions are read-only at the server."""
    parsed = make_url(url)
    user_options = parsed.query.get("options")
    options = " ".join(x for x in (user_options if isinstance(user_options, str) else None,
                                   "-c default_transaction_read_only=on") if x)
    return create_engine(url, poolclass=NullPool,
                         connect_args={**connect_timeout_args(url), "options": options})


def _drop_to_reader_role(conn) -> None:
    """For this transaction only, act as PostgreSQL's predefined `pg_read_all_data` role
    (14+) where the user may (superusers may): it reads every table and view and can call
    no superuser function (lo_import/lo_export, pg_read_file, pg_terminate_backend of
    another role's session). Privileges are checked when a statement starts, so a
    `set_config('role', ...)` inside the same statement cannot lift them."""
    exists = conn.exec_driver_sql("SELECT to_regrole('pg_read_all_data') IS NOT NULL").scalar()
    if exists and conn.exec_driver_sql(
            "SELECT pg_has_role(current_user, 'pg_read_all_data', 'MEMBER')").scalar():
        conn.exec_driver_sql("SET LOCAL ROLE pg_read_all_data")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return shorten((str(orig).strip().splitlines() or [type(orig).__name__])[0], 300, quote=False)


def _run(url: str, sql: str, params: dict[str, Any] | None) -> QueryResult:
    """Run in a read-only transaction, always rolled back; params=None runs the SQL
    verbatim as one statement (raw queries: '%' and ':' mean themselves)."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    engine = get_engine(url) if sqlite else _read_only_engine(url)
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        with engine.connect() as conn:
            try:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA query_only = ON")
                else:
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    _drop_to_reader_role(conn)
                if params is not None:
                    result = conn.execute(text(sql), params)
                    columns, rows = list(result.keys()), [tuple(r) for r in result]
                else:
                    cur = conn.connection.driver_connection.cursor()
                    try:
                        if sqlite:
                            cur.execute(sql)  # the sqlite3 driver runs one statement or refuses
                        else:
                            cur.execute(sql, prepare=True)  # extended protocol: one statement
                        columns = [d[0] for d in cur.description or ()]
                        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
                    finally:
                        cur.close()
            except (DBAPIError, dbapi_error) as exc:
                raise _sql_error(exc) from None
            finally:
                with contextlib.suppress(DBAPIError, dbapi_error):
                    conn.rollback()
                    if sqlite:
                        conn.exec_driver_sql("PRAGMA query_only = OFF")
                        conn.commit()
    except (DBAPIError, dbapi_error) as exc:  # connecting, or a connection that died
        raise InputError(f"SQL error: {_first_line(exc)}", source="query") from None
    finally:
        if not sqlite:
            engine.dispose()
    return QueryResult(columns, rows)


def _sql_error(exc: BaseException) -> InputError:
    msg = _first_line(exc)
    if "multiple commands" in msg or "one statement at a time" in msg:
        return InputError("one SQL statement at a time, please", source="query")
    if "read-only" in msg or "readonly" in msg:
        return InputError(f"refused: `alflow query` is read-only ({msg}); nothing was changed",
                          source="query")
    return InputError(f"SQL error: {msg}", source="query")
