"""Select: bucket the generation's sampled frames by calibrated uncertainty, dedupe them
against the training set and each other, cap them (within the oracle budget), and record
a verdict with its reason on every frame (`alflow.sampling.selection`). Runs in the
orchestrator: it needs no worker.

The generation row stores the thresholds actually used, in calibrated eV/Å (a percentile
spec resolved, `CampaignContext.thresholds`), the bucket counts and the number selected.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import sqlalchemy as sa

from alflow.db import models as m
from alflow.engine import queue
from alflow.engine.context import CampaignContext, seed_of
from alflow.engine.scheduler import WorkItem


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    return []


def record(*_args) -> None:  # no work items
    raise AssertionError("select has no work items to record")


def finish(ctx: CampaignContext, gen: m.Generation) -> dict[str, int]:
    from alflow.sampling.selection import select_frames

    sel = ctx.spec.selection
    with ctx.Session() as s:
        scale = ctx.calibration_scale(s, gen.id)
        lo, hi = ctx.thresholds(s, gen.id)
        rows = s.execute(
            sa.select(m.Sample, m.Geometry).join(m.Geometry, m.Geometry.id == m.Sample.geometry_id)
            .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
            .where(m.SamplingRun.generation_id == gen.id, m.SamplingRun.kind != "initial")
            .order_by(m.Sample.id)).all()
        rows = [(smp, geo) for smp, geo in rows if smp.reason != "carved"]
        training = [ctx.atoms(geo) for _, geo in ctx.labels(s)]
        if ctx.spec.scheduling.mode == "streaming":  # what waits in the queue is as good as known
            training += [ctx.atoms(geo) for geo in s.scalars(
                sa.select(m.Geometry).join(queue.Q, queue.Q.geometry_id == m.Geometry.id)
                .where(queue.Q.campaign_id == ctx.id, queue.Q.status.in_(queue.WAITING)))]
        used = ctx.oracle_calls(s)
    budget = ctx.spec.stopping.oracle_budget
    cap = sel.max_per_generation if budget is None else max(0, min(sel.max_per_generation, budget - used))
    values = np.array([scale * np.sqrt(max(smp.sigma_f2 or 0.0, 0.0)) for smp, _ in rows])
    selection = select_frames(
        [ctx.atoms(geo) for _, geo in rows], values, trust_lo=lo, trust_hi=hi, thresholds="absolute",
        training_frames=training, dedupe_tol=sel.dedupe_tol, max_per_generation=cap,
        strategy=sel.strategy, seed=seed_of("select", ctx.spec.seed, gen.idx),
        hashes=[geo.content_hash for _, geo in rows]) if rows else None
    counts = selection.counts() if selection else {"accurate": 0, "candidate": 0, "failed": 0, "selected": 0}
    with ctx.Session.begin() as s:
        if selection:
            s.execute(sa.update(m.Sample), [
                {"id": smp.id, "bucket": v.bucket, "selected": v.selected, "reason": v.reason[:80]}
                for (smp, _), v in zip(rows, selection.verdicts, strict=True)])
            queue.enqueue(s, ctx.id, gen.id, [(geo.id, smp.id, v.uncertainty) for (smp, geo), v
                                              in zip(rows, selection.verdicts, strict=True) if v.selected])
        s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(
            n_accurate=counts["accurate"], n_candidate=counts["candidate"], n_failed=counts["failed"],
            n_selected=counts["selected"], trust_lo=lo, trust_hi=hi, finished_at=dt.datetime.now(dt.UTC)))
    ctx.emit(buckets=counts)
    return counts
