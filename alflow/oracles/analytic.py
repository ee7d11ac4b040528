"""Analytic 2-D potentials as oracles: exact energies and forces for fast, testable campaigns.

The system is one "atom" whose x, y coordinates (Å) are the potential's arguments; z is
ignored and its force is 0. Energies are treated as eV. Several atoms are independent
particles in the same potential (energies add), which keeps batched use trivial.

- double_well: E = 10x⁴ − 10x² + 2x + 4y⁴, an asymmetric double well (roots of
  40x³ − 20x + 2): deep minimum x ≈ −0.7526 (E ≈ −3.961), shallow minimum x ≈ +0.6505
  (E ≈ −1.140), barrier x ≈ 0.1021 (E ≈ 0.101), all at y = 0.
- muller_brown: the standard Müller–Brown surface (Müller & Brown 1979),
  E = Σ_k A_k exp(a_k(x−x0_k)² + b_k(x−x0_k)(y−y0_k) + c_k(y−y0_k)²), minima about
  −146.70 at (−0.558, 1.442), −108.17 at (0.623, 0.028), −80.77 at (−0.050, 0.467).
  Its raw energies are O(100); `energy_scale=0.01` brings them to O(1) eV.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from alflow import __version__
from alflow.oracles.base import Oracle
from alflow.spec import AnalyticOracle

MB_A = np.array([-200.0, -100.0, -170.0, 15.0])
MB_a = np.array([-1.0, -1.0, -6.5, 0.7])
MB_b = np.array([0.0, 0.0, 11.0, 0.6])
MB_c = np.array([-10.0, -10.0, -6.5, 0.7])
MB_x0 = np.array([1.0, 0.0, -0.5, -1.0])
MB_y0 = np.array([0.0, 0.5, 1.5, 1.0])


def double_well(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, dE/dx, dE/dy) of 10x⁴ − 10x² + 2x + 4y⁴, elementwise."""
    e = 10 * x**4 - 10 * x**2 + 2 * x + 4 * y**4
    return e, 40 * x**3 - 20 * x + 2, 16 * y**3


def muller_brown(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, dE/dx, dE/dy) of the Müller–Brown potential with its standard parameters."""
    dx = np.asarray(x, dtype=float)[..., None] - MB_x0
    dy = np.asarray(y, dtype=float)[..., None] - MB_y0
    terms = MB_A * np.exp(MB_a * dx**2 + MB_b * dx * dy + MB_c * dy**2)
    e = terms.sum(-1)
    dedx = (terms * (2 * MB_a * dx + MB_b * dy)).sum(-1)
    dedy = (terms * (MB_b * dx + 2 * MB_c * dy)).sum(-1)
    return e, dedx, dedy


POTENTIALS = {"double_well": double_well, "muller_brown": muller_brown}


class AnalyticLabeler(Oracle):
    """`AnalyticLabeler(spec.AnalyticOracle(potential="double_well"))(atoms) -> Label`."""

    code = "analytic"

    def __init__(self, settings: AnalyticOracle):
        super().__init__(settings)
        self._potential = POTENTIALS[settings.potential]
        self._scale = settings.energy_scale

    @property
    def code_version(self) -> str:
        return f"alflow {__version__}"

    def method_settings(self) -> dict:
        return {
            "code": self.code,
            "method": self.settings.potential,
            "energy_scale": self._scale,
        }

    def energy_and_forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Total energy (eV) and forces (eV/Å, z = 0) of points at `positions` (n, 3)."""
        pos = np.asarray(positions, dtype=float).reshape(-1, 3)
        e, dedx, dedy = self._potential(pos[:, 0], pos[:, 1])
        forces = np.zeros_like(pos)
        forces[:, 0], forces[:, 1] = -dedx, -dedy
        return float(e.sum()) * self._scale, forces * self._scale

    def _compute(self, atoms: Atoms) -> dict:
        energy, forces = self.energy_and_forces(atoms.positions)
        return {"status": "ok", "energy": energy, "forces": forces}
