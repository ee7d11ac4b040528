"""Python side of `cluster.sh`: start a private one-node SLURM cluster for a test session,
read its job records, stop it.

    cluster = SlurmCluster.start(tmp_dir)      # raises SlurmUnavailable if it cannot install
    os.environ.update(cluster.env)             # SLURM_CONF for this process and subprocesses
    ...
    cluster.jobs()                             # {job_id: Job} from the job-completion file
    cluster.stop()

Clients need only SLURM_CONF: the slurm.conf names munged's socket in its AuthInfo.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "cluster.sh"
EXIT_CANNOT_INSTALL = 3


def _bash() -> str:
    return shutil.which("bash") or "/bin/bash"


class SlurmUnavailable(RuntimeError):
    """SLURM is not installed here and cannot be installed (no apt-get, not root)."""


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    state: str
    start: str
    end: str


_FIELD = re.compile(r"(\w+)=(\S*)")


class SlurmCluster:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.conf = self.dir / "slurm.conf"
        self.jobcomp = self.dir / "jobcomp.txt"

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, directory: str | Path | None = None, timeout: float = 600) -> SlurmCluster:
        """Start a cluster in `directory` (default: a new short /tmp dir, since munged's
        socket path must stay under ~100 characters)."""
        directory = Path(directory or tempfile.mkdtemp(prefix="alflow-slurm-"))
        out = subprocess.run([_bash(), str(SCRIPT), "start", str(directory)], capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode == EXIT_CANNOT_INSTALL:
            raise SlurmUnavailable(out.stderr.strip().splitlines()[-1] if out.stderr.strip()
                                   else "SLURM cannot be installed here")
        if out.returncode != 0:
            raise RuntimeError(f"cluster.sh start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return cls(directory)

    def stop(self) -> None:
        subprocess.run([_bash(), str(SCRIPT), "stop", str(self.dir)], capture_output=True, text=True,
                       timeout=120)

    def status(self) -> bool:
        return subprocess.run([_bash(), str(SCRIPT), "status", str(self.dir)], capture_output=True,
                              text=True, timeout=60).returncode == 0

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ commands
    def run(self, cmd: str | list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.env})
        if check and out.returncode != 0:
            raise RuntimeError(f"{args} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def squeue(self) -> dict[str, tuple[str, str]]:
        """Jobs SLURM holds now: {job_id: (name, state)}."""
        out = self.run(["squeue", "-h", "-o", "%i|%j|%T"], check=False)
        rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
        return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3}

    def jobs(self) -> dict[str, Job]:
        """Every job that ended, from the jobcomp/filetxt file (`sacct -c` reads the same)."""
        if not self.jobcomp.is_file():
            return {}
        jobs = {}
        for line in self.jobcomp.read_text().splitlines():
            f = dict(_FIELD.findall(line))
            if "JobId" in f:
                jobs[f["JobId"]] = Job(f["JobId"], f.get("Name", ""), f.get("JobState", ""),
                                       f.get("StartTime", ""), f.get("EndTime", ""))
        return jobs

    def sacct(self) -> dict[str, str]:
        """{job_id: state} as `sacct -c` reports it."""
        out = self.run(["sacct", "-c", "-n", "-P", "-o", "JobID,State"])
        return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)

    def wait_ended(self, job_ids, timeout: float = 60) -> dict[str, Job]:
        """Wait until every job in `job_ids` has a job-completion record."""
        want = set(job_ids)
        t0 = time.time()
        while True:
            jobs = self.jobs()
            if want <= set(jobs) or time.time() - t0 > timeout:
                return jobs
            time.sleep(0.5)
