"""The campaign spec: a versioned pydantic model of a campaign YAML.

The spec is the single source of truth for a campaign; its canonical sha256 is stored with
the campaign. Every settings object that science code takes (oracle, model, training,
samplers, selection) is defined here, so a notebook user builds the same objects the
engine does.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from alflow.errors import InputError
from alflow.yamlio import load_yaml

if TYPE_CHECKING:
    from ase import Atoms

SPEC_VERSION = 1

# Every float of a spec (and of a site file) means a finite quantity: pydantic lets ±inf
# through by default, and `gt=0` refuses NaN but not +inf (a learning rate of .inf ran).
FiniteFloat = Annotated[float, AllowInfNan(False)]


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
    grid_level: int | None = Field(None, ge=0, le=9)  # PySCF's grid levels 0..9
    conv_tol: FiniteFloat = Field(1e-9, gt=0)
    max_cycle: int = Field(100, ge=1)
    max_memory_mb: int = Field(2000, ge=1)
    threads: int = Field(1, ge=1)
    timeout_s: FiniteFloat = Field(600.0, gt=0)


class ASEOracle(Strict):
    kind: Literal["ase"] = "ase"
    calculator: str  # "emt", "lj", "tblite", or "module.path:ClassName"
    settings: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the class
    # None: run in-process (no limit; right for EMT/LJ/tblite). A number: run each call in a
    # forked worker killed after this many seconds (for external codes that can hang).
    timeout_s: FiniteFloat | None = Field(None, gt=0)


class AnalyticOracle(Strict):
    kind: Literal["analytic"] = "analytic"
    potential: Literal["double_well", "muller_brown"] = "double_well"
    # Multiplies energies and forces; 0.01 brings Müller–Brown (minimum -146.7) to O(1) eV.
    energy_scale: FiniteFloat = Field(1.0, gt=0)


OracleSpec = Annotated[PySCFOracle | ASEOracle | AnalyticOracle, Field(discriminator="kind")]


# ------------------------------------------------------------------------------ model
class ModelSpec(Strict):
    """The ensemble members' network.

    - ``painn`` / ``schnet``: SchNetPack message passing on interatomic pair vectors within
      `cutoff` (`n_atom_basis` features, `n_interactions` blocks, `n_rbf` radial functions).
    - ``coordinates``: an external-field model E = Σ_i MLP(R_i) on each atom's absolute
      Cartesian `coordinates` (for the analytic toy potentials, where a lone "atom" has no
      neighbours and a pair-based model predicts the same energy everywhere). The MLP has
      `n_interactions` hidden layers of `n_atom_basis` SiLU units; `n_rbf` and `cutoff`
      are unused. Coordinates are fed unscaled (Å), so they should be O(1).
    """

    representation: Literal["painn", "schnet", "coordinates"] = "painn"
    n_atom_basis: int = Field(64, ge=1)
    n_interactions: int = Field(3, ge=1)
    n_rbf: int = Field(20, ge=1)
    cutoff: FiniteFloat = Field(5.0, gt=0)
    ensemble_size: int = Field(4, ge=2, description="M members; >= 2 for an uncertainty")
    coordinates: tuple[Literal["x", "y", "z"], ...] = Field(
        ("x", "y", "z"), min_length=1,
        description="axes the 'coordinates' model sees (e.g. [x, y] for a 2-D potential)",
    )

    @field_validator("coordinates")
    @classmethod
    def _canonical_axes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"coordinates {list(value)} name an axis twice")
        return tuple(sorted(value, key="xyz".index))  # input order is part of the weights

    @model_validator(mode="after")
    def _coordinates_need_field_model(self) -> ModelSpec:
        if self.representation != "coordinates" and self.coordinates != ("x", "y", "z"):
            raise ValueError(
                f"coordinates is used only by representation 'coordinates', "
                f"not {self.representation!r}"
            )
        return self


class TrainingSpec(Strict):
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: FiniteFloat = Field(5e-4, gt=0)
    # Loss weights of per-atom energy MSE and force-component MSE. Measured (ethanol, 30
    # epochs): energy_weight 0.05 left energies barely learned (MAE 0.29 eV vs 0.016 eV at
    # 0.5) with the same force MAE.
    energy_weight: FiniteFloat = Field(0.5, ge=0)
    forces_weight: FiniteFloat = Field(0.5, ge=0)
    stress_weight: FiniteFloat = Field(0.0, ge=0, description="used only for periodic frames with a stress label")
    energy_reference: Literal["linear", "mean"] = Field(
        "linear", description="per-element energy reference: composition fit or mean energy per atom"
    )
    val_fraction: FiniteFloat = Field(0.1, gt=0, lt=1)
    patience: int = Field(20, ge=1)
    # early stopping and LR halving follow the validation loss only from this many
    # validation frames; below, the training loss
    min_val_frames: int = Field(5, ge=1)
    bootstrap: bool = False
    warm_start: bool = True
    threads: int = Field(1, ge=1)


# --------------------------------------------------------------------------- samplers
class _Sampler(Strict):
    # Where a sampler's seeds come from: this fraction from the geometries labelled most
    # recently (the last generation's selections: the edge of what the training set
    # covers), the rest uniformly from all labelled training geometries. Uniform seeds sit
    # mostly where data are dense; attacks and MD are local, so frontier seeds let each
    # generation start where the last one stopped.
    recent_seed_fraction: FiniteFloat = Field(0.0, ge=0, le=1)


class MDSettings(Strict):
    """How an MD walker runs and when it stops (`alflow.sampling.md.run_md`): the one
    settings object of alflow's MD, for NN-MD sampling, validation and reference runs."""

    temperature_K: FiniteFloat = Field(300.0, gt=0)
    timestep_fs: FiniteFloat = Field(0.5, gt=0)
    friction_per_fs: FiniteFloat = Field(0.01, ge=0, description="0: NVE")
    steps: int = Field(500, ge=1)
    save_every: int = Field(10, ge=1)
    min_distance: FiniteFloat = Field(0.6, gt=0)
    bond_guard: FiniteFloat = Field(0.5, gt=0)
    bond_tolerance: FiniteFloat = Field(1.2, gt=0, description="bonded: d < tol·(r_cov,i + r_cov,j)")
    energy_blowup_per_atom: FiniteFloat = Field(1.0, gt=0, description="eV/atom above the seed")
    stop_on: Literal["frame", "atom"] = "frame"  # trust_hi on frame σ_F or on max_i sqrt(u_i)


