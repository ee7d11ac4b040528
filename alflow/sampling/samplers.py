"""One entry point for every sampler: settings in, candidates with the ensemble's verdict out.

`run_sampler` picks the sampler by its settings' kind (`md`, `adversarial`, `random`), runs
it on a batch of seeds, and gives every candidate the ensemble's own σ_F², u_i and mean
energy from one batched prediction (and its seed's σ_F² where the sampler did not record
one), so every frame is judged by the same numbers whichever sampler proposed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from ase import Atoms

from alflow.sampling.base import Candidate
from alflow.sampling.md import WalkerRecord
from alflow.spec import AdversarialSampler, MDSampler, RandomSampler


@dataclass(frozen=True, eq=False)
class SamplerOutput:
    candidates: list[Candidate]
    walkers: list[WalkerRecord] = field(default_factory=list)  # MD only


def with_verdict(ensemble, candidates: Sequence[Candidate], seeds: Sequence[Atoms]) -> list[Candidate]:
    """Candidates with the ensemble's σ_F², u_i and mean energy (one batched prediction)."""
    candidates = list(candidates)
    if not candidates:
        return []
    pred = ensemble.predict([c.atoms for c in candidates])
    initial = ensemble.predict(list(seeds)).sigma_f2
    return [replace(c, sigma_f2=float(pred.sigma_f2[k]), energy_mean=float(pred.energy[k]),
                    atomic_uncertainty=np.asarray(pred.atomic_uncertainty[k]),
                    sigma_f2_initial=(float(initial[c.parent]) if c.sigma_f2_initial is None
                                      else c.sigma_f2_initial))
            for k, c in enumerate(candidates)]


def run_sampler(ensemble, settings: MDSampler | AdversarialSampler | RandomSampler,
                seeds: Sequence[Atoms], *, rng_seed: int,
                train_energies_per_atom: np.ndarray, trust_hi: float) -> SamplerOutput:
    """Run one sampler on `seeds`. `trust_hi` (eV/Å of σ_F, uncalibrated) stops MD walkers;
    `train_energies_per_atom` gives the attack its Boltzmann weight."""
    seeds = list(seeds)
    walkers: list[WalkerRecord] = []
    if isinstance(settings, RandomSampler):
        from alflow.sampling.random_displacement import random_displacements

        candidates = random_displacements(seeds, settings, rng_seed=rng_seed, axes=ensemble.active_axes)
    elif isinstance(settings, AdversarialSampler):
        from alflow.sampling.adversarial import attack

        candidates = attack(ensemble, seeds, settings,
                            train_energies_per_atom=np.asarray(train_energies_per_atom),
                            rng_seed=rng_seed)
    elif isinstance(settings, MDSampler):
        from alflow.sampling.md import run_md

        result = run_md(ensemble, seeds, settings, rng_seed=rng_seed, trust_hi=trust_hi)
        candidates, walkers = result.candidates, result.walkers
    else:
        raise TypeError(f"no sampler for settings of type {type(settings).__name__}")
    return SamplerOutput(with_verdict(ensemble, candidates, seeds), walkers)
