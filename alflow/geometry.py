"""Content identity of a geometry.

A geometry is identified by what a quantum-chemistry code would see: atomic numbers,
positions (rounded to 1e-5 Å so float noise does not make new identities), cell, periodic
flags, charge and spin multiplicity. The hash is the dedupe key in the database and half
of the label idempotency key, so it must never change for stored data.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
from ase import Atoms

HASH_VERSION = b"alflow-geometry-v1"
POSITION_DECIMALS = 5  # 1e-5 Å


def _rounded_ints(values: np.ndarray) -> bytes:
    """Round to 1e-5 and return little-endian int64 bytes (no -0.0 vs 0.0 ambiguity)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 10**POSITION_DECIMALS)
    return scaled.astype("<i8").tobytes()


def content_hash(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
    pbc: tuple[bool, bool, bool] | np.ndarray = (False, False, False),
    charge: int = 0,
    multiplicity: int = 1,
) -> str:
    """sha256 hex digest of a geometry's identity (see module docstring)."""
    numbers = np.asarray(numbers, dtype="<i8")
    positions = np.asarray(positions, dtype=np.float64).reshape(len(numbers), 3)
    pbc_flags = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    cell_arr = np.zeros((3, 3)) if cell is None or not any(pbc_flags) else np.asarray(cell, float)
    h = hashlib.sha256(HASH_VERSION)
    h.update(struct.pack("<q", len(numbers)))
    h.update(numbers.tobytes())
    h.update(_rounded_ints(positions))
    h.update(_rounded_ints(cell_arr.reshape(3, 3)))
    h.update(bytes(pbc_flags))
    h.update(struct.pack("<qq", int(charge), int(multiplicity)))
    return h.hexdigest()


def charge_and_multiplicity(atoms: Atoms) -> tuple[int, int]:
    """Charge and multiplicity stored on an Atoms in `atoms.info` (defaults 0 and 1)."""
    return int(atoms.info.get("charge", 0)), int(atoms.info.get("multiplicity", 1))


def atoms_hash(atoms: Atoms) -> str:
    """`content_hash` of an ASE Atoms, reading charge/multiplicity from `atoms.info`."""
    charge, mult = charge_and_multiplicity(atoms)
    return content_hash(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, charge, mult
    )


def settings_hash(settings: dict) -> str:
    """sha256 of a JSON-able settings dict in canonical form (sorted keys, no spaces)."""
    import json

    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (artifacts, imported label files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