class MDSampler(_Sampler, MDSettings):
    kind: Literal["md"] = "md"
    walkers: int = Field(4, ge=1)


class AdversarialSampler(_Sampler):
    kind: Literal["adversarial"] = "adversarial"
    # Boltzmann temperature of p(X) in eV per atom, relative to the training minimum.
    # Measured: 0.1 raised sigma_F^2 ~225x on water; <= 0.01 relaxes into the known well;
    # start near 2x the std of the training energies per atom.
    kT_eV: FiniteFloat = Field(0.1, gt=0)
    steps: int = Field(60, ge=1)
    learning_rate: FiniteFloat = Field(0.01, gt=0)
    init_std: FiniteFloat = Field(0.01, ge=0)
    max_displacement: FiniteFloat = Field(0.5, gt=0)
    seeds: int = Field(16, ge=1)
    # each seed is attacked this many times from different random starts (gradient ascent
    # finds local maxima; several starts find more of them)
    attacks_per_seed: int = Field(1, ge=1)
    remove_rigid: bool = True


class RandomSampler(_Sampler):
    kind: Literal["random"] = "random"
    scale: FiniteFloat = Field(0.1, gt=0)
    distribution: Literal["gaussian", "uniform"] = "gaussian"
    seeds: int = Field(16, ge=1)


SamplerSpec = Annotated[
    MDSampler | AdversarialSampler | RandomSampler, Field(discriminator="kind")
]


