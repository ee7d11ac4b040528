"""Validation beyond force error ("Forces are not enough", Fu et al. 2022).

A potential with a small held-out force error can still fall apart in MD or get the
structure wrong. Two numbers per generation say whether it does:

- **stability time**: NN-MD with the ensemble mean from fixed starts at a fixed temperature
  runs until the first frame where a bond deviates more than `bond_guard` Å from its start
  length, two atoms come closer than `min_distance` Å, or the energy blows up (or the
  steps run out): `alflow.sampling.md.run_md`'s physical stops;
- **h(r) error**: the mean absolute difference, over bins, between the interatomic distance
  distribution h(r) (molecules) or the radial distribution function (periodic cells) of the
  NN-MD trajectory and of a reference trajectory from the same start, run once with a
  trustworthy ASE calculator and cached by content.

Both trajectories come from the one MD of alflow (`run_md`), the reference through
`CalculatorModel`. Pure science: a model, Atoms and settings in, a `ValidationReport` out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from alflow.geometry import atoms_hash
from alflow.sampling.md import MDResult, run_md
from alflow.spec import MDSettings, ValidationSpec

RECORD_EVERY = 10  # steps between frames kept for h(r)
ENERGY_BLOWUP_PER_ATOM = 5.0  # eV/atom above the start: the dynamics has blown up


def md_settings(v: ValidationSpec) -> MDSettings:
    """The MD a validation runs: Langevin at the validation temperature, no trust limit."""
    return MDSettings(temperature_K=v.temperature_K, timestep_fs=v.timestep_fs, steps=v.steps,
                      friction_per_fs=0.01, save_every=RECORD_EVERY, min_distance=v.min_distance,
                      bond_guard=v.bond_guard, energy_blowup_per_atom=ENERGY_BLOWUP_PER_ATOM)


@dataclass(frozen=True)
class StartReport:
    """One validation start: how long it stayed intact, why it stopped, and h(r)."""

    stability_time_fs: float
    stopped: str  # a `run_md` stop reason
    frames: int
    hr_error: float | None
    h_model: tuple[float, ...] | None = None
    h_ref: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ValidationReport:
    stability_time_fs: float  # mean over starts
    hr_error: float | None  # mean over starts with a reference
    starts: tuple[StartReport, ...]


def distance_distribution(atoms: Atoms, positions: np.ndarray, *, r_max: float = 6.0,
                          bins: int = 60) -> np.ndarray:
    """Normalised histogram of interatomic distances over the frames: h(r) for molecules;
    for periodic cells the minimum-image pair distances up to r_max (∝ r²·g(r))."""
    edges = np.linspace(0.0, r_max, bins + 1)
    iu, ju = np.triu_indices(len(atoms), k=1)
    hist = np.zeros(bins)
    for pos in positions:
        vec = pos[ju] - pos[iu]
        if atoms.pbc.any():
            from ase.geometry import find_mic

            vec, _ = find_mic(vec, atoms.cell, atoms.pbc)
        d = np.linalg.norm(vec, axis=1)
        hist += np.histogram(d[d < r_max], bins=edges)[0]
    total = hist.sum()
    return hist / (total * (edges[1] - edges[0])) if total else hist


def hr_error(h_model: np.ndarray, h_ref: np.ndarray) -> float:
    """Mean absolute difference over bins of two normalised distributions."""
    return float(np.mean(np.abs(np.asarray(h_model) - np.asarray(h_ref))))


def stable_positions(start: Atoms, result: MDResult, walker: int) -> np.ndarray:
    """(frames, n, 3): the start and the walker's recorded frames before it broke."""
    frames = sorted(result.frames_of(walker), key=lambda c: c.step)
    return np.array([start.positions, *(c.atoms.positions for c in frames)])


def _walker_seed(rng_seed: int, k: int) -> int:
    return int(np.random.SeedSequence([rng_seed, k]).generate_state(1)[0])


def reference_positions(start: Atoms, settings: ValidationSpec, *, rng_seed: int,
                        cache_dir: str | Path | None) -> np.ndarray:
    """The reference trajectory's stable frames from `start` (computed once per start,
    settings and seed, and cached as `<sha256>.npz` in `cache_dir`)."""
    from alflow.oracles.ase_calc import build_calculator
    from alflow.potentials.calculator import CalculatorModel

    md = md_settings(settings)
    key = hashlib.sha256(json.dumps(
        [atoms_hash(start), md.model_dump(mode="json"), settings.reference,
         settings.reference_settings, rng_seed], sort_keys=True, default=str).encode()).hexdigest()
    cache = None if cache_dir is None else Path(cache_dir) / f"{key}.npz"
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return z["positions"]
    model = CalculatorModel(lambda a: build_calculator(settings.reference, settings.reference_settings, a))
    positions = stable_positions(start, run_md(model, [start], md, rng_seed=rng_seed), 0)
    if cache is not None:
        os.makedirs(cache.parent, exist_ok=True)
        tmp = cache.with_name(f".{key}.{os.getpid()}.npz")
        np.savez(tmp, positions=positions)
        os.replace(tmp, cache)
    return positions


def validate(model, starts: Sequence[Atoms], settings: ValidationSpec, *, rng_seed: int,
             cache_dir: str | Path | None = None) -> ValidationReport:
    """NN-MD from every start in one batch, its stability time, and (with
    `settings.reference`, an ASE calculator name) the h(r) error against the reference."""
    starts = list(starts)
    if not starts:
        raise ValueError("validation needs at least one start geometry")
    md = md_settings(settings)
    result = run_md(model, starts, md, rng_seed=rng_seed)
    reports = []
    for k, (start, walker) in enumerate(zip(starts, result.walkers, strict=True)):
        traj = stable_positions(start, result, k)
        entry = {"stability_time_fs": walker.stability_time_fs(md.timestep_fs, md.steps),
                 "stopped": walker.stop_reason, "frames": int(len(traj)), "hr_error": None}
        if settings.reference:
            ref = reference_positions(start, settings, rng_seed=_walker_seed(rng_seed, k),
                                      cache_dir=cache_dir)
            grid = {"r_max": settings.r_max, "bins": settings.bins}
            h_model = distance_distribution(start, traj, **grid)
            h_ref = distance_distribution(start, ref, **grid)
            entry.update(hr_error=hr_error(h_model, h_ref), h_model=tuple(h_model.tolist()),
                         h_ref=tuple(h_ref.tolist()))
        reports.append(StartReport(**entry))
    errs = [r.hr_error for r in reports if r.hr_error is not None]
    return ValidationReport(
        stability_time_fs=float(np.mean([r.stability_time_fs for r in reports])),
        hr_error=float(np.mean(errs)) if errs else None, starts=tuple(reports))
