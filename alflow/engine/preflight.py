"""Checks that run before anything is written: can this campaign's oracle label its own
starting geometries at all (bad settings, impossible input)?"""

from __future__ import annotations

from alflow.errors import InputError
from alflow.spec import LoadedSpec


def preflight(loaded: LoadedSpec) -> None:
    """Refuse a campaign whose oracle cannot label its own starting geometries."""
    from alflow.oracles import make_oracle

    oracle = make_oracle(loaded.spec.oracle)
    try:
        for atoms in loaded.geometries:
            if atoms.pbc.any() and loaded.spec.carving.enabled:
                continue  # labelled as carved clusters, not whole
            problem = oracle.preflight(atoms)
            if problem:
                raise InputError(f"field 'oracle': {problem}", source=str(loaded.path))
    finally:
        oracle.close()
