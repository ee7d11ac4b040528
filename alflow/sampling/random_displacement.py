"""Random displacements of seed geometries: the baseline every smarter sampler must beat.

No ensemble is involved: the engine evaluates every candidate's uncertainty afterwards, so
random sampling costs only that one batched prediction. Noise per Cartesian coordinate:
``gaussian`` N(0, scale²) or ``uniform`` U(−scale, scale) (Å). Periodic frames are
wrapped into their cell; charge and multiplicity (atoms.info) are kept.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from alflow.sampling.base import Candidate
from alflow.spec import RandomSampler


def random_displacements(
    seeds: Sequence[Atoms], settings: RandomSampler, *, rng_seed: int, per_seed: int = 1,
    axes: Sequence[bool] = (True, True, True),
) -> list[Candidate]:
    """`per_seed` displaced copies of every seed (relation "random", parent = seed index),
    displaced along `axes` only (an ensemble's `active_axes`: a field model of x, y sees
    no z, so a z displacement is no new structure for it)."""
    rng = np.random.default_rng(rng_seed)
    mask = np.asarray(axes, dtype=float)
    out: list[Candidate] = []
    for k, seed in enumerate(seeds):
        for r in range(per_seed):
            shape = (len(seed), 3)
            if settings.distribution == "gaussian":
                d = rng.normal(0.0, settings.scale, shape)
            else:
                d = rng.uniform(-settings.scale, settings.scale, shape)
            d = d * mask
            a = seed.copy()
            a.calc = None
            a.positions = seed.positions + d
            if a.pbc.any():
                a.wrap()
            out.append(Candidate(
                atoms=a, parent=k, relation="random", step=None,
                info={"distribution": settings.distribution, "scale": settings.scale, "copy": r,
                      "max_delta": float(np.linalg.norm(d, axis=1).max()) if len(d) else 0.0},
            ))
    return out
