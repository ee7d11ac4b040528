"""Train: freeze the generation's training set, then train M ensemble members in parallel.

The training set is every successful label the campaign chose, split by geometry hash into
train / val / test (`CampaignContext.split`), recorded once per generation (`training_set`
and `training_set_label`), and written to `gen-NNN/train.npz` / `test.npz`. Members differ
by seed; from generation 1 they are warm-started from the previous generation's member of
the same index (`training.warm_start`). A member with a model row is never retrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from alflow.db import models as m
from alflow.db import writers
from alflow.engine.context import PROFILE_ORIGIN, CampaignContext, key, seed_of
from alflow.engine.datasets import Frames, save_frames
from alflow.engine.results import Outcome, TrainRequest
from alflow.engine.scheduler import WorkItem
from alflow.errors import InputError


@dataclass(frozen=True)
class TrainFacts:
    n_members: int


def _frames(ctx: CampaignContext, rows: list[tuple[m.Label, m.Geometry]]) -> Frames:
    return Frames(
        atoms=[ctx.atoms(g) for _, g in rows],
        energies=np.array([lab.energy for lab, _ in rows], dtype=float),
        forces=[lab.forces.reshape(-1, 3) for lab, _ in rows],
        stresses=[None if lab.stress is None else lab.stress.reshape(3, 3) for lab, _ in rows],
        ids=np.array([lab.id for lab, _ in rows], dtype=np.int64))


def training_set(ctx: CampaignContext, gen: m.Generation) -> tuple[int, Path, Path, int]:
    """(training set id, train+val file, test file, number of test frames).

    Frozen on first use: a generation has one training set, made from the labels there are
    when its training is first planned, and every later call (evaluate, a resumed or retried
    member) gets that same set even if labels have arrived since (they do, in streaming
    mode). The files are rewritten from the database whenever asked (derived data)."""
    with ctx.Session.begin() as s:
        rows = ctx.labels(s)
        ts = s.scalars(sa.select(m.TrainingSet).where(m.TrainingSet.generation_id == gen.id)
                       .order_by(m.TrainingSet.id)).first()
        if ts is None:
            splits = [ctx.split(geo) for _, geo in rows]
            if all(sp == "test" for sp in splits):
                raise InputError("no successful labels to train on (every label failed or was held out)",
                                 source=f"campaign {ctx.name}")
            members = sorted((lab.id, sp) for (lab, _), sp in zip(rows, splits, strict=True))
            ts = m.TrainingSet(campaign_id=ctx.id, generation_id=gen.id,
                               sha256=key("training_set", members),
                               n_train=splits.count("train"), n_val=splits.count("val"),
                               n_test=splits.count("test"))
            s.add(ts)
            s.flush()
            s.execute(sa.insert(m.TrainingSetLabel), [
                {"training_set_id": ts.id, "label_id": lab_id, "split": sp} for lab_id, sp in members])
        else:
            frozen = dict(s.execute(sa.select(m.TrainingSetLabel.label_id, m.TrainingSetLabel.split)
                                    .where(m.TrainingSetLabel.training_set_id == ts.id)).all())
            rows = [r for r in rows if r[0].id in frozen]
            splits = [frozen[lab.id] for lab, _ in rows]
        fit = [r for r, sp in zip(rows, splits, strict=True) if sp != "test"]
        test = [r for r, sp in zip(rows, splits, strict=True)
                if sp == "test" and r[1].origin != PROFILE_ORIGIN]
        if not fit:
            raise InputError("no successful labels to train on (every label failed or was held out)",
                             source=f"campaign {ctx.name}")
        d = ctx.gen_dir(gen)
        return (ts.id, save_frames(d / "train.npz", _frames(ctx, fit)),
                save_frames(d / "test.npz", _frames(ctx, test)), len(test))


def profile_set(ctx: CampaignContext, gen: m.Generation) -> Path | None:
    """`gen-NNN/profile.npz`: the profile path's labelled frames in path order, or None
    (no profile, or a point of it has no successful label: a path with a hole is no path)."""
    with ctx.Session() as s:
        path = ctx.initial_geometries(s, reason="profile")
        if not path:
            return None
        by_geo = {geo.id: (lab, geo) for lab, geo in ctx.labels(s) if geo.origin == PROFILE_ORIGIN}
        if any(g.id not in by_geo for g in path):
            return None
        return save_frames(ctx.gen_dir(gen) / "profile.npz", _frames(ctx, [by_geo[g.id] for g in path]))


def plan(ctx: CampaignContext, gen: m.Generation) -> list[WorkItem]:
    ts_id, train_file, _, _ = training_set(ctx, gen)
    with ctx.Session() as s:
        trained = set(s.scalars(sa.select(m.Model.member).where(m.Model.generation_id == gen.id)))
        previous: dict[int, tuple[Path, str]] = {}
        if gen.idx > 0 and ctx.spec.training.warm_start:
            prev = s.execute(
                sa.select(m.Model.member, m.Artifact.sha256)
                .join(m.Artifact, m.Artifact.id == m.Model.checkpoint_id)
                .join(m.Generation, m.Generation.id == m.Model.generation_id)
                .where(m.Generation.campaign_id == ctx.id, m.Generation.idx == gen.idx - 1)).all()
            previous = {mem: (ctx.store.path_for(sha), sha) for mem, sha in prev}
    items = []
    for member in range(ctx.spec.model.ensemble_size):
        if member in trained:
            continue
        seed = seed_of("member", ctx.spec.seed, gen.idx, member)
        init, init_sha = previous.get(member, (None, None))
        request = TrainRequest(member=member, dataset=str(train_file), model=ctx.spec.model,
                               training=ctx.spec.training, seed=seed,
                               workdir=str(ctx.gen_dir(gen) / f"member-{member}"),
                               init_checkpoint=None if init is None else str(init), init_sha256=init_sha)
        items.append(WorkItem(kind="train", role="train", key=key("train", ts_id, member, seed),
                              request=request, generation_id=gen.id, resources={"member": member},
                              tag=ts_id))
    return items


def _artifact(s: Session, stored, kind: str) -> int:
    ins = (writers._insert(s.connection(), m.Artifact)
           .values(sha256=stored.sha256, uri=stored.uri, kind=kind, size_bytes=stored.size_bytes)
           .on_conflict_do_nothing(index_elements=["sha256"]))
    s.execute(ins)
    return s.scalar(sa.select(m.Artifact.id).where(m.Artifact.sha256 == stored.sha256))


def record(s: Session, ctx: CampaignContext, gen: m.Generation, item: WorkItem, outcome: Outcome) -> None:
    if not outcome.ok:
        return  # the task row says why; finish() counts the members that did train
    res = outcome.result
    if s.scalar(sa.select(m.Model.id).where(m.Model.generation_id == gen.id, m.Model.member == res.member)):
        return  # recorded already (a result read back twice)
    stored = ctx.store.put(res.checkpoint, res.sha256)
    metrics = res.metrics
    s.add(m.Model(generation_id=gen.id, member=res.member, training_set_id=item.tag,
                  seed=item.request.seed,
                  config={"model": ctx.spec.model.model_dump(mode="json"),
                          "training": ctx.spec.training.model_dump(mode="json")},
                  checkpoint_id=_artifact(s, stored, "checkpoint"), task_id=outcome.task_id,
                  val_energy_mae=metrics.get("val_energy_mae_per_atom"),
                  val_force_mae=metrics.get("val_force_mae"), epochs=metrics.get("epochs"),
                  metrics=metrics))


def finish(ctx: CampaignContext, gen: m.Generation) -> TrainFacts:
    with ctx.Session() as s:
        n = s.scalar(sa.select(sa.func.count()).select_from(m.Model).where(m.Model.generation_id == gen.id))
    return TrainFacts(int(n or 0))
