"""SQLAlchemy 2 models of the provenance database.

Anything a question about a campaign filters or aggregates on is a typed column; JSON is
only for settings blobs. Per-atom arrays are `PackedArray` bytes (see `types.py`).
The Alembic migrations under `migrations/` must produce exactly this schema; a test
autogenerates against a migrated database and requires an empty diff.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from alflow.db.types import PackedArray

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only
Hash = String(64)


def _now() -> Any:
    return func.now()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json}


# The error vocabularies, as SQL (kept equal to alflow.oracles.base.ERROR_CLASSES and
# alflow.engine.states.TaskError by a test; migration 0002 holds the same lists)
LABEL_ERRORS = ("scf_not_converged", "timeout", "crash", "oom", "invalid_input",
                "calculator_error", "task_error")
TASK_ERRORS = ("worker_lost", "manager_lost", "stalled", "timeout", "orchestrator_lost",
               "app_error", "submit_error")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IS NULL OR {column} IN ({', '.join(repr(v) for v in values)})"


def _id() -> Mapped[int]:
    return mapped_column(Id, primary_key=True, autoincrement=True)


def _fk(target: str, *, nullable: bool = False, index: bool = True, ondelete: str | None = None):
    return mapped_column(
        Id, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index
    )


def _created() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=_now(), nullable=False)


class Campaign(Base):
    __tablename__ = "campaign"
    __table_args__ = (
        CheckConstraint(
            "status IN ('created','running','stopped','finished','failed')", name="status"
        ),
    )
    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    spec: Mapped[dict[str, Any]]
    spec_sha256: Mapped[str] = mapped_column(Hash)
    alflow_version: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), server_default="created")
    stop_reason: Mapped[str | None] = mapped_column(Text)
    site: Mapped[str | None] = mapped_column(Text)  # a site name or a path to its YAML
    workdir: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    generations: Mapped[list[Generation]] = relationship(back_populates="campaign")


class Generation(Base):
    """One pass of label -> train -> evaluate -> sample -> select -> stop-check."""

    __tablename__ = "generation"
    __table_args__ = (UniqueConstraint("campaign_id", "idx"),)
    id: Mapped[int] = _id()
    campaign_id: Mapped[int] = _fk("campaign.id", ondelete="CASCADE")
    idx: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), server_default="label")
    trust_lo: Mapped[float | None] = mapped_column(Float)
    trust_hi: Mapped[float | None] = mapped_column(Float)
    n_accurate: Mapped[int | None] = mapped_column(Integer)
    n_candidate: Mapped[int | None] = mapped_column(Integer)
    n_failed: Mapped[int | None] = mapped_column(Integer)
    n_selected: Mapped[int | None] = mapped_column(Integer)
    n_labels: Mapped[int | None] = mapped_column(Integer)
    label_failed_fraction: Mapped[float | None] = mapped_column(Float)
    failed: Mapped[bool] = mapped_column(Boolean, server_default="0")  # above max_failed_fraction
    stop_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = _created()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    campaign: Mapped[Campaign] = relationship(back_populates="generations")


class Geometry(Base):
    """A content-addressed structure; `content_hash` is `alflow.geometry.content_hash`."""

    __tablename__ = "geometry"
    id: Mapped[int] = _id()
    content_hash: Mapped[str] = mapped_column(Hash, unique=True)
    natoms: Mapped[int] = mapped_column(Integer)
    formula: Mapped[str] = mapped_column(String(200), index=True)
    numbers: Mapped[np.ndarray] = mapped_column(PackedArray("<u1"))
    positions: Mapped[np.ndarray] = mapped_column(PackedArray("<f8"))
    cell: Mapped[np.ndarray | None] = mapped_column(PackedArray("<f8"))
    pbc: Mapped[int] = mapped_column(Integer, server_default="0")  # bit i = periodic along i
    charge: Mapped[int] = mapped_column(Integer, server_default="0")
    multiplicity: Mapped[int] = mapped_column(Integer, server_default="1")
    origin: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = _created()


class GeometryEdge(Base):
    """Lineage: `child` was made from `parent` by `relation` (md, adversarial, carved...)."""

    __tablename__ = "geometry_edge"
    __table_args__ = (UniqueConstraint("child_id", "parent_id", "relation", "sampling_run_id"),)
    id: Mapped[int] = _id()
    child_id: Mapped[int] = _fk("geometry.id")
    parent_id: Mapped[int] = _fk("geometry.id")
    relation: Mapped[str] = mapped_column(String(32))
    sampling_run_id: Mapped[int | None] = _fk("sampling_run.id", nullable=True)
    info: Mapped[dict[str, Any] | None]


class OracleMethod(Base):
    __tablename__ = "oracle_method"
    id: Mapped[int] = _id()
    code: Mapped[str] = mapped_column(String(40))
    version: Mapped[str | None] = mapped_column(String(40))
    method: Mapped[str | None] = mapped_column(String(80))
    basis: Mapped[str | None] = mapped_column(String(80))
    settings: Mapped[dict[str, Any]]
    settings_sha256: Mapped[str] = mapped_column(Hash, unique=True)


class Label(Base):
    """An oracle result. Failures are labels too (status 'failed', with an error class).

    The database itself refuses a second successful label for one (geometry, method):
    a partial unique index over status = 'ok'.
    """

    __tablename__ = "label"
    __table_args__ = (
        CheckConstraint("status IN ('ok','failed')", name="status"),
        CheckConstraint(_in("error_class", LABEL_ERRORS), name="error_class"),
        Index(
            "uq_label_ok_geometry_method",
            "geometry_id",
            "method_id",
            unique=True,
            postgresql_where=text("status = 'ok'"),
            sqlite_where=text("status = 'ok'"),
        ),
    )
    id: Mapped[int] = _id()
    geometry_id: Mapped[int] = _fk("geometry.id")
    method_id: Mapped[int] = _fk("oracle_method.id")
    task_id: Mapped[int | None] = _fk("task.id", nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    energy: Mapped[float | None] = mapped_column(Float)
    forces: Mapped[np.ndarray | None] = mapped_column(PackedArray("<f8"))
    stress: Mapped[np.ndarray | None] = mapped_column(PackedArray("<f8"))
    error_class: Mapped[str | None] = mapped_column(String(40))
    error_msg: Mapped[str | None] = mapped_column(Text)
    wall_s: Mapped[float | None] = mapped_column(Float)
    cpu_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = _created()


class TrainingSet(Base):
    __tablename__ = "training_set"
    id: Mapped[int] = _id()
    campaign_id: Mapped[int] = _fk("campaign.id", ondelete="CASCADE")
    generation_id: Mapped[int | None] = _fk("generation.id", nullable=True)
    sha256: Mapped[str] = mapped_column(Hash, index=True)  # of the sorted (label id, split)
    n_train: Mapped[int] = mapped_column(Integer)
    n_val: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[dt.datetime] = _created()


class TrainingSetLabel(Base):
    __tablename__ = "training_set_label"
    __table_args__ = (CheckConstraint("split IN ('train','val','test')", name="split"),)
    training_set_id: Mapped[int] = mapped_column(
        Id, ForeignKey("training_set.id", ondelete="CASCADE"), primary_key=True
    )
    label_id: Mapped[int] = mapped_column(Id, ForeignKey("label.id"), primary_key=True, index=True)
    split: Mapped[str] = mapped_column(String(8))


class Artifact(Base):
    """A file in the content-addressed artifact store (checkpoints, trajectories)."""

    __tablename__ = "artifact"
    id: Mapped[int] = _id()
    sha256: Mapped[str] = mapped_column(Hash, unique=True)
    uri: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = _created()


class Model(Base):
    """One trained ensemble member of one generation."""

    __tablename__ = "model"
    __table_args__ = (UniqueConstraint("generation_id", "member"),)
    id: Mapped[int] = _id()
    generation_id: Mapped[int] = _fk("generation.id", ondelete="CASCADE")
    member: Mapped[int] = mapped_column(Integer)
    training_set_id: Mapped[int] = _fk("training_set.id")
    seed: Mapped[int] = mapped_column(BigInteger)
    config: Mapped[dict[str, Any]]
    checkpoint_id: Mapped[int | None] = _fk("artifact.id", nullable=True)
    task_id: Mapped[int | None] = _fk("task.id", nullable=True)
    val_energy_mae: Mapped[float | None] = mapped_column(Float)
    val_force_mae: Mapped[float | None] = mapped_column(Float)
    epochs: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = _created()


class ModelEval(Base):
    """Error of one member (model_id set) or of the whole ensemble (model_id NULL) on a
    fixed held-out set, so errors are comparable across generations."""

    __tablename__ = "model_eval"
    id: Mapped[int] = _id()
    generation_id: Mapped[int] = _fk("generation.id", ondelete="CASCADE")
    model_id: Mapped[int | None] = _fk("model.id", nullable=True)
    eval_set: Mapped[str] = mapped_column(String(32), server_default="test")
    n_frames: Mapped[int] = mapped_column(Integer)
    energy_mae: Mapped[float | None] = mapped_column(Float)  # eV/atom
    force_mae: Mapped[float | None] = mapped_column(Float)  # eV/Å
    force_rmse: Mapped[float | None] = mapped_column(Float)
    calibration_scale: Mapped[float | None] = mapped_column(Float)
    spearman: Mapped[float | None] = mapped_column(Float)
    miscalibration_area: Mapped[float | None] = mapped_column(Float)
    stability_time_fs: Mapped[float | None] = mapped_column(Float)  # median over walkers
    hr_error: Mapped[float | None] = mapped_column(Float)  # mean over walkers
    stability_iqr_fs: Mapped[float | None] = mapped_column(Float)
    survival_fraction: Mapped[float | None] = mapped_column(Float)
    hr_error_std: Mapped[float | None] = mapped_column(Float)
    profile_mae: Mapped[float | None] = mapped_column(Float)  # eV, relative energies along the path
    barrier_error: Mapped[float | None] = mapped_column(Float)  # eV, predicted − reference
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = _created()


class SamplingRun(Base):
    """One sampler invocation (md / adversarial / random / carving) on one seed batch."""

    __tablename__ = "sampling_run"
    id: Mapped[int] = _id()
    generation_id: Mapped[int] = _fk("generation.id", ondelete="CASCADE")
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    seed_geometry_id: Mapped[int | None] = _fk("geometry.id", nullable=True)
    model_generation_id: Mapped[int | None] = _fk("generation.id", nullable=True)
    task_id: Mapped[int | None] = _fk("task.id", nullable=True)
    n_frames: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = _created()


class Sample(Base):
    """A frame proposed by a sampler, its uncertainty and the selection verdict."""

    __tablename__ = "sample"
    __table_args__ = (
        CheckConstraint("bucket IN ('accurate','candidate','failed')", name="bucket"),
    )
    id: Mapped[int] = _id()
    sampling_run_id: Mapped[int] = _fk("sampling_run.id", ondelete="CASCADE")
    geometry_id: Mapped[int] = _fk("geometry.id")
    step: Mapped[int | None] = mapped_column(Integer)
    energy_mean: Mapped[float | None] = mapped_column(Float)
    sigma_f2: Mapped[float | None] = mapped_column(Float)  # frame σ_F² (eV²/Å²)
    sigma_f2_initial: Mapped[float | None] = mapped_column(Float)  # at the seed, for attacks
    u_max: Mapped[float | None] = mapped_column(Float)
    u_mean: Mapped[float | None] = mapped_column(Float)
    log_p: Mapped[float | None] = mapped_column(Float)
    atomic_uncertainty: Mapped[np.ndarray | None] = mapped_column(PackedArray("<f8"))
    bucket: Mapped[str | None] = mapped_column(String(16))
    selected: Mapped[bool] = mapped_column(Boolean, server_default="0")
    reason: Mapped[str | None] = mapped_column(String(80))
    carve_center: Mapped[int | None] = mapped_column(Integer)
    carve_map: Mapped[np.ndarray | None] = mapped_column(PackedArray("<i8"))
    created_at: Mapped[dt.datetime] = _created()


class Task(Base):
    """Every Parsl app the engine dispatched, with where, how often and how it ended."""

    __tablename__ = "task"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','running','done','failed','cancelled')", name="status"
        ),
        CheckConstraint(_in("error_class", TASK_ERRORS), name="error_class"),
    )
    id: Mapped[int] = _id()
    campaign_id: Mapped[int] = _fk("campaign.id", ondelete="CASCADE")
    generation_id: Mapped[int | None] = _fk("generation.id", nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str | None] = mapped_column(Hash, index=True)  # idempotency key
    parsl_task_id: Mapped[int | None] = mapped_column(Integer)
    site: Mapped[str | None] = mapped_column(Text)  # a site name or a path to its YAML
    executor: Mapped[str | None] = mapped_column(String(32))
    slurm_job_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    tries: Mapped[int] = mapped_column(Integer, server_default="0")
    submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    resources: Mapped[dict[str, Any] | None]
    error_class: Mapped[str | None] = mapped_column(String(40))
    error_msg: Mapped[str | None] = mapped_column(Text)


class QueueEntry(Base):
    """The label queue: a geometry a campaign chose to label, from selection to its label.

    An entry is `queued` when selected (or listed as a starting geometry), `dispatched`
    when a label task took it, `labelled` when its label is recorded (ok or failed), or
    `dropped` when a newer ensemble found it below trust_lo before the oracle got to it
    (`dropped_by` says which generation's ensemble, `reason` with which σ_F). `priority` is
    the calibrated σ_F (eV/Å) the latest scoring ensemble gave it: highest is labelled first.
    """

    __tablename__ = "label_queue"
    __table_args__ = (
        UniqueConstraint("campaign_id", "geometry_id"),
        CheckConstraint("status IN ('queued','dispatched','labelled','dropped')", name="status"),
    )
    id: Mapped[int] = _id()
    campaign_id: Mapped[int] = _fk("campaign.id", ondelete="CASCADE")
    geometry_id: Mapped[int] = _fk("geometry.id")
    sample_id: Mapped[int | None] = _fk("sample.id", nullable=True)
    generation_id: Mapped[int] = _fk("generation.id", ondelete="CASCADE")  # whose selection queued it
    priority: Mapped[float | None] = mapped_column(Float)
    scored_by_id: Mapped[int | None] = _fk("generation.id", nullable=True)
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    dropped_by_id: Mapped[int | None] = _fk("generation.id", nullable=True)
    reason: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[int | None] = _fk("task.id", nullable=True)
    label_id: Mapped[int | None] = _fk("label.id", nullable=True)
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class CampaignChange(Base):
    """A recorded change of a campaign's spec after it was created (`alflow resume
    --max-generations/--oracle-budget`): which field, its old and new value, the spec hashes
    before and after, and at which generation the campaign was when it changed."""

    __tablename__ = "campaign_change"
    id: Mapped[int] = _id()
    campaign_id: Mapped[int] = _fk("campaign.id", ondelete="CASCADE")
    field: Mapped[str] = mapped_column(String(80))
    old_value: Mapped[dict[str, Any] | None]
    new_value: Mapped[dict[str, Any] | None]
    old_spec_sha256: Mapped[str] = mapped_column(Hash)
    new_spec_sha256: Mapped[str] = mapped_column(Hash)
    at_generation: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()
