"""docker/: no Docker engine runs here, so test what can be tested — the entrypoint script
against the real PostgreSQL, and the compose/Dockerfile wiring (paths, services)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def _env(url: str, **extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["ALFLOW_DB_URL"] = url
    env.update(extra)
    return env


def test_entrypoint_migrates_the_database_then_runs_the_command(pg_url):
    libpq = pg_url.replace("postgresql+psycopg://", "postgresql://")
    out = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "alflow", "db", "current"],
        env=_env(libpq), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
    tables = sa.inspect(sa.create_engine(pg_url)).get_table_names()
    assert {"campaign", "label", "geometry"} <= set(tables)


def test_entrypoint_gives_up_on_an_unreachable_database():
    out = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "true"],
        env=_env("postgresql://nobody@127.0.0.1:1/none", ALFLOW_DB_WAIT_S="1"),
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1 and "not reachable" in out.stderr


def test_compose_file_wires_alflow_to_postgres():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "alflow"}
    assert services["alflow"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["alflow"]["environment"]["ALFLOW_DB_URL"].startswith("postgresql://")
    build = services["alflow"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_dockerfile_copies_only_paths_that_exist():
    text = (DOCKER / "Dockerfile").read_text()
    sources = []
    for line in text.splitlines():
        m = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if m:
            sources += m.group(1).split()
    assert sources, "no COPY lines found"
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert missing == []


def test_dockerfile_base_image_is_a_build_argument_defaulting_to_cpu():
    text = (DOCKER / "Dockerfile").read_text()
    arg = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert arg and arg.group(1).startswith("python:3.12")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
