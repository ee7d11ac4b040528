"""`alflow query` and `alflow db`: named questions answered from the views, and raw SQL
that can read but never write (real PostgreSQL and SQLite)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from ase.build import molecule
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from alflow.cli import app
from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import get_engine

runner = CliRunner()


def _populate(url: str) -> None:
    """A two-generation campaign with labels, models, evals and one adversarial run."""
    engine = get_engine(url)
    with Session(engine) as s, s.begin():
        camp = m.Campaign(name="eth", spec={"name": "eth"}, spec_sha256="0" * 64,
                          alflow_version="test", status="running")
        s.add(camp)
        s.flush()
        gens = [m.Generation(campaign_id=camp.id, idx=i, state="done") for i in range(2)]
        s.add_all(gens)
        s.flush()
        method = writers.ensure_oracle_method(s, {
            "code": "pyscf", "version": "x", "method": "HF", "basis": "sto-3g",
            "settings": {}, "settings_sha256": "a" * 64})
        frames = []
        for i in range(6):
            a = molecule("CH3CH2OH")
            a.positions += np.random.default_rng(i).normal(0, 0.05, a.positions.shape)
            frames.append(a)
        gids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in frames])
        tasks = [m.Task(campaign_id=camp.id, generation_id=g.id, kind="label", status="done")
                 for g in gens]
        s.add_all(tasks)
        s.flush()
        # gen 0 labels 4 frames (one failed), gen 1 labels 2 more
        rows = [writers.label_row(gids[i], method, status="ok", energy=-1.0, cpu_s=2.0,
                                  wall_s=1.0, task_id=tasks[0].id) for i in range(3)]
        rows.append(writers.label_row(gids[3], method, status="failed", error_class="timeout",
                                      cpu_s=10.0, wall_s=10.0, task_id=tasks[0].id))
        rows += [writers.label_row(gids[i], method, status="ok", energy=-1.0, cpu_s=3.0,
                                   wall_s=1.5, task_id=tasks[1].id) for i in (4, 5)]
        writers.write_labels(s, rows)
        label_ids = dict(s.execute(sa.select(m.Label.geometry_id, m.Label.id).where(m.Label.status == "ok")).tuples().all())
        for g, members in ((gens[0], [gids[0], gids[1], gids[2]]), (gens[1], [gids[0], gids[1], gids[2], gids[4], gids[5]])):
            ts = m.TrainingSet(campaign_id=camp.id, generation_id=g.id, sha256=str(g.idx) * 64,
                               n_train=len(members) - 1, n_val=1)
            s.add(ts)
            s.flush()
            s.add_all([m.TrainingSetLabel(training_set_id=ts.id, label_id=label_ids[x],
                                          split="val" if k == 0 else "train")
                       for k, x in enumerate(members)])
            s.add_all([m.Model(generation_id=g.id, member=k, training_set_id=ts.id, seed=k,
                               config={}) for k in range(3)])
            s.add(m.ModelEval(generation_id=g.id, n_frames=10, force_mae=0.5 / (g.idx + 1),
                              energy_mae=0.01))
        run = m.SamplingRun(generation_id=gens[1].id, kind="adversarial", params={"kT_eV": 1.0})
        s.add(run)
        s.flush()
        s.add_all([m.Sample(sampling_run_id=run.id, geometry_id=gids[k], sigma_f2_initial=0.01,
                            sigma_f2=0.04, bucket="candidate", selected=k == 0) for k in range(2)])


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
