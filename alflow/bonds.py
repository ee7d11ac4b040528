"""Covalent bonds of a geometry: the one bond detector of alflow.

MD walkers stop when a bond breaks, validation measures how long bonds survive, and carving
keeps molecules whole and caps the bonds it cuts: all three must agree on what a bond is,
so they all call `bond_list`.

A bond is a pair closer than t·(r_cov,i + r_cov,j) (ASE's covalent radii), with t the
tolerance (1.0 is ASE's `natural_cutoffs`; 1.2 is alflow's default, which keeps stretched
bonds of a hot molecule bonded), or a per-element-pair tolerance where given. Distances are
minimum image in periodic directions; a bond to a periodic image of an atom is its own edge
(a chain through the cell boundary stays visible).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii

DEFAULT_TOLERANCE = 1.2


@dataclass(frozen=True, eq=False)
class Bonds:
    """A directed bond list: each bond appears twice (i→j and j→i), sorted by i.

    `vectors[k]` = R[j] − R[i] + (lattice shift): the bond vector as it is in space, so
    `np.linalg.norm(vectors, axis=1)` are the bond lengths even across cell boundaries.
    """

    i: np.ndarray  # (E,) int
    j: np.ndarray  # (E,) int
    vectors: np.ndarray  # (E, 3) Å

    def __len__(self) -> int:
        return len(self.i)

    @property
    def lengths(self) -> np.ndarray:
        return np.linalg.norm(self.vectors, axis=1)

    def unique(self) -> Bonds:
        """Each bond once (i < j); bonds of an atom to its own periodic image are dropped."""
        keep = self.i < self.j
        return Bonds(self.i[keep], self.j[keep], self.vectors[keep])

    def offsets(self, positions: np.ndarray) -> np.ndarray:
        """The lattice shift of each edge for these `positions` (vectors − (R[j] − R[i])):
        add it to R[j] − R[i] of moved positions to follow the same image."""
        return self.vectors - (positions[self.j] - positions[self.i])


def tolerance_table(tolerance: float = DEFAULT_TOLERANCE,
                    pair_tolerance: Mapping[tuple[str, str], float] | None = None) -> np.ndarray:
    """(119, 119) tolerance by atomic numbers: `tolerance`, overridden per element pair."""
    table = np.full((119, 119), float(tolerance))
    for (a, b), value in (pair_tolerance or {}).items():
        za, zb = atomic_numbers[a], atomic_numbers[b]
        table[za, zb] = table[zb, za] = float(value)
    return table


def _neighbours(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, D_ij) within `cutoff`: vesin (O(n), ~30x ASE's speed), ASE where vesin refuses
    a cell (e.g. a zero cell vector along a periodic direction)."""
    try:
        from vesin import ase_neighbor_list

        return ase_neighbor_list("ijD", atoms, cutoff)
    except (ImportError, ValueError, RuntimeError):
        from ase.neighborlist import neighbor_list

        return neighbor_list("ijD", atoms, cutoff)


def bond_list(atoms: Atoms, tolerance: float = DEFAULT_TOLERANCE,
              pair_tolerance: Mapping[tuple[str, str], float] | None = None) -> Bonds:
    """The bonds of `atoms` (see module docstring), in O(n) time."""
    n = len(atoms)
    if n < 2:
        return Bonds(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)))
    numbers = np.asarray(atoms.numbers)
    table = tolerance_table(tolerance, pair_tolerance)
    radii = covalent_radii[numbers]
    present = np.unique(numbers)
    max_cut = float((table[np.ix_(present, present)]
                     * (covalent_radii[present][:, None] + covalent_radii[present])).max())
    i, j, vec = _neighbours(atoms, max_cut)
    d = np.linalg.norm(vec, axis=1)
    bonded = d < table[numbers[i], numbers[j]] * (radii[i] + radii[j])
    order = np.argsort(i[bonded], kind="stable")
    return Bonds(i[bonded][order].astype(int), j[bonded][order].astype(int), vec[bonded][order])
