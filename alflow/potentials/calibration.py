"""Calibrate ensemble force uncertainty against held-out errors.

An ensemble's σ_F is a spread, not an error: members trained on the same data agree more
than they are right. A calibration record maps σ_F to eV/Å of expected error so that
selection thresholds (trust_lo / trust_hi) can be stated as errors:

- ``scale`` s: least-squares-in-variance fit, s² = Σ e² / Σ σ², so s·σ_F matches the
  RMS force error over the held-out frames;
- ``quantile`` q: split-conformal bound, the ⌈(n+1)·coverage⌉-th smallest of e/σ, so that
  for a new exchangeable frame P(e ≤ q·σ_F) ≥ coverage.

Use per-frame pairs: σ_F = sqrt(σ_F²) from `Ensemble.predict` and e = RMS over force
components of (mean prediction − reference) (`frame_force_rmse`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CalibrationRecord:
    scale: float
    quantile: float
    coverage: float
    n: int
    rmse: float  # RMS of the observed errors, eV/Å
    rms_sigma: float  # RMS of the predicted σ_F, eV/Å
    spearman: float  # rank correlation of σ_F and error: is σ informative at all?

    def expected_error(self, sigma_f):
        """s·σ_F: the RMS force error expected at this uncertainty (eV/Å)."""
        return self.scale * np.asarray(sigma_f)

    def error_bound(self, sigma_f):
        """q·σ_F: an error bound holding with probability ≥ `coverage` (eV/Å)."""
        return self.quantile * np.asarray(sigma_f)

    def sigma_for_error(self, error: float) -> float:
        """The σ_F threshold whose expected error is `error` eV/Å (σ_F² threshold: square it)."""
        return float(error) / self.scale

    def to_dict(self) -> dict:
        return asdict(self)


def frame_force_rmse(pred_forces: Sequence[np.ndarray], ref_forces: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame RMS force-component error, the quantity σ_F estimates."""
    return np.array(
        [np.sqrt(np.mean((np.asarray(p) - np.asarray(r)) ** 2)) for p, r in zip(pred_forces, ref_forces, strict=True)]
    )


def calibrate(sigma_f, error, coverage: float = 0.9) -> CalibrationRecord:
    """A calibration record from held-out (σ_F, observed error) pairs (see module doc)."""
    sigma = np.asarray(sigma_f, dtype=np.float64).ravel()
    err = np.abs(np.asarray(error, dtype=np.float64).ravel())
    if sigma.shape != err.shape or sigma.size == 0:
        raise ValueError(f"need equal, non-empty numbers of σ and errors, got {sigma.size} and {err.size}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    if np.any(sigma <= 0) or not np.all(np.isfinite(sigma)):
        raise ValueError("σ_F must be positive and finite (an ensemble of identical members has none)")
    n = sigma.size
    scale = math.sqrt(float(np.sum(err**2) / np.sum(sigma**2)))
    k = math.ceil((n + 1) * coverage)
    quantile = float(np.sort(err / sigma)[k - 1]) if k <= n else math.inf
    if n > 1 and np.ptp(sigma) > 0 and np.ptp(err) > 0:
        from scipy.stats import spearmanr

        rho = float(spearmanr(sigma, err).statistic)
    else:
        rho = math.nan
    return CalibrationRecord(
        scale=scale, quantile=quantile, coverage=float(coverage), n=int(n),
        rmse=float(np.sqrt(np.mean(err**2))), rms_sigma=float(np.sqrt(np.mean(sigma**2))),
        spearman=rho,
    )