class CarvingSpec(Strict):
    enabled: bool = False
    radius: FiniteFloat | None = Field(None, gt=0, description="default: model cutoff + 1 Å")
    z_score: FiniteFloat = Field(2.0, gt=0)
    use_force_variance: bool = False
    # bonded if d < bond_tolerance * (r_cov,i + r_cov,j); molecules are kept whole unless
    # the bonded fragment is infinite (a network) or larger than max_fragment_atoms
    bond_tolerance: FiniteFloat = Field(1.2, gt=0)
    max_fragment_atoms: int = Field(100, ge=1)
    # X-H lengths of the caps on cut bonds, by element (Å); None: alflow's table
    cap_bond_lengths: dict[str, Annotated[FiniteFloat, Field(gt=0)]] | None = None
    min_distance: FiniteFloat = Field(0.7, gt=0)
    charge: int = 0
    multiplicity: int | None = Field(None, ge=1, description="None: 1 if even electrons, else 2")
    # generation 0: periodic starting frames are labelled as clusters carved around this
    # many centre atoms each (spread over the frame; hydrogens are not centres)
    initial_centres: int = Field(16, ge=1)
    # which atoms of a sampled periodic frame clusters are carved around: "attribution",
    # the atoms the ensemble blames (A_j, or u_i, ≥ mean + z·std); "random", as many atoms
    # as attribution flags on that frame, drawn uniformly (heavy atoms) with the sampling
    # task's seed: the control that says whether attribution beats chance at equal count
    centres: Literal["attribution", "random"] = "attribution"


class SelectionSpec(Strict):
    trust_lo: FiniteFloat = Field(0.05, ge=0)
    trust_hi: FiniteFloat = Field(1.0, gt=0)
    thresholds: Literal["absolute", "percentile"] = "absolute"
    max_per_generation: int = Field(50, ge=1)
    # duplicates: same hash, or sorted-distance fingerprints closer than this (Å)
    dedupe_tol: FiniteFloat = Field(0.01, ge=0)
    strategy: Literal["random", "farthest_point"] = "farthest_point"

    @model_validator(mode="after")
    def _ordered(self) -> SelectionSpec:
        if self.trust_lo >= self.trust_hi:
            raise ValueError(f"trust_lo ({self.trust_lo}) must be below trust_hi ({self.trust_hi})")
        if self.thresholds == "percentile" and self.trust_hi > 100:
            raise ValueError(f"percentile trust_hi ({self.trust_hi}) must be at most 100")
        return self


class StoppingSpec(Strict):
    max_generations: int = Field(5, ge=1)
    oracle_budget: int | None = Field(None, ge=1)
    target_force_mae: FiniteFloat | None = Field(None, gt=0)
    accurate_fraction: FiniteFloat | None = Field(None, gt=0, le=1)
    accurate_generations: int = Field(2, ge=1)
    max_failed_fraction: FiniteFloat = Field(0.5, ge=0, le=1)
    stop_on_failed_generation: bool = False


class SchedulingSpec(Strict):
    """How the steps of a campaign are laid out in time.

    - ``generational``: every generation labels, trains, evaluates, samples and selects in
      turn, each step waiting for the one before (reproducible to the bit: the default, and
      what the data-efficiency benchmarks use). Validation runs beside the steps, never
      holding them up.
    - ``streaming``: the oracle labels from a persistent candidate queue, most uncertain
      first, without waiting for training; a new generation starts training (warm) once
      `retrain_every` new labels have arrived since the last one froze its training set;
      each new ensemble re-scores the queue (dropping what it now knows, below trust_lo),
      then samples and selects into the queue. Stop rules are checked on each new ensemble,
      and labels handed to the oracle count against the budget the moment they are sent.
    """

    mode: Literal["generational", "streaming"] = "generational"
    retrain_every: int = Field(8, ge=1, description="streaming: new labels per retraining")
    # streaming: label tasks handed to the oracle executor ahead of its free workers; the
    # rest wait in the queue, where re-scoring can still reorder and drop them
    oracle_lookahead: int = Field(1, ge=0)


class GeometrySource(Strict):
    path: str = Field(min_length=1)  # relative to the spec file
    # An ASE format name, guessed from the file when None (then pymatgen if ASE fails);
    # "pymatgen" reads with pymatgen only.
    format: str | None = None
    index: str = ":"  # ASE index expression: which frames of the file
    charge: int = 0
    multiplicity: int = Field(1, ge=1)

    @field_validator("index")
    @classmethod
    def _index_parses(cls, value: str) -> str:
        from alflow.structures import parse_index

        parse_index(value)  # InputError is a ValueError: pydantic reports it on this field
        return value


