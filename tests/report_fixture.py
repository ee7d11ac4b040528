"""Report test data from real campaigns, so it cannot drift from what the engine writes.

`fill_campaign` copies a finished 3-generation campaign into the test's database: a real
campaign (Cu13 clusters labelled by EMT with injected failures, a tiny PaiNN ensemble, NN-MD
and random sampling seeded from the previous selections, validation against an EMT
reference), run once per test session by the engine itself on the in-process backend and
kept as an SQLite template. `fill_unfinished_campaign` creates a campaign through the engine
and stops it in its first label step: one label task done and recorded, one still running.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from alflow.db import models as m
from alflow.db.session import get_engine, upgrade
from engine_helpers import cu_geometries

ORACLE_WORKERS = 2
GENERATIONS = 3
_DIR: Path | None = None
_TEMPLATES: dict[bool, Path] = {}


def _workdir() -> Path:
    global _DIR
    if _DIR is None:
        _DIR = Path(tempfile.mkdtemp(prefix="alflow-report-fixture-"))
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def _spec(path: Path, name: str, validation: bool, geometry_seed: int) -> Path:
    geo = cu_geometries(path.parent / f"{name}.extxyz", n=16, seed=geometry_seed)
    seeds = {"recent_seed_fraction": 1.0}  # seeds are the last selections: their next σ_F is on record
    spec = {
        "version": 1, "name": name, "seed": 3,
        "initial_geometries": [{"path": str(geo), "multiplicity": 2}],
        "oracle": {"kind": "ase", "calculator": "alflow.oracles.faulty:FaultyEMT",
                   "settings": {"fail_fraction": 0.12}},
        "model": {"representation": "painn", "n_atom_basis": 8, "n_interactions": 1, "n_rbf": 8,
                  "cutoff": 4.0, "ensemble_size": 3},
        "training": {"max_epochs": 15, "batch_size": 4, "learning_rate": 5e-3, "patience": 1000,
                     "val_fraction": 0.2},
        "samplers": [{"kind": "md", "temperature_K": 800, "timestep_fs": 2.0, "steps": 30,
                      "walkers": 4, "save_every": 10, **seeds},
                     {"kind": "random", "scale": 0.1, "seeds": 6, **seeds}],
        "selection": {"trust_lo": 0.0, "trust_hi": 100.0, "max_per_generation": 6},
        "stopping": {"max_generations": GENERATIONS},
        "evaluation": {"test_fraction": 0.3, "label_batch_size": 2},
        "validation": {"enabled": validation, "temperature_K": 300, "timestep_fs": 2.0, "steps": 40,
                       "walkers": 2, "reference": "emt"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _inline(url: str, name: str):
    from alflow.engine.backends import InlineBackend
    from alflow.engine.campaign import load_context
    from alflow.engine.scheduler import Limits, Scheduler, TaskLedger

    ctx = load_context(url, name)
    ctx.oracle_workers = ORACLE_WORKERS
    backend = InlineBackend({"oracle": ORACLE_WORKERS, "train": 2, "sample": 1})
    limits = Limits(time_limit_s={"oracle": 120, "train": 600, "sample": 600}, poll_s=0.05)
    return ctx, Scheduler(backend, TaskLedger(ctx.Session, ctx.id, "local"), ctx.run_dir, limits)


def _create(url: str, name: str, validation: bool, where: Path, geometry_seed: int = 0) -> None:
    from alflow.engine.create import create_campaign
    from alflow.spec import load_spec

    where.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    create_campaign(load_spec(_spec(where / f"{name}.yaml", name, validation, geometry_seed)), url, site="local",
                    workdir=where / "run")


def _template(validation: bool) -> Path:
    """An SQLite database holding one finished campaign (built once per session)."""
    if validation not in _TEMPLATES:
        from alflow.engine.campaign import run

        where = _workdir() / ("with-validation" if validation else "no-validation")
        url = f"sqlite:///{where / 'template.db'}"
        _create(url, "template", validation, where)
        ctx, scheduler = _inline(url, "template")
        run(ctx, scheduler)
        get_engine(url).dispose()
        _TEMPLATES[validation] = where / "template.db"
    return _TEMPLATES[validation]


def _copy(src_url: str, dst_url: str) -> None:
    """Every row of an alflow database into an empty migrated one (either backend)."""
    src, dst = get_engine(src_url), get_engine(dst_url)
    with src.connect() as a, dst.begin() as b:
        for table in m.Base.metadata.sorted_tables:
            rows = [dict(r._mapping) for r in a.execute(sa.select(table))]
            if rows:
                b.execute(table.insert(), rows)
            if dst.dialect.name == "postgresql" and "id" in table.c:
                b.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                  f"COALESCE((SELECT MAX(id) FROM {table.name}), 1))")


def fill_campaign(url: str, name: str = "cu-fixture", *, validation: bool = True) -> dict[str, Any]:
    """Copy the finished fixture campaign into `url` (empty, migrated) under `name`."""
    _copy(f"sqlite:///{_template(validation)}", url)
    with get_engine(url).begin() as c:
        c.execute(sa.update(m.Campaign).values(name=name))
        cid = c.execute(sa.select(m.Campaign.id).where(m.Campaign.name == name)).scalar_one()
        n_gen = c.execute(sa.select(sa.func.count()).select_from(m.Generation)
                          .where(m.Generation.campaign_id == cid)).scalar_one()
        label_tasks = c.execute(sa.select(sa.func.count()).select_from(m.Task)
                                .where(m.Task.campaign_id == cid, m.Task.kind == "label")).scalar_one()
    return {"name": name, "campaign_id": cid, "generations": n_gen, "label_tasks": label_tasks}


def fill_unfinished_campaign(url: str, name: str = "cu-started") -> dict[str, Any]:
    """A campaign still labelling generation 0: one label task done and recorded, one
    handed out and never heard of again (no start, no end)."""
    from alflow.engine.apps import execute
    from alflow.engine.results import Envelope
    from alflow.engine.steps import label

    where = _workdir() / f"unfinished-{name}-{len(list(_workdir().glob('unfinished-*')))}"
    _create(url, name, True, where, geometry_seed=1)  # its own geometries: none labelled yet
    ctx, scheduler = _inline(url, name)
    with ctx.Session() as s:
        gen = ctx.latest_generation(s)
        s.execute(sa.update(m.Campaign).where(m.Campaign.id == ctx.id).values(status="running"))
        s.commit()
    items = label.plan(ctx, gen)
    done, running = scheduler.ledger.open([(items[0], 1), (items[1], 1)])
    result = execute(Envelope(done, items[0].key, str(ctx.run_dir), enforce_limit=False), items[0].request)
    from alflow.engine.results import Outcome

    with ctx.Session.begin() as s:
        scheduler.ledger.close(s, [scheduler._done_row(done, result, 1)])
        label.record(s, ctx, gen, items[0], Outcome(done, result))
    return {"name": name, "campaign_id": ctx.id}
