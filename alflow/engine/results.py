"""What crosses the Parsl seam: one frozen request type and one frozen result type per app.

The orchestrator builds a request, `apps.execute` runs it on a worker and returns the
matching result; the steps that record results read attributes, never string keys. Every
result carries the same `Timing` (when and where it ran), which is what the task table
stores. Requests hold paths and small data (settings objects, a batch of Atoms); large
data travel as files (`datasets.py`, checkpoints in the artifact store).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: the orchestrator need not import torch to read results
    from ase import Atoms

    from alflow.oracles.base import Label
    from alflow.potentials.metrics import EnsembleEvaluation
    from alflow.sampling.base import Candidate
    from alflow.sampling.md import WalkerRecord
    from alflow.spec import CarvingSpec, ModelSpec, SamplerSpec, TrainingSpec, ValidationSpec
    from alflow.validation import ProfileErrors, ValidationReport


@dataclass(frozen=True)
class Timing:
    started: float  # epoch seconds
    finished: float
    host: str
    pid: int
    slurm_job_id: str | None = None

    @classmethod
    def since(cls, started: float) -> Timing:
        return cls(started, time.time(), socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"))


@dataclass(frozen=True)
class Envelope:
    """How to run one attempt: its task row, idempotency key, run directory, time limit."""

    task_id: int
    key: str
    run_dir: str
    time_limit_s: float | None = None
    enforce_limit: bool = True  # False where the app runs inside the orchestrator (tests)


# ------------------------------------------------------------------------------- requests
@dataclass(frozen=True, eq=False)
class LabelJob:
    geometry_id: int
    label_key: str  # sha256(content hash + method key): where the result is kept durable
    atoms: Atoms


@dataclass(frozen=True, eq=False)
class LabelRequest:
    jobs: tuple[LabelJob, ...]
    oracle: Any  # a spec.OracleSpec


@dataclass(frozen=True)
class TrainRequest:
    member: int
    dataset: str  # .npz from datasets.py
    model: ModelSpec
    training: TrainingSpec
    seed: int
    workdir: str
    init_checkpoint: str | None = None
    init_sha256: str | None = None


@dataclass(frozen=True)
class EnsembleRef:
    checkpoints: tuple[str, ...]
    sha256s: tuple[str, ...]


@dataclass(frozen=True)
class EvaluateRequest:
    ensemble: EnsembleRef
    test_dataset: str | None  # held-out frames (None: the campaign has none)
    fit_dataset: str  # the frames it was trained on: their σ_F sets percentile thresholds
    profile_dataset: str | None = None  # evaluation.profile's frames, in path order


@dataclass(frozen=True, eq=False)
class ValidateRequest:
    ensemble: EnsembleRef
    reference_start: Atoms  # where the reference trajectory starts
    settings: ValidationSpec
    oracle: Any  # the campaign's oracle spec (settings.reference == "oracle" runs it)
    cache_dir: str
    rng_seed: int


@dataclass(frozen=True, eq=False)
class SampleRequest:
    sampler_index: int
    sampler: SamplerSpec
    ensemble: EnsembleRef
    seeds: tuple[Atoms, ...]
    seed_geometry_ids: tuple[int, ...]
    rng_seed: int
    train_energies_per_atom: tuple[float, ...]
    trust_hi_sigma: float
    carving: CarvingSpec | None = None
    carving_radius: float | None = None


@dataclass(frozen=True, eq=False)
class RescoreRequest:
    ensemble: EnsembleRef
    geometries: tuple[Atoms, ...]
    entry_ids: tuple[int, ...]  # label queue entries, in the order of `geometries`


@dataclass(frozen=True)
class WarmupRequest:
    role: str
    oracle: Any = None


# -------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class LabelledGeometry:
    geometry_id: int
    label: Label
    task_id: int | None = None  # the attempt that made the oracle call


@dataclass(frozen=True, eq=False)
class LabelBatch:
    labels: tuple[LabelledGeometry, ...]
    timing: Timing


@dataclass(frozen=True)
class TrainedMember:
    member: int
    checkpoint: str
    sha256: str
    metrics: dict[str, Any]
    timing: Timing


@dataclass(frozen=True, eq=False)
class Evaluation:
    evaluation: EnsembleEvaluation | None  # on the held-out frames
    sigma_f_train: tuple[float, ...]  # σ_F of each frame the ensemble was trained on
    timing: Timing
    profile: ProfileErrors | None = None


@dataclass(frozen=True)
class Validation:
    report: ValidationReport
    timing: Timing


@dataclass(frozen=True, eq=False)
class SamplingResult:
    sampler_index: int
    candidates: tuple[Candidate, ...]
    walkers: tuple[WalkerRecord, ...]
    timing: Timing


@dataclass(frozen=True)
class Rescore:
    sigma_f: tuple[float, ...]  # uncalibrated σ_F of each geometry (eV/Å)
    timing: Timing


@dataclass(frozen=True)
class Warmup:
    role: str
    timing: Timing


@dataclass(frozen=True)
class Outcome:
    """A work item's final word: its result, or why it failed (after any retries)."""

    task_id: int
    result: Any | None
    error: str | None = None  # a states.TaskError value
    message: str | None = None
    harvested: bool = False  # read back from the run directory, not from the executor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result is not None


def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays, tuples and paths -> JSON-able Python values; NaN/inf -> None
    (JSON has no such numbers, and PostgreSQL's JSONB refuses them)."""
    import math

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
