"""Site configs: validated YAML -> a Parsl `Config` with one executor per role.

Roles: `oracle` (CPU workers running DFT/ASE labels), `train` (one ensemble member per
worker, one GPU each via `available_accelerators` where there are GPUs) and `sample`.
Each role has its own provider (`local` or `slurm`). `check_feasibility` says, in words a
user understands, why a site cannot run its tasks before anything is submitted.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alflow.errors import InputError, shorten
from alflow.spec import FiniteFloat
from alflow.yamlio import load_yaml

ROLES = ("oracle", "train", "sample")  # every site has these
OPTIONAL_ROLES = ("validate",)  # validation on its own workers; else on the sample executor
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2}):(\d{2})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalProviderSpec(_Strict):
    kind: Literal["local"] = "local"
    worker_init: str = ""


class SlurmProviderSpec(_Strict):
    kind: Literal["slurm"] = "slurm"
    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    walltime: str = Field("01:00:00", description="[D-]HH:MM:SS")
    nodes_per_block: int = Field(1, ge=1)
    cores_per_node: int | None = Field(None, ge=1)
    mem_per_node_gb: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    init_blocks: int = Field(0, ge=0)
    min_blocks: int = Field(0, ge=0)
    max_blocks: int = Field(1, ge=1)
    exclusive: bool = False
    launcher: Literal["srun", "single"] = "single"
    worker_init: str = ""
    scheduler_options: str = ""

    def walltime_s(self) -> int:
        m = _WALLTIME.match(self.walltime)
        if not m:
            raise ValueError(f"walltime {self.walltime!r} is not [D-]HH:MM:SS")
        d, h, mi, s = (int(x or 0) for x in m.groups())
        return ((d * 24 + h) * 60 + mi) * 60 + s


ProviderSpec = Annotated[LocalProviderSpec | SlurmProviderSpec, Field(discriminator="kind")]


class ExecutorSpec(_Strict):
    provider: ProviderSpec = LocalProviderSpec()
    workers_per_node: int | Literal["auto"] = "auto"
    cores_per_worker: FiniteFloat = Field(1.0, gt=0)
    accelerators: list[str] | Literal["auto"] | None = None
    task_time_limit_s: FiniteFloat = Field(3600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("workers_per_node", mode="before")
    @classmethod
    def _auto_or_positive(cls, value):
        # 0 workers runs nothing, forever; -3 made Parsl wait until a timeout
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be 'auto' or a whole number of at least 1, got {shorten(value, 40)}")


class SiteSpec(_Strict):
    name: str
    description: str = ""
    executors: dict[Literal["oracle", "train", "sample", "validate"], ExecutorSpec]
    retries: int = Field(2, ge=0)
    heartbeat_period_s: int = Field(5, ge=1)
    heartbeat_threshold_s: int = Field(30, ge=2)
    # an executor with work handed out but not started, idle workers, and nothing started
    # or finished for this long is stalled: its blocks are replaced and the work retried
    stall_timeout_s: float = Field(120.0, gt=0)
    # a block pending in a batch queue may wait this long before its work counts as stalled
    queue_wait_s: float = Field(86400.0, gt=0)
    address: str | None = None  # interchange address workers connect to (None: this host)

    @model_validator(mode="after")
    def _threshold_above_period(self) -> SiteSpec:
        # a worker is declared lost after heartbeat_threshold_s without a heartbeat; at or
        # below the period, healthy workers are declared lost between two heartbeats
        if self.heartbeat_threshold_s <= self.heartbeat_period_s:
            raise ValueError(
                f"field 'heartbeat_threshold_s': {self.heartbeat_threshold_s} s must be above "
                f"heartbeat_period_s ({self.heartbeat_period_s} s)")
        return self


# ----------------------------------------------------------------------------- loading
def sites_dirs() -> list[Path]:
    """Where site names are looked up: ./sites, then the sites shipped with alflow."""
    here = Path(__file__).resolve().parent.parent
    dirs = [Path.cwd() / "sites", here / "_sites", here.parent / "sites"]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def site_names() -> list[str]:
    return sorted({p.stem for d in sites_dirs() for p in d.glob("*.yaml")})


def find_site(name_or_path: str, origin: str = "--site") -> Path:
    """The site file for a name or path. `origin` is what the user wrote it in, blamed when
    there is no such site: "--site", or a spec file's "spec.yaml: field 'site'"."""
    p = Path(name_or_path)
    try:
        if p.suffix in (".yaml", ".yml"):
            if p.is_dir():
                raise InputError(f"site {shorten(name_or_path)} is a directory, not a site file",
                                 source=origin)
            if not p.is_file():
                raise InputError(f"site file {shorten(name_or_path)} not found", source=origin)
            return p
        for d in sites_dirs():
            if (d / f"{name_or_path}.yaml").is_file():
                return d / f"{name_or_path}.yaml"
    except OSError as exc:  # e.g. a name too long for the file system
        raise InputError(f"site {shorten(name_or_path)}: {exc.strerror or exc}", source=origin) from None
    raise InputError(
        f"unknown site {shorten(name_or_path)}; known sites: {', '.join(site_names()) or 'none'}",
        source=origin,
    )


