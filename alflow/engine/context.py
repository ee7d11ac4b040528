"""A running campaign as the steps see it: its identity, settings, places, and the database
questions more than one step asks (which labels the campaign has, which split a geometry is
in, which ensemble a generation trained, how its uncertainty is calibrated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from alflow.db import models as m
from alflow.db import writers
from alflow.engine.artifacts import ArtifactStore
from alflow.engine.results import EnsembleRef
from alflow.spec import CampaignSpec


# origins of geometries recorded only to evaluate on (`create.py`): held out in every generation
REFERENCE_MD_ORIGIN = "reference-md"
PROFILE_ORIGIN = "profile"
HELD_OUT_ORIGINS = frozenset({REFERENCE_MD_ORIGIN, PROFILE_ORIGIN})


def key(*parts: Any) -> str:
    """A stable sha256 of JSON-able parts: idempotency keys and seeds."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def seed_of(*parts: Any) -> int:
    return int(key(*parts)[:8], 16)


@dataclass(frozen=True)
class Status:
    """What the live display shows; replaced (never mutated) as the campaign goes."""

    campaign: str = ""
    generation: int = 0
    step: str = ""
    done: int = 0
    running: int = 0
    failed: int = 0
    oracle_cpu_s: float = 0.0
    force_mae: float | None = None
    buckets: dict[str, int] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[Status], None]


