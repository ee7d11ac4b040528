"""A tiny finished PaiNN campaign (EMT Cu13, two members, two generations) run in-process
with the inline backend: what the model-export, load, md and README tests work on."""

from __future__ import annotations

from pathlib import Path

import yaml

from alflow.db.session import upgrade
from alflow.engine.backends import InlineBackend
from alflow.engine.campaign import load_context, run
from alflow.engine.create import create_campaign
from alflow.engine.scheduler import Limits, Scheduler, TaskLedger
from alflow.spec import load_spec


def inline_run(url: str, name: str) -> str:
    ctx = load_context(url, name)
    backend = InlineBackend({"oracle": 2, "train": 2, "sample": 1})
    limits = Limits(time_limit_s={"oracle": 120, "train": 300, "sample": 300}, retries=1,
                    stall_s=60, poll_s=0.05)
    return run(ctx, Scheduler(backend, TaskLedger(ctx.Session, ctx.id, "inline"), ctx.run_dir, limits))


def cu_spec(tmp_path: Path, name: str, generations: int = 2, **changes) -> Path:
    from engine_helpers import write_spec

    path = write_spec(tmp_path, name, generations=generations, max_epochs=15, n_initial=12)
    spec = yaml.safe_load(path.read_text())
    spec["validation"]["steps"] = 20
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section].update(values)
        else:
            spec[section] = values
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cu_campaign(tmp_path: Path, url: str, name: str = "cu_model", generations: int = 2, **changes) -> str:
    """Create and run the campaign to its stop rule; returns the stop reason."""
    upgrade(url)
    create_campaign(load_spec(cu_spec(tmp_path, name, generations, **changes)), url, site="inline",
                    workdir=tmp_path / name)
    return inline_run(url, name)
