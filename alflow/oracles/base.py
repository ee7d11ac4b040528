"""The oracle contract: `oracle(atoms) -> Label`, plus the forked worker that isolates codes.

An oracle is as small as an ASE calculator: a callable that turns one geometry into one
`Label`. Every failure a campaign must survive (no SCF convergence, a hang, a segfault,
out of memory, bad input) comes back as a failed `Label` with an error class, never as an
exception, so the engine can store it and move on.

`ForkWorker` runs a function in a persistent forked child: the parent's imports are
inherited (paid once), and a hang or a crash costs the child, not the caller.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

import numpy as np
from ase import Atoms

from alflow.geometry import settings_hash

# Why a label failed: the one vocabulary (the label table's CHECK constraint holds it too).
ERROR_CLASSES = frozenset({
    "scf_not_converged",  # the SCF did not converge, nor with the second-order retry
    "timeout",  # past the oracle's (or the task's) time limit
    "crash",  # the process computing it died (segfault, OOM killer, a lost worker)
    "oom",  # the code ran out of memory and said so
    "invalid_input",  # the oracle cannot take this geometry or these settings
    "calculator_error",  # the code raised, or returned non-finite numbers
    "task_error",  # the labelling task failed outside the oracle (e.g. on its worker)
})


@dataclass(frozen=True)
class Problem:
    """Why an oracle cannot label a geometry: the settings field at fault ("basis",
    "method", "settings"; None: the oracle as a whole) and what is wrong, in one line."""

    field: str | None
    message: str


@dataclass(frozen=True, eq=False)
class Label:
    """One oracle result. Units: eV, eV/Å, eV/Å³ (stress only for periodic systems)."""

    status: Literal["ok", "failed"]
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    error_class: str | None = None
    error_msg: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    code: str = ""
    code_version: str = ""
    method_key: str = ""

    def __post_init__(self) -> None:
        if self.status == "ok":
            if self.energy is None or self.forces is None:
                raise ValueError("an ok label needs an energy and forces")
        elif self.status == "failed":
            if self.error_class not in ERROR_CLASSES:
                raise ValueError(f"unknown error_class {self.error_class!r}")
        else:
            raise ValueError(f"status must be 'ok' or 'failed', not {self.status!r}")
        if self.energy is not None:
            object.__setattr__(self, "energy", float(self.energy))
        for name, shape in (("forces", (-1, 3)), ("stress", (3, 3))):
            value = getattr(self, name)
            if value is not None:
                arr = np.array(value, dtype=np.float64).reshape(shape)
                arr.flags.writeable = False  # frozen means frozen
                object.__setattr__(self, name, arr)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Oracle(ABC):
    """Base of every oracle: identity (method key, method record) and the call wrapper.

    Subclasses implement `_compute(atoms) -> dict` of Label fields; the wrapper adds the
    code, version, method key and timings, so no subclass can forget them.
    """

    code: str = ""

    def __init__(self, settings: Any):
        self.settings = settings

    @property
    @abstractmethod
    def code_version(self) -> str: ...

    @abstractmethod
    def method_settings(self) -> dict:
        """The settings that change the numbers (not timeouts or threads), normalised.

        Their hash is the method key, half of a label's idempotency key: a pyscf upgrade
        or a longer timeout must not make a resumed campaign recompute its labels.
        """

    @abstractmethod
    def _compute(self, atoms: Atoms) -> dict: ...

    @cached_property
    def method_key(self) -> str:
        return settings_hash(self.method_settings())

    def method_record(self) -> dict:
        """A row for the provenance database's oracle_method table."""
        settings = self.method_settings()
        return {
            "code": self.code,
            "version": self.code_version,
            "method": settings.get("method"),
            "basis": settings.get("basis"),
            "settings": settings,
            "settings_sha256": self.method_key,
        }

    def __call__(self, atoms: Atoms) -> Label:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if len(atoms) == 0:
            fields = failed("invalid_input", "empty Atoms: there is nothing to compute")
        else:
            fields = self._compute(atoms)
        if fields["status"] == "ok" and not _finite(fields):
            kept = {k: fields[k] for k in ("cpu_s",) if k in fields}
            fields = failed("calculator_error", "non-finite energy, forces or stress", **kept)
        fields.setdefault("cpu_s", time.process_time() - cpu0)
        return Label(
            **fields,
            wall_s=time.perf_counter() - wall0,
            code=self.code,
            code_version=self.code_version,
            method_key=self.method_key,
        )

    def problem(self, atoms: Atoms) -> Problem | None:
        """Why this oracle cannot label `atoms` at all (bad settings, impossible input), or
        None. Cheap and computes nothing: lets a campaign refuse to start rather than
        record a generation of identical failures. Oracles override this one."""
        return None

    def preflight(self, atoms: Atoms) -> str | None:
        """`problem(atoms)` as a message, or None."""
        found = self.problem(atoms)
        return found.message if found else None

    def close(self) -> None:  # noqa: B027 - optional hook, most oracles hold nothing
        """Release a worker process, if the oracle has one."""

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(fields: dict) -> bool:
    values = [fields.get(k) for k in ("energy", "forces", "stress")]
    return all(np.all(np.isfinite(v)) for v in values if v is not None)


