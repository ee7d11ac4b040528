"""Condensed phases: periodic candidates become clusters around their uncertain atoms.

A periodic frame is too big for a molecular oracle, but the model's uncertainty is local
(Roy et al., Nat Commun 2024): attribution (`attribution.py`) finds the atoms whose
environment the ensemble does not know, and carving (`carving.py`) cuts each environment
into a small, capped, non-periodic cluster. This module strings the two together on sampler
output and gives every cluster the ensemble's verdict, so a cluster is a `Candidate` like
any other, with `carved_from` saying which frame, centre atom and source atoms it came from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from ase import Atoms

from alflow.sampling.attribution import attribute, uncertain_atoms
from alflow.sampling.base import Candidate, CarveOrigin
from alflow.sampling.carving import CarvedCluster, CarveOptions, carve_clusters
from alflow.spec import CarvingSpec

_OPTION_FIELDS = ("bond_tolerance", "max_fragment_atoms", "cap_bond_lengths", "min_distance",
                  "charge", "multiplicity")


def carve_options(carving: CarvingSpec) -> CarveOptions:
    """`CarveOptions` from a campaign's carving settings (the fields both know)."""
    values = carving.model_dump()
    return CarveOptions(**{k: values[k] for k in _OPTION_FIELDS if values.get(k) is not None})


def spread_centres(frame: Atoms, n: int, rng_seed: int) -> list[int]:
    """`n` distinct centre atoms drawn uniformly (heavy atoms only, if the frame has any):
    how a periodic starting frame is labelled before any model exists."""
    heavy = np.flatnonzero(frame.numbers > 1)
    pool = heavy if len(heavy) else np.arange(len(frame))
    rng = np.random.default_rng(rng_seed)
    return [int(c) for c in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def initial_clusters(frame: Atoms, carving: CarvingSpec, radius: float, rng_seed: int) -> list[CarvedCluster]:
    """Clusters around `carving.initial_centres` spread-out centres of a starting frame."""
    centres = spread_centres(frame, carving.initial_centres, rng_seed)
    return carve_clusters(frame, centres, radius, options=carve_options(carving)).clusters


def frame_centres(ensemble, cand: Candidate, carving: CarvingSpec, rng_seed: int, position: int) -> list[int]:
    """The centre atoms of one periodic candidate: its uncertain atoms (A_j ≥ mean + z·std
    of the gradient attribution, or of u_i with `carving.use_force_variance`); with
    `carving.centres: random`, as many atoms drawn uniformly instead (`spread_centres`,
    seeded by (`rng_seed`, `position`): reproducible, and a different draw per frame).
    The random control still computes the scores, only to count: equal cluster numbers
    make the comparison one of where the clusters are, not how many."""
    if carving.use_force_variance:
        scores = np.asarray(cand.atomic_uncertainty)
    else:
        scores = attribute(ensemble, cand.atoms)
    flagged = [int(i) for i in uncertain_atoms(scores, z=carving.z_score)]
    if carving.centres == "random" and flagged:
        seed = int(np.random.SeedSequence([int(rng_seed) % 2**63, position]).generate_state(1)[0])
        return spread_centres(cand.atoms, len(flagged), seed)
    return flagged


def carve_candidates(ensemble, candidates: Sequence[Candidate], carving: CarvingSpec,
                     radius: float, rng_seed: int = 0) -> list[Candidate]:
    """Every candidate, each periodic one followed by the clusters carved around its
    centre atoms (`frame_centres`: the uncertain ones, or as many random ones). A carved
    frame gets `carved_into` (the indices of its clusters in the returned list); a cluster
    gets `carved_from` and the ensemble's σ_F², u_i and mean energy, with the frame's σ_F²
    as its `sigma_f2_initial`. `rng_seed` only matters for `carving.centres: random`."""
    options = carve_options(carving)
    out: list[Candidate] = []
    for cand in candidates:
        atoms = cand.atoms
        position = len(out)
        out.append(cand)
        if not atoms.pbc.any():
            continue
        centres = frame_centres(ensemble, cand, carving, rng_seed, position)
        clusters = carve_clusters(atoms, centres, radius, options=options).clusters
        if not clusters:
            out[position] = replace(cand, carved_into=())
            continue
        pred = ensemble.predict([c.atoms for c in clusters])
        into = []
        for j, cl in enumerate(clusters):
            into.append(len(out))
            u = np.asarray(pred.atomic_uncertainty[j])
            out.append(Candidate(
                atoms=cl.atoms, parent=cand.parent, relation="carved", step=cand.step,
                sigma_f2=float(pred.sigma_f2[j]), sigma_f2_initial=cand.sigma_f2,
                energy_mean=float(pred.energy[j]), atomic_uncertainty=u,
                info={"n_caps": int(cl.n_caps), "centre": int(cl.centre)},
                carved_from=CarveOrigin(frame=position, centre=int(cl.centre),
                                        source_indices=tuple(int(s) for s in cl.source_indices),
                                        n_caps=int(cl.n_caps)),
            ))
        out[position] = replace(cand, carved_into=tuple(into))
    return out
