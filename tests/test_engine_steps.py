"""The engine's logic without Parsl: steps and the scheduler on an in-process backend (the
same `apps.execute` the workers run, in threads), real science on tiny problems (the
analytic double well, a coordinates model), real SQLite and PostgreSQL.

The scheduler's watchdog is tested with a backend whose futures we control: it is the
only way to make an executor stall or lose a result on demand (named as such below).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from alflow.db import models as m
from alflow.db.session import get_engine, session_factory, upgrade
from alflow.engine import durable
from alflow.engine.backends import InlineBackend
from alflow.engine.campaign import load_context, run
from alflow.engine.context import Status
from alflow.engine.create import create_campaign
from alflow.engine.results import Envelope, LabelRequest, Outcome
from alflow.engine.scheduler import Limits, Scheduler, TaskLedger, WorkItem
from alflow.engine.states import TaskError
from alflow.engine.steps import label as label_step
from alflow.engine.steps import stop
from alflow.engine.steps.label import LabelFacts
from alflow.engine.steps.train import TrainFacts
from alflow.spec import StoppingSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent


def double_well_spec(tmp_path: Path, name: str, **changes) -> Path:
    """The shipped double-well workflow, shrunk to seconds: 2 generations, short training."""
    spec = yaml.safe_load((ROOT / "workflows" / "double_well.yaml").read_text())
    spec["name"] = name
    spec["initial_geometries"][0]["path"] = str(ROOT / "workflows/geometries/double_well_init.extxyz")
    spec["training"].update(max_epochs=40, patience=40)
    spec["model"].update(n_atom_basis=16, ensemble_size=2)
    spec["samplers"] = [{"kind": "random", "scale": 0.3, "seeds": 6}]
    spec["stopping"] = {"max_generations": 2}
    for section, values in changes.items():
        if isinstance(values, dict):
            spec.setdefault(section, {}).update(values)
        else:
            spec[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def inline(url: str, name: str, *, retries: int = 1, workers: int = 2) -> tuple:
    ctx = load_context(url, name)
    backend = InlineBackend({"oracle": workers, "train": workers, "sample": 1})
    limits = Limits(time_limit_s={"oracle": 60, "train": 300, "sample": 300}, retries=retries,
                    stall_s=30, poll_s=0.05)
    return ctx, Scheduler(backend, TaskLedger(ctx.Session, ctx.id, "inline"), ctx.run_dir, limits)


def new_campaign(tmp_path: Path, url: str, name: str, **changes) -> None:
    upgrade(url)
    create_campaign(load_spec(double_well_spec(tmp_path, name, **changes)), url, site="inline",
                    workdir=tmp_path / name)


def test_inline_campaign_runs_every_step_and_records_it(tmp_path, db_url):
    new_campaign(tmp_path, db_url, "dw_inline")
    ctx, scheduler = inline(db_url, "dw_inline")
    reason = run(ctx, scheduler)
    assert reason == "max_generations reached (2)"
    with get_engine(db_url).connect() as c:
        camp = c.execute(sa.select(m.Campaign)).one()
        assert camp.status == "finished" and camp.stop_reason == reason
        gens = c.execute(sa.select(m.Generation).order_by(m.Generation.idx)).all()
        assert [g.state for g in gens] == ["done", "done"]
        kinds = dict(c.execute(sa.text("SELECT kind, COUNT(*) FROM task WHERE status = 'done' GROUP BY kind")).all())
        assert kinds["train"] == 4 and kinds["evaluate"] == 2 and kinds["sample"] == 2
        assert c.execute(sa.text("SELECT COUNT(*) FROM task WHERE status <> 'done'")).scalar_one() == 0
        # generation 1 labelled exactly what generation 0 selected, each label from a label task
        assert c.execute(sa.text("SELECT COUNT(*) FROM label l JOIN task t ON t.id = l.task_id "
                                 "WHERE t.kind = 'label' AND t.generation_id = :g"),
                         {"g": gens[1].id}).scalar_one() == gens[0].n_selected > 0
        # absolute thresholds are stored as given (calibrated eV/Å)
        assert (gens[0].trust_lo, gens[0].trust_hi) == (0.1, 50.0)


def test_a_resumed_label_step_records_finished_oracle_calls_instead_of_repeating_them(tmp_path, sqlite_url):
    """A worker that finished oracle calls whose orchestrator died before recording them:
    the calls are in the run directory, and the next run records them from there."""
    new_campaign(tmp_path, sqlite_url, "dw_harvest", evaluation={"label_batch_size": 2})
    ctx, scheduler = inline(sqlite_url, "dw_harvest")
    with ctx.Session() as s:
        gen = ctx.latest_generation(s)
    items = label_step.plan(ctx, gen)
    assert len(items) == 3  # 6 initial geometries, 2 per task
    first = items[0]
    (task_id,) = scheduler.ledger.open([(first, 1)])
    from alflow.engine.apps import execute

    execute(Envelope(task_id, first.key, str(ctx.run_dir), enforce_limit=False), first.request)
    harvested = {job.geometry_id for job in first.request.jobs}
    # the orchestrator "died" here: nothing of that task was recorded
    with ctx.Session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Label)) == 0
    run(ctx, scheduler)
    with get_engine(sqlite_url).connect() as c:
        rows = dict(c.execute(sa.select(m.Label.geometry_id, m.Label.task_id)).all())
        assert {rows[g] for g in harvested} == {task_id}  # not recomputed by a later task
        assert c.execute(sa.text("SELECT status, error_class FROM task WHERE id = :t"),
                         {"t": task_id}).one() == ("failed", "orchestrator_lost")
        # the other generation-0 geometries went out in new tasks, never the harvested two
        later = c.execute(sa.text("SELECT COUNT(*) FROM label l JOIN task t ON t.id = l.task_id "
                                  "WHERE t.id <> :t AND l.geometry_id IN (:a, :b)"),
                          {"t": task_id, "a": min(harvested), "b": max(harvested)}).scalar_one()
        assert later == 0


def test_resume_records_paid_calls_of_dispatched_entries_at_once_and_requeues_the_rest(tmp_path, sqlite_url):
    """A streaming campaign may drop a re-queued entry on re-scoring, or stop before it takes
    it again: what an earlier run's workers finished is recorded when the run resumes."""
    from alflow.engine import queue

    new_campaign(tmp_path, sqlite_url, "dw_recover", evaluation={"label_batch_size": 2})
    ctx, scheduler = inline(sqlite_url, "dw_recover")
    with ctx.Session() as s:
        gen = ctx.latest_generation(s)
    items = label_step.plan(ctx, gen)  # all six entries dispatched
    first = items[0]
    (task_id,) = scheduler.ledger.open([(first, 1)])
    from alflow.engine.apps import execute

    execute(Envelope(task_id, first.key, str(ctx.run_dir), enforce_limit=False), first.request)
    paid = {job.geometry_id for job in first.request.jobs}
    assert label_step.recover(ctx) == (2, 4)
    with ctx.Session() as s:
        status = dict(s.execute(sa.select(queue.Q.geometry_id, queue.Q.status)).all())
        labels = dict(s.execute(sa.select(m.Label.geometry_id, m.Label.task_id)).all())
    assert labels == {g: task_id for g in paid}
    assert {g for g, st in status.items() if st == "labelled"} == paid
    assert sorted(st for g, st in status.items() if g not in paid) == ["queued"] * 4
    assert label_step.recover(ctx) == (0, 0)  # nothing dispatched any more


