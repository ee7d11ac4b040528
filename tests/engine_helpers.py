"""Tiny campaigns for engine tests: an EMT Cu cluster, a tiny PaiNN ensemble, a local site
with short heartbeats and a short stall bound, so a dead worker or a wedged worker pool is
noticed in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from ase.cluster import Icosahedron
from ase.io import write

ROOT = Path(__file__).resolve().parent.parent


def cu_geometries(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = Icosahedron("Cu", noshells=2)  # 13 atoms
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        frames.append(a)
    write(path, frames, format="extxyz")
    return path


def write_site(tmp_path: Path, retries: int = 1, oracle_workers: int = 2, stall_s: float = 15.0) -> Path:
    site = {
        "name": "test-local", "retries": retries,
        "heartbeat_period_s": 2, "heartbeat_threshold_s": 6, "stall_timeout_s": stall_s,
        "executors": {
            "oracle": {"workers_per_node": oracle_workers, "task_time_limit_s": 600},
            "train": {"workers_per_node": 1, "accelerators": None, "task_time_limit_s": 600},
            "sample": {"workers_per_node": 1, "task_time_limit_s": 600},
        },
    }
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(site))
    return p


def write_spec(tmp_path: Path, name: str, *, oracle: dict | None = None, generations: int = 2,
               max_epochs: int = 20, label_batch_size: int = 2, n_initial: int = 12,
               samplers: list | None = None) -> Path:
    geo = cu_geometries(tmp_path / f"{name}_init.extxyz", n=n_initial)
    spec = {
        "version": 1, "name": name, "seed": 1,
        "initial_geometries": [{"path": geo.name, "multiplicity": 2}],  # Cu13: 377 electrons
        "oracle": oracle or {"kind": "ase", "calculator": "emt"},
        "model": {"representation": "painn", "n_atom_basis": 8, "n_interactions": 1,
                  "n_rbf": 8, "cutoff": 4.0, "ensemble_size": 2},
        "training": {"max_epochs": max_epochs, "batch_size": 4, "learning_rate": 5e-3,
                     "patience": 1000, "val_fraction": 0.2},
        "samplers": samplers or [{"kind": "random", "scale": 0.1, "seeds": 6}],
        "selection": {"trust_lo": 0.0, "trust_hi": 100.0, "max_per_generation": 4},
        "stopping": {"max_generations": generations},
        "evaluation": {"test_fraction": 0.25, "label_batch_size": label_batch_size},
        "validation": {"enabled": True, "temperature_K": 300, "timestep_fs": 2.0, "steps": 40,
                       "walkers": 2, "reference": "emt"},
        "site": "local",
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def alflow_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "alflow.cli", *args]


def run_alflow(*args: str, cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(alflow_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)