def load_site(name_or_path: str, origin: str = "--site") -> SiteSpec:
    """Read and validate a site file; every problem is an InputError naming the file."""
    path = find_site(name_or_path, origin)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", source=where) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=where) from None
    data = load_yaml(text, where)
    if not isinstance(data, dict):
        raise InputError("a site file must be a YAML mapping", source=where)
    try:
        site = SiteSpec.model_validate(data)
    except ValidationError as exc:
        raise InputError(_describe(exc), source=where) from None
    missing = [r for r in ROLES if r not in site.executors]
    if missing:
        raise InputError(f"executors missing for role(s): {', '.join(missing)}", source=where)
    return site


def check_site(name_or_path: str, origin: str = "--site") -> SiteSpec:
    """`load_site`, then `check_feasibility`: an InputError naming the site file if the
    site cannot run its tasks."""
    site = load_site(name_or_path, origin)
    problems = check_feasibility(site)
    if problems:
        raise InputError(f"site {site.name} cannot run: " + "; ".join(problems),
                         source=str(find_site(name_or_path, origin)))
    return site


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("field '"):  # a model validator that names its field itself
            parts.append(msg)
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
            shown = shorten(err.get("input"), 60)
            if shown not in msg:
                msg += f", got {shown}"
        parts.append(f"field '{loc}': {msg}" if loc else msg)
    return "; ".join(parts)