def test_percentile_thresholds_resolve_without_a_test_set_and_are_stored_as_numbers(tmp_path, sqlite_url):
    new_campaign(tmp_path, sqlite_url, "dw_pct", evaluation={"test_fraction": 0.0},
                 selection={"trust_lo": 10, "trust_hi": 100, "thresholds": "percentile",
                            "max_per_generation": 10, "dedupe_tol": 0.05, "strategy": "farthest_point"},
                 stopping={"max_generations": 1})
    ctx, scheduler = inline(sqlite_url, "dw_pct")
    run(ctx, scheduler)
    with ctx.Session() as s:
        gen = ctx.latest_generation(s)
        sigma = np.asarray(ctx.ensemble_eval(s, gen.id).details["sigma_f_train"])
        scale = ctx.calibration_scale(s, gen.id)
    assert scale == 1.0  # no held-out frames: no calibration
    lo, hi = np.percentile(sigma * scale, [10, 100])
    assert gen.trust_lo == pytest.approx(lo) and gen.trust_hi == pytest.approx(hi)
    assert 0 < gen.trust_lo < gen.trust_hi < 10  # eV/Å, not the percentiles 10 and 100
    assert gen.n_accurate + gen.n_candidate + gen.n_failed == 6


def _all_labels_fail(tmp_path, url, name: str, stop_on_failed: bool):
    spec = yaml.safe_load(double_well_spec(tmp_path, name).read_text())
    from engine_helpers import cu_geometries

    cu_geometries(tmp_path / "cu.extxyz", n=6)
    spec.update(initial_geometries=[{"path": str(tmp_path / "cu.extxyz"), "multiplicity": 2}],
                oracle={"kind": "ase", "calculator": "alflow.oracles.faulty:FaultyEMT",
                        "settings": {"fail_fraction": 0.99}},
                model={"representation": "painn", "n_atom_basis": 8, "n_interactions": 1, "n_rbf": 8,
                       "cutoff": 4.0, "ensemble_size": 2},
                stopping={"max_failed_fraction": 0.5, "stop_on_failed_generation": stop_on_failed})
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(spec))
    upgrade(url)
    create_campaign(load_spec(path), url, site="inline", workdir=tmp_path / "gate")
    return inline(url, name)


