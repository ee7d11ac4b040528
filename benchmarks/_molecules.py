"""What the molecule benchmarks (ammonia_inversion.py, ethanol_efficiency.py) share: the
samplers they compare at one oracle budget, and a runner for campaigns on the in-process
backend (the engine's steps and apps, in threads: no worker start-up per campaign).

Adversarial defaults for molecules (README, "Choosing adversarial settings for a
molecule"), the same in both benchmarks and in workflows/ethanol.yaml, chosen before any
run here and not tuned: kT = 0.1 eV/atom (p(X) relative to the training minimum; about
2x the spread of the per-atom training energies of a molecule rattled at 500 K, so the
attack is not pinned in the known well), 40 Adam steps of 0.01 Å, initial displacement
σ₀ = 0.02 Å, |δ| clamped at 0.2 Å per coordinate, 16 seeds per generation.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MOLECULE_ADVERSARIAL = {"kind": "adversarial", "kT_eV": 0.1, "steps": 40, "learning_rate": 0.01,
                        "init_std": 0.02, "max_displacement": 0.2, "seeds": 16, "remove_rigid": True}
MOLECULE_MD = {"kind": "md", "temperature_K": 500, "timestep_fs": 0.5, "friction_per_fs": 0.01,
               "steps": 400, "walkers": 4, "save_every": 10, "min_distance": 0.6, "bond_guard": 0.5}
MOLECULE_RANDOM = {"kind": "random", "scale": 0.1, "distribution": "gaussian", "seeds": 24}
STRATEGIES = {"adversarial": [MOLECULE_ADVERSARIAL], "md": [MOLECULE_MD], "random": [MOLECULE_RANDOM]}


def run_inline(spec: dict, tmp: Path, shared_reference: Path) -> str:
    """Create and run the campaign `spec` (a dict) in its own SQLite database on the
    in-process backend; the reference MD cache is `shared_reference` for every campaign
    (same reference settings and seed: computed once, and so is the test set drawn from
    it). Returns the database URL."""
    from alflow.db.session import upgrade
    from alflow.engine.backends import InlineBackend
    from alflow.engine.campaign import load_context, run
    from alflow.engine.create import create_campaign
    from alflow.engine.scheduler import Limits, Scheduler, TaskLedger
    from alflow.spec import load_spec

    name = spec["name"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / (name + '.db')}"
    upgrade(url)
    workdir = tmp / name
    workdir.mkdir(parents=True, exist_ok=True)
    shared_reference.mkdir(parents=True, exist_ok=True)
    (workdir / "validation-reference").symlink_to(shared_reference, target_is_directory=True)
    create_campaign(load_spec(path), url, site="inline", workdir=workdir)
    ctx = load_context(url, name)
    backend = InlineBackend({"oracle": 1, "train": 1, "sample": 1})
    limits = Limits(time_limit_s={"oracle": 600, "train": 1800, "sample": 1800}, retries=1,
                    stall_s=600, poll_s=0.05)
    run(ctx, Scheduler(backend, TaskLedger(ctx.Session, ctx.id, "inline"), ctx.run_dir, limits))
    return url


GENERATION_ROWS = """
    SELECT g.idx AS generation, e.force_mae, e.energy_mae, e.stability_time_fs AS stability,
           e.survival_fraction AS survival, e.hr_error, e.profile_mae, e.barrier_error,
           (SELECT COUNT(*) FROM label l JOIN task t ON t.id = l.task_id
            JOIN generation g2 ON g2.id = t.generation_id WHERE g2.idx <= g.idx) AS calls
    FROM generation g LEFT JOIN model_eval e ON e.generation_id = g.id AND e.model_id IS NULL
         AND e.eval_set = 'test'
    WHERE g.state = 'done' ORDER BY g.idx"""


def mean_se(values) -> tuple[float, float, int]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"), len(v)


def fmt(values, digits: int = 3) -> str:
    m, se, n = mean_se(values)
    return f"{m:.{digits}f}±{se:.{digits}f}" if n > 1 else f"{m:.{digits}f}"
