"""The one place that submits, waits, retries, enforces time limits and watches executors.

Steps hand the scheduler `WorkItem`s; it gives back one `Outcome` per item, and nothing
in it waits without a bound:

- **Dispatch**: a queue per role (lowest `priority` first); at most `LOOKAHEAD` ×
  `capacity(role)` attempts are handed to the executor, so an attempt that was handed out
  and has not started while a worker is idle means the executor is not taking work. Each attempt gets its own task row (`tries` counts attempts of one
  idempotency key) before it is dispatched, so a worker only ever runs recorded work.
- **Durable results first**: an item whose result is already in the run directory
  (`durable.py`) is not dispatched at all; its outcome is read back ("harvested"). A
  running attempt whose result file appears but whose message does not arrive within
  `result_grace_s` is harvested the same way (a wedged worker pool cannot hide finished
  work).
- **Time limits**: every attempt has one (the site's `task_time_limit_s` for its role, or
  the spec's override). The worker ends itself at the limit (`apps.execute`); the
  scheduler's own deadline, limit + `grace_s` after the attempt started, catches the case
  where nothing reports. Both are recorded as `timeout`.
- **Stalls**: an executor with attempts handed out but not started, workers connected and
  idle, and nothing started or finished for `stall_s`, is stalled (measured: after a
  worker dies mid-task, HTEX's worker pool can stop passing work on for good). Its
  unstarted attempts are recorded `stalled`, its blocks replaced, and the work retried.
  An executor with no workers and no block on the way (none queued or starting) stalls
  the same way; a block queued in a batch system, or starting, may take `queue_wait_s`.
- **Retries**: an attempt lost for a reason that is not the task's own (worker or manager
  lost, stalled, timed out, refused at submission) is retried as a new attempt until
  `retries` retries are spent; an exception raised by the task itself is final. A lost
  attempt whose worker is still alive on this host (told to stop, it may be writing the
  oracle call it had in hand: `graceful.py`) is retried or reported only once that worker
  has exited, `SETTLE_S` at most: a retry never computes that call again, and the label
  step finds it in the run directory.

The scheduler runs on a `Backend` (Parsl in production, an in-process one for tests) and
writes only the task table; what a result means is the steps' business.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from alflow.db import models as m
from alflow.engine import durable, graceful
from alflow.engine.processes import proc_start_time
from alflow.engine.results import Envelope, Outcome
from alflow.engine.states import RETRYABLE, TaskError, TaskStatus


LOOKAHEAD = 2
# failures where the worker did not report, and may still be finishing its oracle call
UNREPORTED = (TaskError.WORKER_LOST, TaskError.MANAGER_LOST, TaskError.STALLED, TaskError.TIMEOUT)
SETTLE_S = graceful.GRACE_S + 1.0


def utc(epoch: float | None = None) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() if epoch is None else epoch, dt.UTC)


@dataclass(frozen=True)
class WorkItem:
    """One piece of work a step needs: what to run (`request`), where (`role`), under which
    idempotency `key`; `tag` is the step's own bookkeeping, handed back with the outcome."""

    kind: str
    role: str
    key: str
    request: Any
    generation_id: int | None = None
    resources: dict[str, Any] | None = None
    tag: Any = None
    priority: float = 0.0  # lower runs first


@dataclass(frozen=True)
class Limits:
    time_limit_s: dict[str, float]  # per role
    retries: int = 2
    stall_s: float = 120.0
    grace_s: float = 60.0
    result_grace_s: float = 10.0
    queue_wait_s: float = 86400.0
    poll_s: float = 0.5


class Backend(Protocol):
    """Where attempts run. `submit` must not block; its future resolves to the result or
    raises; `classify` maps such an exception to a `TaskError`."""

    enforce_limits: bool

    def submit(self, role: str, envelope: Envelope, request: Any) -> Future: ...
    def capacity(self, role: str) -> int: ...
    def live_workers(self, role: str) -> int | None: ...
    def waiting_for_resources(self, role: str) -> bool: ...
    def replace_workers(self, role: str) -> str: ...
    def classify(self, exc: BaseException) -> TaskError: ...
    def tick(self) -> None: ...


def _worker_pid(run_dir: str, task_id: int) -> int | None:
    """The pid of the worker that started attempt `task_id`, while it is alive on this host
    (not this process: the in-process backend's attempts run in the orchestrator)."""
    info = durable.started(run_dir, task_id)
    if info is None or info.get("host") != socket.gethostname() or info.get("pid") in (None, os.getpid()):
        return None
    pid = int(info["pid"])
    return pid if proc_start_time(pid) is not None else None


