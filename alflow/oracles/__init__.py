"""Oracles: `oracle(atoms) -> Label`, the reference calculations a campaign learns from.

`make_oracle(settings)` builds one from a spec settings object (or its dict). Concrete
oracles live in their own modules and are imported on demand, so importing this package
does not import PySCF or tblite.
"""

from __future__ import annotations

from typing import Any

from alflow.oracles.base import ERROR_CLASSES, Label, Oracle

__all__ = ["ERROR_CLASSES", "Label", "Oracle", "make_oracle"]


def make_oracle(settings: Any) -> Oracle:
    """The oracle for a `spec.PySCFOracle | spec.ASEOracle | spec.AnalyticOracle` (or a dict
    with a "kind" key, validated by the spec model)."""
    from pydantic import TypeAdapter

    from alflow import spec

    if isinstance(settings, dict):
        settings = TypeAdapter(spec.OracleSpec).validate_python(settings)
    if isinstance(settings, spec.PySCFOracle):
        from alflow.oracles.pyscf import PySCFLabeler

        return PySCFLabeler(settings)
    if isinstance(settings, spec.ASEOracle):
        from alflow.oracles.ase_calc import ASELabeler

        return ASELabeler(settings)
    if isinstance(settings, spec.AnalyticOracle):
        from alflow.oracles.analytic import AnalyticLabeler

        return AnalyticLabeler(settings)
    raise TypeError(f"no oracle for settings of type {type(settings).__name__}")
