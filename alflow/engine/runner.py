"""What both schedulings share: handing a step's work to the scheduler and recording every
outcome, whichever step and generation it belongs to, as it arrives.

Work items carry their kind and generation, so an outcome is recorded by its own step
(`STEP_OF_KIND`) with its own generation, even when it arrives while the campaign is in
another step (a validation finishing during the next generation's labelling). `Runner`
keeps count of what each (generation, kind) still has open; a mode's loop decides when to
wait for it (`settle`) and when not to.
"""

from __future__ import annotations

import collections
import datetime as dt
from types import ModuleType

import sqlalchemy as sa

from alflow.db import models as m
from alflow.engine.context import CampaignContext
from alflow.engine.results import WarmupRequest
from alflow.engine.scheduler import Scheduler, WorkItem
from alflow.engine.states import GenState, TaskError, TaskStatus
from alflow.engine.steps import STEPS, label, rescore

STEP_OF_KIND: dict[str, ModuleType] = {state.value: step for state, step in STEPS.items()} | {
    "rescore": rescore}
WAIT_S = 1.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Runner:
    def __init__(self, ctx: CampaignContext, scheduler: Scheduler):
        self.ctx = ctx
        self.scheduler = scheduler
        self.open: collections.Counter[tuple[int, str]] = collections.Counter()
        self.done = self.failed = 0

    def generation(self, gen_id: int) -> m.Generation:
        with self.ctx.Session() as s:
            gen = s.get(m.Generation, gen_id)
            s.expunge(gen)
        return gen

    def submit(self, gen: m.Generation, state: GenState | str, **plan_kw) -> int:
        """Plan a step (or the rescore) of `gen` and hand its work to the scheduler."""
        kind = state.value if isinstance(state, GenState) else state
        items = STEP_OF_KIND[kind].plan(self.ctx, gen, **plan_kw)
        self.scheduler.submit(items)
        for item in items:
            self.open[(item.generation_id, item.kind)] += 1
        return len(items)

    def pump(self, timeout_s: float = WAIT_S) -> int:
        """Record whatever finished within `timeout_s`; returns how many outcomes."""
        batch = self.scheduler.wait(timeout_s)
        if not batch:
            return 0
        gens: dict[int, m.Generation] = {}
        with self.ctx.Session.begin() as s:
            self.scheduler.ledger.close(s, [o.extra["row"] for _, o in batch])
            for item, outcome in batch:
                self.open[(item.generation_id, item.kind)] -= 1
                step = STEP_OF_KIND.get(item.kind)
                if step is None:  # warm-up: the task row is all there is
                    continue
                if item.generation_id not in gens:
                    gens[item.generation_id] = s.get(m.Generation, item.generation_id)
                step.record(s, self.ctx, gens[item.generation_id], item, outcome)
        self.failed += sum(not o.ok for _, o in batch)
        self.done += sum(o.ok for _, o in batch)
        self.ctx.emit(done=self.done, failed=self.failed, running=self.scheduler.in_flight(),
                      message="; ".join(self.scheduler.events[-1:]))
        return len(batch)

    def pending(self, gen_id: int, kind: str) -> int:
        return self.open[(gen_id, kind)]

    def settle(self, gen: m.Generation, kind: str) -> None:
        """Record outcomes until `gen` has no open work of `kind` (bounded: the scheduler
        ends every attempt by its deadline, a stall or its last retry)."""
        while self.open[(gen.id, kind)] > 0:
            self.pump()

    def drain(self) -> None:
        while self.scheduler.busy():
            self.pump()

    def warm_up(self, roles: list[str]) -> None:
        """One warm-up task per worker of each role, so worker start-up (imports, the
        oracle's forked child) is not charged to the first real task ('warmup-<role>')."""
        ctx = self.ctx
        ctx.emit(step="starting workers")
        with ctx.Session() as s:
            gen_id = ctx.latest_generation(s).id
        items = [WorkItem(kind=f"warmup-{role}", role=role, key="",
                          request=WarmupRequest(role, ctx.spec.oracle if role == "oracle" else None),
                          generation_id=gen_id, resources={"role": role})
                 for role in roles for _ in range(self.scheduler.backend.capacity(role))]
        self.scheduler.submit(items)
        for item in items:
            self.open[(gen_id, item.kind)] += 1
        self.drain()

    def catch_up_validations(self) -> None:
        """Generations past VALIDATE whose validation never reported (the orchestrator
        stopped while it ran): validate them again, beside everything else."""
        if not self.ctx.spec.validation.enabled:
            return
        beyond = [s.value for s in (GenState.SAMPLE, GenState.SELECT, GenState.DONE)]
        with self.ctx.Session() as s:
            done = sa.select(m.Task.generation_id).where(m.Task.kind == "validate", m.Task.status == "done")
            gens = s.scalars(sa.select(m.Generation).where(
                m.Generation.campaign_id == self.ctx.id, m.Generation.state.in_(beyond),
                m.Generation.id.notin_(done))).all()
            for g in gens:
                s.expunge(g)
        for gen in gens:
            self.submit(gen, GenState.VALIDATE)


def set_campaign(ctx: CampaignContext, **values) -> None:
    with ctx.Session.begin() as s:
        s.execute(sa.update(m.Campaign).where(m.Campaign.id == ctx.id).values(updated_at=_now(), **values))


def begin(ctx: CampaignContext, runner: Runner, warm_roles: list[str] | None) -> str | None:
    """Start (or resume) a run: the stop reason if the campaign has finished already."""
    with ctx.Session() as s:
        camp = s.get(m.Campaign, ctx.id)
        if camp.status == "finished":
            return camp.stop_reason or "finished"
    lost = mark_lost(ctx)
    if lost:
        ctx.emit(message=f"{lost} task(s) from an interrupted run marked lost")
    recorded, _ = label.recover(ctx)  # what an earlier run took: recorded if paid for, else queued again
    if recorded:
        ctx.emit(message=f"{recorded} oracle result(s) of an interrupted run recorded, not recomputed")
    set_campaign(ctx, status="running")
    with ctx.Session() as s:
        ctx.emit(oracle_cpu_s=ctx.oracle_cpu_s(s))
    if warm_roles:
        runner.warm_up(warm_roles)
    runner.catch_up_validations()
    return None


def finish_campaign(ctx: CampaignContext, runner: Runner, gen: m.Generation, reason: str) -> str:
    """Record the stop reason once everything handed out has reported (validations, paid
    oracle calls): nothing of a finished campaign is left running."""
    ctx.emit(step="finishing", message=reason)
    runner.drain()
    with ctx.Session.begin() as s:
        s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(stop_reason=reason))
    set_campaign(ctx, status="finished", stop_reason=reason)
    ctx.emit(step="finished", message=reason)
    return reason


def set_state(ctx: CampaignContext, gen: m.Generation, state: GenState) -> None:
    with ctx.Session.begin() as s:
        s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(state=state.value))
    gen.state = state.value


def mark_lost(ctx: CampaignContext) -> int:
    """Tasks an earlier orchestrator left open are recorded lost (their finished work is
    read back from the run directory by the steps that need it)."""
    with ctx.Session.begin() as s:
        return s.execute(sa.update(m.Task).where(
            m.Task.campaign_id == ctx.id, m.Task.status.in_((TaskStatus.PENDING.value, TaskStatus.RUNNING.value))
        ).values(status=TaskStatus.FAILED.value, error_class=TaskError.ORCHESTRATOR_LOST.value,
                 finished_at=_now(), error_msg="the orchestrator stopped before this task reported back")).rowcount
