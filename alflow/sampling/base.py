"""What every sampler returns: candidate geometries with their uncertainty and lineage.

A sampler is a function from an ensemble, seed geometries and settings to a list of
`Candidate`s. The engine stores each candidate as a geometry (deduplicated by content
hash), a `sample` row (the uncertainty scalars) and a lineage edge to its seed, or, for a
cluster carved from a periodic candidate (`alflow.sampling.condensed`), to that frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms


@dataclass(frozen=True, eq=False)
class CarveOrigin:
    """Where a carved cluster came from: the periodic candidate (its index in the same
    candidate list), the centre atom, and the source atom of each cluster atom (−1: cap)."""

    frame: int
    centre: int
    source_indices: tuple[int, ...]
    n_caps: int


@dataclass(frozen=True, eq=False)
class Candidate:
    atoms: Atoms  # charge/multiplicity in atoms.info, as for every geometry
    parent: int  # index of the seed geometry it came from (in the seeds passed in)
    relation: str  # "md", "adversarial", "random", "carved"
    step: int | None = None  # MD step / attack iteration where the frame was taken
    sigma_f2: float | None = None  # ensemble force variance σ_F² of the frame [eV²/Å²]
    sigma_f2_initial: float | None = None  # σ_F² of the seed (attacks: before the attack)
    energy_mean: float | None = None  # ensemble mean energy [eV]
    log_p: float | None = None  # adversarial: log Boltzmann weight of the final point
    atomic_uncertainty: np.ndarray | None = None  # u_i per atom [eV²/Å²]
    info: dict[str, Any] = field(default_factory=dict)  # sampler-specific record (JSON-able)
    carved_from: CarveOrigin | None = None  # set on clusters carved from a periodic candidate
    carved_into: tuple[int, ...] | None = None  # set on a periodic candidate that was carved

    @property
    def u_max(self) -> float | None:
        u = self.atomic_uncertainty
        return None if u is None or len(u) == 0 else float(np.max(u))

    @property
    def u_mean(self) -> float | None:
        u = self.atomic_uncertainty
        return None if u is None or len(u) == 0 else float(np.mean(u))
