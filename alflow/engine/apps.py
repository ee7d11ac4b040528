"""The functions Parsl runs on workers: thin wrappers that call science code.

Each takes small, picklable arguments (spec dicts, paths, short lists of Atoms) and returns
plain dicts with its own start/finish times and where it ran, so the orchestrator can record
the task. They never touch the database. Heavy imports happen inside the functions, so the
orchestrator can import this module cheaply, and a worker process keeps its oracle alive
between tasks (imports and PySCF's forked worker are paid once per worker).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any

import numpy as np

_ORACLES: dict[str, Any] = {}


def _where() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _oracle(spec: dict):
    from alflow.oracles import make_oracle

    key = json.dumps(spec, sort_keys=True)
    if key not in _ORACLES:
        _ORACLES[key] = make_oracle(spec)
    return _ORACLES[key]


def warm_up(role: str, oracle_spec: dict | None = None) -> dict:
    """Import what a role's tasks need (and build the oracle) before the first real task,
    so worker start-up is not charged to labelling or training."""
    started = time.time()
    if role == "oracle" and oracle_spec is not None:
        _oracle(oracle_spec)
    elif role in ("train", "sample"):
        import alflow.potentials.ensemble
        import alflow.potentials.train  # noqa: F401
    return {"started": started, "finished": time.time(), **_where()}


def label_batch(jobs: list[tuple[int, Any]], oracle_spec: dict) -> dict:
    """Label (geometry_id, Atoms) pairs with the campaign's oracle; failures are labels."""
    started = time.time()
    oracle = _oracle(oracle_spec)
    labels = []
    for geometry_id, atoms in jobs:
        lab = oracle(atoms)
        labels.append({
            "geometry_id": geometry_id, "status": lab.status, "energy": lab.energy,
            "forces": None if lab.forces is None else np.array(lab.forces),
            "stress": None if lab.stress is None else np.array(lab.stress),
            "error_class": lab.error_class, "error_msg": lab.error_msg,
            "wall_s": lab.wall_s, "cpu_s": lab.cpu_s,
        })
    return {"labels": labels, "started": started, "finished": time.time(), **_where()}


def train_member_app(dataset: str, model: dict, training: dict, seed: int, workdir: str,
                     init_checkpoint: str | None = None, init_sha256: str | None = None) -> dict:
    """Train one ensemble member on the frames in `dataset` (an `.npz` from datasets.py)."""
    started = time.time()
    from alflow.engine.datasets import load_frames
    from alflow.potentials import train_member
    from alflow.spec import ModelSpec, TrainingSpec

    frames = load_frames(dataset)
    stresses = frames.stresses if any(s is not None for s in frames.stresses) else None
    result = train_member(
        frames.atoms, frames.energies, frames.forces, stresses,
        ModelSpec(**model), TrainingSpec(**training), seed, workdir,
        init_checkpoint=init_checkpoint, init_sha256=init_sha256,
    )
    return {"checkpoint": str(result.checkpoint), "sha256": result.sha256,
            "metrics": _jsonable(result.metrics), "started": started,
            "finished": time.time(), **_where()}


def evaluate_app(checkpoints: list[str], sha256s: list[str], dataset: str) -> dict:
    """Held-out error of each member and of the ensemble, and the σ→error calibration."""
    started = time.time()
    from alflow.engine.datasets import load_frames
    from alflow.potentials import Ensemble, calibrate, frame_force_rmse

    frames = load_frames(dataset)
    ens = Ensemble.load(checkpoints, sha256s)
    pred = ens.predict(frames.atoms, members=True)
    n_atoms = np.array([len(a) for a in frames.atoms], dtype=float)
    ref_f = np.concatenate(frames.forces)

    def errors(energy, forces):
        f = np.concatenate(forces)
        return {"energy_mae": float(np.mean(np.abs(energy - frames.energies) / n_atoms)),
                "force_mae": float(np.mean(np.abs(f - ref_f))),
                "force_rmse": float(np.sqrt(np.mean((f - ref_f) ** 2)))}

    members = [errors(pred["energy_members"][m], [f[m] for f in pred["forces_members"]])
               for m in range(ens.size)]
    ensemble = errors(pred["energy"], pred["forces"])
    frame_err = frame_force_rmse(pred["forces"], frames.forces)
    try:
        cal = calibrate(pred["sigma_f"], frame_err).to_dict()
    except ValueError as exc:  # e.g. a single test frame
        cal = {"error": str(exc)}
    from alflow.validation import miscalibration_area

    scale = cal.get("scale") or 1.0
    atom_sigma = np.concatenate([np.sqrt(np.clip(u, 0, None)) for u in pred["atomic_uncertainty"]])
    residuals = (np.concatenate(pred["forces"]) - ref_f).ravel()  # atom-major, then x, y, z
    ensemble["miscalibration_area"] = miscalibration_area(residuals, np.repeat(atom_sigma * scale, 3))
    ensemble.update(
        n_frames=len(frames), calibration=_jsonable(cal),
        sigma_f=pred["sigma_f"].tolist(), frame_error=frame_err.tolist(),
    )
    return {"members": members, "ensemble": ensemble, "started": started,
            "finished": time.time(), **_where()}


