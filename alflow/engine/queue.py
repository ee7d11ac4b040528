"""The label queue (`label_queue` table): what the campaign chose to label, until labelled.

Selection puts frames in (`enqueue`), label work takes them out (`take`, which marks them
dispatched, in priority order), recording a label closes them (`close`), and in streaming
campaigns each new ensemble re-scores what is still waiting (`rescore`), dropping entries
it now finds below trust_lo with a verdict that names it. The table outlives any
orchestrator: a resumed campaign finds dispatched entries without a label and takes them
again (their finished oracle calls are read back from the run directory, not repeated).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers

Q = m.QueueEntry
WAITING = ("queued", "dispatched")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def enqueue(s: Session, campaign_id: int, generation_id: int,
            entries: Iterable[tuple[int, int | None, float | None]]) -> int:
    """Queue (geometry id, sample id, priority) entries selected by `generation_id`; a
    geometry the campaign has queued before is not queued again. Returns how many were new."""
    rows = [{"campaign_id": campaign_id, "geometry_id": g, "sample_id": smp, "generation_id": generation_id,
             "priority": p, "scored_by_id": generation_id if p is not None else None, "status": "queued"}
            for g, smp, p in entries]
    if not rows:
        return 0
    before = s.scalar(sa.select(sa.func.count()).select_from(Q).where(Q.campaign_id == campaign_id))
    ins = writers._insert(s.connection(), Q).on_conflict_do_nothing(index_elements=["campaign_id", "geometry_id"])
    s.execute(ins, rows)
    return s.scalar(sa.select(sa.func.count()).select_from(Q).where(Q.campaign_id == campaign_id)) - before


def waiting(campaign_id: int, *, generation_id: int | None = None, initial: bool | None = None) -> sa.Select:
    """Entries not labelled yet (queued or dispatched), optionally of one selecting
    generation and of the initial run (True) or of sampling (False)."""
    q = sa.select(Q).where(Q.campaign_id == campaign_id, Q.status.in_(WAITING))
    if generation_id is not None:
        q = q.where(Q.generation_id == generation_id)
    if initial is not None:
        kind = (sa.select(m.SamplingRun.kind).join(m.Sample, m.Sample.sampling_run_id == m.SamplingRun.id)
                .where(m.Sample.id == Q.sample_id).scalar_subquery())
        q = q.where(kind == "initial") if initial else q.where(kind != "initial")
    return q


def take(s: Session, select: sa.Select, *, limit: int | None = None, by_priority: bool = False) -> list[m.QueueEntry]:
    """Entries of `select` in order (sample order, or highest priority first), marked dispatched."""
    order = (Q.priority.desc().nulls_last(), Q.sample_id, Q.id) if by_priority else (Q.sample_id, Q.id)
    entries = list(s.scalars(select.order_by(*order).limit(limit)))
    mark_dispatched(s, entries)
    return entries


def mark_dispatched(s: Session, entries: Sequence[m.QueueEntry]) -> None:
    if entries:
        s.execute(sa.update(Q).where(Q.id.in_([e.id for e in entries])).values(status="dispatched", updated_at=_now()))


def release(s: Session, campaign_id: int) -> int:
    """Dispatched entries back to queued (an orchestrator that took them is gone)."""
    return s.execute(sa.update(Q).where(Q.campaign_id == campaign_id, Q.status == "dispatched")
                     .values(status="queued", updated_at=_now())).rowcount


def close(s: Session, campaign_id: int, method_id: int, geometry_ids: Sequence[int], task_id: int | None) -> None:
    """Entries of these geometries labelled: linked to their label and the task that made it."""
    if not geometry_ids:
        return
    labels = dict(s.execute(sa.select(m.Label.geometry_id, sa.func.max(m.Label.id)).where(
        m.Label.method_id == method_id, m.Label.geometry_id.in_(list(geometry_ids)))
        .group_by(m.Label.geometry_id)).all())
    for gid, lid in labels.items():
        s.execute(sa.update(Q).where(Q.campaign_id == campaign_id, Q.geometry_id == gid)
                  .values(status="labelled", label_id=lid, task_id=task_id, updated_at=_now()))


def rescore(s: Session, campaign_id: int, generation_id: int, scores: dict[int, float], trust_lo: float) -> int:
    """New priorities (calibrated σ_F, eV/Å) from generation `generation_id`'s ensemble for
    queued entries (by entry id); those below trust_lo are dropped. Returns how many."""
    dropped = 0
    for entry_id, sigma in scores.items():
        values = {"priority": sigma, "scored_by_id": generation_id, "updated_at": _now()}
        if sigma < trust_lo:
            values.update(status="dropped", dropped_by_id=generation_id,
                          reason=f"σ_F {sigma:.3g} eV/Å below trust_lo {trust_lo:g} for this generation's ensemble")
            dropped += 1
        s.execute(sa.update(Q).where(Q.id == entry_id, Q.status == "queued").values(**values))
    return dropped


def counts(s: Session, campaign_id: int) -> dict[str, int]:
    return dict(s.execute(sa.select(Q.status, sa.func.count()).where(Q.campaign_id == campaign_id)
                          .group_by(Q.status)).all())
