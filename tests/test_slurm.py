"""alflow on a real SLURM scheduler: a private one-node cluster (tests/slurm/cluster.sh:
munged, slurmctld and slurmd with all state in a temporary directory) started once per
session. Parsl's SlurmProvider submits the blocks with sbatch, workers connect back, and
every task must carry the id of the SLURM job it ran in.

SLURM tests are skipped only where SLURM cannot be installed (no apt-get, or not root);
everywhere else they run. The `sites init` tests on canned `sinfo`/`scontrol` output need
no cluster.
"""

from __future__ import annotations

import re

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from alflow.db.session import get_engine
from alflow.engine import sites
from alflow.engine.sites_init import (
    SINFO_FORMAT, collect_cluster_info, draft_site, gpus_in_gres, parse_partitions, parse_time,
)
from alflow.errors import InputError
from engine_helpers import alflow_cmd, write_spec
from slurm.cluster import SlurmCluster, SlurmUnavailable

DATA = Path(__file__).resolve().parent / "slurm" / "data"
runner = CliRunner()


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster; SLURM_CONF exported to this process (and so to
    every subprocess it starts) for the session. Its logs stay in pytest's temp dir."""
    where = tmp_path_factory.mktemp("slurm")
    if len(str(where)) > 60:  # munged's socket path must stay short
        where = None
    try:
        cluster = SlurmCluster.start(where)
    except SlurmUnavailable as exc:
        pytest.skip(f"SLURM is not installed and cannot be installed here: {exc}")
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


@pytest.fixture
def slurm(slurm_cluster):
    """The session's cluster, with whatever jobs a test leaves behind cancelled after it."""
    yield slurm_cluster
    if slurm_cluster.squeue():
        slurm_cluster.run(["scancel", f"--user={os.getuid()}"], check=False)


def _site(tmp_path: Path, *, retries: int = 1, oracle_workers: int = 2, launcher: str = "single",
          walltime: str = "00:10:00") -> Path:
    def prov(launch: str) -> dict:
        return {"kind": "slurm", "partition": "debug", "walltime": walltime, "max_blocks": 1,
                "launcher": launch}

    site = {
        "name": "test-slurm", "retries": retries, "address": "127.0.0.1",
        "heartbeat_period_s": 2, "heartbeat_threshold_s": 6,
        "executors": {
            "oracle": {"provider": prov(launcher), "workers_per_node": oracle_workers,
                       "task_time_limit_s": 300},
            "train": {"provider": prov("srun"), "workers_per_node": 1, "accelerators": None,
                      "task_time_limit_s": 300},
            "sample": {"provider": prov(launcher), "workers_per_node": 1, "task_time_limit_s": 300},
        },
    }
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(site))
    return p