@dataclass
class _Attempt:
    item: WorkItem
    task_id: int
    tries: int
    future: Future | None = None
    started: float | None = None  # epoch, from the start marker
    slurm_job_id: str | None = None  # where it started, from the start marker
    result_seen: float | None = None  # monotonic time the result file was first seen


class TaskLedger:
    """The task table: a row per attempt, opened before dispatch and closed at the end."""

    def __init__(self, Session: sessionmaker[Session], campaign_id: int, site: str | None,
                 run_id: str | None = None):
        self.Session = Session
        self.campaign_id = campaign_id
        self.site = site
        self.run_id = run_id or uuid.uuid4().hex[:12]

    def open(self, attempts: list[tuple[WorkItem, int]], workers: dict[str, int] | None = None) -> list[int]:
        """Rows for attempts about to be dispatched; `resources` also records this
        orchestrator run and the role's workers (what utilisation is measured against)."""
        now = utc()
        workers = workers or {}
        rows = [{"campaign_id": self.campaign_id, "generation_id": item.generation_id,
                 "kind": item.kind, "key": item.key or None, "site": self.site,
                 "executor": item.role, "status": TaskStatus.RUNNING.value, "tries": tries,
                 "submitted_at": now,
                 "resources": {**(item.resources or {}), "run": self.run_id,
                               **({"workers": workers[item.role]} if item.role in workers else {})}}
                for item, tries in attempts]
        with self.Session.begin() as s:
            return [s.scalar(sa.insert(m.Task).values(**row).returning(m.Task.id)) for row in rows]

    def owns(self, task_id: int, key: str) -> bool:
        """Whether task `task_id` is this campaign's attempt at `key` (a durable result is
        only read back for the campaign that computed it)."""
        with self.Session() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(m.Task).where(
                m.Task.id == task_id, m.Task.key == key, m.Task.campaign_id == self.campaign_id)) == 1

    def close(self, s: Session, rows: list[dict[str, Any]]) -> None:
        if rows:
            s.execute(sa.update(m.Task), rows)  # one executemany, by primary key

    def close_now(self, rows: list[dict[str, Any]]) -> None:
        with self.Session.begin() as s:
            self.close(s, rows)


