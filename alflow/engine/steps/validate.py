"""Validate: `validation.walkers` NN-MD runs with the generation's ensemble from distinct
frames of the campaign's reference trajectory (`alflow.validation`, Fu et al. protocol):
median stability time, survival fraction and h(r) error, with their spread. The reference
trajectory (cached by content; `validation.reference: oracle` runs the campaign's own
oracle) starts from the starting geometry with the smallest content hash. Nothing waits
for it: the campaign goes on to sampling, and the result is recorded whenever it arrives
(on the site's `validate` executor where it has one, so it does not take the sampler's
worker either).
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.engine.context import CampaignContext, key
from alflow.engine.results import Outcome, ValidateRequest, jsonable
from alflow.engine.scheduler import WorkItem


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    v = ctx.spec.validation
    if not v.enabled:
        return []
    with ctx.Session() as s:
        ref, _ = ctx.ensemble(s, gen.id)
        start = ctx.reference_start(s)
    request = ValidateRequest(ref, start, v, ctx.spec.oracle, str(ctx.workdir / "validation-reference"),
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
    row.stability_time_fs = report.stability_median_fs
    row.stability_iqr_fs = report.stability_iqr_fs
    row.survival_fraction = report.survival_fraction
    row.hr_error = report.hr_error
    row.hr_error_std = report.hr_error_std
    row.details = {**(row.details or {}), "validation": jsonable({
        "run_fs": report.run_fs, "reference": report.reference,
        "reference_sha256": report.reference_sha256, "walkers": [asdict(w) for w in report.walkers]})}


def finish(ctx: CampaignContext, gen: m.Generation) -> None:
    return None
