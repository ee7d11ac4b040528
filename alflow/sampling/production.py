"""Production NN-MD with an ensemble: one trajectory, every frame with its uncertainty.

The integrator is `alflow.sampling.md.run_md` (BAOAB Langevin; friction 0 is NVE), not a
second one: `run_production_md` hands it a recording model that passes every call on to
the ensemble and keeps what the ensemble said about each step (positions, energy, forces,
σ_F, per-atom u_i), and reports progress. One walker calls the model once per step, so
call k is step k (a physical guard that ends the run ends the calls too).

Uncertainty is reported calibrated: σ_cal = scale · σ_F [eV/Å], the generation's
calibration scale (σ_F → expected force error) times the ensemble's spread; with
``on_uncertain="stop"`` the run stops at the first frame with σ_cal ≥ threshold (run_md's
trust_hi is threshold / scale), with ``"flag"`` it runs on and flags such frames. Either way
the flagged frames are what a campaign can label next (`--feed`).

Pure science: Atoms and numpy in, Atoms out; no database.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from alflow.sampling.md import run_md
from alflow.spec import MDSettings


@dataclass(frozen=True, eq=False)
class ProductionResult:
    frames: list[Atoms]  # every `save_every`-th step and every flagged step, in order
    flagged: list[Atoms]  # frames with σ_cal >= threshold (also in `frames`)
    steps: int  # the last step evaluated
    stop_reason: str  # run_md's: trust_hi, bond_guard, min_distance, energy_blowup, max_steps
    sigma_cal: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per evaluated step [eV/Å]


class _Recorder:
    """The ensemble behind run_md's `model` interface, keeping every step's prediction."""

    def __init__(self, ensemble, progress: Callable[[int, float], None] | None, scale: float):
        self.ensemble = ensemble
        self.progress = progress
        self.scale = scale
        self.steps: list[tuple[np.ndarray, float, np.ndarray, float, np.ndarray]] = []

    def predict(self, atoms_list, batch_size: int = 64):
        out = self.ensemble.predict(atoms_list, batch_size=batch_size)
        assert len(atoms_list) == 1, "production MD runs one walker"
        self.steps.append((atoms_list[0].positions.copy(), float(out.energy[0]), out.forces[0],
                           float(out.sigma_f2[0]), np.asarray(out.atomic_uncertainty[0])))
        if self.progress is not None:
            self.progress(len(self.steps) - 1, math.sqrt(max(float(out.sigma_f2[0]), 0.0)) * self.scale)
        return out


def run_production_md(
    ensemble,
    start: Atoms,
    settings: MDSettings,
    *,
    rng_seed: int = 0,
    threshold: float | None = None,
    calibration_scale: float = 1.0,
    on_uncertain: Literal["stop", "flag"] = "stop",
    progress: Callable[[int, float], None] | None = None,
) -> ProductionResult:
    """One MD trajectory of `ensemble` from `start` (see module docstring). Frames carry a
    SinglePointCalculator (ensemble mean energy and forces) and in `atoms.info`: step,
    time_fs, sigma_f (raw), sigma_f_calibrated, u_max, atomic_uncertainty (list), flagged."""
    scale = calibration_scale if calibration_scale and math.isfinite(calibration_scale) else 1.0
    trust_hi = math.inf
    if threshold is not None and on_uncertain == "stop":
        trust_hi = threshold / scale
    rec = _Recorder(ensemble, progress, scale)
    result = run_md(rec, [start], settings, rng_seed=rng_seed, trust_hi=trust_hi)
    walker = result.walkers[0]
    frames, flagged, sig = [], [], []
    # a frame whose energy blew up was evaluated but is not part of the trajectory
    for step, (pos, energy, forces, s2, u) in enumerate(rec.steps[: walker.steps + 1]):
        s_cal = math.sqrt(max(s2, 0.0)) * scale
        sig.append(s_cal)
        hot = threshold is not None and s_cal >= threshold
        if not hot and step % settings.save_every != 0:
            continue
        a = start.copy()
        a.positions = pos
        if a.pbc.any():
            a.wrap()
        a.calc = SinglePointCalculator(a, energy=energy, forces=forces)
        a.info.update(step=step, time_fs=step * settings.timestep_fs, sigma_f=math.sqrt(max(s2, 0.0)),
                      sigma_f_calibrated=s_cal, u_max=float(np.max(u)) if len(u) else 0.0,
                      atomic_uncertainty=[float(x) for x in u], flagged=bool(hot))
        frames.append(a)
        if hot:
            flagged.append(a)
    return ProductionResult(frames, flagged, walker.steps, walker.stop_reason, np.asarray(sig))
