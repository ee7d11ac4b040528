"""Whole-campaign utilisation by hand, and the queue's migration of an existing database."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from alflow.utilisation import utilisation_of

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _t(kind, role, sub, start, end, run="a", workers=2):
    at = lambda s: None if s is None else T0 + dt.timedelta(seconds=s)  # noqa: E731
    return {"kind": kind, "executor": role, "submitted_at": at(sub), "started_at": at(start),
            "finished_at": at(end), "resources": {"run": run, "workers": workers}}


def test_utilisation_is_busy_over_allocated_for_the_whole_campaign():
    tasks = [
        _t("warmup-oracle", "oracle", 0, 0, 5),  # warm-ups hold no useful work
        _t("label", "oracle", 5, 5, 15), _t("label", "oracle", 5, 5, 10),
        _t("train", "train", 15, 15, 55, workers=1),
        _t("label", "oracle", 55, 55, 60),
        _t("label", "oracle", 55, None, 58),  # never started: no busy time
        # a second run after a crash: an hour later, 10 s long
        _t("label", "oracle", 3600, 3600, 3610, run="b", workers=1),
    ]
    u = utilisation_of(tasks)
    assert u["runs"] == 2 and u["wall_s"] == pytest.approx(60 + 10)  # the dead hour is not counted
    oracle, train = u["roles"]["oracle"], u["roles"]["train"]
    assert oracle.busy_s == pytest.approx(10 + 5 + 5 + 10)
    assert oracle.allocated_s == pytest.approx(2 * 60 + 1 * 10) and oracle.workers == 2
    assert oracle.utilisation == pytest.approx(30 / 130)
    assert train.utilisation == pytest.approx(40 / 60)
    # without recorded workers: the most tasks seen running at once
    for t in tasks:
        t["resources"].pop("workers")
    assert utilisation_of(tasks)["roles"]["oracle"].allocated_s == pytest.approx(2 * 60 + 1 * 10)


def test_an_existing_database_migrates_with_its_data(empty_db_url):
    """0001 data (a selected, labelled geometry; an old task error name) through 0002 and
    the label queue: constraints hold, error names mapped, one queue entry per selection."""
    from alflow.db.session import get_engine, upgrade

    upgrade(empty_db_url, "0001")
    e = get_engine(empty_db_url)
    with e.begin() as c:
        x = lambda sql, **kw: c.execute(sa.text(sql), kw).scalar()  # noqa: E731
        cid = x("INSERT INTO campaign (name, spec, spec_sha256, alflow_version, status) "
                "VALUES ('old', '{}', 'h', '0.1', 'finished') RETURNING id")
        gid = x("INSERT INTO generation (campaign_id, idx, state) VALUES (:c, 0, 'done') RETURNING id", c=cid)
        geo = [x("INSERT INTO geometry (content_hash, natoms, formula, numbers, positions, pbc, charge, "
                 "multiplicity, origin) VALUES (:h, 1, 'H', :n, :p, 0, 0, 2, 'initial') RETURNING id",
                 h=f"h{k}", n=b"\x01", p=bytes(24)) for k in range(2)]
        run = x("INSERT INTO sampling_run (generation_id, kind, params) VALUES (:g, 'initial', '{}') "
                "RETURNING id", g=gid)
        for g in geo:
            x("INSERT INTO sample (sampling_run_id, geometry_id, selected) VALUES (:r, :g, :t) RETURNING id",
              r=run, g=g, t=True)
        mid = x("INSERT INTO oracle_method (code, settings, settings_sha256) VALUES ('x', '{}', 's') RETURNING id")
        tid = x("INSERT INTO task (campaign_id, generation_id, kind, status, error_class) "
                "VALUES (:c, :g, 'label', 'failed', 'WorkerLost') RETURNING id", c=cid, g=gid)
        lid = x("INSERT INTO label (geometry_id, method_id, task_id, status, energy) "
                "VALUES (:g, :m, :t, 'ok', 1.0) RETURNING id", g=geo[0], m=mid, t=tid)
        ts = x("INSERT INTO training_set (campaign_id, generation_id, sha256, n_train, n_val) "
               "VALUES (:c, :g, 't', 1, 0) RETURNING id", c=cid, g=gid)
        x("INSERT INTO training_set_label (training_set_id, label_id, split) VALUES (:t, :l, 'train') "
          "RETURNING label_id", t=ts, l=lid)
    upgrade(empty_db_url)
    with e.connect() as c:
        assert c.execute(sa.text("SELECT error_class FROM task")).scalar() == "worker_lost"
        queue = c.execute(sa.text("SELECT geometry_id, status FROM label_queue ORDER BY geometry_id")).all()
        assert queue == [(geo[0], "labelled"), (geo[1], "queued")]
        assert c.execute(sa.text("SELECT COUNT(*) FROM training_set_label")).scalar() == 1
