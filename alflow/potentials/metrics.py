"""How wrong an ensemble is on labelled frames: member and ensemble errors, and calibration.

Held-out error is what makes generations comparable, so it is computed one way, here:
energies per atom (mixed sizes weigh alike), force components in eV/Å, the σ_F → error
calibration of `calibration.py`, and the miscalibration area of the per-component
residuals against the calibrated per-atom σ (Tran et al., 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms

from alflow.potentials.calibration import CalibrationRecord, calibrate, frame_force_rmse


@dataclass(frozen=True)
class Errors:
    energy_mae: float  # eV/atom
    force_mae: float  # eV/Å, over force components
    force_rmse: float


@dataclass(frozen=True, eq=False)
class EnsembleEvaluation:
    """Errors of each member and of the ensemble mean on `n_frames` labelled frames.

    `sigma_f` and `frame_error` are per frame (σ_F and the RMS force-component error), the
    pairs the calibration is fitted on; `calibration` is None (and `calibration_error`
    says why) when they cannot give one, e.g. a single frame.
    """

    n_frames: int
    members: tuple[Errors, ...]
    ensemble: Errors
    calibration: CalibrationRecord | None
    calibration_error: str | None
    miscalibration_area: float
    sigma_f: np.ndarray
    frame_error: np.ndarray

    @property
    def calibration_scale(self) -> float:
        """s of s·σ_F ≈ error; 1 when there is no calibration."""
        return self.calibration.scale if self.calibration is not None else 1.0


def _errors(energy: np.ndarray, forces: Sequence[np.ndarray], ref_energy: np.ndarray,
            ref_forces: np.ndarray, n_atoms: np.ndarray) -> Errors:
    f = np.concatenate(forces)
    return Errors(energy_mae=float(np.mean(np.abs(energy - ref_energy) / n_atoms)),
                  force_mae=float(np.mean(np.abs(f - ref_forces))),
                  force_rmse=float(np.sqrt(np.mean((f - ref_forces) ** 2))))


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


def evaluate_ensemble(ensemble, atoms: Sequence[Atoms], energies: np.ndarray,
                      forces: Sequence[np.ndarray]) -> EnsembleEvaluation:
    """Every member's and the ensemble's error on labelled frames (eV, eV/Å), and σ_F's
    calibration against the observed frame errors."""
    atoms = list(atoms)
    if not atoms:
        raise ValueError("no frames to evaluate on")
    pred = ensemble.predict(atoms, members=True)
    ref_e = np.asarray(energies, dtype=float)
    ref_f = np.concatenate([np.asarray(f, float) for f in forces])
    n_atoms = np.array([len(a) for a in atoms], dtype=float)
    members = tuple(
        _errors(pred.energy_members[m], [f[m] for f in pred.forces_members], ref_e, ref_f, n_atoms)
        for m in range(ensemble.size))
    ensemble_errors = _errors(pred.energy, pred.forces, ref_e, ref_f, n_atoms)
    frame_err = frame_force_rmse(pred.forces, forces)
    try:
        cal, cal_error = calibrate(pred.sigma_f, frame_err), None
    except ValueError as exc:  # e.g. a single frame, or identical members
        cal, cal_error = None, str(exc)
    scale = cal.scale if cal is not None else 1.0
    atom_sigma = np.concatenate([np.sqrt(np.clip(u, 0, None)) for u in pred.atomic_uncertainty])
    residuals = (np.concatenate(pred.forces) - ref_f).ravel()  # atom-major, then x, y, z
    area = miscalibration_area(residuals, np.repeat(atom_sigma * scale, 3))
    return EnsembleEvaluation(
        n_frames=len(atoms), members=members, ensemble=ensemble_errors, calibration=cal,
        calibration_error=cal_error, miscalibration_area=area, sigma_f=pred.sigma_f,
        frame_error=frame_err)