# ------------------------------------------------------------------------- feasibility
def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def workers_per_node(role: str, ex: ExecutorSpec) -> int:
    """Workers one block runs for this role (resolves 'auto')."""
    accel = _accelerators(ex)
    if ex.workers_per_node != "auto":
        n = int(ex.workers_per_node)
    else:
        cores = ex.provider.cores_per_node if isinstance(ex.provider, SlurmProviderSpec) else None
        # one worker per cores_per_worker cores; steps run one after another, so the
        # roles never compete for the cores (with GPUs, one worker per GPU, below)
        n = max(1, int((cores or local_cores()) // ex.cores_per_worker))
    return min(n, len(accel)) if accel else n


def site_roles(site: SiteSpec) -> list[str]:
    """The roles a site has executors for, in a fixed order."""
    return [r for r in (*ROLES, *OPTIONAL_ROLES) if r in site.executors]


def role_capacity(role: str, ex: ExecutorSpec) -> int:
    """Workers of a role over all its blocks: how many tasks can run at once."""
    prov = ex.provider
    blocks = prov.max_blocks * prov.nodes_per_block if isinstance(prov, SlurmProviderSpec) else 1
    return workers_per_node(role, ex) * blocks


def _accelerators(ex: ExecutorSpec) -> list[str]:
    if ex.accelerators == "auto":
        if isinstance(ex.provider, SlurmProviderSpec) and ex.provider.gpus_per_node:
            return [str(i) for i in range(ex.provider.gpus_per_node)]
        return _visible_gpus()
    return list(ex.accelerators or [])


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - torch missing or CUDA broken: a CPU site
        return []


def check_feasibility(site: SiteSpec) -> list[str]:
    """Problems that would make tasks unrunnable, each as one plain sentence."""
    problems = []
    for role, ex in site.executors.items():
        prov = ex.provider
        if isinstance(prov, SlurmProviderSpec):
            try:
                wall = prov.walltime_s()
            except ValueError as exc:
                problems.append(f"{role}: {exc}")
                continue
            if ex.task_time_limit_s >= wall:
                problems.append(
                    f"{role}: a task may run {ex.task_time_limit_s:.0f} s but a block only lives "
                    f"{wall} s ({prov.walltime}); lower task_time_limit_s or raise walltime")
            if prov.cores_per_node and ex.cores_per_worker > prov.cores_per_node:
                problems.append(
                    f"{role}: one worker needs {ex.cores_per_worker:g} cores but a node has "
                    f"{prov.cores_per_node}")
            if (prov.cores_per_node and ex.workers_per_node != "auto"
                    and ex.workers_per_node * ex.cores_per_worker > prov.cores_per_node):
                problems.append(
                    f"{role}: {ex.workers_per_node} workers x {ex.cores_per_worker:g} cores do not "
                    f"fit a {prov.cores_per_node}-core node")
            accel = ex.accelerators if isinstance(ex.accelerators, list) else []
            if accel and (prov.gpus_per_node or 0) < len(accel):
                problems.append(
                    f"{role}: {len(accel)} accelerators listed but the partition request has "
                    f"gpus_per_node={prov.gpus_per_node or 0}; raise gpus_per_node or list "
                    f"fewer accelerators")
            if prov.min_blocks > prov.max_blocks or prov.init_blocks > prov.max_blocks:
                problems.append(f"{role}: init/min blocks exceed max_blocks={prov.max_blocks}")
        elif ex.cores_per_worker > local_cores():
            problems.append(
                f"{role}: one worker needs {ex.cores_per_worker:g} cores but this machine has "
                f"{local_cores()}")
    return problems


# ----------------------------------------------------------------------- Parsl config
def render_batch_script(site: SiteSpec, role: str) -> str:
    """The batch script Parsl's SlurmProvider would submit for one block of this role,
    rendered by Parsl itself with `sbatch` replaced by a stand-in (nothing is submitted).
    The worker-pool command line is a placeholder: its ports exist only at run time."""
    import tempfile

    prov = site.executors[role].provider
    if not isinstance(prov, SlurmProviderSpec):
        return f"# {role}: local provider, workers start on this machine (no batch script)"
    provider = _provider(site.executors[role])
    with tempfile.TemporaryDirectory() as tmp:
        provider.script_dir = tmp
        provider.execute_wait = lambda cmd, timeout=None: (0, "Submitted batch job 0", "")
        provider.submit("process_worker_pool.py <interchange address and ports at run time>",
                        tasks_per_node=1, job_name=f"alflow-{role}")
        (script,) = [p for p in Path(tmp).iterdir() if p.name.startswith(f"alflow-{role}")
                     and not p.name.endswith((".stdout", ".stderr"))]
        return script.read_text().strip()


def _worker_init(ex: ExecutorSpec) -> str:
    exports = {"OMP_NUM_THREADS": str(max(1, int(ex.cores_per_worker))),
               "MKL_NUM_THREADS": str(max(1, int(ex.cores_per_worker))), **ex.env}
    env_line = "; ".join(f"export {k}={v}" for k, v in exports.items())
    return "; ".join(x for x in (ex.provider.worker_init.strip(), env_line) if x)


def _parsl_walltime(prov: SlurmProviderSpec) -> str:
    """The walltime as Parsl's SlurmProvider can read it: it splits HH:MM:SS on ':' into
    whole minutes, so days become hours ("1-02:00:00" -> "26:00:00") and seconds round up
    to a minute (SLURM reads --time=0 as no limit at all)."""
    minutes = max(1, -(-prov.walltime_s() // 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _provider(ex: ExecutorSpec):
    from parsl.launchers import SingleNodeLauncher, SrunLauncher
    from parsl.providers import LocalProvider, SlurmProvider

    prov = ex.provider
    if isinstance(prov, LocalProviderSpec):
        # min_blocks=1: local workers persist between steps, so each pays its imports (and
        # PySCF its forked worker) once per campaign, not once per generation
        return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=_worker_init(ex))
    return SlurmProvider(
        partition=prov.partition, account=prov.account, qos=prov.qos,
        constraint=prov.constraint, nodes_per_block=prov.nodes_per_block,
        cores_per_node=prov.cores_per_node,
        mem_per_node=prov.mem_per_node_gb, gpus_per_node=prov.gpus_per_node,
        init_blocks=prov.init_blocks, min_blocks=prov.min_blocks, max_blocks=prov.max_blocks,
        walltime=_parsl_walltime(prov), exclusive=prov.exclusive,
        scheduler_options="\n".join(s for s in prov.scheduler_options.splitlines() if s.strip()),
        worker_init=_worker_init(ex),
        launcher=SrunLauncher() if prov.launcher == "srun" else SingleNodeLauncher(),
    )


def to_parsl_config(site: SiteSpec, run_dir: str | Path):
    """The Parsl `Config` for a site: one HighThroughputExecutor per role. Parsl's retries
    and block error handler are off: alflow's scheduler retries (recording every attempt)
    and replaces stalled blocks itself."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    problems = check_feasibility(site)
    if problems:
        raise InputError("; ".join(problems), source=f"site {site.name}")
    # Parsl starts its interchange and local worker pools by script name; they live next
    # to this interpreter (the venv's bin/), which need not be on PATH when alflow is
    # called by its full path.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    executors = []
    for role in site_roles(site):
        ex = site.executors[role]
        local = isinstance(ex.provider, LocalProviderSpec)
        executors.append(HighThroughputExecutor(
            label=role,
            provider=_provider(ex),
            address=site.address or ("127.0.0.1" if local else None),
            max_workers_per_node=workers_per_node(role, ex),
            cores_per_worker=ex.cores_per_worker,
            available_accelerators=_accelerators(ex),
            heartbeat_period=site.heartbeat_period_s,
            heartbeat_threshold=site.heartbeat_threshold_s,
            poll_period=10,
            encrypted=False,
            block_error_handler=False,
        ))
    return Config(
        executors=executors,
        retries=0,
        run_dir=str(run_dir),
        strategy="simple",
        max_idletime=30.0,
        initialize_logging=False,
    )
