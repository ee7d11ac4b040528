"""Small ensembles for sampler tests: random (untrained) PaiNN members for gradient checks,
and three tiny members trained on rattled water (GFN2-xTB labels) for behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.build import molecule

from alflow.potentials.ensemble import Ensemble
from alflow.potentials.model import new_member
from alflow.potentials.train import train_member
from alflow.spec import ModelSpec, TrainingSpec

TINY = {"representation": "painn", "n_atom_basis": 16, "n_interactions": 2, "n_rbf": 8, "cutoff": 4.0}
HCO_REF = {1: -13.6, 6: -1030.0, 8: -2040.0}  # eV/atom, roughly the real scale


def random_ensemble(m: int = 3, dtype=torch.float64, seed: int = 300) -> Ensemble:
    members = [new_member(dict(TINY), [1, 6, 8], HCO_REF, seed=seed + k) for k in range(m)]
    return Ensemble(members, device="cpu", dtype=dtype)


def rattled(atoms, scale: float, seed: int):
    a = atoms.copy()
    a.positions += np.random.default_rng(seed).normal(0.0, scale, a.positions.shape)
    return a


def trained_water_ensemble(root: Path):
    """(ensemble, frames, training energies per atom): 3 members, 80 rattled waters."""
    from tblite.ase import TBLite

    calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(0)
    frames, energies, forces = [], [], []
    for _ in range(80):
        a = molecule("H2O")
        a.positions += rng.normal(0.0, 0.04, a.positions.shape)
        a.calc = calc
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
        a.calc = None
        a.info.update(charge=0, multiplicity=1)
        frames.append(a)
    model = ModelSpec(**TINY, ensemble_size=3)
    training = TrainingSpec(max_epochs=60, batch_size=8, learning_rate=5e-3, patience=60, val_fraction=0.1)
    results = [train_member(frames, energies, forces, None, model, training, seed=s,
                            workdir=root / f"m{s}", export=False) for s in range(3)]
    ens = Ensemble.load([r.checkpoint for r in results], device="cpu")
    return ens, frames, np.array(energies) / 3


def finite_difference_forces(ens: Ensemble, atoms, h: float) -> np.ndarray:
    """(M, n, 3) member forces as −∂E/∂R by central differences of each member's energy."""
    fd = np.zeros((ens.size, len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            e = ens.predict([plus, minus], members=True).energy_members
            fd[:, i, k] = -(e[:, 0] - e[:, 1]) / (2 * h)
    return fd
