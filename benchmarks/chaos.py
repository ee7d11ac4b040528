"""Chaos: kill -9 a campaign at random moments, resume it, and count what the oracle did.

Each trial runs a small real campaign (Cu13 clusters, an EMT oracle that appends one line
per *finished* call to a file, a tiny PaiNN ensemble, 2 generations with validation) with
`alflow run`, SIGKILLs it at a random moment — a random step (label, train, evaluate,
validate, sample, select) of a random generation, a random delay into it — and then runs
`alflow resume` to the end. The oracle's own file, not the database, says how often each
geometry was computed:

- a geometry finished twice is a **repeated oracle call** (a kill that cut a call off does
  not count: the call never finished);
- a finished call whose geometry has no label at the end is a **lost label**;
- a campaign that does not end `finished` after its resume is a **failed campaign**.

Kills hit the orchestrator's whole process group (`--alflow-only` kills just the `alflow`
process), and after every kill the run's own Parsl processes (from its process record)
must be gone within 60 s.

    python benchmarks/chaos.py [--kills 20] [--seed 100] [--mode generational|streaming]

`run_trial` is also the engine of tests/test_chaos.py (three kills on one campaign).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from engine_helpers import alflow_cmd, write_site, write_spec  # noqa: E402

from alflow.db.session import get_engine  # noqa: E402
from alflow.engine.processes import Proc, RunRecord  # noqa: E402

STEPS = ("label", "train", "evaluate", "validate", "sample", "select")
CLEANUP_S = 60.0
TRIAL_S = 900.0


@dataclass
class KillReport:
    generation: int
    step: str
    whole_group: bool
    run_processes: int  # Parsl processes the run had recorded when it was killed
    cleanup_s: float | None  # seconds until none of them was alive (None: still alive at CLEANUP_S)


@dataclass
class TrialReport:
    finished: bool
    oracle_calls: int
    duplicate_calls: int
    labels_lost: int
    kills: list[KillReport] = field(default_factory=list)
    wall_s: float = 0.0


def chaos_spec(tmp: Path, name: str, log: Path, generations: int = 2, mode: str = "generational") -> Path:
    path = write_spec(tmp, name, generations=generations, max_epochs=20, label_batch_size=2, n_initial=12,
                      oracle={"kind": "ase", "calculator": "alflow.oracles.faulty:CountingEMT",
                              "settings": {"log_path": str(log), "delay_s": 0.4}})
    spec = yaml.safe_load(path.read_text())
    spec["validation"].update(steps=60)
    spec["scheduling"] = {"mode": mode, "retrain_every": 3}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(alflow_cmd(*args), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _state(url: str, name: str) -> tuple[int, str, int] | None:
    """(generation, step, tasks of that step running): where the campaign is now."""
    try:
        with get_engine(url).connect() as c:
            row = c.execute(sa.text(
                "SELECT g.idx, g.state, (SELECT COUNT(*) FROM task t WHERE t.generation_id = g.id "
                "AND t.kind = g.state AND t.status = 'running') FROM generation g "
                "JOIN campaign c ON c.id = g.campaign_id "
                "WHERE c.name = :n ORDER BY g.idx DESC LIMIT 1"), {"n": name}).first()
            return None if row is None else (int(row[0]), str(row[1]), int(row[2]))
    except sa.exc.DBAPIError:
        return None


def _recorded_processes(workdir: Path) -> list[Proc]:
    procs = []
    for path in (workdir / "runs").glob("*.json"):
        try:
            procs += RunRecord.from_json(path.read_text()).processes
        except (OSError, ValueError, KeyError):
            pass
    return procs


def _kill_at(proc: subprocess.Popen, url: str, name: str, workdir: Path, target: tuple[int, str],
             delay_s: float, whole_group: bool, timeout_s: float = TRIAL_S) -> KillReport | None:
    """SIGKILL once the campaign is at `target` (or past it) plus `delay_s`; None if the
    campaign ended first."""
    order = {s: k for k, s in enumerate((*STEPS, "done"))}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            return None
        st = _state(url, name)
        if st is not None:
            here, there = (st[0], order.get(st[1], 0)), (target[0], order[target[1]])
            # at the target step once its work is out (select runs in the orchestrator)
            if here > there or (here == there and (st[1] == "select" or st[2] > 0)):
                time.sleep(delay_s)
                break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"campaign {name} never reached {target}")
    if proc.poll() is not None:
        return None
    st = _state(url, name) or (*target, 0)
    procs = _recorded_processes(workdir)
    if whole_group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t1 = time.monotonic()
    cleanup = None
    while time.monotonic() - t1 < CLEANUP_S:
        if not any(p.alive() for p in procs):
            cleanup = time.monotonic() - t1
            break
        time.sleep(0.2)
    return KillReport(st[0], st[1], whole_group, len(procs), cleanup)


def _hash(positions: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(positions, float).round(6).tobytes()).hexdigest()[:16]


def count_calls(url: str, log: Path) -> tuple[int, int, int]:
    """(oracle calls, repeated calls, finished calls without a label) from the oracle's own file."""
    from alflow.db import models as m
    from alflow.db.writers import atoms_from_geometry

    lines = log.read_text().split() if log.exists() else []
    counts = collections.Counter(lines)
    with get_engine(url).connect() as c:
        labelled = {_hash(atoms_from_geometry(g).positions) for g in c.execute(
            sa.select(m.Geometry).join(m.Label, m.Label.geometry_id == m.Geometry.id)
            .where(m.Label.status == "ok")).all()}
    return len(lines), sum(n - 1 for n in counts.values()), len(set(counts) - labelled)


