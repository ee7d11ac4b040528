"""EMT with injected faults, for testing how a campaign survives its oracle.

Real sites fail in four ways alflow must absorb: a calculation that raises, one that is
slow, one that hangs, and one that takes its worker process down. These ASE calculators
reproduce each on chosen geometries (picked by a stable function of the positions, so a
resumed campaign sees the same faults), through the ordinary ASE oracle path:

    oracle: {kind: ase, calculator: "alflow.oracles.faulty:FaultyEMT",
             settings: {fail_fraction: 0.2, delay_s: 0.1}}

`CountingEMT` appends one line per *finished* calculation to a file, so a test can count
oracle calls independently of the database (a geometry finished twice is a repeated
call; one cut off by a kill never reaches the file).
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
    """EMT that sleeps `delay_s`, raises on `fail_fraction` of geometries, kills its
    process (os._exit, as a segfaulting code would) on `die_fraction` of them and hangs
    (sleeps for good) on `hang_fraction`. The fractions take disjoint ranges of one
    hash: dies [0, die), hangs [die, die + hang), fails (1 − fail, 1]."""

    def __init__(self, fail_fraction: float = 0.0, die_fraction: float = 0.0,
                 hang_fraction: float = 0.0, delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.fail_fraction, self.die_fraction, self.delay_s = fail_fraction, die_fraction, delay_s
        self.hang_fraction = hang_fraction

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        u = _unit_hash(atoms if atoms is not None else self.atoms)
        if self.delay_s:
            time.sleep(self.delay_s)
        if u < self.die_fraction:
            os._exit(17)
        if u < self.die_fraction + self.hang_fraction:
            while True:
                time.sleep(3600)
        if u > 1.0 - self.fail_fraction:
            raise RuntimeError(f"injected failure (u={u:.3f})")
        super().calculate(atoms, properties, system_changes)


class CountingEMT(EMT):
    """EMT that takes `delay_s` per call and appends "<positions hash>\\n" to `log_path`
    when a call has finished (one write of one short line: atomic for O_APPEND)."""

    def __init__(self, log_path: str, delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.log_path, self.delay_s = log_path, delay_s

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if self.delay_s:
            time.sleep(self.delay_s)
        super().calculate(atoms, properties, system_changes)
        digest = hashlib.sha256((atoms if atoms is not None else self.atoms).positions.round(6).tobytes())
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{digest.hexdigest()[:16]}\n".encode())
        finally:
            os.close(fd)
