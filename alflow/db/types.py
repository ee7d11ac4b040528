"""Column types for per-atom arrays.

Arrays are stored as little-endian raw bytes (float64 for coordinates, forces, stress;
uint8 for atomic numbers). That is bit-exact on every backend, about as compact as the data
can be, and streams through PostgreSQL's binary COPY without conversion. Shapes are known
from `natoms`, so the column only stores the flat buffer.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator


class PackedArray(TypeDecorator):
    """A numpy array stored as raw little-endian bytes; comes back flat (1-D)."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, dtype: str = "<f8"):
        super().__init__()
        self.dtype = np.dtype(dtype)

    def process_bind_param(self, value, dialect):
        if value is None or isinstance(value, (bytes, bytearray, memoryview)):
            return value
        return pack(value, self.dtype)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return np.frombuffer(bytes(value), dtype=self.dtype).copy()


def pack(values, dtype="<f8") -> bytes:
    """Raw little-endian bytes of an array (the on-disk form of a PackedArray)."""
    return np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()


def unpack(blob, dtype="<f8", shape=(-1,)) -> np.ndarray:
    """Inverse of `pack`."""
    return np.frombuffer(bytes(blob), dtype=np.dtype(dtype)).reshape(shape).copy()
