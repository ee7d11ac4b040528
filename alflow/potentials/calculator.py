"""ASE calculator over an alflow `Ensemble`, in eV / Å (SchNetPack's own default is kcal/mol).

Results: ``energy``/``free_energy`` (mean, eV), ``forces`` (mean, eV/Å), ``stress`` (Voigt,
eV/Å³, periodic cells only), and the uncertainties ``sigma_f2`` (eV²/Å², frame scalar),
``sigma_f``, ``atomic_uncertainty`` (u_i per atom, eV²/Å²), ``energy_std`` (eV),
``sigma_f_calibrated`` (σ_F × `calibration_scale`, eV/Å: the ensemble's estimate of its
force error; σ_F itself when no scale is given); with
``members=True`` also ``energy_members`` (M,) and ``forces_members`` (M, n, 3). Every
quantity comes from one ensemble pass, so MD walkers read their uncertainty for free.

`CalculatorModel` goes the other way: any ASE calculator as a model for the batched MD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from alflow.potentials.ensemble import Ensemble, Prediction


class EnsembleCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, ensemble: Ensemble, *, members: bool = False,
                 calibration_scale: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.ensemble = ensemble
        self.members = members
        ok = calibration_scale is not None and np.isfinite(calibration_scale) and calibration_scale > 0
        self.calibration_scale = float(calibration_scale) if ok else 1.0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        if "stress" in properties and not periodic:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a periodic cell (pbc all True)")
        out = self.ensemble.predict([atoms], stress=periodic, members=self.members)
        energy = float(out.energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out.forces[0],
            "sigma_f2": float(out.sigma_f2[0]),
            "sigma_f": float(out.sigma_f[0]),
            "sigma_f_calibrated": float(out.sigma_f[0]) * self.calibration_scale,
            "atomic_uncertainty": out.atomic_uncertainty[0],
            "energy_std": float(out.energy_std[0]),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.stress[0])
        if self.members:
            self.results["energy_members"] = out.energy_members[:, 0]
            self.results["forces_members"] = out.forces_members[0]


class CalculatorModel:
    """The reverse adapter: an ASE calculator behind the `Ensemble.predict` interface, so
    the batched MD (`alflow.sampling.md.run_md`) can run a reference trajectory with any ASE
    calculator (xTB, EMT, an oracle) exactly as it runs the ensemble.

    `make_calculator(atoms)` builds one calculator per distinct structure (by atom order and
    numbers), reused for the walker's whole trajectory. Uncertainties are NaN: a reference
    has none, so it never trips trust_hi.
    """

    def __init__(self, make_calculator: Callable[[Atoms], Calculator]):
        self._make = make_calculator
        self._calcs: dict[tuple, Calculator] = {}

    def _calculator(self, atoms: Atoms) -> Calculator:
        key = (tuple(atoms.numbers.tolist()), tuple(atoms.pbc.tolist()),
               atoms.info.get("charge", 0), atoms.info.get("multiplicity", 1))
        if key not in self._calcs:
            self._calcs[key] = self._make(atoms)
        return self._calcs[key]

    def predict(self, atoms_list: Sequence[Atoms], *, batch_size: int = 0) -> Prediction:
        energies, forces = [], []
        for atoms in atoms_list:
            a = atoms.copy()
            a.calc = self._calculator(atoms)
            energies.append(float(a.get_potential_energy()))
            forces.append(np.asarray(a.get_forces(), dtype=np.float64))
        b = len(energies)
        return Prediction(
            energy=np.array(energies), energy_std=np.full(b, np.nan), sigma_f2=np.full(b, np.nan),
            forces=forces, atomic_uncertainty=[np.full(len(f), np.nan) for f in forces])
