"""Rescore (streaming): a new ensemble judges the frames still waiting in the label queue.

Its calibrated σ_F becomes each queued entry's priority, so the oracle takes what the
newest model is least sure of first; an entry it now finds below trust_lo is dropped, and
the queue row says by which generation and at which σ_F. Entries already handed to the
oracle are left alone (their labels are being paid for).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.engine import queue
from alflow.engine.context import CampaignContext, key
from alflow.engine.results import Outcome, RescoreRequest
from alflow.engine.scheduler import WorkItem


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    with ctx.Session() as s:
        rows = s.execute(queue.waiting(ctx.id).where(queue.Q.status == "queued")
                         .with_only_columns(queue.Q.id, m.Geometry)
                         .join(m.Geometry, m.Geometry.id == queue.Q.geometry_id)
                         .order_by(queue.Q.id)).all()
        ref, _ = ctx.ensemble(s, gen.id)
    if not rows:
        return []
    ids = tuple(int(i) for i, _ in rows)
    request = RescoreRequest(ref, tuple(ctx.atoms(g) for _, g in rows), ids)
    return [WorkItem(kind="rescore", role="sample", key=key("rescore", gen.id, list(ids)), request=request,
                     generation_id=gen.id, resources={"entries": len(ids)})]


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if not outcome.ok:
        return  # the old priorities stand
    scale = ctx.calibration_scale(s, gen.id)
    trust_lo = ctx.thresholds(s, gen.id)[0]
    scores = {i: scale * float(sig) for i, sig in zip(item.request.entry_ids, outcome.result.sigma_f, strict=True)}
    dropped = queue.rescore(s, ctx.id, gen.id, scores, trust_lo)
    if dropped:
        ctx.emit(message=f"generation {gen.idx}'s ensemble dropped {dropped} queued frame(s) below trust_lo")


def finish(ctx: CampaignContext, gen: m.Generation) -> None:
    return None
