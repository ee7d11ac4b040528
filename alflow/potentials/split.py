"""Train/validation split fixed by geometry content hash (no torch: cheap to import).

A geometry is held out iff the first 64 bits of its content hash, as a fraction of 2⁶⁴,
are below `val_fraction`. Adding data never moves an old geometry between splits, every
ensemble member sees the same split, and raising `val_fraction` only adds to the held-out
set, so validation error stays comparable across generations.
"""

from __future__ import annotations

from typing import Sequence

from ase import Atoms

from alflow.geometry import atoms_hash


def in_validation(geometry_hash: str, val_fraction: float) -> bool:
    """Whether the geometry with this content hash is held out (see module docstring)."""
    return int(geometry_hash[:16], 16) / 2.0**64 < val_fraction


def in_test_set(geometry_hash: str, test_fraction: float) -> bool:
    """Whether a geometry is held out for evaluation: hash bits 64..127 / 2⁶⁴ below
    `test_fraction`. Fixed for a geometry and independent of the train/validation split,
    which uses bits 0..63, so the test set of a campaign never changes as data arrive."""
    return int(geometry_hash[16:32], 16) / 2.0**64 < test_fraction


def split_indices(atoms_list: Sequence[Atoms], val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, validation) indices of `atoms_list`, fixed by geometry hash."""
    train, val = [], []
    for k, atoms in enumerate(atoms_list):
        (val if in_validation(atoms_hash(atoms), val_fraction) else train).append(k)
    return train, val
