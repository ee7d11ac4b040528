"""Atoms -> flat batched graphs (neighbour lists) in SchNetPack's input layout.

One job: turn geometries into index tensors once, so training can re-batch cached
per-geometry graphs without rebuilding neighbour lists, and every ensemble member shares
one neighbour list per prediction. Vesin builds the lists: it handles periodic cells of
any size (SchNetPack's `TorchNeighborList` does not, through the ASE converter) and mixed
periodicity; ASE's list is the fallback for cells vesin refuses (e.g. a zero cell vector
in a periodic direction).

Pair convention (as SchNetPack): r_ij = R[idx_j] - R[idx_i] + offsets, full list (both
i->j and j->i), `offsets` = integer shifts @ cell, so energies depend on positions only
through r_ij and forces/virials follow from dE/dr_ij.

`cutoff=None` builds no pairs (empty index arrays): for models of absolute positions
(`model.CoordinateField`), which need only the atoms, their geometry index and the cell.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from ase import Atoms


@dataclass
class GeometryGraph:
    """One geometry's neighbour list as numpy arrays (cached by the trainer)."""

    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64
    idx_i: np.ndarray  # (p,) int64
    idx_j: np.ndarray  # (p,) int64
    offsets: np.ndarray  # (p, 3) float64, Cartesian
    cell: np.ndarray  # (3, 3)
    pbc: np.ndarray  # (3,) bool


@dataclass
class Graph:
    """A batch of B geometries, N atoms, P pairs, as flat torch tensors."""

    numbers: torch.Tensor  # (N,) long
    positions: torch.Tensor  # (N, 3)
    idx_i: torch.Tensor  # (P,) long
    idx_j: torch.Tensor  # (P,) long
    offsets: torch.Tensor  # (P, 3)
    idx_m: torch.Tensor  # (N,) long: geometry of each atom
    n_atoms: torch.Tensor  # (B,) long
    cell: torch.Tensor  # (B, 3, 3)
    pbc: torch.Tensor  # (B, 3) bool

    @property
    def n_graphs(self) -> int:
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Graph:
        """Move to a device; cast the float tensors (positions, offsets, cell) to `dtype`."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[f.name] = t.to(device) if device is not None else t
        return Graph(**out)

    def split(self, values: torch.Tensor | np.ndarray, dim: int = 0) -> list:
        """Split a per-atom array (atoms along `dim`) into one piece per geometry."""
        sizes = self.n_atoms.tolist()
        if isinstance(values, torch.Tensor):
            return list(torch.split(values, sizes, dim=dim))
        return np.split(values, np.cumsum(sizes)[:-1], axis=dim)


def neighbour_list(
    numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list (i, j, Cartesian offsets) within `cutoff` Å."""
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if not pbc.any():
        box = np.zeros((3, 3))
    else:
        box = cell
    try:
        from vesin import NeighborList

        i, j, shifts = NeighborList(cutoff=float(cutoff), full_list=True).compute(
            points=positions, box=box, periodic=pbc if pbc.any() else False, quantities="ijS"
        )
    except (ValueError, RuntimeError):
        if not pbc.any():
            raise
        from ase.neighborlist import neighbor_list as ase_neighbor_list

        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        i, j, shifts = ase_neighbor_list("ijS", atoms, float(cutoff))
    offsets = np.asarray(shifts, dtype=np.float64) @ cell if pbc.any() else np.zeros((len(i), 3))
    return i.astype(np.int64), j.astype(np.int64), offsets


def geometry_graph(
    atoms: Atoms, cutoff: float | None, positions: np.ndarray | None = None
) -> GeometryGraph:
    """Neighbour list of one Atoms (optionally at other `positions`); no pairs if `cutoff` is None."""
    pos = np.asarray(atoms.positions if positions is None else positions, dtype=np.float64)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"periodic geometry {atoms.get_chemical_formula()} has a singular cell")
    if cutoff is None:
        i, j, off = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    else:
        i, j, off = neighbour_list(atoms.numbers, pos, cell, pbc, cutoff)
    return GeometryGraph(
        numbers=np.asarray(atoms.numbers, dtype=np.int64), positions=pos, idx_i=i, idx_j=j,
        offsets=off, cell=cell, pbc=pbc,
    )


def collate(graphs: Sequence[GeometryGraph]) -> Graph:
    """Concatenate geometry graphs into one batch (atom indices shifted per geometry)."""
    if len(graphs) == 0:
        raise ValueError("cannot build a batch of zero geometries")
    n = np.array([len(g.numbers) for g in graphs], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    idx_i = np.concatenate([g.idx_i + s for g, s in zip(graphs, start)])
    idx_j = np.concatenate([g.idx_j + s for g, s in zip(graphs, start)])
    return Graph(
        numbers=torch.from_numpy(np.concatenate([g.numbers for g in graphs])),
        positions=torch.from_numpy(np.concatenate([g.positions for g in graphs])),
        idx_i=torch.from_numpy(idx_i),
        idx_j=torch.from_numpy(idx_j),
        offsets=torch.from_numpy(np.concatenate([g.offsets for g in graphs])),
        idx_m=torch.from_numpy(np.repeat(np.arange(len(graphs), dtype=np.int64), n)),
        n_atoms=torch.from_numpy(n),
        cell=torch.from_numpy(np.stack([g.cell for g in graphs])),
        pbc=torch.from_numpy(np.stack([g.pbc for g in graphs])),
    )


def build_graph(
    atoms_list: Sequence[Atoms], cutoff: float | None, positions: Sequence[np.ndarray] | None = None
) -> Graph:
    """Neighbour lists of many geometries as one batch."""
    if positions is None:
        return collate([geometry_graph(a, cutoff) for a in atoms_list])
    return collate([geometry_graph(a, cutoff, p) for a, p in zip(atoms_list, positions, strict=True)])
