"""The campaign spec: a versioned pydantic model of a campaign YAML.

The spec is the single source of truth for a campaign; its canonical sha256 is stored with
the campaign. Every settings object that science code takes (oracle, model, training,
samplers, selection) is defined here, so a notebook user builds the same objects the
engine does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPEC_VERSION = 1


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- oracles
class PySCFOracle(Strict):
    kind: Literal["pyscf"] = "pyscf"
    method: str = "HF"  # "HF" or any DFT functional PySCF knows (e.g. "PBE", "B3LYP")
    basis: str = "sto-3g"
    density_fit: bool = False
    dispersion: str | None = None  # e.g. "d3bj" where PySCF offers it
    grid_level: int | None = None
    conv_tol: float = 1e-9
    max_cycle: int = 100
    max_memory_mb: int = 2000
    threads: int = 1
    timeout_s: float = 600.0


class ASEOracle(Strict):
    kind: Literal["ase"] = "ase"
    calculator: str  # "emt", "lj", "tblite", or "module:Class"
    settings: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = 600.0


class AnalyticOracle(Strict):
    kind: Literal["analytic"] = "analytic"
    potential: Literal["double_well", "muller_brown"] = "double_well"


OracleSpec = Annotated[PySCFOracle | ASEOracle | AnalyticOracle, Field(discriminator="kind")]


# ------------------------------------------------------------------------------ model
class ModelSpec(Strict):
    representation: Literal["painn", "schnet"] = "painn"
    n_atom_basis: int = Field(64, ge=1)
    n_interactions: int = Field(3, ge=1)
    n_rbf: int = Field(20, ge=1)
    cutoff: float = Field(5.0, gt=0)
    ensemble_size: int = Field(4, ge=2, description="M members; >= 2 for an uncertainty")


class TrainingSpec(Strict):
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    energy_weight: float = Field(0.05, ge=0)
    forces_weight: float = Field(0.95, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(20, ge=1)
    bootstrap: bool = False
    warm_start: bool = True
    threads: int = Field(1, ge=1)


# --------------------------------------------------------------------------- samplers
class MDSampler(Strict):
    kind: Literal["md"] = "md"
    temperature_K: float = Field(300.0, gt=0)
    timestep_fs: float = Field(0.5, gt=0)
    friction_per_fs: float = Field(0.01, gt=0)
    steps: int = Field(500, ge=1)
    walkers: int = Field(4, ge=1)
    save_every: int = Field(10, ge=1)
    min_distance: float = Field(0.6, gt=0)
    bond_guard: float = Field(0.5, gt=0)


class AdversarialSampler(Strict):
    kind: Literal["adversarial"] = "adversarial"
    kT_eV: float = Field(1.0, gt=0)
    steps: int = Field(60, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    init_std: float = Field(0.01, ge=0)
    max_displacement: float = Field(0.5, gt=0)
    seeds: int = Field(16, ge=1)
    remove_rigid: bool = True


class RandomSampler(Strict):
    kind: Literal["random"] = "random"
    scale: float = Field(0.1, gt=0)
    distribution: Literal["gaussian", "uniform"] = "gaussian"
    seeds: int = Field(16, ge=1)


SamplerSpec = Annotated[
    MDSampler | AdversarialSampler | RandomSampler, Field(discriminator="kind")
]


class CarvingSpec(Strict):
    enabled: bool = False
    radius: float | None = Field(None, gt=0, description="default: model cutoff + 1 Å")
    z_score: float = Field(2.0, gt=0)
    use_force_variance: bool = False
    cap_bond_length: float = Field(1.09, gt=0)


class SelectionSpec(Strict):
    trust_lo: float = Field(0.05, ge=0)
    trust_hi: float = Field(1.0, gt=0)
    thresholds: Literal["absolute", "percentile"] = "absolute"
    max_per_generation: int = Field(50, ge=1)
    dedupe_rmsd: float = Field(0.01, ge=0)
    strategy: Literal["random", "farthest_point"] = "farthest_point"

    @model_validator(mode="after")
    def _ordered(self) -> "SelectionSpec":
        if self.trust_lo >= self.trust_hi:
            raise ValueError(f"trust_lo ({self.trust_lo}) must be below trust_hi ({self.trust_hi})")
        return self


class StoppingSpec(Strict):
    max_generations: int = Field(5, ge=1)
    oracle_budget: int | None = Field(None, ge=1)
    target_force_mae: float | None = Field(None, gt=0)
    accurate_fraction: float | None = Field(None, gt=0, le=1)
    accurate_generations: int = Field(2, ge=1)
    max_failed_fraction: float = Field(0.5, ge=0, le=1)
    stop_on_failed_generation: bool = False


class GeometrySource(Strict):
    path: str  # relative to the spec file
    format: str | None = None  # ASE/pymatgen format name; guessed from the suffix when None
    index: str = ":"  # ASE index expression: which frames of the file
    charge: int = 0
    multiplicity: int = Field(1, ge=1)


class CampaignSpec(Strict):
    version: Literal[1] = SPEC_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    initial_geometries: list[GeometrySource] = Field(min_length=1)
    oracle: OracleSpec
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    samplers: list[SamplerSpec] = Field(min_length=1)
    carving: CarvingSpec = CarvingSpec()
    selection: SelectionSpec = SelectionSpec()
    stopping: StoppingSpec = StoppingSpec()
    site: str = "local"
    seed: int = 0
