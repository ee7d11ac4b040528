"""Validate: NN-MD with the generation's ensemble from fixed starts (the held-out geometries,
else the initial ones): stability time and h(r) error against a cached reference run
(`alflow.validation`). With `validation.reference: oracle` the campaign's own ASE
calculator runs the reference. Nothing waits for it: the campaign goes on to sampling, and
the result is recorded whenever it arrives (on the site's `validate` executor where it has
one, so it does not take the sampler's worker either).
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.engine.context import CampaignContext, key
from alflow.engine.results import Outcome, ValidateRequest, jsonable
from alflow.engine.scheduler import WorkItem


def _settings(ctx: CampaignContext):
    v = ctx.spec.validation
    if v.reference != "oracle":
        return v
    oracle = ctx.spec.oracle  # an ASE oracle: the spec refuses "oracle" for any other kind
    return v.model_copy(update={"reference": oracle.calculator, "reference_settings": dict(oracle.settings)})


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    v = ctx.spec.validation
    if not v.enabled:
        return []
    with ctx.Session() as s:
        ref, _ = ctx.ensemble(s, gen.id)
        rows = ctx.labels(s)
        test = [geo for _, geo in rows if ctx.split(geo) == "test"]
        pool = test or [geo for _, geo in rows if geo.origin == "initial"]
        starts = tuple(ctx.atoms(g) for g in pool[: v.starts])
    if not starts:
        return []
    request = ValidateRequest(ref, starts, _settings(ctx), str(ctx.workdir / "validation-reference"),
                              ctx.spec.seed)
    return [WorkItem(kind="validate", role=ctx.validate_role, key=key("validate", gen.id, ref.sha256s),
                     request=request, generation_id=gen.id)]


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if not outcome.ok:
        return
    report = outcome.result.report
    row = ctx.ensemble_eval(s, gen.id)
    if row is None:
        row = m.ModelEval(generation_id=gen.id, model_id=None, eval_set="validation-md", n_frames=0)
        s.add(row)
    row.stability_time_fs = report.stability_time_fs
    row.hr_error = report.hr_error
    row.details = {**(row.details or {}), "validation": jsonable([asdict(r) for r in report.starts])}


def finish(ctx: CampaignContext, gen: m.Generation) -> None:
    return None
