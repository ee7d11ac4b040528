"""Label: send the geometries this generation must label to the oracle, in batches.

Work comes from the label queue (`engine/queue.py`). Generational: generation 0 labels the
initial geometries (or the clusters carved from periodic ones), generation g > 0 what
generation g−1 selected. Streaming: the most uncertain queued frames, a few at a time. A geometry with any label of the
campaign's oracle method is never sent again, and an oracle call that finished in an
earlier attempt or an earlier run (kept in the run directory by the worker, `durable.py`)
is recorded from there, never recomputed. Failures are labels: an oracle failure comes back
as a failed label with its error class; a batch whose task failed as a whole records its
unfinished geometries as failed with the task's reason mapped onto the oracle vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.engine import durable, queue
from alflow.engine.context import CampaignContext, key
from alflow.engine.results import LabelJob, LabelledGeometry, LabelRequest, Outcome
from alflow.engine.scheduler import WorkItem
from alflow.engine.states import TaskError

# a task that failed as a whole, in the oracle's error vocabulary
TASK_TO_LABEL_ERROR = {
    TaskError.WORKER_LOST: "crash", TaskError.MANAGER_LOST: "crash", TaskError.STALLED: "crash",
    TaskError.TIMEOUT: "timeout", TaskError.APP_ERROR: "task_error", TaskError.SUBMIT_ERROR: "task_error",
    TaskError.ORCHESTRATOR_LOST: "crash",
}


@dataclass(frozen=True)
class LabelFacts:
    n_labels: int
    failed_fraction: float
    gate_failed: bool  # above the spec's max_failed_fraction


def label_key(content_hash: str, method_key: str) -> str:
    """The label's idempotency key: sha256(geometry content hash + oracle method key)."""
    return key("label-v1", content_hash, method_key)


def intake(s: Session, ctx: CampaignContext, gen: m.Generation) -> sa.Select:
    """Queue entries this generation labels: the initial ones in generation 0, later the
    frames the previous generation selected (generational scheduling)."""
    if gen.idx == 0:
        return queue.waiting(ctx.id, generation_id=gen.id, initial=True)
    prev = s.scalar(sa.select(m.Generation.id).where(m.Generation.campaign_id == ctx.id,
                                                      m.Generation.idx == gen.idx - 1))
    return queue.waiting(ctx.id, generation_id=prev, initial=False)


def next_in_line(s: Session, ctx: CampaignContext, limit: int | None) -> list[m.QueueEntry]:
    """Streaming: the queued entries to label next, marked dispatched. Scored ones first,
    most uncertain first; then the unscored starting geometries, held-out ones first (a
    generation is evaluated only once its whole test set is labelled), in listed order."""
    rows = s.execute(queue.waiting(ctx.id).where(queue.Q.status == "queued")
                     .with_only_columns(queue.Q, m.Geometry)
                     .join(m.Geometry, m.Geometry.id == queue.Q.geometry_id)).all()
    rows.sort(key=lambda r: (r[0].priority is None, -(r[0].priority or 0.0),
                             ctx.split(r[1]) != "test", r[0].sample_id or 0, r[0].id))
    entries = [e for e, _ in rows[:limit]]
    queue.mark_dispatched(s, entries)
    return entries


def _row(ctx: CampaignContext, kept: LabelledGeometry, task_id: int) -> dict:
    lab = kept.label
    return writers.label_row(
        kept.geometry_id, ctx.method_id, task_id=kept.task_id or task_id, status=lab.status,
        energy=lab.energy, forces=lab.forces, stress=lab.stress, error_class=lab.error_class,
        error_msg=lab.error_msg, wall_s=lab.wall_s, cpu_s=lab.cpu_s)


def _owned_task(s: Session, ctx: CampaignContext, task_id: int | None) -> bool:
    return task_id is not None and s.scalar(sa.select(sa.func.count()).select_from(m.Task).where(
        m.Task.id == task_id, m.Task.campaign_id == ctx.id, m.Task.kind == "label")) == 1


def _harvest(s: Session, ctx: CampaignContext, geometries: list[m.Geometry]) -> set[int]:
    """Record the oracle calls of these geometries that finished before a crash (kept in
    the run directory by this campaign's workers) and close their queue entries; returns
    the geometry ids recorded."""
    rows = []
    for geo in geometries:
        kept = durable.load_label(ctx.run_dir, label_key(geo.content_hash, ctx.method_key))
        if kept is not None and kept.geometry_id == geo.id and _owned_task(s, ctx, kept.task_id):
            rows.append(_row(ctx, kept, kept.task_id))
    writers.write_labels(s, rows)
    for row in rows:
        queue.close(s, ctx.id, ctx.method_id, [row["geometry_id"]], row["task_id"])
    return {row["geometry_id"] for row in rows}


