"""Where the scheduler's attempts run: Parsl (a site's executors), or in-process (tests).

`ParslBackend` loads a site's Parsl config with Parsl's own retries off (the scheduler
retries, and records every attempt) and the block error handler off (the scheduler
replaces stalled blocks itself; a block it killed must not mark the executor bad). It
keeps the run's process record (`processes.py`) current: interchanges, local block
process groups, SLURM jobs. Every call it makes into Parsl that could block has a bound:
the interchange query has a timeout and shutdown runs in a thread that is given
`SHUTDOWN_S`, after which whatever is left is ended by the process record.

`InlineBackend` runs attempts in threads of this process, for the fast tests of steps and
scheduler (no Parsl, same `apps.execute`).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alflow.engine import apps
from alflow.engine.processes import ProcessRegistry, Proc
from alflow.engine.results import Envelope
from alflow.engine.states import TaskError

SHUTDOWN_S = 60.0
MANAGERS_TIMEOUT_S = 5.0
RECORD_EVERY_S = 2.0


def classify_exception(exc: BaseException) -> TaskError:
    name = type(exc).__name__
    if name == "WorkerLost":
        return TaskError.WORKER_LOST
    if name in ("ManagerLost", "BadStateException", "CommandClientTimeoutError", "CommandClientBadError"):
        return TaskError.MANAGER_LOST
    if isinstance(exc, apps.AbandonedAttempt) or name == "AbandonedAttempt":
        return TaskError.STALLED
    return TaskError.APP_ERROR


class ParslBackend:
    enforce_limits = True

    def __init__(self, site, run_dir: str | Path, registry: ProcessRegistry):
        self.site = site
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.dfk = None
        self._apps: dict[str, Any] = {}
        self._last_record = 0.0

    def start(self) -> None:
        import parsl
        from parsl import python_app

        from alflow.engine.sites import to_parsl_config

        self.registry.start_reaper()  # before any Parsl process exists
        config = to_parsl_config(self.site, self.run_dir)
        self.dfk = parsl.load(config)
        self._apps = {role: python_app(apps.execute, executors=[role]) for role in self.site.executors}
        self.tick(force=True)

    # ------------------------------------------------------------------- Backend
    def submit(self, role: str, envelope: Envelope, request: Any) -> Future:
        return self._apps[role](envelope, request)

    def capacity(self, role: str) -> int:
        from alflow.engine.sites import role_capacity

        return role_capacity(role, self.site.executors[role])

    def _executor(self, role: str):
        return self.dfk.executors[role]

    def live_workers(self, role: str) -> int | None:
        try:
            managers = self._executor(role).command_client.run("MANAGERS", timeout_s=MANAGERS_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - an interchange that does not answer has no workers we can use
            return 0
        return sum(int(mgr.get("worker_count", 0)) for mgr in managers if mgr.get("active", True))

    def waiting_for_resources(self, role: str) -> bool:
        """Whether a block of the role is on its way: queued, or running but its worker
        pool not connected yet."""
        try:
            status = self._executor(role).status()
        except Exception:  # noqa: BLE001 - a provider that cannot say: assume nothing is coming
            return False
        return any(not s.terminal for s in status.values())

    def replace_workers(self, role: str) -> str:
        """Cancel the role's blocks; Parsl's strategy starts new ones (min_blocks, or the
        outstanding work), and the interchange fails what the old ones held (manager lost)."""
        ex = self._executor(role)
        try:
            status = ex.status()
            jobs = [ex.blocks_to_job_id[b] for b, s in status.items()
                    if not s.terminal and ex.blocks_to_job_id.get(b) is not None]
            if jobs:
                ex.provider.cancel(jobs)
        except Exception as exc:  # noqa: BLE001 - recorded in the event; the stall rule tries again later
            return f"{role}: could not cancel blocks {jobs}: {exc}"
        return f"{role}: replaced block(s) {', '.join(map(str, jobs)) or '(none running)'}"

    def classify(self, exc: BaseException) -> TaskError:
        return classify_exception(exc)

    def tick(self, force: bool = False) -> None:
        """Keep the process record current (interchanges, local blocks, SLURM jobs)."""
        now = time.monotonic()
        if self.dfk is None or (not force and now - self._last_record < RECORD_EVERY_S):
            return
        self._last_record = now
        procs, jobs = [], []
        for role, ex in self.dfk.executors.items():
            ix = getattr(ex, "interchange_proc", None)
            if ix is not None and (p := Proc.of(ix.pid, f"{role} interchange")) is not None:
                procs.append(p)
            provider = getattr(ex, "provider", None)
            resources = getattr(provider, "resources", {}) or {}
            if type(provider).__name__ == "LocalProvider":
                for info in resources.values():
                    status = info.get("status")
                    if status is not None and status.terminal:
                        continue  # its pid may belong to someone else by now
                    pid = info.get("remote_pid")
                    if pid and (p := Proc.of(int(pid), f"{role} worker pool", group=True)) is not None:
                        procs.append(p)
            else:
                jobs += [str(j) for j in resources]
        self.registry.update(procs, jobs)

    def shutdown(self) -> list[str]:
        """Parsl's own cleanup, bounded; then end whatever the run still has."""
        if self.dfk is not None:
            self.tick(force=True)
            dfk, self.dfk = self.dfk, None
            done = threading.Event()

            def cleanup() -> None:
                try:
                    dfk.cleanup()
                except Exception:  # noqa: BLE001 - whatever is left is ended below
                    pass
                finally:
                    done.set()

            threading.Thread(target=cleanup, name="parsl-cleanup", daemon=True).start()
            done.wait(SHUTDOWN_S)
            import parsl

            try:
                parsl.clear()
            except Exception:  # noqa: BLE001 - nothing more to release
                pass
        return self.registry.close()


class InlineBackend:
    """Attempts in threads of this process: `workers` per role, no limits enforced by
    killing (that would kill the caller). For tests of steps and the scheduler."""

    enforce_limits = False

    def __init__(self, workers: dict[str, int] | None = None):
        self.workers = workers or {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.replaced: list[str] = []
        self._torch_rng = threading.Lock()

    def _pool(self, role: str) -> ThreadPoolExecutor:
        if role not in self._pools:
            self._pools[role] = ThreadPoolExecutor(self.capacity(role), thread_name_prefix=f"inline-{role}")
        return self._pools[role]

    def submit(self, role: str, envelope: Envelope, request: Any) -> Future:
        if role == "train":
            # training seeds and draws from torch's global RNG, which threads of one process
            # share: members trained side by side would interleave their draws, and one
            # campaign seed would give different ensembles from run to run
            return self._pool(role).submit(self._train_serially, envelope, request)
        return self._pool(role).submit(apps.execute, envelope, request)

    def _train_serially(self, envelope: Envelope, request: Any) -> Any:
        with self._torch_rng:
            return apps.execute(envelope, request)

    def capacity(self, role: str) -> int:
        return self.workers.get(role, 1)

    def live_workers(self, role: str) -> int | None:
        return self.capacity(role)

    def waiting_for_resources(self, role: str) -> bool:
        return False

    def replace_workers(self, role: str) -> str:
        self.replaced.append(role)
        return f"{role}: (inline) nothing to replace"

    def classify(self, exc: BaseException) -> TaskError:
        return classify_exception(exc)

    def tick(self) -> None:
        pass

    def shutdown(self) -> list[str]:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        return []
