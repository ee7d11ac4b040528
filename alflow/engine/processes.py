"""No process of a run outlives it: a record of what each run started, and a reaper.

Parsl's interchanges are children of the orchestrator, but its local worker pools run in
process groups of their own and its SLURM blocks on other nodes; when the orchestrator is
killed (`kill -9`, a node's OOM killer) none of them is told. Measured before this module:
three interchanges and three worker pools (26 processes, 2.8 GiB) alive 10 minutes after
the `alflow` process was killed, and still taking tasks.

So every run writes `<workdir>/runs/<run_id>.json`: the orchestrator (pid and kernel start
time, so a recycled pid is never mistaken for it), every interchange, every local block's
process group and every SLURM job. Two things read it:

- the **reaper**, a small process in its own session started with the run: it blocks on a
  pipe whose only writer is the orchestrator, so it wakes the moment the orchestrator dies
  (for any reason, even SIGKILL of the orchestrator's whole process group), ends what the
  record lists (SIGTERM, then SIGKILL after `GRACE_S`; `scancel` for SLURM jobs) and
  removes the record;
- `reap_stale_runs` at the start of every `alflow run/resume`: anything a previous run of
  the campaign left behind (its reaper was killed too, the machine rebooted) is ended
  before the new run starts, and a run whose orchestrator is still alive is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

GRACE_S = 5.0  # between SIGTERM and SIGKILL
SCANCEL_TIMEOUT_S = 30.0


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie holds its pid but runs nothing
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Proc:
    """A process we started, identified by pid and start time; `group` to end its whole
    process group (a worker pool and its workers), not just the process."""

    pid: int
    start: int
    what: str
    group: bool = False

    @classmethod
    def of(cls, pid: int, what: str, group: bool = False) -> Proc | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start, what, group)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


@dataclass
class RunRecord:
    run_id: str
    host: str
    orchestrator: Proc
    processes: list[Proc] = field(default_factory=list)
    slurm_jobs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        d = json.loads(text)
        return cls(run_id=d["run_id"], host=d["host"], orchestrator=Proc(**d["orchestrator"]),
                   processes=[Proc(**p) for p in d["processes"]], slurm_jobs=list(d["slurm_jobs"]))


def _signal(proc: Proc, sig: int) -> None:
    try:
        if proc.group:
            os.killpg(os.getpgid(proc.pid), sig)
        else:
            os.kill(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_processes(procs: list[Proc], grace_s: float = GRACE_S) -> list[str]:
    """SIGTERM every live one, SIGKILL what is left after `grace_s`; returns what was ended."""
    live = [p for p in procs if p.alive()]
    for p in live:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.alive() for p in live):
        time.sleep(0.1)
    for p in live:
        if p.alive():
            _signal(p, signal.SIGKILL)
    return [f"{p.what} (pid {p.pid})" for p in live]


def cancel_slurm_jobs(job_ids: list[str]) -> None:
    if not job_ids:
        return
    try:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=SCANCEL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass


def reap(record: RunRecord) -> list[str]:
    """End everything `record` lists (not the orchestrator itself)."""
    ended = end_processes(record.processes)
    cancel_slurm_jobs(record.slurm_jobs)
    return ended + [f"SLURM job {j}" for j in record.slurm_jobs]


class RunningElsewhere(RuntimeError):
    pass


def reap_stale_runs(runs_dir: Path) -> list[str]:
    """End what earlier runs left behind; raise `RunningElsewhere` if one still runs."""
    ended: list[str] = []
    if not runs_dir.is_dir():
        return ended
    for path in sorted(runs_dir.glob("*.json")):
        try:
            record = RunRecord.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a torn record: nothing we could identify safely
            continue
        if record.host == socket.gethostname() and record.orchestrator.alive():
            raise RunningElsewhere(
                f"this campaign is being run by process {record.orchestrator.pid} on this host "
                f"(run {record.run_id}); stop it first")
        if record.host == socket.gethostname():
            ended += reap(record)
        else:  # local pids of another host mean nothing here; its SLURM jobs still do
            cancel_slurm_jobs(record.slurm_jobs)
        path.unlink(missing_ok=True)
    return ended


class ProcessRegistry:
    """The orchestrator's side: keeps its run record current and holds the reaper's pipe."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        me = Proc.of(os.getpid(), "orchestrator")
        assert me is not None
        self.record = RunRecord(run_id=uuid.uuid4().hex[:12], host=socket.gethostname(), orchestrator=me)
        self.path = self.runs_dir / f"{self.record.run_id}.json"
        self._written = ""
        self._reaper: subprocess.Popen | None = None
        self._write()

    def _write(self) -> None:
        text = self.record.to_json()
        if text == self._written:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self._written = text

    def update(self, processes: list[Proc], slurm_jobs: list[str]) -> None:
        """Record the run's current processes (kept: ones seen before that still live)."""
        known = {(p.pid, p.start): p for p in self.record.processes if p.alive()}
        for p in processes:
            known[(p.pid, p.start)] = p
        self.record.processes = sorted(known.values(), key=lambda p: p.pid)
        self.record.slurm_jobs = sorted(set(self.record.slurm_jobs) | set(slurm_jobs))
        self._write()

    def start_reaper(self) -> None:
        """Start the reaper in its own session (a kill of our process group spares it)."""
        log = open(self.runs_dir / f"{self.record.run_id}.reaper.log", "ab")
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "alflow.engine.processes", str(self.path)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        finally:
            log.close()

    def close(self) -> list[str]:
        """End whatever the run still has, let the reaper go, remove the record."""
        ended = reap(self.record)
        if self._reaper is not None:
            try:
                self._reaper.stdin.close()
                self._reaper.wait(timeout=2 * GRACE_S + SCANCEL_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                self._reaper.kill()
        self.path.unlink(missing_ok=True)
        return ended


def _reaper_main(path: str) -> int:
    """Block until the orchestrator's end of the pipe closes, then end the run's processes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the orchestrator's
    try:
        sys.stdin.buffer.read()
    except OSError:
        pass
    record_path = Path(path)
    try:
        record = RunRecord.from_json(record_path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # the orchestrator closed cleanly and removed its record
    ended = reap(record)
    record_path.unlink(missing_ok=True)
    if ended:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} orchestrator gone; ended: {', '.join(ended)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_reaper_main(sys.argv[1]))