def validate_app(checkpoints: list[str], sha256s: list[str], starts: list[Any], settings: dict,
                 cache_dir: str, rng_seed: int) -> dict:
    """NN-MD with the ensemble mean from fixed starts: stability time, and h(r) error
    against a reference trajectory computed once per (start, settings) and cached."""
    started = time.time()
    import hashlib

    from alflow.geometry import atoms_hash
    from alflow.potentials import Ensemble, EnsembleCalculator
    from alflow.validation import distance_distribution, hr_error, run_md

    calc = EnsembleCalculator(Ensemble.load(checkpoints, sha256s))
    md = {k: settings[k] for k in ("temperature_K", "timestep_fs", "steps", "bond_guard", "min_distance")}
    per_start = []
    for k, start in enumerate(starts):
        traj = run_md(calc, start, rng_seed=rng_seed + k, **md)
        entry = {"stability_time_fs": traj.stability_time_fs, "stopped": traj.stopped,
                 "frames": int(len(traj.positions)), "hr_error": None}
        if settings.get("reference"):
            key = hashlib.sha256(json.dumps(
                [atoms_hash(start), md, settings["reference"], settings.get("reference_settings", {}),
                 rng_seed + k], sort_keys=True).encode()).hexdigest()
            cache = os.path.join(cache_dir, f"{key}.npz")
            if os.path.exists(cache):
                ref_positions = np.load(cache)["positions"]
            else:
                from alflow.oracles.ase_calc import build_calculator

                ref_calc = build_calculator(settings["reference"], settings.get("reference_settings", {}), start)
                ref = run_md(ref_calc, start, rng_seed=rng_seed + k, **md)
                ref_positions = ref.positions
                os.makedirs(cache_dir, exist_ok=True)
                np.savez(cache + ".tmp.npz", positions=ref_positions)
                os.replace(cache + ".tmp.npz", cache)
            grid = {"r_max": settings["r_max"], "bins": settings["bins"]}
            h_model = distance_distribution(start, traj.positions, **grid)
            h_ref = distance_distribution(start, ref_positions, **grid)
            entry.update(hr_error=hr_error(h_model, h_ref), h_model=h_model.tolist(), h_ref=h_ref.tolist())
        per_start.append(entry)
    times = [e["stability_time_fs"] for e in per_start]
    errs = [e["hr_error"] for e in per_start if e["hr_error"] is not None]
    return {"stability_time_fs": float(np.mean(times)), "hr_error": float(np.mean(errs)) if errs else None,
            "starts": _jsonable(per_start), "started": started, "finished": time.time(), **_where()}


