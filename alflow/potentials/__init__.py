"""SchNetPack ensembles with uncertainty: train a member, load an ensemble, predict E, F, σ_F.

Members are PaiNN/SchNet (pair vectors within a cutoff) or, for the analytic toy
potentials, representation "coordinates": an external-field MLP of absolute positions
(model.CoordinateField), through the same API (no SchNetPack export).

Pure science (no Parsl, no database): Atoms, numpy arrays, paths and spec objects in and
out. Names are imported lazily because importing SchNetPack takes seconds, and code that
only needs e.g. `in_validation` or the calibration should not pay for it.

    train_member(...) -> TrainResult            train.py
    Ensemble.load(paths).predict(atoms_list)    ensemble.py
    EnsembleCalculator(ensemble)                calculator.py (ASE, eV / Å)
    calibrate(sigma_f, error) -> CalibrationRecord   calibration.py
    evaluate_ensemble(ensemble, atoms, E, F) -> EnsembleEvaluation   metrics.py
    save_member / load_member / export_schnetpack    checkpoint.py
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_member": "train",
    "TrainResult": "train",
    "split_indices": "split",
    "in_validation": "split",
    "fit_energy_reference": "train",
    "Ensemble": "ensemble",
    "Prediction": "ensemble",
    "TorchPrediction": "ensemble",
    "force_uncertainty": "ensemble",
    "resolve_device": "ensemble",
    "EnsembleCalculator": "calculator",
    "CalculatorModel": "calculator",
    "calibrate": "calibration",
    "CalibrationRecord": "calibration",
    "frame_force_rmse": "calibration",
    "evaluate_ensemble": "metrics",
    "EnsembleEvaluation": "metrics",
    "Errors": "metrics",
    "miscalibration_area": "metrics",
    "in_test_set": "split",
    "save_member": "checkpoint",
    "load_member": "checkpoint",
    "export_schnetpack": "checkpoint",
    "verify": "checkpoint",
    "CheckpointError": "checkpoint",
    "Member": "model",
    "new_member": "model",
    "UnknownElementError": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alflow.potentials' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alflow.potentials.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