@pytest.fixture
def start_alflow():
    """Start `alflow ...` in its own process group; whatever still runs after the test
    (a failed assertion mid-run) is killed with its Parsl children."""
    procs: list[subprocess.Popen] = []

    def start(args: list[str], cwd: Path) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(alflow_cmd(*args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"alflow did not finish in {timeout} s:\n{err[-3000:]}")


def _watch(proc: subprocess.Popen, cluster: SlurmCluster, seen: dict, until=None,
           timeout: float = 240) -> bool:
    """Poll squeue into `seen` ({job_id: (name, {states})}) while `proc` runs; return True
    as soon as `until()` holds (False if the process ended first)."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        for jid, (name, state) in cluster.squeue().items():
            seen.setdefault(jid, (name, set()))[1].add(state)
        if until is not None and until():
            return True
        time.sleep(0.5)
    return False


def _role(job_name: str) -> str:
    # Parsl names block jobs parsl.<executor label>.block-<n>.<time>
    return job_name.split(".")[1]


def _tasks(url: str) -> list:
    with get_engine(url).connect() as c:
        return c.execute(sa.text(
            "SELECT id, kind, executor, status, tries, slurm_job_id, error_class FROM task "
            "ORDER BY id")).all()


# ------------------------------------------------------------------ a campaign on SLURM
@pytest.mark.slurm
def test_campaign_runs_as_slurm_jobs(tmp_path, pg_url, slurm, start_alflow):
    from test_engine import _check_provenance

    spec = write_spec(tmp_path, "cu_slurm", generations=2)
    site = _site(tmp_path)
    proc = start_alflow(["run", str(spec), "--site", str(site), "--db", pg_url, "-q"], tmp_path)
    seen: dict[str, tuple[str, set]] = {}
    _watch(proc, slurm, seen)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "max_generations reached (2)" in out

    # squeue saw a running block for every role while the campaign ran
    running_roles = {_role(name) for name, states in seen.values() if "RUNNING" in states}
    assert running_roles == {"oracle", "train", "sample"}, seen
    # every block ended and has a job-completion record; Parsl cancels its blocks at cleanup
    jobs = slurm.wait_ended(seen)
    assert set(seen) <= set(jobs), (seen, jobs)
    assert {jobs[j].state for j in seen} <= {"CANCELLED", "COMPLETED"}
    assert all(slurm.sacct()[j] == jobs[j].state for j in seen)  # sacct -c agrees

    # every task ran in a SLURM job of its role's block, and says which
    tasks = _tasks(pg_url)
    assert tasks and all(t.status == "done" and t.tries == 1 for t in tasks)
    for t in tasks:
        assert t.slurm_job_id in jobs, t
        assert _role(jobs[t.slurm_job_id].name) == t.executor, (t, jobs[t.slurm_job_id])
    assert {t.executor for t in tasks} == {"oracle", "train", "sample"}
    _check_provenance(pg_url, "cu_slurm", 2)


@pytest.mark.slurm
def test_block_killed_by_slurm_is_retried_on_a_new_block(tmp_path, sqlite_url, slurm, start_alflow):
    """scancel the oracle block mid-labelling: its attempts fail (manager lost), the scheduler
    retries them on a new block, and every initial geometry is labelled exactly once."""
    spec = write_spec(tmp_path, "cu_scancel", generations=1, label_batch_size=1,
                      oracle={"kind": "ase", "calculator": "alflow.oracles.faulty:FaultyEMT",
                              "settings": {"delay_s": 1.5}})
    site = _site(tmp_path, retries=2)
    proc = start_alflow(["run", str(spec), "--site", str(site), "--db", sqlite_url, "-q"], tmp_path)
    engine = get_engine(sqlite_url)

    def mid_labelling() -> bool:
        try:
            with engine.connect() as c:
                n = c.execute(sa.text("SELECT COUNT(*) FROM label")).scalar_one()
        except sa.exc.DBAPIError:  # schema not there yet
            return False
        return 2 <= n <= 6

    seen: dict[str, tuple[str, set]] = {}
    assert _watch(proc, slurm, seen, until=mid_labelling), "never saw labelling part done (2-6 labels)"
    victim = [j for j, (name, states) in seen.items()
              if _role(name) == "oracle" and "RUNNING" in states]
    assert len(victim) == 1, seen
    victim = victim[0]
    slurm.run(["scancel", victim])
    t_kill = time.time()
    _watch(proc, slurm, seen)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    elapsed = time.time() - t_kill

    jobs = slurm.wait_ended(seen)
    assert jobs[victim].state == "CANCELLED"
    oracle_blocks = sorted((j for j, (name, _) in seen.items() if _role(name) == "oracle"), key=int)
    assert len(oracle_blocks) >= 2 and oracle_blocks[0] == victim, seen  # Parsl made a new one

    with engine.connect() as c:
        # nothing lost, nothing labelled twice
        per_geometry = c.execute(sa.text(
            "SELECT g.id, COUNT(l.id), SUM(l.status = 'ok') FROM geometry g "
            "LEFT JOIN label l ON l.geometry_id = g.id WHERE g.origin = 'initial' "
            "GROUP BY g.id")).all()
        assert len(per_geometry) == 12 and all(n == 1 and ok == 1 for _, n, ok in per_geometry)
        assert c.execute(sa.text("SELECT state FROM generation")).scalar_one() == "done"
    label_tasks = [t for t in _tasks(sqlite_url) if t.kind == "label"]
    done = [t for t in label_tasks if t.status == "done"]
    failed = [t for t in label_tasks if t.status == "failed"]
    # an attempt that lost its block is recorded as such (one row per attempt), on the victim...
    assert failed, f"no task was running in the cancelled block ({elapsed:.0f} s to finish)"
    assert all(t.error_class == "manager_lost" and t.tries == 1 and t.slurm_job_id == victim
               for t in failed), failed
    # ...and retried on a later block
    retried = [t for t in done if t.tries > 1]
    assert len(retried) == len(failed) and all(t.tries == 2 and t.slurm_job_id != victim for t in retried)
    assert all(t.slurm_job_id in oracle_blocks for t in done)
    before = [t for t in done if t.slurm_job_id == victim]
    assert before and all(t.tries == 1 for t in before)  # what finished before the kill stays


# ----------------------------------------------------------------- sites check / sbatch
def _headers(check_stdout: str) -> dict[str, str]:
    """Per role, the batch header `alflow sites check` printed."""
    out: dict[str, list[str]] = {}
    role = None
    for line in check_stdout.splitlines():
        m = re.match(r"^\[(oracle|train|sample)\] ", line)
        if m:
            role = m.group(1)
            out[role] = []
        elif role and line.startswith("#SBATCH"):
            out[role].append(line)
    return {r: "\n".join(lines) for r, lines in out.items()}


def _sbatch_test_only(cluster: SlurmCluster, header: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.sh"
    script.write_text(f"#!/bin/bash\n{header}\nhostname\n")
    return cluster.run(["sbatch", "--test-only", str(script)], check=False)


@pytest.mark.slurm
def test_sites_check_renders_headers_that_slurm_accepts(tmp_path, slurm):
    site = _site(tmp_path, launcher="srun")
    r = runner.invoke(app_cli(), ["sites", "check", str(site)])
    assert r.exit_code == 0, r.output
    headers = _headers(r.stdout)
    assert set(headers) == {"oracle", "train", "sample"}
    for role, header in headers.items():
        assert "#SBATCH --partition=debug" in header and "#SBATCH --time=10" in header  # minutes
        probe = _sbatch_test_only(slurm, header, tmp_path)
        assert probe.returncode == 0 and "to start at" in probe.stderr, (role, probe.stderr)
    # and --test-only is no rubber stamp: this cluster has no 'cpu' partition and no GPUs
    shipped = _headers(runner.invoke(app_cli(), ["sites", "check", "slurm-gpu"]).stdout)
    probe = _sbatch_test_only(slurm, shipped["oracle"], tmp_path)
    assert probe.returncode != 0 and "invalid partition" in probe.stderr.lower(), probe.stderr
    gpu_only = "\n".join(line.replace("=gpu", "=debug") for line in shipped["train"].splitlines()
                         if "cpus-per-task" not in line)  # only the GPU request is wrong
    probe = _sbatch_test_only(slurm, gpu_only, tmp_path)
    assert probe.returncode != 0 and "gres" in probe.stderr.lower(), probe.stderr


@pytest.mark.slurm
def test_walltimes_in_days_reach_slurm(tmp_path, slurm):
    """Parsl's SlurmProvider reads walltimes as HH:MM:SS only: a site's "1-00:00:30" must
    reach sbatch as 24 h 1 min (seconds round up), not crash the block submission."""
    data = yaml.safe_load(_site(tmp_path).read_text())
    data["executors"]["oracle"]["provider"]["walltime"] = "1-00:00:30"
    site = sites.SiteSpec.model_validate(data)
    prov = sites.to_parsl_config(site, tmp_path / "runinfo").executors[0].provider
    assert prov.walltime == "24:01:00"
    prov.script_dir = str(tmp_path)
    job = prov.submit("sleep 60", 1)
    try:
        limit = slurm.run(["squeue", "-h", "-j", job, "-o", "%l"]).stdout.strip()
        assert limit == "1-00:01:00"
    finally:
        slurm.run(["scancel", job], check=False)


def app_cli():
    from alflow.cli import app

    return app


def test_shipped_slurm_cpu_site_is_cpu_only_and_feasible():
    site = sites.load_site("slurm-cpu")
    assert sites.check_feasibility(site) == []
    cfg = sites.to_parsl_config(site, "/tmp/alflow-test-runinfo")
    assert [e.label for e in cfg.executors] == ["oracle", "train", "sample"]
    for e in cfg.executors:
        ex = site.executors[e.label]
        assert list(e.available_accelerators) == [] and not ex.provider.gpus_per_node
        assert e.max_workers_per_node * ex.cores_per_worker <= ex.provider.cores_per_node
        threads = str(int(ex.cores_per_worker))
        assert f"OMP_NUM_THREADS={threads}" in e.provider.worker_init
        assert f"MKL_NUM_THREADS={threads}" in e.provider.worker_init


# ------------------------------------------------------------------------ sites init
def _draft(tmp_path: Path, kind: str) -> tuple[Path, sites.SiteSpec]:
    text = draft_site((DATA / f"{kind}_sinfo.txt").read_text(),
                      (DATA / f"{kind}_scontrol.txt").read_text(), name=f"{kind}-cluster",
                      worker_init="module load python; source ~/alflow/.venv/bin/activate")
    path = tmp_path / f"{kind}-cluster.yaml"
    path.write_text(text)
    site = sites.load_site(str(path))
    assert sites.check_feasibility(site) == []
    assert "EDIT" in text and "account" in text and "worker_init" in text
    return path, site


def test_sites_init_on_a_gpu_cluster(tmp_path):
    path, site = _draft(tmp_path, "gpu")
    ora, tr, sa_ = (site.executors[r] for r in ("oracle", "train", "sample"))
    # oracle on the default CPU partition (not debug, not bigmem), threads pinned
    assert ora.provider.partition == "cpu" and ora.provider.cores_per_node == 64
    assert ora.workers_per_node * ora.cores_per_worker == 64
    assert ora.env["OMP_NUM_THREADS"] == str(int(ora.cores_per_worker))
    # train/sample on the GPU partition (not gpu-debug): one member per GPU of the smallest
    # GPU node group (4 of 4 and 8)
    assert tr.provider.partition == "gpu" and sa_.provider.partition == "gpu"
    assert tr.provider.gpus_per_node == 4 and tr.accelerators == ["0", "1", "2", "3"]
    assert tr.workers_per_node == 4 and tr.provider.cores_per_node == 32
    assert sa_.accelerators == ["0"] and sa_.provider.gpus_per_node == 1
    # walltimes within MaxTime (gpu: 1 day), task limits within walltimes
    for ex in (ora, tr, sa_):
        assert ex.task_time_limit_s < ex.provider.walltime_s() <= 86400
    assert "module load python" in ora.provider.worker_init
    r = runner.invoke(app_cli(), ["sites", "check", str(path)])
    assert r.exit_code == 0 and "#SBATCH --gpus-per-node=4" in r.stdout


def test_sites_init_on_a_cpu_only_cluster(tmp_path):
    path, site = _draft(tmp_path, "cpu")
    for role, ex in site.executors.items():
        # the default partition, not the 4 h 'short' one nor the hidden, down 'maint'
        assert ex.provider.partition == "long", role
        assert ex.provider.account == "chem"  # AllowAccounts is restricted: pre-filled
        assert not ex.provider.gpus_per_node and not ex.accelerators
        assert ex.provider.cores_per_node <= 32  # MaxCPUsPerNode=32 caps the 36/72-core nodes
    assert site.executors["train"].workers_per_node >= 2


def test_sites_init_short_partitions_and_parsing():
    sinfo = "quick*|up|30:00|4|8|16000|gpu:2\n"
    scontrol = "PartitionName=quick Default=YES MaxTime=00:30:00 State=UP TotalCPUs=32 TotalNodes=4\n"
    site = sites.SiteSpec.model_validate(yaml.safe_load(draft_site(sinfo, scontrol, name="q")))
    assert sites.check_feasibility(site) == []
    assert all(ex.provider.walltime_s() < 1800 for ex in site.executors.values())
    assert site.executors["train"].accelerators == ["0", "1"]
    assert parse_time("1-02:00:00") == 93600 and parse_time("30:00") == 1800
    assert parse_time("infinite") is None and parse_time("UNLIMITED") is None and parse_time("45") == 2700
    assert gpus_in_gres("gpu:a100:4(S:0-1)") == 4 and gpus_in_gres("gpu:a:2,gpu:b:2,mps:100") == 4
    assert gpus_in_gres("(null)") == 0 and gpus_in_gres("gpu:4") == 4
    with pytest.raises(InputError, match="expected the format"):
        parse_partitions("debug up 30:00", "")
    with pytest.raises(InputError, match="no partitions"):
        draft_site("", "", name="x")


def test_collect_cluster_info_without_slurm_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="sinfo.*not found"):
        collect_cluster_info()


def test_harness_reports_when_slurm_cannot_be_installed(tmp_path, monkeypatch):
    """No SLURM and no apt-get: cluster.sh exits 3 and the fixture would skip, not fail."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("mkdir", "id", "tail", "sed", "grep", "cat", "seq", "sleep"):
        (fake / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(SlurmUnavailable, match="apt-get is not available"):
        SlurmCluster.start(tmp_path / "cluster")


@pytest.mark.slurm
def test_sites_init_on_the_real_cluster(tmp_path, slurm, monkeypatch):
    sinfo, partitions = collect_cluster_info()
    assert sinfo.startswith("debug*|up|") and "PartitionName=debug" in partitions, SINFO_FORMAT
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app_cli(), ["sites", "init", "here"])
    assert r.exit_code == 0, r.output
    path = tmp_path / "sites" / "here.yaml"
    site = sites.load_site(str(path))
    assert sites.check_feasibility(site) == []
    cores = int(sinfo.split("|")[4])
    assert all(ex.provider.partition == "debug" and ex.provider.cores_per_node <= cores
               for ex in site.executors.values())
    r = runner.invoke(app_cli(), ["sites", "check", str(path)])
    assert r.exit_code == 0, r.output
    for role, header in _headers(r.stdout).items():
        probe = _sbatch_test_only(slurm, header, tmp_path)
        assert probe.returncode == 0, (role, header, probe.stderr)
