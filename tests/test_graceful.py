"""A label worker sent SIGTERM writes the oracle call it has in hand (if it ends within the
grace) before it stops, starts no other call, and never outlives the grace.

Each case runs `apps.label_batch` in a fresh Python process (signals reach a process's main
thread, as in a Parsl worker) with the counting EMT oracle, which appends a line per
finished call; the run directory says what was kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from alflow.engine import durable

WORKER = textwrap.dedent("""
    import sys
    from ase.cluster import Icosahedron
    from alflow.engine import apps, graceful
    from alflow.engine.results import Envelope, LabelJob, LabelRequest
    from alflow.spec import ASEOracle

    run_dir, log, delay, grace = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    graceful.GRACE_S = grace
    oracle = ASEOracle(kind="ase", calculator="alflow.oracles.faulty:CountingEMT",
                       settings={"log_path": log, "delay_s": delay})
    jobs = []
    for k in range(3):
        atoms = Icosahedron("Cu", 2)
        atoms.rattle(0.05, seed=k)
        jobs.append(LabelJob(k + 1, f"{k + 1:064d}", atoms))
    apps._oracle(oracle)  # built before we say we are ready, as a warm worker has it
    print("ready", flush=True)
    apps.label_batch(LabelRequest(tuple(jobs), oracle), Envelope(7, "", run_dir))
    print("finished", flush=True)
""")


def _start(tmp_path: Path, delay: float, grace: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(tmp_path / "calls.log"),
                             str(delay), str(grace)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kept(tmp_path: Path) -> list[int]:
    return [k for k in (1, 2, 3) if durable.load_label(tmp_path, f"{k:064d}") is not None]


def _calls(tmp_path: Path) -> int:
    log = tmp_path / "calls.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_sigterm_mid_call_keeps_that_call_and_starts_no_other(tmp_path):
    proc = _start(tmp_path, delay=1.0, grace=5.0)
    time.sleep(0.4)  # inside the first call
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(timeout=20)
    assert rc == -signal.SIGTERM  # stopped by the signal, as without the deferral
    assert time.monotonic() - t0 < 3.0  # right after the call in hand, not after all three
    assert _calls(tmp_path) == 1  # the call in hand finished, no other one started
    kept = durable.load_label(tmp_path, f"{1:064d}")
    assert _kept(tmp_path) == [1] and kept.label.ok and kept.task_id == 7


def test_a_call_that_outlasts_the_grace_is_cut_off(tmp_path):
    proc = _start(tmp_path, delay=30.0, grace=0.5)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(timeout=20)
    assert rc == 128 + signal.SIGTERM  # the grace's exit: the call never finished
    assert time.monotonic() - t0 < 5.0
    assert _calls(tmp_path) == 0 and _kept(tmp_path) == []


def test_without_a_signal_the_batch_runs_as_before(tmp_path):
    proc = _start(tmp_path, delay=0.0, grace=5.0)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "finished" in out
    assert _calls(tmp_path) == 3 and _kept(tmp_path) == [1, 2, 3]


def test_a_worker_that_ignores_sigterm_goes_on_ignoring_it(tmp_path):
    code = WORKER.replace('print("ready", flush=True)',
                          'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True)')
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "calls.log"), "0.5", "0.5"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "finished" in out
    assert _calls(tmp_path) == 3 and _kept(tmp_path) == [1, 2, 3]