class ImportedMethod(Strict):
    """The level of theory labels were computed at, when it is not the campaign's oracle."""

    name: str = Field(min_length=1, max_length=80)  # e.g. "PBE/def2-SVP ORCA 5"
    code: str = Field(min_length=1, max_length=40)  # e.g. "orca"


class LabelSource(GeometrySource):
    """A file of labelled frames (extxyz, ASE db, ... with energies and forces in eV, eV/Å;
    stress where periodic), recorded as labels with no oracle call. `method: oracle` says
    they were computed with this campaign's own oracle settings: they count as its labels
    and are never recomputed. Otherwise they are labels of an imported method."""

    method: Literal["oracle"] | ImportedMethod


class EvaluationSpec(Strict):
    # Fraction of the initial geometries held out (chosen by geometry hash, so the same
    # ones every generation) to measure error comparably across generations.
    test_fraction: FiniteFloat = Field(0.2, ge=0, lt=1)
    label_batch_size: int = Field(4, ge=1, description="geometries per oracle task")
    # Frames drawn (evenly, after validation.equilibration_frames) from the validation's
    # reference trajectory, labelled once by the oracle and held out in every generation:
    # a test set of what MD at the validation temperature visits (needs validation.enabled).
    reference_md_frames: int = Field(0, ge=0)
    # A file of geometries along a path (torsion scan, inversion, reaction path), in order:
    # labelled once, never trained on; every generation records the MAE of relative
    # energies along it and the barrier error (max - min).
    profile: GeometrySource | None = None


REFERENCE_SAVE_EVERY = 10  # steps between the kept frames of a validation reference trajectory


class ValidationSpec(Strict):
    """Per-generation NN-MD validation in the protocol of Fu et al. (TMLR 2023), see
    `alflow.validation`: `walkers` batched NN-MD runs from distinct frames of a reference
    trajectory, collapse when a bond (natural cutoffs, first reference frame) deviates more
    than `collapse_threshold` Å from its reference mean, h(r) on 500 bins of (0, 10] Å."""

    enabled: bool = False
    temperature_K: FiniteFloat = Field(500.0, gt=0)
    timestep_fs: FiniteFloat = Field(0.5, gt=0)
    friction_per_fs: FiniteFloat = Field(0.01, ge=0)
    steps: int = Field(1000, ge=1, description="steps of each NN-MD walker")
    walkers: int = Field(8, ge=1, description="NN-MD walkers, each from its own reference frame")
    collapse_threshold: FiniteFloat = Field(0.5, gt=0, description="Å from the reference mean bond length")
    min_distance: FiniteFloat = Field(0.6, gt=0)
    # the reference trajectory: an ASE calculator name ("tblite", "emt", ...) or the
    # campaign's own "oracle" (any kind: PySCF too, where affordable); it starts from the
    # initial geometry with the smallest content hash and is cached by content
    reference: str = "tblite"
    reference_settings: dict[str, Any] = Field(default_factory=dict)
    reference_steps: int | None = Field(None, ge=1, description="None: as long as a walker's run")
    reference_seed: int = Field(0, ge=0, lt=2**63, description="not the campaign seed: shared across seeds")
    # leading reference frames (every 10 steps) not used as walker starts or test frames
    equilibration_frames: int = Field(0, ge=0)
    r_max: FiniteFloat = Field(10.0, gt=0)
    bins: int = Field(500, ge=5)


