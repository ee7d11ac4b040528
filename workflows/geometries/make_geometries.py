"""Regenerate the initial geometries of the example campaigns (fixed seeds, reproducible).

Run from anywhere: `python workflows/geometries/make_geometries.py`. The files are
committed; this script records how they were made.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.geometry import get_distances
from ase.neighborlist import neighbor_list
from ase.units import _amu
from scipy.spatial.transform import Rotation

HERE = Path(__file__).resolve().parent

# Deep minimum of the analytic double well 10x⁴ − 10x² + 2x + 4y⁴ (alflow.oracles.analytic)
DEEP_WELL_X = -0.7526  # deep minimum of 10x^4 - 10x^2 + 2x (the shallow one is at +0.6505)


def double_well_points(n: int = 6, seed: int = 1) -> list[Atoms]:
    """A few one-atom "geometries" scattered inside the deep well only (x ≈ −0.93, y ≈ 0)."""
    rng = np.random.default_rng(seed)
    points = np.column_stack([DEEP_WELL_X + rng.normal(0, 0.05, n), rng.normal(0, 0.08, n)])
    return [Atoms("H", positions=[[x, y, 0.0]]) for x, y in points]


def ethanol_frames(n_perturbed: int = 39, sigma: float = 0.05, seed: int = 2) -> list[Atoms]:
    """Ethanol from ase.build plus copies with Gaussian displacements (σ in Å)."""
    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    base.info.clear()
    frames = [base]
    for _ in range(n_perturbed):
        copy = base.copy()
        copy.positions += rng.normal(0, sigma, copy.positions.shape)
        frames.append(copy)
    return frames


def water_box(n_side: int = 4, density: float = 0.997, min_inter: float = 1.6,
              seed: int = 3) -> Atoms:
    """n_side³ water molecules on a jittered grid, random orientations, at `density` g/cm³.

    Each molecule's orientation is redrawn until it is at least `min_inter` Å (minimum
    image) from every atom already placed, so no H···H or O···H contact is unphysical.
    """
    rng = np.random.default_rng(seed)
    water = molecule("H2O")
    water.positions -= water.positions[0]  # O at the origin
    n_mol = n_side**3
    mass_g = n_mol * water.get_masses().sum() * _amu * 1e3
    length = (mass_g / density * 1e24) ** (1 / 3)  # Å
    cell = np.eye(3) * length
    spacing = length / n_side
    grid = np.array([[i, j, k] for i in range(n_side) for j in range(n_side)
                     for k in range(n_side)], dtype=float) * spacing + spacing / 2
    placed = np.empty((0, 3))
    for centre in grid:
        centre = centre + rng.uniform(-0.15, 0.15, 3)
        for _ in range(2000):
            rot = Rotation.random(random_state=rng)
            mol = centre + rot.apply(water.positions)
            if len(placed) == 0:
                break
            _, d = get_distances(mol, placed, cell=cell, pbc=True)
            if d.min() >= min_inter:
                break
        else:
            raise RuntimeError("could not place a water molecule; lower the density")
        placed = np.vstack([placed, mol])
    box = Atoms("OH2" * n_mol, positions=placed, cell=cell, pbc=True)
    box.wrap()
    return box


def check_water_box(box: Atoms) -> tuple[float, float]:
    """(minimum intermolecular distance, minimum O–O distance), minimum image, in Å."""
    i, j, d = neighbor_list("ijd", box, 3.0)
    inter = (i // 3) != (j // 3)
    oo = inter & (box.numbers[i] == 8) & (box.numbers[j] == 8)
    return float(d[inter].min()), float(d[oo].min()) if oo.any() else float("inf")


def main() -> None:
    ase.io.write(HERE / "double_well_init.extxyz", double_well_points(), format="extxyz")
    ase.io.write(HERE / "ethanol_init.xyz", ethanol_frames(), format="extxyz")
    box = water_box()
    inter, oo = check_water_box(box)
    assert inter >= 1.5 and oo >= 2.5, (inter, oo)
    ase.io.write(HERE / "water_box_64.extxyz", box, format="extxyz")
    print(f"water box: {len(box) // 3} molecules, L = {box.cell[0, 0]:.3f} Å, "
          f"min intermolecular {inter:.2f} Å, min O–O {oo:.2f} Å")


if __name__ == "__main__":
    main()
