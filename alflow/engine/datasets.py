"""Labelled frames on disk, bit-exact: what the engine hands a training or evaluation app.

Apps get a path, not a pickle of thousands of Atoms. The file is a plain `.npz` of
concatenated arrays plus per-frame offsets, so positions (and therefore geometry hashes and
the hash-fixed train/validation split) are exactly those in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms


@dataclass
class Frames:
    atoms: list[Atoms]
    energies: np.ndarray  # (B,) eV
    forces: list[np.ndarray]  # (n_i, 3) eV/Å
    stresses: list[np.ndarray | None]  # (3, 3) eV/Å³ or None
    ids: np.ndarray  # (B,) label ids (provenance), or -1

    def __len__(self) -> int:
        return len(self.atoms)


def save_frames(path: str | Path, frames: Frames) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = np.array([len(a) for a in frames.atoms], dtype=np.int64)
    has_stress = np.array([s is not None for s in frames.stresses], dtype=bool)
    stress = np.stack([s if s is not None else np.zeros((3, 3)) for s in frames.stresses]) if len(frames) else np.zeros((0, 3, 3))
    cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))  # noqa: E731
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        n_atoms=n,
        numbers=cat([a.numbers for a in frames.atoms], (0,)).astype(np.int64),
        positions=cat([a.positions for a in frames.atoms], (0, 3)),
        cells=np.stack([a.cell.array for a in frames.atoms]) if len(frames) else np.zeros((0, 3, 3)),
        pbc=np.stack([a.pbc for a in frames.atoms]) if len(frames) else np.zeros((0, 3), bool),
        charge=np.array([a.info.get("charge", 0) for a in frames.atoms], dtype=np.int64),
        multiplicity=np.array([a.info.get("multiplicity", 1) for a in frames.atoms], dtype=np.int64),
        energies=np.asarray(frames.energies, dtype=np.float64),
        forces=cat([np.asarray(f, float) for f in frames.forces], (0, 3)),
        stress=stress,
        has_stress=has_stress,
        ids=np.asarray(frames.ids, dtype=np.int64),
    )
    tmp.replace(path)
    return path


def load_frames(path: str | Path) -> Frames:
    with np.load(path) as z:
        n = z["n_atoms"]
        cuts = np.cumsum(n)[:-1]
        numbers = np.split(z["numbers"], cuts)
        positions = np.split(z["positions"], cuts)
        forces = np.split(z["forces"], cuts)
        atoms = []
        for k in range(len(n)):
            a = Atoms(numbers=numbers[k], positions=positions[k], cell=z["cells"][k], pbc=z["pbc"][k])
            a.info["charge"] = int(z["charge"][k])
            a.info["multiplicity"] = int(z["multiplicity"][k])
            atoms.append(a)
        stresses = [z["stress"][k] if z["has_stress"][k] else None for k in range(len(n))]
        return Frames(atoms, z["energies"].copy(), list(forces), stresses, z["ids"].copy())