def test_failure_gate_stops_the_campaign_after_labelling(tmp_path, sqlite_url):
    ctx, scheduler = _all_labels_fail(tmp_path, sqlite_url, "cu_gate", stop_on_failed=True)
    reason = run(ctx, scheduler)
    assert reason.startswith("generation 0 failed: 100% of labels failed")
    with ctx.Session() as s:
        gen = ctx.latest_generation(s)
        assert gen.failed and gen.label_failed_fraction == 1.0 and gen.stop_reason == reason
        assert s.scalar(sa.select(sa.func.count()).select_from(m.Model)) == 0  # never trained


def test_a_generation_with_nothing_to_train_on_fails_the_campaign_with_that_reason(tmp_path, sqlite_url):
    """Every label failed and the gate only reports: the campaign ends `failed`, saying why,
    and records no empty training set (it once crashed inserting one)."""
    ctx, scheduler = _all_labels_fail(tmp_path, sqlite_url, "cu_empty", stop_on_failed=False)
    with pytest.raises(Exception, match="no successful labels to train on"):
        run(ctx, scheduler)
    with ctx.Session() as s:
        camp = s.scalars(sa.select(m.Campaign)).one()
        assert camp.status == "failed" and "no successful labels to train on" in camp.stop_reason
        assert s.scalar(sa.select(sa.func.count()).select_from(m.TrainingSet)) == 0


def test_stop_rules():
    stop_spec = StoppingSpec(max_generations=3, oracle_budget=10, target_force_mae=0.1,
                             accurate_fraction=0.9, accurate_generations=2)

    def facts(idx=0, mae=0.5, calls=5, selected=3, buckets=((1, 5, 0),)):
        return stop.GenerationFacts(idx, mae, calls, selected, list(buckets))

    assert stop.after_generation(stop_spec, facts()) is None
    assert "target force MAE" in stop.after_generation(stop_spec, facts(mae=0.05))
    assert "accurate fraction" in stop.after_generation(stop_spec, facts(buckets=((9, 1, 0), (10, 0, 0))))
    assert stop.after_generation(stop_spec, facts(buckets=((9, 1, 0),))) is None  # one generation only
    assert "max_generations" in stop.after_generation(stop_spec, facts(idx=2))
    assert "budget spent (10 of 10" in stop.after_generation(stop_spec, facts(calls=10))
    assert "nothing left to label" in stop.after_generation(stop_spec, facts(selected=0))
    gate = LabelFacts(n_labels=4, failed_fraction=0.75, gate_failed=True)
    assert stop.failure_gate(StoppingSpec(stop_on_failed_generation=False), 0, gate) is None
    assert "75% of labels failed" in stop.failure_gate(StoppingSpec(stop_on_failed_generation=True), 0, gate)
    assert "only 1 ensemble member" in stop.too_few_members(2, TrainFacts(1))
    assert stop.too_few_members(2, TrainFacts(2)) is None