class CampaignSpec(Strict):
    version: Literal[1] = SPEC_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    initial_geometries: list[GeometrySource] = Field(default_factory=list)
    # labelled data to start from (no oracle call); see LabelSource
    initial_labels: list[LabelSource] = Field(default_factory=list)
    # train on labels of another level of theory beside the oracle's (initial_labels with
    # an imported method); refused unless set
    allow_mixed_methods: bool = False
    oracle: OracleSpec
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    samplers: list[SamplerSpec] = Field(min_length=1)
    carving: CarvingSpec = CarvingSpec()
    selection: SelectionSpec = SelectionSpec()
    stopping: StoppingSpec = StoppingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    scheduling: SchedulingSpec = SchedulingSpec()
    validation: ValidationSpec = ValidationSpec()
    site: str = "local"
    seed: int = Field(0, ge=0, lt=2**63)  # numpy and torch take any such seed
    # per role, seconds: overrides the site's task_time_limit_s (a task past it is recorded
    # as timed out and retried by the site's retry policy)
    task_time_limit_s: dict[Literal["oracle", "train", "sample"], Annotated[FiniteFloat, Field(gt=0)]] = Field(
        default_factory=dict)

    @model_validator(mode="after")
    def _something_to_start_from(self) -> CampaignSpec:
        if not self.initial_geometries and not self.initial_labels:
            raise ValueError("field 'initial_geometries': give initial_geometries or initial_labels "
                             "(or both): a campaign needs something to start from")
        for i, src in enumerate(self.initial_labels):
            if src.method != "oracle" and not self.allow_mixed_methods:
                raise ValueError(
                    f"field 'initial_labels[{i}].method': labels of {src.method.name!r} "
                    f"({src.method.code}) are another level of theory than the campaign's oracle "
                    f"({self.oracle.kind}); training on both mixes methods: set "
                    f"allow_mixed_methods: true to allow it, or method: oracle if they were "
                    f"computed with this oracle's settings")
        return self

    @model_validator(mode="after")
    def _carving_radius(self) -> CampaignSpec:
        radius = self.carving.radius
        if self.carving.enabled and radius is not None and radius < self.model.cutoff:
            # a carved cluster must hold the uncertain atom's whole model environment
            raise ValueError(
                f"carving.radius ({radius} Å) must be at least model.cutoff "
                f"({self.model.cutoff} Å)"
            )
        return self

    @model_validator(mode="after")
    def _reference_md_frames_need_validation(self) -> CampaignSpec:
        v, n = self.validation, self.evaluation.reference_md_frames
        if n and not v.enabled:
            raise ValueError("field 'evaluation.reference_md_frames': frames come from the validation's "
                             "reference trajectory; set validation.enabled: true (or reference_md_frames: 0)")
        if v.enabled:
            frames = (v.reference_steps or v.steps) // REFERENCE_SAVE_EVERY + 1 - v.equilibration_frames
            for field_name, wanted in (("validation.walkers", v.walkers),
                                       ("evaluation.reference_md_frames", n + 1)):
                if wanted > frames:
                    raise ValueError(
                        f"field '{field_name}': the reference trajectory keeps {frames} frames after "
                        f"equilibration (one every {REFERENCE_SAVE_EVERY} of validation.reference_steps), "
                        f"too few for {wanted - (field_name != 'validation.walkers')}; make it longer")
        return self

    @property
    def carving_radius(self) -> float:
        """The carving radius in Å: as given, else model cutoff + 1 Å."""
        return self.carving.radius if self.carving.radius is not None else self.model.cutoff + 1.0


# ---------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec, its initial geometries (checked, charge/multiplicity set), its hash."""

    spec: CampaignSpec
    geometries: list[Atoms]
    sha256: str
    path: Path
    labels: tuple = ()  # alflow.imported_labels.LabelFile per initial_labels entry
    profile: list[Atoms] = field(default_factory=list)  # evaluation.profile's geometries, in order