def sample_app(kind: str, sampler: dict, checkpoints: list[str], sha256s: list[str],
               seeds: list[Any], context: dict, rng_seed: int) -> dict:
    """Run one sampler on a batch of seeds; every candidate gets the ensemble's verdict
    (σ_F², per-atom u_i, mean energy) from one batched prediction."""
    started = time.time()
    from alflow.potentials import Ensemble

    ens = Ensemble.load(checkpoints, sha256s)
    records: dict[str, Any] = {}
    if kind == "random":
        from alflow.sampling.random_displacement import random_displacements
        from alflow.spec import RandomSampler

        candidates = random_displacements(seeds, RandomSampler(**sampler), rng_seed=rng_seed,
                                          axes=ens.active_axes)
    elif kind == "adversarial":
        from alflow.sampling.adversarial import attack
        from alflow.spec import AdversarialSampler

        adv = AdversarialSampler(**sampler)
        candidates = attack(ens, seeds, adv,
                            train_energies_per_atom=np.asarray(context["train_energies_per_atom"]),
                            rng_seed=rng_seed, attacks_per_seed=adv.attacks_per_seed)
    elif kind == "md":
        from alflow.sampling.md import run_md
        from alflow.spec import MDSampler

        md = MDSampler(**sampler)
        result = run_md(ens, seeds, md, trust_hi=context["trust_hi_sigma"], rng_seed=rng_seed,
                        stop_on=md.stop_on, energy_blowup_per_atom=md.energy_blowup_per_atom,
                        bond_tolerance=md.bond_tolerance, friction_per_fs=md.friction_per_fs)
        candidates = result.candidates
        records["walkers"] = _jsonable(getattr(result, "walkers", None))
    else:
        raise ValueError(f"unknown sampler kind {kind!r}")

    if candidates:
        pred = ens.predict([c.atoms for c in candidates])
        initial = ens.predict(seeds)["sigma_f2"]
        for k, c in enumerate(candidates):
            c.sigma_f2 = float(pred["sigma_f2"][k])
            c.energy_mean = float(pred["energy"][k])
            c.atomic_uncertainty = np.asarray(pred["atomic_uncertainty"][k])
            if c.sigma_f2_initial is None:
                c.sigma_f2_initial = float(initial[c.parent])
    out = [_candidate_dict(c) for c in candidates]
    if context.get("carve"):
        out = _carve(ens, out, context)
    return {"candidates": out, "records": records, "started": started,
            "finished": time.time(), **_where()}


def _candidate_dict(c) -> dict:
    return {"atoms": c.atoms, "parent": c.parent, "relation": c.relation, "step": c.step,
            "sigma_f2": c.sigma_f2, "sigma_f2_initial": c.sigma_f2_initial,
            "energy_mean": c.energy_mean, "log_p": c.log_p,
            "atomic_uncertainty": c.atomic_uncertainty, "info": _jsonable(c.info),
            "u_max": c.u_max, "u_mean": c.u_mean}


def _carve(ens, frames: list[dict], context: dict) -> list[dict]:
    """Periodic frames -> small non-periodic clusters around their uncertain atoms."""
    from alflow.sampling.attribution import attribute, uncertain_atoms
    from alflow.sampling.carving import carve_clusters

    options = carve_options(context.get("carve_options", {}))
    out = []
    for frame in frames:
        atoms = frame["atoms"]
        position = len(out)
        out.append(frame)
        if not atoms.pbc.any():
            continue
        if context.get("use_force_variance"):
            scores = np.asarray(frame["atomic_uncertainty"])
        else:
            scores = attribute(ens, atoms)
        centres = [int(i) for i in uncertain_atoms(scores, z=context.get("z_score", 2.0))]
        clusters = carve_clusters(atoms, centres, context["radius"], options=options).clusters
        frame["carved_into"] = []
        if not clusters:
            continue
        pred = ens.predict([c.atoms for c in clusters])
        for j, cl in enumerate(clusters):
            frame["carved_into"].append(len(out))
            u = np.asarray(pred["atomic_uncertainty"][j])
            out.append({
                "atoms": cl.atoms, "parent": frame["parent"], "carved_from": position,
                "relation": "carved", "step": frame["step"],
                "sigma_f2": float(pred["sigma_f2"][j]), "sigma_f2_initial": frame["sigma_f2"],
                "energy_mean": float(pred["energy"][j]), "log_p": None,
                "atomic_uncertainty": u, "u_max": float(u.max()), "u_mean": float(u.mean()),
                "carve_center": int(cl.centre), "carve_map": np.asarray(cl.source_indices),
                "info": {"n_caps": int(cl.n_caps), "centre": int(cl.centre)},
            })
    return out


def carve_options(settings: dict):
    """`CarveOptions` from the campaign's carving settings (the fields both know)."""
    from alflow.sampling.carving import CarveOptions

    keys = ("bond_tolerance", "max_fragment_atoms", "cap_bond_lengths", "min_distance",
            "charge", "multiplicity")
    return CarveOptions(**{k: settings[k] for k in keys if settings.get(k) is not None})


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays and paths -> JSON-able Python values; NaN/inf -> None (JSON has
    no such numbers, and PostgreSQL's JSONB refuses them)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