def failed(error_class: str, msg: str, **fields: Any) -> dict:
    """Label fields of a failure (for `_compute` implementations)."""
    return {"status": "failed", "error_class": error_class, "error_msg": msg, **fields}


# ------------------------------------------------------------------------- fork worker
# Test hook: set to "exit", "kill", "segv", "hang" or "oom" (e.g. with pytest's
# monkeypatch) and the worker child simulates that fault on its next job. It is read in
# the parent at each call and sent with the job, so it reaches a worker forked earlier.
_FAULT: str | None = None


def _apply_fault(fault: str | None) -> None:
    if fault == "exit":
        os._exit(13)
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "segv":
        import faulthandler

        faulthandler.disable()  # no traceback dump for a simulated segfault
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "hang":
        while True:
            time.sleep(3600)
    elif fault == "oom":
        raise MemoryError("simulated out-of-memory (test hook)")


def _rusage_cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _proc_cpu(pid: int) -> float | None:
    """Cumulative CPU seconds of a live (or zombie) process from /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _serve(conn, parent_end, fn: Callable[[Any], Any]) -> None:
    """Child main loop: one job at a time until the parent goes away."""
    parent_end.close()
    try:
        os.setpgrp()  # own process group: a timeout kills subprocesses of the calculator too
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            fault, payload = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        cpu0 = _rusage_cpu()
        try:
            _apply_fault(fault)
            reply: tuple = ("ok", fn(payload))
        except MemoryError as exc:
            reply = ("oom", f"MemoryError: {exc}")
        except BaseException as exc:  # noqa: BLE001 - everything goes back as a message
            tb = traceback.format_exc(limit=-3)
            reply = ("error", f"{type(exc).__name__}: {exc}\n{tb}")
        cpu1 = _rusage_cpu()
        try:
            conn.send((*reply, cpu1 - cpu0, cpu1))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("error", f"cannot return the result: {exc!r}", cpu1 - cpu0, cpu1))


@dataclass(frozen=True)
class WorkerResult:
    kind: Literal["ok", "error", "oom", "timeout", "crash"]
    value: Any  # fn's return value for "ok", otherwise a message
    cpu_s: float | None

    def label_fields(self) -> dict:
        """Label fields, for a worker function that returns Label fields itself."""
        if self.kind == "ok":
            return {**self.value, "cpu_s": self.cpu_s}
        error_class = "calculator_error" if self.kind == "error" else self.kind
        return failed(error_class, self.value, cpu_s=self.cpu_s)


class ForkWorker:
    """A persistent child forked from this process that runs `fn(payload)` with a time limit.

    The child is forked at first use (so it inherits everything imported by then) and
    reused. A job past its time limit gets the child's whole process group SIGKILLed; a
    child that dies mid-job (segfault, os._exit, the kernel's OOM killer) is reaped. In
    both cases the next job forks a fresh child. Calls are serialised by a lock.

    Caveats of fork: forking a process that runs other threads, or that already ran an
    OpenMP (libgomp) parallel region, can deadlock the child; keep OMP threads inside the
    worker. A daemonic process (multiprocessing.Pool worker) cannot start the child.
    """

    def __init__(self, fn: Callable[[Any], Any]):
        self._fn = fn
        self._proc = None
        self._conn = None
        self._cpu_seen = 0.0  # cumulative child CPU at its last reply
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ctx = mp.get_context("fork")
        parent_end, child_end = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_serve, args=(child_end, parent_end, self._fn), daemon=True,
            name="alflow-oracle-worker",
        )
        proc.start()
        child_end.close()
        self._proc, self._conn, self._cpu_seen = proc, parent_end, 0.0

    def _stop(self) -> int | None:
        """Kill the child (and its process group) and reap it; return its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return None
        if proc.exitcode is None:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except (ProcessLookupError, PermissionError):
                pass
        proc.join(5)
        conn.close()
        return proc.exitcode

    def run(self, payload: Any, timeout_s: float) -> WorkerResult:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._stop()
                self._start()
            try:
                self._conn.send((_FAULT, payload))
            except (BrokenPipeError, OSError) as exc:
                return WorkerResult("crash", f"worker unreachable: {exc}", None)
            if not self._conn.poll(timeout_s):
                cpu = _proc_cpu(self._proc.pid)
                self._stop()
                cpu = None if cpu is None else max(cpu - self._cpu_seen, 0.0)
                return WorkerResult(
                    "timeout", f"no result within {timeout_s:g} s; worker killed", cpu
                )
            try:
                kind, value, cpu, cpu_total = self._conn.recv()
            except (EOFError, OSError):
                code = self._stop()
                return WorkerResult("crash", _describe_exit(code), None)
            self._cpu_seen = cpu_total
            if kind == "oom":
                self._stop()  # a fresh child rather than a fragmented heap
            return WorkerResult(kind, value, cpu)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process died (exit status unknown)"
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (possibly the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"worker process killed by signal {sig}{hint}"
    return f"worker process exited with status {code} in mid-calculation"
