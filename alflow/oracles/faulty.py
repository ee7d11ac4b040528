"""EMT with injected faults, for testing how a campaign survives its oracle.

Real sites fail in three ways alflow must absorb: a calculation that raises, one that is
slow, and one that takes its worker process down. These ASE calculators reproduce each on
chosen geometries (picked by a stable function of the positions, so a resumed campaign
sees the same faults), through the ordinary ASE oracle path:

    oracle: {kind: ase, calculator: "alflow.oracles.faulty:FaultyEMT",
             settings: {fail_fraction: 0.2, delay_s: 0.1}}
"""

from __future__ import annotations

import hashlib
import os
import time

from ase.calculators.emt import EMT


def _unit_hash(atoms) -> float:
    digest = hashlib.sha256(atoms.positions.round(4).tobytes()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


class FaultyEMT(EMT):
    """EMT that sleeps `delay_s`, raises on `fail_fraction` of geometries and kills its
    process (os._exit, as a segfaulting code would) on `die_fraction` of them."""

    def __init__(self, fail_fraction: float = 0.0, die_fraction: float = 0.0,
                 delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.fail_fraction, self.die_fraction, self.delay_s = fail_fraction, die_fraction, delay_s

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        u = _unit_hash(atoms if atoms is not None else self.atoms)
        if self.delay_s:
            time.sleep(self.delay_s)
        if u < self.die_fraction:
            os._exit(17)
        if u > 1.0 - self.fail_fraction:
            raise RuntimeError(f"injected failure (u={u:.3f})")
        super().calculate(atoms, properties, system_changes)