def spec_json(spec: CampaignSpec) -> str:
    """Canonical JSON of a spec (sorted keys, no spaces): what is hashed and stored."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def spec_sha256(spec: CampaignSpec) -> str:
    """sha256 hex of `spec_json(spec)`; defaults count, so an explicit default hashes the same."""
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, validate and hash a campaign YAML and read its initial geometries.

    Every problem is one `InputError` that names this file and the field (or geometry
    file and frame), so `alflow spec validate` can print it as a single line.
    """
    source = str(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("spec file not found", source=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a spec file", source=source) from None
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=source) from None
    spec = load_spec_text(text, source)

    from alflow.structures import read_geometries

    geometries: list[Atoms] = []
    for i, geo in enumerate(spec.initial_geometries):
        try:
            frames = read_geometries(geo, path.parent)
        except InputError as exc:
            raise InputError(f"field 'initial_geometries[{i}]': {exc}", source=source) from None
        if spec.carving.enabled:
            _check_carving_fits(spec, frames, f"initial_geometries[{i}]", source)
        geometries.extend(frames)
    from alflow.imported_labels import read_label_files

    labels = read_label_files(spec, path.parent, geometries, source)
    profile: list[Atoms] = []
    if spec.evaluation.profile is not None:
        try:
            profile = read_geometries(spec.evaluation.profile, path.parent)
        except InputError as exc:
            raise InputError(f"field 'evaluation.profile': {exc}", source=source) from None
        if len(profile) < 2:
            raise InputError(f"field 'evaluation.profile': a path needs at least 2 geometries, "
                             f"the file has {len(profile)}", source=source)
    return LoadedSpec(spec=spec, geometries=geometries, sha256=spec_sha256(spec), path=path,
                      labels=tuple(labels), profile=profile)


def load_spec_text(text: str, source: str = "<spec>") -> CampaignSpec:
    """Parse YAML text (e.g. a spec stored in the database) into a validated spec."""
    data = load_yaml(text, source)
    return parse_spec(data, source)


def parse_spec(data: Any, source: str = "<spec>") -> CampaignSpec:
    """Validate a mapping (parsed YAML, or `json.loads(spec_json(...))`) into a spec."""
    if data is None:
        raise InputError("the spec is empty", source=source)
    if not isinstance(data, dict):
        raise InputError(
            f"the spec must be a mapping of fields, not a {type(data).__name__}", source=source
        )
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe_error(err, data) for err in exc.errors()]
        head = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise InputError(head + "; ".join(problems), source=source) from None


_UNION_KINDS = {  # which `kind` values a discriminated field accepts, for messages
    field: [get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(union)[0])]
    for field, union in (("oracle", OracleSpec), ("samplers", SamplerSpec))
}


def _field_path(loc: tuple, data: Any) -> str:
    """'samplers[0].temperature_K' from pydantic's loc, without union tags like 'md'."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and node.get("kind") == item:
            continue  # discriminated-union tag, not a field
        parts.append(f".{item}" if parts else str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _all_field_names() -> set[str]:
    names: set[str] = set()
    todo = [Strict]
    while todo:
        cls = todo.pop()
        names.update(cls.model_fields)
        todo.extend(cls.__subclasses__())
    return names


def _describe_error(err: dict, data: Any) -> str:
    """One pydantic error as "field 'a.b[0].c': what is wrong"."""
    loc = tuple(err["loc"])
    path = _field_path(loc, data)
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    kinds = _UNION_KINDS.get(str(loc[0]) if loc else "", [])
    if kind == "extra_forbidden":
        msg = "unknown field"
        close = difflib.get_close_matches(str(loc[-1]), _all_field_names(), n=1, cutoff=0.75)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
    elif kind == "union_tag_not_found":
        msg = f"needs a 'kind' (one of {', '.join(map(repr, kinds))})"
    elif kind == "union_tag_invalid":
        msg = f"unknown kind {err['ctx']['tag']!r} (one of {', '.join(map(repr, kinds))})"
    elif kind != "missing" and "input" in err and not isinstance(err["input"], dict | list):
        shown = repr(err["input"])
        if shown not in msg:
            msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return f"field '{path}': {msg}" if path else msg


def _check_carving_fits(spec: CampaignSpec, frames: list[Atoms], field: str, source: str) -> None:
    """Carving by minimum image needs radius < half the cell width, or atoms repeat."""
    import numpy as np

    radius = spec.carving_radius
    for k, atoms in enumerate(frames):
        if not atoms.pbc.all():
            continue
        cell = atoms.cell.array
        volume = abs(np.linalg.det(cell))
        widths = [volume / np.linalg.norm(np.cross(cell[a], cell[b]))
                  for a, b in ((1, 2), (2, 0), (0, 1))]
        if radius >= min(widths) / 2:
            raise InputError(
                f"field 'carving.radius': {radius:g} Å is not below half the cell width "
                f"({min(widths) / 2:.2f} Å) of {field} frame {k}; carved clusters would "
                f"contain periodic copies of the same atoms (use a bigger cell or a smaller "
                f"radius / model.cutoff)",
                source=source,
            )
