"""Evaluate: every member's and the ensemble's error on the campaign's fixed held-out set,
and the σ_F → error calibration that turns the ensemble's spread into eV/Å.

The held-out set never changes within a campaign (initial geometries chosen by hash), so
errors are comparable across generations. The ensemble's σ_F on the frames it was trained
on is recorded too: percentile thresholds are percentiles of it (`CampaignContext.thresholds`). With
`evaluation.profile`, the ensemble's energies along the path give the profile MAE and the
barrier error (`alflow.validation.profile_errors`).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.engine.context import CampaignContext, key
from alflow.engine.results import EvaluateRequest, Outcome, jsonable
from alflow.engine.scheduler import WorkItem
from alflow.engine.steps.train import profile_set, training_set


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    _, fit_file, test_file, n_test = training_set(ctx, gen)
    with ctx.Session() as s:
        ref, _ = ctx.ensemble(s, gen.id)
    profile = profile_set(ctx, gen)
    request = EvaluateRequest(ref, str(test_file) if n_test else None, str(fit_file),
                              None if profile is None else str(profile))
    return [WorkItem(kind="evaluate", role="sample", key=key("evaluate", gen.id, ref.sha256s),
                     request=request, generation_id=gen.id)]


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if not outcome.ok:
        return
    _, model_ids = ctx.ensemble(s, gen.id)
    ev = outcome.result.evaluation
    s.execute(sa.delete(m.ModelEval).where(m.ModelEval.generation_id == gen.id))
    details = {"sigma_f_train": list(outcome.result.sigma_f_train)}
    prof = outcome.result.profile
    profile = {} if prof is None else {"profile_mae": prof.mae, "barrier_error": prof.barrier_error}
    if prof is not None:
        details["profile"] = asdict(prof)
    if ev is None:  # no held-out frames: only what the thresholds need
        s.add(m.ModelEval(generation_id=gen.id, model_id=None, eval_set="test", n_frames=0,
                          details=jsonable(details), **profile))
        return
    cal = ev.calibration.to_dict() if ev.calibration is not None else {"error": ev.calibration_error}
    details.update(calibration=cal, sigma_f=ev.sigma_f, frame_error=ev.frame_error)
    e = ev.ensemble
    s.add(m.ModelEval(generation_id=gen.id, model_id=None, eval_set="test", n_frames=ev.n_frames,
                      energy_mae=e.energy_mae, force_mae=e.force_mae, force_rmse=e.force_rmse,
                      calibration_scale=None if ev.calibration is None else ev.calibration.scale,
                      spearman=None if ev.calibration is None else _finite(ev.calibration.spearman),
                      miscalibration_area=_finite(ev.miscalibration_area), details=jsonable(details),
                      **profile))
    for mid, mem in zip(model_ids, ev.members, strict=True):
        s.add(m.ModelEval(generation_id=gen.id, model_id=mid, eval_set="test", n_frames=ev.n_frames,
                          energy_mae=mem.energy_mae, force_mae=mem.force_mae, force_rmse=mem.force_rmse))
    ctx.emit(force_mae=e.force_mae)


def finish(ctx: CampaignContext, gen: m.Generation) -> None:
    return None
