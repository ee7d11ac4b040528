"""Validation that can tell potentials apart ("Forces are not enough", Fu et al., TMLR 2023).

The protocol of the paper's MD17 benchmark, on any molecule:

- a **reference trajectory**: Langevin MD at the validation temperature with a trustworthy
  calculator (the campaign's oracle where affordable, else a declared stand-in such as
  GFN2-xTB), run once and cached by the sha256 of its inputs (start, settings, calculator,
  seed) with its provenance (`ReferenceTrajectory.source`);
- **walkers**: ≥ 8 NN-MD runs with the ensemble mean, batched, each from a different frame
  of the reference trajectory (evenly spaced), for `steps` at `temperature_K`;
- **collapse**: a walker has collapsed at the first recorded frame where any bond deviates
  more than `collapse_threshold` (0.5 Å) from its *mean length in the reference trajectory*;
  bonds are the pairs bonded in the reference's first frame under ASE's natural cutoffs
  (d < r_cov,i + r_cov,j: `alflow.bonds.bond_list` with tolerance 1.0). The stability time
  is the time of that frame, or the whole run if it never collapsed (it *survived*);
- **h(r)**: the histogram of all interatomic distances over the frames, 500 bins on
  (0, 10] Å, normalised to unit integral (a density in 1/Å); a walker's h(r) error is the
  mean absolute difference over bins to the reference trajectory's h(r), using the walker's
  frames up to its collapse.

Per generation: the median stability time (and its interquartile range), the fraction of
walkers that survived, and the mean h(r) error (and its standard deviation over walkers).

Profile validation (`profile_errors`): energies along a path of geometries (a torsion scan,
an inversion path), compared as relative energies (each curve minus its own minimum): the
MAE along the path and the error of the barrier (max − min).

Pure science: models, Atoms, arrays and settings in, frozen dataclasses out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from alflow.bonds import bond_list
from alflow.geometry import atoms_hash
from alflow.sampling.md import run_md
from alflow.spec import REFERENCE_SAVE_EVERY, MDSettings, ValidationSpec

RECORD_EVERY = REFERENCE_SAVE_EVERY  # steps between recorded frames: the resolution of the stability time
NATURAL_CUTOFFS = 1.0  # bond tolerance of ASE's natural_cutoffs
HR_BINS = 500
HR_R_MAX = 10.0  # Å
# hard stops of the NN-MD walkers, only to end a walker well past its collapse (which is
# judged on the recorded frames against the reference means, not by these guards)
WALKER_BOND_GUARD = 2.0  # Å from the start length
WALKER_ENERGY_BLOWUP = 10.0  # eV/atom


# ----------------------------------------------------------------------- pure metrics
def bond_pairs(atoms: Atoms) -> np.ndarray:
    """(P, 2) atom pairs bonded under ASE's natural cutoffs (each pair once, i < j)."""
    b = bond_list(atoms, tolerance=NATURAL_CUTOFFS).unique()
    return np.stack([b.i, b.j], axis=1).astype(int) if len(b) else np.zeros((0, 2), int)


