"""Sample: run every sampler of the spec on seeds drawn from the campaign's labelled
geometries, with the generation's ensemble, and record what each run proposed.

Seeds: `recent_seed_fraction` of each sampler's seeds from the latest labelled selection
(the frontier of the training set), the rest uniformly from all labelled training
geometries (never the held-out ones); for condensed phases the periodic starting frames
themselves, whose candidates are carved into clusters (`alflow.sampling.condensed`). The
draws depend only on the campaign seed and generation, so a campaign is reproducible. MD
walkers stop at the generation's trust_hi (calibrated eV/Å, turned back into σ_F).
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.engine.context import CampaignContext, key, seed_of
from alflow.engine.results import Outcome, SampleRequest, jsonable
from alflow.engine.scheduler import WorkItem

BATCH = {"md": 8}  # seeds per sampling task (other samplers: DEFAULT_BATCH)
DEFAULT_BATCH = 16


def recent_label_geometry_ids(s: Session, ctx: CampaignContext) -> set[int]:
    """Geometries of the latest selection that has been labelled: the frontier of the
    training set (before any: the initial geometries)."""
    rows = s.execute(
        sa.select(m.Generation.idx, m.SamplingRun.kind != "initial", m.Sample.geometry_id)
        .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
        .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
        .join(m.Label, m.Label.geometry_id == m.Sample.geometry_id)
        .where(m.Generation.campaign_id == ctx.id, m.Sample.selected.is_(True),
               m.Label.method_id == ctx.method_id, m.Label.status == "ok")).all()
    # generation 0 holds both the initial geometries and its own selections: the latter are newer
    latest = max(((idx, sampled) for idx, sampled, _ in rows), default=None)
    return {gid for idx, sampled, gid in rows if (idx, sampled) == latest}


def _periodic_frames(s: Session, ctx: CampaignContext) -> list[m.Geometry]:
    return s.scalars(
        sa.select(m.Geometry).join(m.Sample, m.Sample.geometry_id == m.Geometry.id)
        .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
        .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
        .where(m.Generation.campaign_id == ctx.id, m.SamplingRun.kind == "initial",
               m.Sample.reason == "carved")).all()


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    spec = ctx.spec
    rng = np.random.default_rng(seed_of("sample", spec.seed, gen.idx))
    with ctx.Session() as s:
        ref, _ = ctx.ensemble(s, gen.id)
        pool = [(geo.id, ctx.atoms(geo), lab.energy) for lab, geo in ctx.labels(s) if ctx.split(geo) != "test"]
        e_pa = tuple(float(e / len(a)) for _, a, e in pool)
        if spec.carving.enabled and (frames := _periodic_frames(s, ctx)):
            pool = [(g.id, ctx.atoms(g), None) for g in frames]
        recent_ids = recent_label_geometry_ids(s, ctx)
        recent = [i for i, (gid, _, _) in enumerate(pool) if gid in recent_ids]
        done = set(s.scalars(sa.select(m.Task.key).where(
            m.Task.generation_id == gen.id, m.Task.kind == "sample", m.Task.status == "done")))
        trust_hi = ctx.thresholds(s, gen.id)[1] / ctx.calibration_scale(s, gen.id)
    carving = spec.carving if spec.carving.enabled else None
    items = []
    for k, sampler in enumerate(spec.samplers):
        n_seeds = sampler.walkers if sampler.kind == "md" else sampler.seeds
        n_recent = round(sampler.recent_seed_fraction * n_seeds) if recent else 0
        picks = rng.choice(len(pool), size=n_seeds - n_recent, replace=n_seeds - n_recent > len(pool))
        if n_recent:
            picks = np.concatenate([rng.choice(recent, size=n_recent, replace=n_recent > len(recent)), picks])
        batch = BATCH.get(sampler.kind, DEFAULT_BATCH)
        for b in range(0, len(picks), batch):
            chosen = [pool[i] for i in picks[b : b + batch]]
            item_key = key("sample", gen.id, k, b, list(ref.sha256s))
            if item_key in done:
                continue
            request = SampleRequest(
                sampler_index=k, sampler=sampler, ensemble=ref, seeds=tuple(a for _, a, _ in chosen),
                seed_geometry_ids=tuple(g for g, _, _ in chosen),
                rng_seed=seed_of("rng", spec.seed, gen.idx, k, b), train_energies_per_atom=e_pa,
                trust_hi_sigma=trust_hi, carving=carving,
                carving_radius=spec.carving_radius if carving else None)
            items.append(WorkItem(kind="sample", role="sample", key=item_key, request=request,
                                  generation_id=gen.id,
                                  resources={"sampler": sampler.kind, "seeds": len(chosen)}))
    return items


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if not outcome.ok:
        return
    req, res = item.request, outcome.result
    if s.scalar(sa.select(m.SamplingRun.id).where(m.SamplingRun.task_id == outcome.task_id)):
        return  # recorded already
    seed_ids = list(req.seed_geometry_ids)
    cands = res.candidates
    run = m.SamplingRun(
        generation_id=gen.id, kind=req.sampler.kind, task_id=outcome.task_id, model_generation_id=gen.id,
        n_frames=len(cands), seed_geometry_id=seed_ids[0] if len(set(seed_ids)) == 1 else None,
        params={**req.sampler.model_dump(mode="json"), "rng_seed": req.rng_seed,
                "seed_geometry_ids": seed_ids,
                "records": {"walkers": [w.to_json() for w in res.walkers]} if res.walkers else {}})
    s.add(run)
    s.flush()
    if not cands:
        return
    gids = writers.write_geometries(s, [writers.geometry_row(c.atoms, c.relation) for c in cands])
    edges, samples = [], []
    for c, gid in zip(cands, gids, strict=True):
        parent = gids[c.carved_from.frame] if c.carved_from is not None else seed_ids[c.parent]
        if parent != gid:
            edges.append({"child_id": gid, "parent_id": parent, "relation": c.relation,
                          "sampling_run_id": run.id, "info": jsonable({"step": c.step, **(c.info or {})})})
        samples.append({
            "sampling_run_id": run.id, "geometry_id": gid, "step": c.step,
            "energy_mean": c.energy_mean, "sigma_f2": c.sigma_f2, "sigma_f2_initial": c.sigma_f2_initial,
            "u_max": c.u_max, "u_mean": c.u_mean, "log_p": c.log_p,
            "atomic_uncertainty": c.atomic_uncertainty,
            "carve_center": None if c.carved_from is None else c.carved_from.centre,
            "carve_map": (None if c.carved_from is None
                          else np.asarray(c.carved_from.source_indices, dtype=np.int64)),
            "selected": False, "reason": None if c.carved_into is None else "carved",
        })
    if edges:
        ins = writers._insert(s.connection(), m.GeometryEdge).on_conflict_do_nothing()
        s.execute(ins, list({(e["child_id"], e["parent_id"]): e for e in edges}.values()))
    s.execute(sa.insert(m.Sample), samples)


def finish(ctx: CampaignContext, gen: m.Generation) -> None:
    return None
