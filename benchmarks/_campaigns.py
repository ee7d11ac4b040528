"""Run variants of a shipped workflow through the engine, one after another, for the
side-by-side benchmarks (each campaign gets its own SQLite database and run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from alflow.db.session import upgrade
from alflow.engine.campaign import run_campaign
from alflow.engine.create import create_campaign
from alflow.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def run_variant(workflow: str, name: str, edit: Callable[[dict], None], tmp: Path,
                site: Path) -> tuple[str, Path]:
    """Run workflows/`workflow` renamed to `name` after `edit(spec_dict)`; returns the
    database URL and the run directory."""
    spec = yaml.safe_load((ROOT / "workflows" / workflow).read_text())
    spec["name"] = name
    for source in spec["initial_geometries"]:
        source["path"] = str(ROOT / "workflows" / source["path"])
    edit(spec)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / (name + '.db')}"
    upgrade(url)
    workdir = tmp / name
    create_campaign(load_spec(path), url, site=str(site), workdir=workdir)
    run_campaign(name, url, site_name=str(site))
    return url, workdir