def run_trial(tmp: Path, name: str, kills: list[tuple[tuple[int, str], float, bool]],
              generations: int = 2, mode: str = "generational") -> TrialReport:
    """One campaign, killed at each (target (generation, step), delay, whole group) in turn,
    each kill followed by `alflow resume`; the last resume runs to the end."""
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "oracle_calls.log"
    spec = chaos_spec(tmp, name, log, generations, mode)
    site = write_site(tmp)
    url = f"sqlite:///{tmp / 'chaos.db'}"
    workdir = tmp / "alflow-runs" / name
    t0 = time.monotonic()
    proc = _start(["run", str(spec), "--site", str(site), "--db", url, "-q"], tmp)
    reports = []
    for target, delay, whole in kills:
        report = _kill_at(proc, url, name, workdir, target, delay, whole)
        if report is None:
            break
        reports.append(report)
        proc = _start(["resume", name, "--db", url, "-q"], tmp)
    try:
        out, err = proc.communicate(timeout=TRIAL_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    with get_engine(url).connect() as c:
        status = c.execute(sa.text("SELECT status FROM campaign WHERE name = :n"), {"n": name}).scalar()
    calls, dup, lost = count_calls(url, log)
    if status != "finished":
        sys.stderr.write(err[-3000:])
    return TrialReport(status == "finished", calls, dup, lost, reports, time.monotonic() - t0)


def random_kill(rng: random.Random, generations: int) -> tuple[tuple[int, str], float, bool]:
    return (rng.randrange(generations), rng.choice(STEPS)), rng.uniform(0.0, 2.5), True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="trials: one campaign, one kill each")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--alflow-only", action="store_true", help="kill only the alflow process, not its group")
    ap.add_argument("--mode", choices=("generational", "streaming"), default="generational")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.kills):
            target, delay, _ = random_kill(rng, 2)
            report = run_trial(Path(tmp) / f"trial-{k}", f"chaos_{k}", [(target, delay, not args.alflow_only)],
                               mode=args.mode)
            trials.append(report)
            kill = report.kills[0] if report.kills else None
            where = f"gen {kill.generation} {kill.step:<8}" if kill else "(ended before the kill)"
            print(f"trial {k:2d}: killed in {where} finished={report.finished} calls={report.oracle_calls} "
                  f"repeated={report.duplicate_calls} lost={report.labels_lost} "
                  f"cleanup={'-' if not kill or kill.cleanup_s is None else f'{kill.cleanup_s:.1f} s'} "
                  f"({report.wall_s:.0f} s)", flush=True)
    finished = sum(t.finished for t in trials)
    dup = sum(t.duplicate_calls for t in trials)
    lost = sum(t.labels_lost for t in trials)
    kills = [k for t in trials for k in t.kills]
    slow = sum(k.cleanup_s is None for k in kills)
    steps = collections.Counter(k.step for k in kills)
    print(f"kills by step: {dict(steps)}; processes still alive {CLEANUP_S:.0f} s after a kill: {slow}")
    print(json.dumps({"trials": len(trials), "finished": finished, "repeated": dup, "lost": lost}))
    print(f"TARGET chaos_campaigns_finished {finished} {args.kills} {'PASS' if finished == args.kills else 'MISS'}")
    print(f"TARGET chaos_duplicate_oracle_calls {dup} 0 {'PASS' if dup == 0 else 'MISS'}")
    print(f"TARGET chaos_labels_lost {lost} 0 {'PASS' if lost == 0 else 'MISS'}")
    print(f"TARGET chaos_processes_alive_after_60s {slow} 0 {'PASS' if slow == 0 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