class Scheduler:
    """See the module docstring. Not thread-safe: one orchestrator thread drives it."""

    def __init__(self, backend: Backend, ledger: TaskLedger, run_dir: str | Path, limits: Limits):
        self.backend = backend
        self.ledger = ledger
        self.run_dir = str(run_dir)
        self.limits = limits
        self._queue: dict[str, list] = {}
        self._seq = itertools.count()
        self._running: dict[int, _Attempt] = {}  # by task id
        self._settling: list[tuple[float, _Attempt, TaskError, str, dict[str, Any]]] = []
        self._ready: list[tuple[WorkItem, Outcome]] = []
        self._activity: dict[str, float] = {}
        self.events: list[str] = []  # what the watchdog did, for the live display and tests

    # --------------------------------------------------------------------- public
    def submit(self, items: list[WorkItem]) -> None:
        """Queue work; an item whose result is already durable is harvested instead."""
        for item in items:
            harvested = self._harvest(item)
            if harvested is not None:
                self._ready.append((item, harvested))
            else:
                self._enqueue(item, 1)

    def busy(self) -> bool:
        return bool(self._ready or self._running or self._settling or any(self._queue.values()))

    def in_flight(self, role: str | None = None) -> int:
        return sum(1 for a in self._running.values() if role is None or a.item.role == role)

    def queued(self, role: str | None = None) -> int:
        return sum(len(q) for r, q in self._queue.items() if role is None or r == role)

    def wait(self, timeout_s: float) -> list[tuple[WorkItem, Outcome]]:
        """Finished items (possibly none) within `timeout_s`: dispatch what fits, collect
        results, and run the watchdog, until something finishes or the time is up."""
        end = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._dispatch()
            self._collect(min(self.limits.poll_s, max(0.0, end - time.monotonic())))
            self._watch()
            self.backend.tick()
            if self._ready or time.monotonic() >= end or not self.busy():
                ready, self._ready = self._ready, []
                return ready

    def drain(self) -> Iterator[list[tuple[WorkItem, Outcome]]]:
        """Batches of finished items until nothing is left. Bounded: every attempt ends by
        its deadline or a stall, and every item by its last retry."""
        while self.busy():
            batch = self.wait(60.0)
            if batch:
                yield batch

    def cancel_all(self, message: str) -> None:
        """Record every queued-and-dispatched attempt as cancelled (on interruption)."""
        rows = [{"id": a.task_id, "status": TaskStatus.CANCELLED.value, "finished_at": utc(),
                 "error_msg": message} for a in self._running.values()]
        for a in self._running.values():
            durable.mark_abandoned(self.run_dir, a.task_id)
        rows += [row for *_, row in self._settling]  # failed already: recorded as they failed
        self._settling.clear()
        self._running.clear()
        self._queue.clear()
        self.ledger.close_now(rows)

    # ------------------------------------------------------------------- internals
    def _enqueue(self, item: WorkItem, tries: int) -> None:
        heapq.heappush(self._queue.setdefault(item.role, []), (item.priority, next(self._seq), item, tries))

    def _harvest(self, item: WorkItem) -> Outcome | None:
        if not item.key:
            return None
        kept = durable.load_result(self.run_dir, item.key)
        if kept is None or not self.ledger.owns(kept[0], item.key):
            return None
        task_id, result = kept
        return Outcome(task_id, result, harvested=True, extra={"row": self._done_row(task_id, result, None, harvested=True)})

    def _done_row(self, task_id: int, result: Any, tries: int | None, harvested: bool = False) -> dict[str, Any]:
        timing = getattr(result, "timing", None)
        row = {"id": task_id, "status": TaskStatus.DONE.value, "error_class": None,
               "error_msg": ("result read back from the run directory" if harvested else None),
               "finished_at": utc(timing.finished) if timing else utc(),
               "started_at": utc(timing.started) if timing else None,
               "slurm_job_id": getattr(timing, "slurm_job_id", None)}
        if tries is not None:
            row["tries"] = tries
        return row

    def _dispatch(self) -> None:
        batch: list[tuple[WorkItem, int]] = []
        for role, queue in self._queue.items():
            # up to twice the workers: a worker that finishes finds its next attempt waiting
            # (no round trip); attempts past the workers are not counted as stalled
            room = LOOKAHEAD * self.backend.capacity(role) - self.in_flight(role)
            while queue and room > 0:
                _, _, item, tries = heapq.heappop(queue)
                batch.append((item, tries))
                room -= 1
        if not batch:
            return
        ids = self.ledger.open(batch, {role: self.backend.capacity(role) for role in {i.role for i, _ in batch}})
        now = time.monotonic()
        failed_rows = []
        for (item, tries), task_id in zip(batch, ids, strict=True):
            if self.in_flight(item.role) == 0:
                self._activity[item.role] = now  # the role starts work: give it stall_s
            limit = self.limits.time_limit_s.get(item.role)
            env = Envelope(task_id=task_id, key=item.key, run_dir=self.run_dir, time_limit_s=limit,
                           enforce_limit=self.backend.enforce_limits)
            attempt = _Attempt(item, task_id, tries)
            try:
                attempt.future = self.backend.submit(item.role, env, item.request)
            except Exception as exc:  # noqa: BLE001 - a refused submission is a recorded failure
                failed_rows.append(self._fail(attempt, TaskError.SUBMIT_ERROR, f"{type(exc).__name__}: {exc}"))
                continue
            self._running[task_id] = attempt
        if failed_rows:
            self.ledger.close_now([r for r in failed_rows if r is not None])

    def _collect(self, block_s: float) -> None:
        futures = {a.future: a for a in self._running.values() if a.future is not None}
        if not futures:
            if block_s > 0:
                time.sleep(block_s)
            return
        done, _ = wait(list(futures), timeout=block_s, return_when=FIRST_COMPLETED)
        rows = []
        for fut in done:
            attempt = futures[fut]
            if attempt.task_id not in self._running:
                continue
            try:
                result = fut.result()
            except BaseException as exc:  # noqa: BLE001 - every failure is recorded, none is fatal
                error = self.backend.classify(exc)
                if error == TaskError.WORKER_LOST and durable.expired(self.run_dir, attempt.task_id):
                    error = TaskError.TIMEOUT
                row = self._fail(attempt, error, f"{type(exc).__name__}: {exc}")
                if row is not None:
                    rows.append(row)
                continue
            self._finish(attempt, result)
        if rows:
            self.ledger.close_now(rows)

    def _finish(self, attempt: _Attempt, result: Any, harvested: bool = False) -> None:
        self._running.pop(attempt.task_id, None)
        self._activity[attempt.item.role] = time.monotonic()
        row = self._done_row(attempt.task_id, result, attempt.tries, harvested)
        self._ready.append((attempt.item, Outcome(attempt.task_id, result, harvested=harvested,
                                                  extra={"row": row})))

    def _fail(self, attempt: _Attempt, error: TaskError, message: str) -> dict[str, Any] | None:
        """Close a failed attempt: retried (its row returned for writing now) or final (its
        row travels with the outcome, written with the step's records). An attempt whose
        worker may still be finishing the oracle call in hand (told to stop, `graceful.py`)
        settles first (`_settle`): its retry or its outcome waits until that worker is gone."""
        self._running.pop(attempt.task_id, None)
        self._activity[attempt.item.role] = time.monotonic()
        row = {"id": attempt.task_id, "status": TaskStatus.FAILED.value, "error_class": error.value,
               "error_msg": message[:2000], "finished_at": utc(), "tries": attempt.tries,
               "started_at": utc(attempt.started) if attempt.started else None,
               "slurm_job_id": attempt.slurm_job_id}
        if error in UNREPORTED and _worker_pid(self.run_dir, attempt.task_id) is not None:
            self._settling.append((time.monotonic() + SETTLE_S, attempt, error, message, row))
            return None
        return self._conclude(attempt, error, message, row)

    def _settle(self) -> list[dict[str, Any]]:
        """Conclude failed attempts whose worker has exited (or had `SETTLE_S`)."""
        now, rows, waiting = time.monotonic(), [], []
        for entry in self._settling:
            deadline, attempt, error, message, row = entry
            if now < deadline and _worker_pid(self.run_dir, attempt.task_id) is not None:
                waiting.append(entry)
            elif (written := self._conclude(attempt, error, message, row)) is not None:
                rows.append(written)
        self._settling = waiting
        return rows

    def _conclude(self, attempt: _Attempt, error: TaskError, message: str,
                  row: dict[str, Any]) -> dict[str, Any] | None:
        if error in RETRYABLE and attempt.tries <= self.limits.retries:
            self._enqueue(attempt.item, attempt.tries + 1)
            return row
        self._ready.append((attempt.item, Outcome(attempt.task_id, None, error=error.value, message=message,
                                                  extra={"row": row})))
        return None

    def _watch(self) -> None:
        """Start markers, lost results, deadlines and stalls (module docstring)."""
        now_epoch, now = time.time(), time.monotonic()
        rows: list[dict[str, Any]] = []
        for attempt in list(self._running.values()):
            if attempt.started is None:
                info = durable.started(self.run_dir, attempt.task_id)
                if info is not None:
                    attempt.started = float(info["time"])
                    attempt.slurm_job_id = info.get("slurm_job_id")
                    self._activity[attempt.item.role] = now
                continue
            if attempt.item.key and durable.result_path(self.run_dir, attempt.item.key).exists():
                attempt.result_seen = attempt.result_seen or now
                if now - attempt.result_seen > self.limits.result_grace_s:
                    kept = durable.load_result(self.run_dir, attempt.item.key)
                    if kept is not None:
                        self.events.append(f"task {attempt.task_id}: result read back from the run "
                                           f"directory (its message never arrived)")
                        self._finish(attempt, kept[1], harvested=True)
                        continue
            limit = self.limits.time_limit_s.get(attempt.item.role)
            if limit is not None and now_epoch - attempt.started > limit + self.limits.grace_s:
                durable.mark_abandoned(self.run_dir, attempt.task_id)
                row = self._fail(attempt, TaskError.TIMEOUT,
                                 f"no result {limit + self.limits.grace_s:.0f} s after it started "
                                 f"(limit {limit:.0f} s); its worker did not report")
                if row is not None:
                    rows.append(row)
                self.events.append(self.backend.replace_workers(attempt.item.role))
        rows += self._settle()
        for role in {a.item.role for a in self._running.values()}:
            rows += self._check_stall(role, now)
        if rows:
            self.ledger.close_now(rows)

    def _check_stall(self, role: str, now: float) -> list[dict[str, Any]]:
        mine = [a for a in self._running.values() if a.item.role == role]
        unstarted = [a for a in mine if a.started is None]
        if not unstarted:
            return []
        idle_for = now - self._activity.get(role, now)
        live = self.backend.live_workers(role)
        live = self.backend.capacity(role) if live is None else live
        free = live - sum(1 for a in mine if a.started is not None)
        if free > 0:
            stalled = idle_for > self.limits.stall_s
        elif live == 0:
            bound = self.limits.queue_wait_s if self.backend.waiting_for_resources(role) else self.limits.stall_s
            stalled = idle_for > bound
        else:
            return []  # every worker is busy with started work: deadlines watch those
        if not stalled:
            return []
        rows = []
        for attempt in unstarted:
            durable.mark_abandoned(self.run_dir, attempt.task_id)
            if durable.started(self.run_dir, attempt.task_id) is not None:
                continue  # it started after all: it will run, or see the mark and say so
            row = self._fail(attempt, TaskError.STALLED,
                             f"the {role} executor started nothing for {idle_for:.0f} s with "
                             f"{max(free, 0)} idle worker(s); its blocks were replaced")
            if row is not None:
                rows.append(row)
        self.events.append(self.backend.replace_workers(role))
        self._activity[role] = now
        return rows