def recover(ctx: CampaignContext) -> tuple[int, int]:
    """On resume: entries an earlier run dispatched are labelled from the run directory
    where their oracle call finished, and put back in the queue where it did not.

    Why at once, not when they are next taken: a streaming campaign may drop a re-queued
    entry on re-scoring, or stop before it takes it again, and the call it paid for would
    never be recorded. Returns (recorded, re-queued)."""
    with ctx.Session.begin() as s:
        geos = list(s.scalars(sa.select(m.Geometry).join(queue.Q, queue.Q.geometry_id == m.Geometry.id)
                              .where(queue.Q.campaign_id == ctx.id, queue.Q.status == "dispatched")))
        have = set(s.scalars(sa.select(m.Label.geometry_id).where(
            m.Label.method_id == ctx.method_id, m.Label.geometry_id.in_([g.id for g in geos]))))
        queue.close(s, ctx.id, ctx.method_id, sorted(have), None)
        recorded = _harvest(s, ctx, [g for g in geos if g.id not in have])
        return len(recorded), queue.release(s, ctx.id)


def plan(ctx: CampaignContext, gen: m.Generation, *, limit: int | None = None) -> list[WorkItem]:
    """Label work for the generation's intake (generational), or for up to `limit` of the
    most uncertain queued frames (streaming: `gen` is the generation collecting labels)."""
    streaming = ctx.spec.scheduling.mode == "streaming"
    with ctx.Session.begin() as s:
        if streaming:
            entries = next_in_line(s, ctx, limit)
        else:
            entries = queue.take(s, intake(s, ctx, gen), limit=limit)
        wanted = [e.geometry_id for e in entries]
        have = set(s.scalars(sa.select(m.Label.geometry_id).where(
            m.Label.method_id == ctx.method_id, m.Label.geometry_id.in_(wanted))))
        queue.close(s, ctx.id, ctx.method_id, sorted(have), None)  # labelled before, e.g. another campaign
        todo = [g for g in wanted if g not in have]
        geos = {g.id: g for g in s.scalars(sa.select(m.Geometry).where(m.Geometry.id.in_(todo)))}
        harvested = _harvest(s, ctx, list(geos.values()))
        jobs = [LabelJob(gid, label_key(geos[gid].content_hash, ctx.method_key), ctx.atoms(geos[gid]))
                for gid in todo if gid not in harvested]
    if harvested:
        ctx.emit(message=f"{len(harvested)} oracle result(s) of an interrupted run recorded, not recomputed")
    size = ctx.spec.evaluation.label_batch_size
    batches = [tuple(jobs[i : i + size]) for i in range(0, len(jobs), size)]
    return [WorkItem(kind="label", role="oracle", key=key("label", ctx.method_id, [j.geometry_id for j in b]),
                     request=LabelRequest(b, ctx.spec.oracle), generation_id=gen.id,
                     resources={"geometries": len(b), "oracle_workers": ctx.oracle_workers}, tag=b)
            for b in batches]


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if outcome.ok:
        rows = [_row(ctx, lg, outcome.task_id) for lg in outcome.result.labels]
    else:  # the whole task failed: what it finished is kept; the rest are failures (data)
        error_class = TASK_TO_LABEL_ERROR.get(TaskError(outcome.error), "task_error")
        rows = []
        for job in item.tag:
            kept = durable.load_label(ctx.run_dir, job.label_key)
            if kept is not None and kept.geometry_id == job.geometry_id:
                rows.append(_row(ctx, kept, outcome.task_id))
            else:
                rows.append(writers.label_row(job.geometry_id, ctx.method_id, status="failed",
                                              task_id=outcome.task_id, error_class=error_class,
                                              error_msg=(outcome.message or "")[:2000]))
    writers.write_labels(s, rows)
    queue.close(s, ctx.id, ctx.method_id, [job.geometry_id for job in item.tag], outcome.task_id)
    ctx.emit(oracle_cpu_s=ctx.status.oracle_cpu_s + sum(r["cpu_s"] or 0.0 for r in rows))


def finish(ctx: CampaignContext, gen: m.Generation) -> LabelFacts:
    with ctx.Session.begin() as s:
        counts = dict(s.execute(sa.select(m.Label.status, sa.func.count()).join(m.Task)
                                .where(m.Task.generation_id == gen.id).group_by(m.Label.status)).all())
        total = sum(counts.values())
        failed_fraction = counts.get("failed", 0) / total if total else 0.0
        gate = failed_fraction > ctx.spec.stopping.max_failed_fraction
        s.execute(sa.update(m.Generation).where(m.Generation.id == gen.id).values(
            n_labels=total, label_failed_fraction=failed_fraction, failed=gate))
    return LabelFacts(total, failed_fraction, gate)