def test_status_refuses_a_misspelt_field():
    from alflow.engine.context import CampaignContext

    ctx = CampaignContext(id=1, name="x", spec=None, Session=None, workdir=Path("."), site_name=None,
                          method_id=1, method_key="k")
    ctx.emit(step="label")
    assert ctx.status == Status(step="label")
    with pytest.raises(TypeError):
        ctx.emit(stpe="label")


def test_error_vocabularies_are_one_and_the_database_holds_them(db_url):
    from alflow.oracles.base import ERROR_CLASSES

    assert set(m.LABEL_ERRORS) == set(ERROR_CLASSES)
    assert set(m.TASK_ERRORS) == {e.value for e in TaskError}
    assert set(label_step.TASK_TO_LABEL_ERROR.values()) <= ERROR_CLASSES
    engine = get_engine(db_url)
    with engine.begin() as c:
        cid = c.execute(sa.insert(m.Campaign).values(name="v", spec={}, spec_sha256="0" * 64,
                                                     alflow_version="t").returning(m.Campaign.id)).scalar_one()
        c.execute(sa.insert(m.Task).values(campaign_id=cid, kind="label", error_class="stalled"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
        c.execute(sa.insert(m.Task).values(campaign_id=cid, kind="label", error_class="WorkerLost"))
    with engine.begin() as c:
        gid = c.execute(sa.text("INSERT INTO geometry (content_hash, natoms, formula, numbers, positions, pbc, "
                                "charge, multiplicity, origin) VALUES ('h', 1, 'H', :n, :p, 0, 0, 2, 'x') "
                                "RETURNING id"), {"n": b"\x01", "p": bytes(24)}).scalar_one()
        mid = c.execute(sa.text("INSERT INTO oracle_method (code, settings, settings_sha256) "
                                "VALUES ('x', '{}', 's') RETURNING id")).scalar_one()
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
        c.execute(sa.insert(m.Label).values(geometry_id=gid, method_id=mid, status="failed",
                                            error_class="task error"))


# ------------------------------------------------------------------ the scheduler
class ControlledBackend:
    """A backend whose attempts do what the test says (the only way to make an executor
    stall or lose a message on demand): `behaviour(attempt_number, envelope)` returns
    "ok", "lost" (the worker died), "error", "silent" (never starts), "hang" (starts, never
    ends) or "mute" (finishes, keeps its result durable, but its message never arrives)."""

    enforce_limits = False

    def __init__(self, behaviour, workers: int = 1):
        self.behaviour = behaviour
        self.workers = workers
        self.calls: list[int] = []
        self.replaced: list[str] = []

    def submit(self, role, envelope: Envelope, request) -> Future:
        self.calls.append(envelope.task_id)
        fut: Future = Future()
        what = self.behaviour(len(self.calls), envelope)
        if what == "silent":
            return fut
        if what == "lost-alive":  # lost, but its worker process (alive_pid) has not exited yet
            _started_by(envelope.run_dir, envelope.task_id, self.alive_pid)
            fut.set_exception(type("WorkerLost", (Exception,), {})("worker died"))
            return fut
        durable.mark_started(envelope.run_dir, envelope.task_id)
        if what == "ok":
            fut.set_result(f"result of {envelope.task_id}")
        elif what == "lost":
            fut.set_exception(type("WorkerLost", (Exception,), {})("worker died"))
        elif what == "error":
            fut.set_exception(ValueError("bad input"))
        elif what == "mute":
            durable.save_result(envelope.run_dir, envelope.key, envelope.task_id, f"kept {envelope.task_id}")
        return fut

    def capacity(self, role):
        return self.workers

    def live_workers(self, role):
        return self.workers

    def waiting_for_resources(self, role):
        return False

    def replace_workers(self, role):
        self.replaced.append(role)
        return f"{role}: replaced"

    def classify(self, exc):
        from alflow.engine.backends import classify_exception

        return classify_exception(exc)

    def tick(self):
        pass


@pytest.fixture
def ledger(sqlite_url):
    upgrade(sqlite_url)
    Session = session_factory(sqlite_url)
    with Session.begin() as s:
        cid = s.scalar(sa.insert(m.Campaign).values(name="sched", spec={}, spec_sha256="0" * 64,
                                                    alflow_version="t").returning(m.Campaign.id))
    return TaskLedger(Session, cid, "test")


def _drain(scheduler: Scheduler, bound_s: float = 20.0) -> list[tuple[WorkItem, Outcome]]:
    out, t0 = [], time.monotonic()
    for batch in scheduler.drain():
        out += batch
        with scheduler.ledger.Session.begin() as s:
            scheduler.ledger.close(s, [o.extra["row"] for _, o in batch])
        assert time.monotonic() - t0 < bound_s
    return out


def _rows(ledger):
    with ledger.Session() as s:
        return [tuple(r) for r in s.execute(sa.select(m.Task.tries, m.Task.status, m.Task.error_class)
                                            .order_by(m.Task.id))]


def _scheduler(backend, ledger, tmp_path, **limits) -> Scheduler:
    base = {"time_limit_s": {"oracle": 30.0}, "retries": 1, "stall_s": 0.5, "grace_s": 0.3,
            "result_grace_s": 0.3, "poll_s": 0.05}
    return Scheduler(backend, ledger, tmp_path, Limits(**(base | limits)))


def item(k: int = 0) -> WorkItem:
    return WorkItem(kind="label", role="oracle", key=f"key-{k}", request=LabelRequest((), None))


def test_a_lost_worker_is_retried_and_each_attempt_recorded(ledger, tmp_path):
    sched = _scheduler(ControlledBackend(lambda n, env: "lost" if n == 1 else "ok"), ledger, tmp_path)
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    assert outcome.ok and outcome.result.startswith("result of")
    assert _rows(ledger) == [(1, "failed", "worker_lost"), (2, "done", None)]


def _started_by(run_dir, task_id: int, pid: int) -> None:
    """The start marker a worker process `pid` of this host writes (durable.mark_started)."""
    import json
    import socket

    path = Path(run_dir) / "tasks" / "started" / str(task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": pid}))


def test_a_lost_attempt_is_retried_only_once_its_worker_has_exited(ledger, tmp_path):
    """A worker told to stop may still be writing the oracle call it had in hand
    (graceful.py): the retry must not start that call again while it does."""
    import subprocess
    import sys

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    submitted: list[float] = []

    def behaviour(n, env):
        submitted.append(time.monotonic())
        if n == 1:
            return "lost-alive"
        return "ok"

    backend = ControlledBackend(behaviour)
    backend.alive_pid = worker.pid
    sched = _scheduler(backend, ledger, tmp_path)
    t0 = time.monotonic()
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    exited = worker.wait(timeout=10)
    assert exited == 0 and outcome.ok
    assert submitted[1] - t0 >= 1.4  # not before the old worker was gone (1.5 s)
    assert submitted[1] - t0 < 1.5 + 1.0  # and soon after it
    assert _rows(ledger) == [(1, "failed", "worker_lost"), (2, "done", None)]


def test_a_lost_attempt_whose_worker_never_exits_is_retried_after_the_settle_bound(ledger, tmp_path, monkeypatch):
    import subprocess
    import sys

    from alflow.engine import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "SETTLE_S", 0.8)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        backend = ControlledBackend(lambda n, env: "lost-alive" if n == 1 else "ok")
        backend.alive_pid = worker.pid
        sched = _scheduler(backend, ledger, tmp_path)
        t0 = time.monotonic()
        sched.submit([item()])
        ((_, outcome),) = _drain(sched)
        assert outcome.ok and 0.7 < time.monotonic() - t0 < 5.0
    finally:
        worker.kill()
        worker.wait(timeout=10)


def test_retries_are_spent_then_the_item_fails_with_its_class(ledger, tmp_path):
    sched = _scheduler(ControlledBackend(lambda n, env: "lost"), ledger, tmp_path, retries=2)
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    assert not outcome.ok and outcome.error == "worker_lost"
    assert _rows(ledger) == [(1, "failed", "worker_lost"), (2, "failed", "worker_lost"),
                             (3, "failed", "worker_lost")]


def test_an_error_raised_by_the_task_is_not_retried(ledger, tmp_path):
    sched = _scheduler(ControlledBackend(lambda n, env: "error"), ledger, tmp_path)
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    assert outcome.error == "app_error" and "bad input" in outcome.message
    assert _rows(ledger) == [(1, "failed", "app_error")]


def test_a_stalled_executor_is_detected_its_blocks_replaced_and_the_work_retried(ledger, tmp_path):
    backend = ControlledBackend(lambda n, env: "silent" if n <= 2 else "ok", workers=1)
    sched = _scheduler(backend, ledger, tmp_path)
    sched.submit([item(0), item(1)])
    t0 = time.monotonic()
    outcomes = _drain(sched)
    assert time.monotonic() - t0 < 5  # stall_s 0.5 s, then the retries run at once
    assert all(o.ok for _, o in outcomes) and backend.replaced == ["oracle"]
    rows = _rows(ledger)
    assert rows[:2] == [(1, "failed", "stalled"), (1, "failed", "stalled")]
    assert sorted(rows[2:]) == [(2, "done", None), (2, "done", None)]
    assert all(durable.abandoned(tmp_path, t) for t in backend.calls[:2])  # they may never run


def test_an_attempt_that_started_but_never_reports_times_out(ledger, tmp_path):
    backend = ControlledBackend(lambda n, env: "hang" if n == 1 else "ok")
    sched = _scheduler(backend, ledger, tmp_path, time_limit_s={"oracle": 0.2})
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    assert outcome.ok
    assert _rows(ledger) == [(1, "failed", "timeout"), (2, "done", None)]


def test_a_result_whose_message_was_lost_is_read_back_from_the_run_directory(ledger, tmp_path):
    backend = ControlledBackend(lambda n, env: "mute")
    sched = _scheduler(backend, ledger, tmp_path)
    sched.submit([item()])
    ((_, outcome),) = _drain(sched)
    assert outcome.ok and outcome.harvested and outcome.result == f"kept {backend.calls[0]}"
    assert _rows(ledger) == [(1, "done", None)] and len(backend.calls) == 1


def test_work_whose_result_is_durable_is_not_dispatched_again(ledger, tmp_path):
    (task_id,) = ledger.open([(item(), 1)])
    durable.save_result(tmp_path, "key-0", task_id, "computed before a crash")
    backend = ControlledBackend(lambda n, env: "ok")
    sched = _scheduler(backend, ledger, tmp_path)
    sched.submit([item(), item(1)])
    outcomes = {i.key: o for i, o in _drain(sched)}
    assert outcomes["key-0"].harvested and outcomes["key-0"].result == "computed before a crash"
    assert len(backend.calls) == 1  # only key-1 went out
    # a durable result of another campaign's task is not taken
    durable.save_result(tmp_path, "key-9", 10**6, "not ours")
    sched.submit([item(9)])
    ((_, o),) = _drain(sched)
    assert not o.harvested and o.result.startswith("result of")


def test_waiting_is_bounded_even_when_nothing_ever_runs(ledger, tmp_path):
    backend = ControlledBackend(lambda n, env: "silent")
    sched = _scheduler(backend, ledger, tmp_path, retries=1)
    sched.submit([item()])
    done = threading.Event()
    result: list = []

    def go():
        result.extend(_drain(sched))
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(10)
    ((_, outcome),) = result
    assert outcome.error == "stalled" and len(backend.calls) == 2


# ------------------------------------------------------------------ streaming
def test_streaming_campaign_labels_from_the_queue_while_models_train(tmp_path, db_url):
    new_campaign(tmp_path, db_url, "dw_stream", scheduling={"mode": "streaming", "retrain_every": 4,
                                                             "oracle_lookahead": 0},
                 evaluation={"label_batch_size": 1},
                 stopping={"max_generations": 3, "oracle_budget": 30},
                 samplers=[{"kind": "random", "scale": 0.3, "seeds": 8}],
                 selection={"trust_lo": 0.1, "trust_hi": 50.0, "max_per_generation": 6, "dedupe_tol": 0.05})
    ctx, scheduler = inline(db_url, "dw_stream", workers=1)
    reason = run(ctx, scheduler)
    assert reason in ("max_generations reached (3)", "oracle budget spent (30 of 30 calls)"), reason
    with get_engine(db_url).connect() as c:
        q = lambda sql, **kw: c.execute(sa.text(sql), kw).all()  # noqa: E731
        gens = q("SELECT id, idx, state FROM generation ORDER BY idx")
        assert [g.state for g in gens] == ["done"] * len(gens) and len(gens) == 3
        # every label came from a queue entry, and the entry points at it and its task
        orphans = q("SELECT l.id FROM label l LEFT JOIN label_queue e ON e.label_id = l.id WHERE e.id IS NULL")
        assert orphans == []
        assert q("SELECT COUNT(*) FROM label_queue WHERE status = 'labelled' AND (task_id IS NULL "
                 "OR label_id IS NULL)")[0][0] == 0
        calls = q("SELECT COUNT(*) FROM label")[0][0]
        assert calls <= 30  # the budget was never exceeded, in-flight work included
        # one frozen training set per generation, the one its members trained on, though labels
        # kept arriving while they trained (evaluation reads that set, not the labels of now)
        assert q("SELECT generation_id FROM training_set GROUP BY generation_id HAVING COUNT(*) > 1") == []
        assert q("SELECT COUNT(*) FROM model mo JOIN training_set ts ON ts.id = mo.training_set_id "
                 "WHERE ts.generation_id <> mo.generation_id")[0][0] == 0
        # each generation trained on a frozen set that grew by at least retrain_every labels
        sizes = [r[0] for r in q("SELECT n_train + n_val + n_test FROM training_set ts JOIN generation g "
                                 "ON g.id = ts.generation_id ORDER BY g.idx")]
        # generation 0 starts once the held-out set and retrain_every others are labelled
        assert 4 <= sizes[0] <= 6 and all(b - a >= 1 for a, b in zip(sizes, sizes[1:]))
        assert sizes[1] - sizes[0] >= 4 or sizes[1] == calls
        # generation 1 collected labels from generation 0's queue; those tasks carry generation 1
        assert q("SELECT COUNT(*) FROM task t JOIN generation g ON g.id = t.generation_id "
                 "WHERE t.kind = 'label' AND g.idx = 1")[0][0] >= 1
        # each new ensemble re-scored what was still queued; a drop names the generation
        rescored = q("SELECT COUNT(*) FROM task WHERE kind = 'rescore' AND status = 'done'")[0][0]
        assert rescored >= 1
        assert q("SELECT COUNT(*) FROM label_queue WHERE status = 'dropped' AND (dropped_by_id IS NULL "
                 "OR reason NOT LIKE '%below trust_lo%')")[0][0] == 0
    from alflow.db.queries import named_query

    assert named_query(db_url, "training-labels", "dw_stream").rows  # the same questions in both modes


def test_validation_runs_beside_sampling_and_never_holds_it_up(tmp_path, sqlite_url):
    from engine_helpers import write_spec

    path = write_spec(tmp_path, "cu_val", generations=1, max_epochs=5)
    spec = yaml.safe_load(path.read_text())
    spec["validation"].update(steps=400)
    path.write_text(yaml.safe_dump(spec))
    upgrade(sqlite_url)
    create_campaign(load_spec(path), sqlite_url, site="inline", workdir=tmp_path / "run")
    ctx, scheduler = inline(sqlite_url, "cu_val")
    ctx.validate_role = "validate"
    run(ctx, scheduler)
    with get_engine(sqlite_url).connect() as c:
        times = {k: (s, f) for k, s, f in c.execute(sa.text(
            "SELECT kind, submitted_at, finished_at FROM task WHERE kind IN ('validate', 'sample')")).all()}
        assert times["sample"][0] < times["validate"][1]  # sampling went out before validation ended
        stab = c.execute(sa.text("SELECT stability_time_fs FROM model_eval WHERE model_id IS NULL")).scalar()
        assert stab is not None  # and its result was still recorded, before the campaign finished


def test_one_seed_gives_one_campaign_however_labelling_is_batched(tmp_path):
    """Label ids follow the order in which oracle tasks finish; seeds and training batches
    drawn from the labels must not, or rerunning a campaign (or changing only how its
    oracle work is cut into tasks) samples and selects something else."""
    runs = []
    for batch in (1, 6):
        d = tmp_path / f"batch{batch}"
        d.mkdir()
        url = f"sqlite:///{d / 'alflow.db'}"
        new_campaign(d, url, "dw_repro", evaluation={"label_batch_size": batch},
                     samplers=[{"kind": "random", "scale": 0.3, "seeds": 6, "recent_seed_fraction": 0.5}])
        ctx, scheduler = inline(url, "dw_repro", workers=3)
        run(ctx, scheduler)
        with get_engine(url).connect() as c:
            runs.append([sorted(c.execute(sa.text(
                "SELECT g.content_hash FROM sample s JOIN sampling_run r ON r.id = s.sampling_run_id "
                "JOIN geometry g ON g.id = s.geometry_id JOIN generation n ON n.id = r.generation_id "
                "WHERE n.idx = :i AND s.selected AND r.kind <> 'initial'"), {"i": i}).scalars()) for i in range(2)])
    assert all(runs[0]) and runs[0] == runs[1]


def test_reference_md_test_set_and_profile_are_labelled_once_never_trained_and_reported(tmp_path, sqlite_url):
    """Validation in the Fu et al. protocol through the engine: the reference-MD test set
    and the profile path are labelled in generation 0, held out of every training set (in
    the database), and `alflow query errors` returns every figure per generation."""
    import json

    from ase.io import write
    from engine_helpers import cu_geometries, write_spec
    from typer.testing import CliRunner

    from alflow.cli import app

    path = write_spec(tmp_path, "cu_protocol", generations=2, max_epochs=5)
    base = cu_geometries(tmp_path / "base.extxyz", n=1, seed=5)
    from ase.io import read

    a0 = read(base)
    frames = []
    for f in np.linspace(0.94, 1.08, 7):  # a breathing path through the minimum
        a = a0.copy()
        a.positions = a0.positions.mean(0) + f * (a0.positions - a0.positions.mean(0))
        frames.append(a)
    write(tmp_path / "path.extxyz", frames, format="extxyz")
    spec = yaml.safe_load(path.read_text())
    spec["evaluation"].update(reference_md_frames=4, test_fraction=0.0,
                              profile={"path": str(tmp_path / "path.extxyz"), "multiplicity": 2})
    spec["validation"].update(walkers=8, steps=30, reference_steps=200, reference="oracle")
    path.write_text(yaml.safe_dump(spec))
    upgrade(sqlite_url)
    create_campaign(load_spec(path), sqlite_url, site="inline", workdir=tmp_path / "run")
    ctx, scheduler = inline(sqlite_url, "cu_protocol")
    run(ctx, scheduler)
    with get_engine(sqlite_url).connect() as c:
        held = dict(c.execute(sa.text(
            "SELECT origin, COUNT(*) FROM geometry g JOIN label l ON l.geometry_id = g.id "
            "WHERE l.status = 'ok' AND origin IN ('reference-md', 'profile') GROUP BY origin")).all())
        assert held == {"reference-md": 4, "profile": 7}
        # labelled once (generation 0), however many generations evaluated on them
        assert c.execute(sa.text(
            "SELECT COUNT(*) FROM label l JOIN geometry g ON g.id = l.geometry_id "
            "WHERE origin IN ('reference-md', 'profile')")).scalar_one() == 11
        splits = c.execute(sa.text(
            "SELECT DISTINCT tsl.split FROM training_set_label tsl JOIN label l ON l.id = tsl.label_id "
            "JOIN geometry g ON g.id = l.geometry_id WHERE g.origin IN ('reference-md', 'profile')")).all()
        assert splits == [("test",)]  # recorded with every training set, never as train or val
        n_sets = c.execute(sa.text("SELECT COUNT(*) FROM training_set")).scalar_one()
        assert n_sets == 2
    result = CliRunner().invoke(app, ["query", "errors", "--db", sqlite_url, "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["eval_set"] == "test"]
    assert [r["generation"] for r in rows] == [0, 1]
    for r in rows:
        assert r["n_frames"] == 4  # the reference-MD frames are the held-out set
        for k in ("force_mae", "energy_mae", "calibration_scale", "stability_median_fs",
                  "survival_fraction", "hr_error", "hr_error_std", "profile_mae", "barrier_error"):
            assert r[k] is not None, k
        assert 0.0 <= r["survival_fraction"] <= 1.0 and r["profile_mae"] >= 0