@dataclass
class CampaignContext:
    id: int
    name: str
    spec: CampaignSpec
    Session: sessionmaker[Session]
    workdir: Path
    site_name: str | None
    method_id: int
    method_key: str
    # methods of imported initial_labels the campaign trains on beside its oracle's
    label_method_ids: tuple[int, ...] = ()
    oracle_workers: int | None = None
    validate_role: str = "sample"  # a site's own 'validate' executor when it has one
    progress: Progress | None = None
    status: Status = field(default_factory=Status)

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.workdir / "artifacts")

    @property
    def run_dir(self) -> Path:
        """Where workers keep their results durable (`durable.py`)."""
        return self.workdir

    def emit(self, **changes: Any) -> None:
        """Update the display; a field that does not exist is an error, not a new attribute."""
        self.status = dataclasses.replace(self.status, **changes)
        if self.progress is not None:
            self.progress(self.status)

    def gen_dir(self, gen: m.Generation) -> Path:
        d = self.workdir / f"gen-{gen.idx:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------------ questions
    def split(self, geo: m.Geometry) -> str:
        """'test' (held out for evaluation: initial geometries only), 'val' or 'train'."""
        from alflow.potentials.split import in_test_set, in_validation

        if geo.origin in HELD_OUT_ORIGINS:
            return "test"  # the reference-MD test set and the profile path: never trained on
        if geo.origin.startswith("initial") and in_test_set(geo.content_hash, self.spec.evaluation.test_fraction):
            return "test"
        return "val" if in_validation(geo.content_hash, self.spec.training.val_fraction) else "train"

    def chosen_geometries(self) -> sa.Select:
        """Geometries this campaign chose to label (selected samples of any generation)."""
        return (sa.select(m.Sample.geometry_id)
                .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
                .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
                .where(m.Generation.campaign_id == self.id, m.Sample.selected.is_(True)))

    def labels(self, s: Session) -> list[tuple[m.Label, m.Geometry]]:
        """Every successful label of a geometry the campaign chose, with its geometry, in
        content-hash order: label ids follow the order in which oracle tasks finished, and
        seeds and training batches drawn from this list must not, or one campaign seed
        gives different campaigns."""
        return [tuple(r) for r in s.execute(
            sa.select(m.Label, m.Geometry).join(m.Geometry, m.Geometry.id == m.Label.geometry_id)
            .where(m.Label.method_id.in_((self.method_id, *self.label_method_ids)), m.Label.status == "ok",
                   m.Label.geometry_id.in_(self.chosen_geometries()))
            .order_by(m.Geometry.content_hash)).all()]

    def initial_geometries(self, s: Session, reason: str | None = None) -> list[m.Geometry]:
        """Geometries the campaign recorded at creation (selected; with `reason`, only those
        so recorded, e.g. "profile"), in the order they were recorded."""
        q = (sa.select(m.Geometry).join(m.Sample, m.Sample.geometry_id == m.Geometry.id)
             .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
             .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
             .where(m.Generation.campaign_id == self.id, m.SamplingRun.kind == "initial",
                    m.Sample.selected.is_(True)).order_by(m.Sample.id))
        if reason is not None:
            q = q.where(m.Sample.reason == reason)
        return list(s.scalars(q))

    def reference_start(self, s: Session):
        """Where the validation's reference trajectory starts: the campaign's starting
        geometry with the smallest content hash, or, for a campaign started from labelled
        files alone, the imported geometry with the smallest (as `create.py` chose it)."""
        from alflow.geometry import atoms_hash

        atoms = [self.atoms(g) for g in self.initial_geometries(s) if g.origin.startswith("initial")]
        if not atoms:
            atoms = [self.atoms(g) for g in s.scalars(
                sa.select(m.Geometry).join(m.Sample, m.Sample.geometry_id == m.Geometry.id)
                .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
                .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
                .where(m.Generation.campaign_id == self.id, m.SamplingRun.kind == "initial-labels"))]
        return min(atoms, key=atoms_hash)

    def oracle_calls(self, s: Session) -> int:
        """Labels (ok or failed) made by this campaign's tasks: the oracle budget's count."""
        return int(s.scalar(sa.select(sa.func.count()).select_from(m.Label).join(m.Task)
                            .where(m.Task.campaign_id == self.id)) or 0)

    def oracle_cpu_s(self, s: Session) -> float:
        return float(s.scalar(sa.select(sa.func.coalesce(sa.func.sum(m.Label.cpu_s), 0.0))
                              .join(m.Task, m.Task.id == m.Label.task_id)
                              .where(m.Task.campaign_id == self.id)) or 0.0)

    def ensemble(self, s: Session, gen_id: int) -> tuple[EnsembleRef, list[int]]:
        """The generation's members (checkpoint paths in the artifact store) and model ids."""
        rows = s.execute(sa.select(m.Model.id, m.Artifact.sha256).join(
            m.Artifact, m.Artifact.id == m.Model.checkpoint_id).where(
            m.Model.generation_id == gen_id).order_by(m.Model.member)).all()
        store = self.store
        ref = EnsembleRef(tuple(str(store.path_for(sha)) for _, sha in rows), tuple(sha for _, sha in rows))
        return ref, [mid for mid, _ in rows]

    def ensemble_eval(self, s: Session, gen_id: int) -> m.ModelEval | None:
        return s.scalars(sa.select(m.ModelEval).where(
            m.ModelEval.generation_id == gen_id, m.ModelEval.model_id.is_(None))
            .order_by(m.ModelEval.id)).first()

    def calibration_scale(self, s: Session, gen_id: int) -> float:
        row = self.ensemble_eval(s, gen_id)
        scale = None if row is None else row.calibration_scale
        return float(scale) if scale and np.isfinite(scale) and scale > 0 else 1.0

    def thresholds(self, s: Session, gen_id: int) -> tuple[float, float]:
        """The generation's trust_lo / trust_hi in calibrated eV/Å. Percentile thresholds
        are percentiles of the calibrated σ_F of the frames the ensemble was trained on
        (recorded by the evaluate step), so they exist even without a test set."""
        from alflow.sampling.selection import resolve_thresholds

        sel = self.spec.selection
        if sel.thresholds == "absolute":
            return float(sel.trust_lo), float(sel.trust_hi)
        row = self.ensemble_eval(s, gen_id)
        sigma = np.asarray((row.details or {}).get("sigma_f_train") or [] if row else [], float)
        return resolve_thresholds(sel.trust_lo, sel.trust_hi, "percentile",
                                  sigma * self.calibration_scale(s, gen_id))

    def latest_generation(self, s: Session) -> m.Generation:
        return s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == self.id)
                         .order_by(m.Generation.idx.desc()).limit(1)).one()

    def atoms(self, geo: m.Geometry):
        return writers.atoms_from_geometry(geo)
