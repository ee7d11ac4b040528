"""`alflow query` and `alflow db`: named questions answered from the views, and raw SQL
that can read but never write (real PostgreSQL and SQLite)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from db_helpers import populate as _populate
from db_helpers import row_counts
from typer.testing import CliRunner

from alflow.cli import app
from alflow.db.session import get_engine

runner = CliRunner()


@pytest.fixture
def populated(db_url):
    _populate(db_url)
    return db_url


def _json(result):
    import json

    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_named_queries_answer_the_standard_questions(populated):
    q = lambda *a: _json(runner.invoke(app, ["query", *a, "--db", populated, "-f", "json"]))  # noqa: E731
    errors = q("errors", "--campaign", "eth")
    assert [(r["generation"], r["force_mae"]) for r in errors] == [(0, 0.5), (1, 0.25)]

    cost = q("oracle-cost")
    assert [(r["generation"], r["n_labels"], r["n_failed"], r["cpu_s"]) for r in cost] == [
        (0, 4, 1, 16.0), (1, 2, 0, 6.0)]

    trained = [r for r in q("training-labels") if r["generation"] == 1]
    assert len(trained) == 5 and sorted(r["split"] for r in trained).count("val") == 1

    (found,) = q("sampling")
    assert found["kind"] == "adversarial" and found["n_selected"] == 1
    assert found["uncertainty_gain"] == pytest.approx(4.0)


@pytest.mark.parametrize("sql", [
    "INSERT INTO campaign (name, spec, spec_sha256, alflow_version) VALUES ('x', '{}', 'x', 'x')",
    "UPDATE label SET energy = 0",
    "DELETE FROM label",
    "DROP TABLE label",
    "  -- sneaky\n delete from label;",
    "SELECT 1; DELETE FROM label",
    "WITH gone AS (DELETE FROM label RETURNING id) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE DELETE FROM label",
])
def test_query_refuses_writes_and_changes_nothing(populated, sql):
    def snapshot():
        with get_engine(populated).connect() as c:
            return (c.exec_driver_sql("SELECT COUNT(*), SUM(energy) FROM label").one(),
                    c.exec_driver_sql("SELECT COUNT(*) FROM campaign").scalar_one())

    before = snapshot()
    result = runner.invoke(app, ["query", sql, "--db", populated])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    if sql.split()[0].upper() in {"INSERT", "UPDATE", "DELETE", "DROP"}:
        assert "read-only" in result.stderr and "nothing was changed" in result.stderr
    assert snapshot() == before


def test_raw_read_query_with_percent_and_colon(populated):
    rows = _json(runner.invoke(app, [
        "query", "SELECT name, '10:30%' AS t FROM campaign WHERE name LIKE '%t%'",
        "--db", populated, "-f", "json"]))
    assert rows == [{"name": "eth", "t": "10:30%"}]


def test_query_csv_output(populated):
    result = runner.invoke(app, ["query", "errors", "--db", populated, "-f", "csv"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("campaign,generation,")
    assert len(result.stdout.splitlines()) == 3


def test_unknown_named_query_and_bad_sql_are_clear_errors(db_url):
    r = runner.invoke(app, ["query", "erors", "--db", db_url])
    assert r.exit_code == 2 and "unknown query 'erors'" in r.stderr and "errors" in r.stderr
    r = runner.invoke(app, ["query", "SELECT * FROM nosuch", "--db", db_url])
    assert r.exit_code == 2 and "nosuch" in r.stderr


def test_query_on_missing_sqlite_file_creates_nothing(tmp_path):
    path = tmp_path / "none.db"
    r = runner.invoke(app, ["query", "errors", "--db", f"sqlite:///{path}"])
    assert r.exit_code == 2 and "alflow db upgrade" in r.stderr
    assert not path.exists()


def test_db_upgrade_and_current_never_print_passwords(pg_url):
    url = sa.engine.make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    up = runner.invoke(app, ["db", "upgrade", "--db", url])
    cur = runner.invoke(app, ["db", "current", "--db", url])
    assert up.exit_code == 0 and cur.exit_code == 0, up.output + cur.output
    assert "up to date" in cur.stdout
    for out in (up.output, cur.output):
        assert "s3cret" not in out and "***" in out


def test_db_current_on_unmigrated_database_is_an_error(pg_url):
    r = runner.invoke(app, ["db", "current", "--db", pg_url])
    assert r.exit_code == 2 and "alflow db upgrade" in r.stderr


def test_downgrade_needs_confirmation(db_url):
    r = runner.invoke(app, ["db", "downgrade", "base", "--db", db_url])
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert "campaign" in sa.inspect(get_engine(db_url)).get_table_names()


# ------------------------------------------------- read-only by construction (issue 13)
INJECTIONS = [
    # the two of the issue: a comment marker inside a string fooled the old splitter
    "SELECT '/*'; COMMIT; DELETE FROM artifact; SELECT '*/'",
    "SELECT '--'; COMMIT; DELETE FROM artifact; SELECT '--'",
    # dollar quoting, E-string escapes, doubled quotes, quoted identifiers
    "SELECT $$;$$; COMMIT; DELETE FROM artifact",
    "SELECT $x$ ' $x$; COMMIT; DELETE FROM artifact; SELECT $x$ ' $x$",
    "SELECT E'\\''; COMMIT; DELETE FROM artifact; SELECT ''",
    "SELECT 'it''s'; DELETE FROM artifact",
    'SELECT 1 AS "a;b"; DELETE FROM artifact',
    # nested comments (PostgreSQL nests them, SQLite does not)
    "SELECT 1 /* nested /* */ */; DELETE FROM artifact",
    "SELECT 1 /* /* */ ; COMMIT; DELETE FROM artifact; /* */",
    # transaction control, alone or to escape the read-only transaction
    "COMMIT", "END", "ROLLBACK", "BEGIN", "BEGIN READ WRITE", "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE", "SET default_transaction_read_only = off",
    "SELECT 1; COMMIT; DELETE FROM artifact",
    "SELECT 1; END; DELETE FROM artifact",
    "SELECT 1; ROLLBACK; BEGIN READ WRITE; DELETE FROM artifact; COMMIT",
    "SELECT 1; SET TRANSACTION READ WRITE; DELETE FROM artifact",
    "SELECT 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; DELETE FROM artifact",
    "SELECT 1; PRAGMA query_only = OFF; DELETE FROM artifact",
    # writes dressed as reads
    "WITH d AS (DELETE FROM artifact RETURNING id) SELECT count(*) FROM d",
    "WITH d AS NOT MATERIALIZED (UPDATE label SET energy = 0 RETURNING id) SELECT 1",
    "WITH x AS (SELECT 1) DELETE FROM artifact",
    "SELECT * INTO stolen FROM artifact",
    "EXPLAIN DELETE FROM artifact",
    "EXPLAIN ANALYZE INSERT INTO artifact (sha256, uri, kind, size_bytes) VALUES ('x', 'y', 'z', 1)",
    "EXPLAIN (ANALYZE, VERBOSE) DELETE FROM artifact",
    "EXPLAIN QUERY PLAN DELETE FROM artifact",
    "EXPLAIN ANALYZE WITH d AS (DELETE FROM artifact RETURNING 1) SELECT * FROM d",
    "explain analyse update label set energy = 0",
    # functions that act outside the data
    "SELECT lo_import('/etc/hostname')",
    "SELECT lo_export(lo_from_bytea(0, 'x'), '/tmp/alflow-query-test')",
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT set_config('role', 'postgres', true), pg_read_file('/etc/hostname')",
]


@pytest.mark.parametrize("sql", INJECTIONS)
def test_query_injections_change_nothing(populated, sql):
    before = row_counts(populated)
    result = runner.invoke(app, ["query", sql, "--db", populated])
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: query: "), result.stderr
    assert not result.stdout
    assert row_counts(populated) == before
    assert before["artifact"] == 3 and before["label"] == 6


@pytest.mark.parametrize("sql", [
    "SELECT 1; DELETE FROM artifact",
    "SELECT E'\\''; DELETE FROM artifact; SELECT 1",
    "SELECT $$;$$; DELETE FROM artifact",
    "DELETE FROM artifact",
    "UPDATE label SET energy = 0",
    "CREATE TABLE made (x integer)",
    "WITH d AS (DELETE FROM artifact RETURNING id) SELECT count(*) FROM d",
    "WITH x AS (SELECT 1) DELETE FROM artifact",
])
def test_database_refuses_writes_the_check_never_saw(populated, sql):
    """The statement goes straight to the runner, past `check_read_only`: the server (or the
    SQLite driver and PRAGMA query_only) is what refuses, so a fooled check costs nothing."""
    from alflow.db import queries
    from alflow.errors import InputError

    before = row_counts(populated)
    with pytest.raises(InputError):
        queries._run(populated, sql, None)
    assert row_counts(populated) == before


def test_query_session_settings_do_not_outlive_the_query(pg_url):
    """set_config in one query is rolled back with its private connection: the next query
    is as read-only as the first."""
    from alflow.db.session import upgrade

    upgrade(pg_url)
    _populate(pg_url)
    ok = runner.invoke(app, ["query", "SELECT set_config('default_transaction_read_only', 'off', false) AS v",
                             "--db", pg_url, "-f", "json"])
    assert ok.exit_code == 0 and _json(ok) == [{"v": "off"}]
    after = _json(runner.invoke(app, ["query", "SELECT current_setting('default_transaction_read_only') AS v, "
                                      "current_setting('transaction_read_only') AS t", "--db", pg_url, "-f", "json"]))
    assert after == [{"v": "on", "t": "on"}]
    before = row_counts(pg_url)
    assert runner.invoke(app, ["query", "WITH d AS (DELETE FROM artifact RETURNING 1) SELECT 1",
                               "--db", pg_url]).exit_code == 2
    assert row_counts(pg_url) == before


@pytest.mark.parametrize("sql", [
    "SELECT 1;", "select 1 ; -- trailing comment", "/* leading */ SELECT 1", "VALUES (1)",
    "WITH x AS (SELECT 1 AS one) SELECT one FROM x", "EXPLAIN SELECT 1",
    "SELECT ';' AS semi, '--' AS dashes, '/*' AS star",
])
def test_read_statements_still_run(populated, sql):
    result = runner.invoke(app, ["query", sql, "--db", populated, "-f", "json"])
    assert result.exit_code == 0, result.output
    if "semi" in sql:
        assert _json(result) == [{"semi": ";", "dashes": "--", "star": "/*"}]


def test_table_statement_reads_on_postgresql(pg_url):  # TABLE x is not SQLite syntax
    from alflow.db.session import upgrade

    upgrade(pg_url)
    _populate(pg_url)
    rows = _json(runner.invoke(app, ["query", "TABLE campaign", "--db", pg_url, "-f", "json"]))
    assert [r["name"] for r in rows] == ["eth"]
