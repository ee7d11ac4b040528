"""Finished work survives the orchestrator: results are kept in the run directory first.

A worker writes what it computed to the campaign's run directory (shared with the
orchestrator, as the artifact store is) *before* it reports back, so a result is never
only in flight:

- `labels/<k[:2]>/<k>.pkl` after **every oracle call**, keyed by the label's idempotency key
  (sha256 of geometry content hash and oracle method key): a label batch cut off halfway
  keeps the calls it finished, and no retry or resumed run makes them again;
- `tasks/results/<key>.pkl` for every task result, keyed by the work item's idempotency key:
  a result whose message was lost (a killed orchestrator, a worker pool wedged after a
  worker died) is read back from here instead of being recomputed;
- `tasks/started/<task_id>` when an attempt starts (which worker, when),
  `tasks/expired/<task_id>` when it ran out of time, and `tasks/abandoned/<task_id>` when
  the scheduler gave up on an attempt that had not started (the worker checks it after
  marking itself started, the scheduler checks `started` after marking it abandoned, so an
  attempt either runs or is replaced by a retry, never both): the scheduler's evidence of
  what runs, what stalls and what timed out.

Writes are atomic (temporary file + rename). The files are pickles written by this
campaign's own workers into its own run directory; do not point a run directory at files
from elsewhere.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_pickle(path: Path) -> Any | None:
    try:
        return pickle.loads(path.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError):
        return None  # absent, or torn by a crash mid-write (rename makes that unlikely)


# --------------------------------------------------------------------------- labels
def label_path(run_dir: str | Path, label_key: str) -> Path:
    return Path(run_dir) / "labels" / label_key[:2] / f"{label_key}.pkl"


def save_label(run_dir: str | Path, label_key: str, value: Any) -> None:
    _atomic_write(label_path(run_dir, label_key), pickle.dumps(value))


def load_label(run_dir: str | Path, label_key: str) -> Any | None:
    return _read_pickle(label_path(run_dir, label_key))


# ---------------------------------------------------------------------------- tasks
def result_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "tasks" / "results" / f"{key}.pkl"


def save_result(run_dir: str | Path, key: str, task_id: int, result: Any) -> None:
    _atomic_write(result_path(run_dir, key), pickle.dumps((task_id, result)))


def load_result(run_dir: str | Path, key: str) -> tuple[int, Any] | None:
    """(task id of the attempt that computed it, result), or None."""
    value = _read_pickle(result_path(run_dir, key))
    return value if isinstance(value, tuple) and len(value) == 2 else None


def _marker(run_dir: str | Path, kind: str, task_id: int) -> Path:
    return Path(run_dir) / "tasks" / kind / str(task_id)


def mark_started(run_dir: str | Path, task_id: int) -> None:
    info = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    _atomic_write(_marker(run_dir, "started", task_id), json.dumps(info).encode())


def started(run_dir: str | Path, task_id: int) -> dict[str, Any] | None:
    try:
        return json.loads(_marker(run_dir, "started", task_id).read_text())
    except (OSError, ValueError):
        return None


def mark_abandoned(run_dir: str | Path, task_id: int) -> None:
    _atomic_write(_marker(run_dir, "abandoned", task_id), b"")


def abandoned(run_dir: str | Path, task_id: int) -> bool:
    return _marker(run_dir, "abandoned", task_id).exists()


def mark_expired(run_dir: str | Path, task_id: int) -> None:
    _atomic_write(_marker(run_dir, "expired", task_id), b"")


def expired(run_dir: str | Path, task_id: int) -> bool:
    return _marker(run_dir, "expired", task_id).exists()
