"""Validation beyond force error ("Forces are not enough", Fu et al. 2022).

A potential with a small held-out force error can still fall apart in MD or get the
structure wrong. Two numbers per generation say whether it does:

- **stability time**: NN-MD from a fixed start at a fixed temperature runs until the first
  frame where a bonded distance deviates more than `bond_guard` Å from its reference length,
  or two atoms come closer than `min_distance` Å (or the steps run out);
- **h(r) error**: the mean absolute difference, over bins, between the interatomic distance
  distribution h(r) (molecules) or the radial distribution function (periodic cells) of the
  NN-MD trajectory and of a reference trajectory run once with a trustworthy calculator.

Pure science: ASE calculators and Atoms in, numbers and arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.neighborlist import neighbor_list


@dataclass
class Trajectory:
    positions: np.ndarray  # (frames, n, 3) recorded every `record_every` steps, stable part only
    times_fs: np.ndarray  # (frames,)
    stability_time_fs: float  # time of the first broken frame, or the full length if none
    stopped: str  # "bond", "min_distance", "energy" or "completed"


def bonded_pairs(atoms: Atoms, tolerance: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, d0): pairs closer than tolerance·(r_cov,i + r_cov,j) and their distances."""
    cutoffs = tolerance * covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, cutoffs)
    keep = i < j
    return i[keep], j[keep], d[keep]


def _broken(atoms: Atoms, pairs, bond_guard: float, min_distance: float) -> str | None:
    i, j, d0 = pairs
    if len(i):
        d = _pair_d(atoms, i, j)
        if np.any(np.abs(d - d0) > bond_guard):
            return "bond"
    close = neighbor_list("d", atoms, min_distance)
    if len(close):
        return "min_distance"
    return None


def _pair_d(atoms: Atoms, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    vec = atoms.positions[j] - atoms.positions[i]
    if atoms.pbc.any():
        from ase.geometry import find_mic

        vec, _ = find_mic(vec, atoms.cell, atoms.pbc)
    return np.linalg.norm(vec, axis=1)


def run_md(calc, start: Atoms, *, temperature_K: float, timestep_fs: float, steps: int,
           friction_per_fs: float = 0.01, record_every: int = 10, bond_guard: float = 0.5,
           min_distance: float = 0.6, rng_seed: int = 0) -> Trajectory:
    """Langevin MD with `calc` from `start`, stopped at the first physically broken frame."""
    atoms = start.copy()
    atoms.calc = calc
    rng = np.random.default_rng(rng_seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dyn = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, rng=rng)
    pairs = bonded_pairs(start)
    e0 = atoms.get_potential_energy()
    frames, times = [atoms.positions.copy()], [0.0]
    stopped, t_stop = "completed", steps * timestep_fs
    for step in range(1, steps + 1):
        dyn.run(1)
        reason = _broken(atoms, pairs, bond_guard, min_distance)
        if reason is None and abs(atoms.get_potential_energy() - e0) > 5.0 * len(atoms):
            reason = "energy"  # 5 eV/atom above the start: the dynamics has blown up
        if reason is not None:
            stopped, t_stop = reason, step * timestep_fs
            break
        if step % record_every == 0:
            frames.append(atoms.positions.copy())
            times.append(step * timestep_fs)
    return Trajectory(np.array(frames), np.array(times), float(t_stop), stopped)


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


def miscalibration_area(residuals: np.ndarray, sigma: np.ndarray, n_levels: int = 99) -> float:
    """Area between the observed and ideal calibration curves (Tran et al. 2020): for each
    level p, the fraction of residuals inside the central Gaussian p-interval ±z·σ,
    compared with p. 0 is perfectly calibrated; 0.5 is the worst possible."""
    from scipy.stats import norm

    r = np.abs(np.asarray(residuals, float).ravel())
    s = np.asarray(sigma, float).ravel()
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0)
    if not ok.any():
        return float("nan")
    r, s = r[ok], s[ok]
    levels = np.linspace(0.01, 0.99, n_levels)
    z = norm.ppf(0.5 + levels / 2)
    observed = np.array([np.mean(r <= zz * s) for zz in z])
    return float(np.mean(np.abs(observed - levels)))