def bond_lengths(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(T, P) lengths of `pairs` in every frame of `positions` (T, n, 3) (molecules)."""
    positions = np.asarray(positions, float)
    if positions.ndim == 2:
        positions = positions[None]
    return np.linalg.norm(positions[:, pairs[:, 1]] - positions[:, pairs[:, 0]], axis=-1)


def collapse_index(positions: np.ndarray, pairs: np.ndarray, reference_means: np.ndarray,
                   threshold: float = 0.5) -> int | None:
    """Index of the first frame where any bond deviates more than `threshold` Å from its
    reference mean length; None if no frame does."""
    if len(pairs) == 0:
        return None
    dev = np.abs(bond_lengths(positions, pairs) - np.asarray(reference_means)[None, :])
    bad = np.flatnonzero((dev > threshold).any(axis=1))
    return int(bad[0]) if len(bad) else None


def distance_histogram(positions: np.ndarray, *, bins: int = HR_BINS, r_max: float = HR_R_MAX) -> np.ndarray:
    """h(r): histogram of all interatomic distances over the frames of `positions`
    (T, n, 3), `bins` bins on (0, r_max] Å, normalised to unit integral (1/Å); distances
    beyond r_max are not counted. All zeros if no distance falls in range."""
    positions = np.asarray(positions, float)
    if positions.ndim == 2:
        positions = positions[None]
    iu, ju = np.triu_indices(positions.shape[1], k=1)
    d = np.linalg.norm(positions[:, ju] - positions[:, iu], axis=-1).ravel()
    d = d[(d > 0) & (d <= r_max)]
    dr = r_max / bins
    # bin k holds (k·dr, (k+1)·dr]: right-closed, so r_max itself is counted and 0 is not
    idx = np.minimum(np.ceil(d / dr).astype(int) - 1, bins - 1)
    hist = np.bincount(np.maximum(idx, 0), minlength=bins).astype(float)
    total = hist.sum()
    return hist / (total * dr) if total else hist


def hr_mae(h_model: np.ndarray, h_ref: np.ndarray) -> float:
    """Mean absolute difference over bins of two h(r) on the same grid."""
    return float(np.mean(np.abs(np.asarray(h_model) - np.asarray(h_ref))))


@dataclass(frozen=True)
class ProfileErrors:
    """Energies along a path: MAE of the relative energies (each curve minus its own
    minimum, eV), the barriers (max − min, eV) and the barrier error (predicted − reference)."""

    mae: float
    barrier_ref: float
    barrier_pred: float
    barrier_error: float
    n_points: int


def profile_errors(predicted: Sequence[float], reference: Sequence[float]) -> ProfileErrors:
    pred, ref = np.asarray(predicted, float), np.asarray(reference, float)
    if pred.shape != ref.shape or pred.ndim != 1 or len(pred) < 2:
        raise ValueError(f"a profile needs two energy curves of the same length >= 2 "
                         f"(got {pred.shape} and {ref.shape})")
    rp, rr = pred - pred.min(), ref - ref.min()
    bp, br = float(pred.max() - pred.min()), float(ref.max() - ref.min())
    return ProfileErrors(mae=float(np.mean(np.abs(rp - rr))), barrier_ref=br, barrier_pred=bp,
                         barrier_error=bp - br, n_points=len(pred))


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, quartiles, mean, std and standard error of a sample (NaN-free)."""
    v = np.asarray(values, float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(v.mean()),
            "std": std, "sem": std / np.sqrt(len(v)), "n": int(len(v))}


# ----------------------------------------------------------------------- reference MD
@dataclass(frozen=True, eq=False)
class ReferenceTrajectory:
    """Frames of a reference MD every `save_every` steps (frame 0: the start)."""

    numbers: np.ndarray  # (n,)
    positions: np.ndarray  # (T, n, 3) Å
    energies: np.ndarray  # (T,) eV
    timestep_fs: float
    save_every: int
    temperature_K: float
    source: str  # what computed it: calculator or oracle method, with settings
    sha256: str  # of its inputs: the cache key

    def atoms(self, k: int, like: Atoms | None = None) -> Atoms:
        a = Atoms(numbers=self.numbers, positions=self.positions[k])
        if like is not None:
            a.info.update({k2: like.info[k2] for k2 in ("charge", "multiplicity") if k2 in like.info})
        return a

    def frame_indices(self, n: int, *, skip: int = 0) -> np.ndarray:
        """`n` distinct frames evenly spread over the trajectory after the first `skip`."""
        total = len(self.positions) - skip
        if n > total:
            raise ValueError(f"the reference trajectory has {total} frames after equilibration, "
                             f"fewer than the {n} asked for")
        return skip + np.linspace(0, total - 1, n).round().astype(int)

    @property
    def pairs(self) -> np.ndarray:
        return bond_pairs(self.atoms(0))

    @property
    def mean_bond_lengths(self) -> np.ndarray:
        return bond_lengths(self.positions, self.pairs).mean(axis=0)


class OracleModel:
    """Any alflow oracle (PySCF, analytic, ASE) behind the `Ensemble.predict` interface, so
    `run_md` can run the reference trajectory with the campaign's own oracle. Uncertainty
    is NaN; a failed label raises (a reference with holes is no reference)."""

    def __init__(self, oracle):
        self.oracle = oracle

    def predict(self, atoms_list: Sequence[Atoms], *, batch_size: int = 0):
        from alflow.potentials.ensemble import Prediction

        energies, forces = [], []
        for atoms in atoms_list:
            lab = self.oracle(atoms)
            if not lab.ok:
                raise RuntimeError(f"reference MD: the oracle failed ({lab.error_class}: {lab.error_msg})")
            energies.append(lab.energy)
            forces.append(np.array(lab.forces, dtype=np.float64))
        b = len(energies)
        return Prediction(energy=np.array(energies), energy_std=np.full(b, np.nan),
                          sigma_f2=np.full(b, np.nan), forces=forces,
                          atomic_uncertainty=[np.full(len(f), np.nan) for f in forces])


def reference_md_settings(v: ValidationSpec) -> MDSettings:
    """The reference MD: Langevin at the validation temperature, guards that never stop a
    physical trajectory (a reference that breaks bonds is reported by its h(r), not cut)."""
    return MDSettings(temperature_K=v.temperature_K, timestep_fs=v.timestep_fs,
                      steps=v.reference_steps or v.steps, friction_per_fs=v.friction_per_fs,
                      save_every=RECORD_EVERY, min_distance=0.3, bond_guard=50.0,
                      energy_blowup_per_atom=100.0)


def walker_md_settings(v: ValidationSpec) -> MDSettings:
    return MDSettings(temperature_K=v.temperature_K, timestep_fs=v.timestep_fs, steps=v.steps,
                      friction_per_fs=v.friction_per_fs, save_every=RECORD_EVERY,
                      min_distance=v.min_distance, bond_guard=WALKER_BOND_GUARD,
                      energy_blowup_per_atom=WALKER_ENERGY_BLOWUP)


def reference_key(start: Atoms, v: ValidationSpec, source: dict[str, Any], rng_seed: int) -> str:
    return hashlib.sha256(json.dumps(
        [atoms_hash(start), reference_md_settings(v).model_dump(mode="json"), source, rng_seed],
        sort_keys=True, default=str).encode()).hexdigest()


def reference_trajectory(start: Atoms, v: ValidationSpec, make_model, source: dict[str, Any], *,
                         rng_seed: int, cache_dir: str | Path | None) -> ReferenceTrajectory:
    """The reference MD from `start` with the model `make_model()` builds (called only on a
    cache miss), cached as `<sha256>.npz` in `cache_dir`. `source` names the calculator
    and its settings: it is part of the key and recorded as provenance."""
    md = reference_md_settings(v)
    sha = reference_key(start, v, source, rng_seed)
    label = json.dumps(source, sort_keys=True, default=str)
    cache = None if cache_dir is None else Path(cache_dir) / f"{sha}.npz"
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return ReferenceTrajectory(z["numbers"], z["positions"], z["energies"], md.timestep_fs,
                                       md.save_every, md.temperature_K, label, sha)
    result = run_md(make_model(), [start], md, rng_seed=rng_seed)
    frames = sorted(result.frames_of(0), key=lambda c: c.step)
    positions = np.array([start.positions, *(c.atoms.positions for c in frames)])
    rec = result.walkers[0]
    energies = np.array([rec.epot[0], *(rec.epot[c.step] for c in frames)], float)
    if rec.stop_reason != "max_steps":
        raise RuntimeError(f"the reference MD stopped early ({rec.stop_reason} at step {rec.stop_step})")
    traj = ReferenceTrajectory(np.asarray(start.numbers), positions, energies, md.timestep_fs,
                               md.save_every, md.temperature_K, label, sha)
    if cache is not None:
        os.makedirs(cache.parent, exist_ok=True)
        tmp = cache.with_name(f".{sha}.{os.getpid()}.npz")
        np.savez(tmp, numbers=traj.numbers, positions=positions, energies=energies)
        os.replace(tmp, cache)
    return traj


# ----------------------------------------------------------------------- NN-MD walkers
@dataclass(frozen=True)
class WalkerReport:
    start_frame: int  # index into the reference trajectory
    stability_time_fs: float
    survived: bool
    stopped: str  # the `run_md` stop reason (the walker may have collapsed well before)
    frames: int  # recorded frames up to the collapse (h(r) uses these)
    hr_error: float


@dataclass(frozen=True)
class ValidationReport:
    stability_median_fs: float
    stability_iqr_fs: float
    survival_fraction: float
    hr_error: float  # mean over walkers
    hr_error_std: float
    run_fs: float  # the length of a walker's run
    reference: str  # provenance of the reference trajectory
    reference_sha256: str
    walkers: tuple[WalkerReport, ...]

    @property
    def stability_time_fs(self) -> float:
        return self.stability_median_fs


def validate(model, reference: ReferenceTrajectory, settings: ValidationSpec, *, rng_seed: int,
             template: Atoms | None = None) -> ValidationReport:
    """`settings.walkers` NN-MD walkers with `model` from distinct reference frames, in one
    batch; stability (collapse against the reference's mean bond lengths) and h(r) error."""
    idx = reference.frame_indices(settings.walkers, skip=settings.equilibration_frames)
    starts = [reference.atoms(int(k), template) for k in idx]
    md = walker_md_settings(settings)
    result = run_md(model, starts, md, rng_seed=rng_seed)
    pairs, means = reference.pairs, reference.mean_bond_lengths
    h_ref = distance_histogram(reference.positions, bins=settings.bins, r_max=settings.r_max)
    run_fs = md.steps * md.timestep_fs
    walkers = []
    for k, (start, rec) in enumerate(zip(starts, result.walkers, strict=True)):
        frames = sorted(result.frames_of(k), key=lambda c: c.step)
        steps = np.array([0, *(c.step for c in frames)])
        pos = np.array([start.positions, *(c.atoms.positions for c in frames)])
        bad = collapse_index(pos, pairs, means, settings.collapse_threshold)
        if bad is not None:
            t, upto = float(steps[bad] * md.timestep_fs), bad
        elif rec.stop_reason != "max_steps":  # a guard stopped it between recorded frames
            t, upto = float(rec.stop_step * md.timestep_fs), len(pos)
        else:
            t, upto = run_fs, len(pos)
        h = distance_histogram(pos[: max(upto, 1)], bins=settings.bins, r_max=settings.r_max)
        survived = bad is None and rec.stop_reason == "max_steps"
        walkers.append(WalkerReport(int(idx[k]), t, survived, rec.stop_reason, int(max(upto, 1)),
                                    hr_mae(h, h_ref)))
    times = np.array([w.stability_time_fs for w in walkers])
    errs = np.array([w.hr_error for w in walkers])
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return ValidationReport(
        stability_median_fs=float(med), stability_iqr_fs=float(q3 - q1),
        survival_fraction=float(np.mean([w.survived for w in walkers])),
        hr_error=float(errs.mean()), hr_error_std=float(errs.std(ddof=1)) if len(errs) > 1 else 0.0,
        run_fs=run_fs, reference=reference.source, reference_sha256=reference.sha256,
        walkers=tuple(walkers))


def campaign_reference(start: Atoms, v: ValidationSpec, oracle_spec, *, cache_dir: str | Path | None
                       ) -> ReferenceTrajectory:
    """The campaign's reference trajectory: `v.reference` names an ASE calculator, or
    "oracle" for the campaign's own oracle (`oracle_spec`); seeded by `v.reference_seed`, so
    campaigns that differ only in seed or sampler share it (and the test set drawn from it)."""
    if v.reference == "oracle":
        from alflow.oracles import make_oracle

        source = {"oracle": oracle_spec.model_dump(mode="json")}

        def make():
            return OracleModel(make_oracle(oracle_spec))
    else:
        from alflow.oracles.ase_calc import build_calculator
        from alflow.potentials.calculator import CalculatorModel

        source = {"calculator": v.reference, "settings": v.reference_settings}

        def make():
            return CalculatorModel(lambda a: build_calculator(v.reference, v.reference_settings, a))
    return reference_trajectory(start, v, make, source, rng_seed=v.reference_seed, cache_dir=cache_dir)
