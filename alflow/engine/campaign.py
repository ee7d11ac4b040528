"""The campaign loop: each generation's steps, in the order of `states.NEXT`, until a stop
rule fires.

For the generation's current state the loop asks the step what work it needs (`plan`),
hands it to the scheduler, records each outcome with its task row in one transaction
(`record`), lets the step sum up (`finish`), asks the stop rules (`steps.stop`), and only
then stores the next state. A killed orchestrator therefore resumes at the step it was in,
and the step's plan asks only for what has no recorded result. The orchestrator is the
only database writer; workers write only files (`durable.py`, checkpoints).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import session_factory
from alflow.engine.context import CampaignContext, Progress
from alflow.engine.runner import Runner, begin, finish_campaign, set_campaign, set_state
from alflow.engine.scheduler import Limits, Scheduler, TaskLedger
from alflow.engine.states import NEXT, GenState
from alflow.engine.steps import STEPS, stop
from alflow.errors import InputError
from alflow.spec import parse_spec


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_context(url: str, name: str, progress: Progress | None = None) -> CampaignContext:
    from alflow.oracles import make_oracle

    Session = session_factory(url)
    with Session() as s:
        camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        spec = parse_spec(camp.spec, source=f"campaign {name}")
        oracle = make_oracle(spec.oracle)  # identity only; workers build their own
        try:
            record = oracle.method_record()
        finally:
            oracle.close()
        from pathlib import Path

        workdir = Path(camp.workdir or Path.cwd() / "alflow-runs" / name)
        site = camp.site or spec.site
        campaign_id = camp.id
    with Session.begin() as s:
        method_id = writers.ensure_oracle_method(s, record)
        imported = sorted({int(p["method_id"]) for p in s.scalars(
            sa.select(m.SamplingRun.params).join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
            .where(m.Generation.campaign_id == campaign_id, m.SamplingRun.kind == "initial-labels"))
            if p and p.get("method_id") is not None} - {method_id})
    ctx = CampaignContext(id=campaign_id, name=name, spec=spec, Session=Session, workdir=workdir,
                          site_name=site, method_id=method_id, method_key=record["settings_sha256"],
                          label_method_ids=tuple(imported), progress=progress)
    ctx.emit(campaign=name)
    return ctx


def run(ctx: CampaignContext, scheduler: Scheduler, warm_roles: list[str] | None = None) -> str:
    """Run the campaign in its scheduling mode until a stop rule fires; returns the stop
    reason. Whatever backend runs it, a campaign is never left `running`: `stopped` on
    Ctrl-C, `failed` with the reason on any other error."""
    try:
        if ctx.spec.scheduling.mode == "streaming":
            from alflow.engine.streaming import run_streaming

            return run_streaming(ctx, scheduler, warm_roles)
        return _run_generational(ctx, scheduler, warm_roles)
    except KeyboardInterrupt:
        scheduler.cancel_all("interrupted (Ctrl-C)")
        set_campaign(ctx, status="stopped")
        raise
    except BaseException as exc:
        set_campaign(ctx, status="failed", stop_reason=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def _run_generational(ctx: CampaignContext, scheduler: Scheduler, warm_roles: list[str] | None) -> str:
    """Each step of each generation in turn; validation is handed out and not waited for."""
    runner = Runner(ctx, scheduler)
    done = begin(ctx, runner, warm_roles)
    if done is not None:
        return done
    while True:
        with ctx.Session() as s:
            gen = ctx.latest_generation(s)
            s.expunge(gen)
        state = GenState(gen.state)
        reason = None
        if state == GenState.DONE:
            reason = stop.check(ctx, gen, GenState.DONE, None)
            if reason is None:
                with ctx.Session.begin() as s:
                    s.add(m.Generation(campaign_id=ctx.id, idx=gen.idx + 1, state=GenState.LABEL.value))
                continue
        else:
            ctx.emit(generation=gen.idx, step=state.value)
            runner.submit(gen, state)
            if state != GenState.VALIDATE:
                runner.settle(gen, state.value)
            reason = stop.check(ctx, gen, state, STEPS[state].finish(ctx, gen))
            set_state(ctx, gen, NEXT[state])
        if reason:
            return finish_campaign(ctx, runner, gen, reason)


def limits_for(site, spec) -> Limits:
    """The scheduler's bounds from the site (and the spec's per-role time limits)."""
    return Limits(
        time_limit_s={role: float(spec.task_time_limit_s.get(role, ex.task_time_limit_s))
                      for role, ex in site.executors.items()},
        retries=site.retries, stall_s=float(site.stall_timeout_s),
        grace_s=float(site.heartbeat_threshold_s + 30), queue_wait_s=float(site.queue_wait_s),
        result_grace_s=float(max(10, 2 * site.heartbeat_period_s)))


def run_campaign(name: str, url: str, *, site_name: str | None = None,
                 progress: Progress | None = None) -> str:
    """Run a recorded campaign on its site (or `site_name`) with Parsl, to its stop rule.

    Leftovers of an earlier run are ended first; the campaign is marked `stopped` on
    Ctrl-C and `failed` (with the reason) on any other error; no process of the run
    outlives it (`processes.py`)."""
    from alflow.engine.backends import ParslBackend
    from alflow.engine.processes import ProcessRegistry, RunningElsewhere, reap_stale_runs
    from alflow.engine.sites import load_site, role_capacity

    ctx = load_context(url, name, progress)
    site = load_site(site_name or ctx.site_name)
    runs = ctx.workdir / "runs"
    try:
        ended = reap_stale_runs(runs)
    except RunningElsewhere as exc:
        raise InputError(str(exc), source=f"campaign {name}") from None
    if ended:
        ctx.emit(message=f"ended {len(ended)} process(es) an earlier run left behind")
    ctx.oracle_workers = role_capacity("oracle", site.executors["oracle"])
    if "validate" in site.executors:
        ctx.validate_role = "validate"
    registry = ProcessRegistry(runs)
    backend = ParslBackend(site, ctx.workdir / "runinfo", registry)
    scheduler = Scheduler(backend, TaskLedger(ctx.Session, ctx.id, ctx.site_name, registry.record.run_id),
                          ctx.run_dir, limits_for(site, ctx.spec))
    try:
        try:
            backend.start()
        except BaseException as exc:
            set_campaign(ctx, status="failed", stop_reason=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        return run(ctx, scheduler, warm_roles=list(site.executors))
    finally:
        backend.shutdown()
