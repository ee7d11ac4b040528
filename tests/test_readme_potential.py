"""The README's "Use your potential" commands, run as written (issue 16): the bash block
line by line (`alflow` is `python -m alflow.cli`, `export` sets the environment) and the
Python block as a script, in a directory holding a tiny finished campaign (inline backend,
EMT Cu13) under the README's campaign name and database URL, and a `start.xyz`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ase.cluster import Icosahedron
from ase.io import read, write
from model_helpers import cu_campaign

ROOT = Path(__file__).resolve().parent.parent


def section_blocks(heading: str) -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    part = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", part, re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def test_use_your_potential_commands_run_as_written(tmp_path):
    blocks = section_blocks("Use your potential")
    bash = [ln.strip() for ln in blocks["bash"][0].splitlines() if ln.strip()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    exports = dict(ln.removeprefix("export ").split("=", 1) for ln in bash if ln.startswith("export "))
    env.update(exports)
    url = exports["ALFLOW_DB_URL"]
    assert url.startswith("sqlite:///") and not url.startswith("sqlite:////")  # relative: under tmp_path
    name = shlex.split(next(ln for ln in bash if ln.startswith("alflow model list")))[3]
    (tmp_path / "alflow-demo").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the README's relative database path
    try:
        assert cu_campaign(tmp_path, url, name, training={"max_epochs": 40}).startswith("max_generations reached")
    finally:
        os.chdir(cwd)
    start = Icosahedron("Cu", noshells=2)
    start.info["multiplicity"] = 2  # Cu13: an odd electron count
    write(tmp_path / "start.xyz", start, format="extxyz")
    for line in bash:
        if line.startswith("export "):
            continue
        args = shlex.split(line)
        assert args[0] == "alflow", line
        r = subprocess.run([sys.executable, "-m", "alflow.cli", *args[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (line, r.stderr[-2000:])
        if args[1] == "md":
            md_out = r.stdout
    # the run may end early on a physical guard (a tiny Cu13 model, bond_guard 0.5 Å): every
    # step it made is in the trajectory, with its time and uncertainty
    n, steps = map(int, re.search(r"wrote (\d+) frames \((\d+) steps", md_out).groups())
    frames = read(tmp_path / "production.traj", ":")
    assert len(frames) == n == steps + 1 > 10 and frames[-1].info["time_fs"] == steps * 0.5
    assert all(f.info["sigma_f_calibrated"] >= 0 for f in frames)
    assert (tmp_path / "ethanol-potential" / "manifest.json").is_file()
    script = tmp_path / "snippet.py"
    script.write_text(blocks["python"][0])
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    energy, shape, sigma = r.stdout.split(maxsplit=2)
    assert float(energy) != 0 and shape.startswith("(13,") and float(sigma.split()[-1]) >= 0
