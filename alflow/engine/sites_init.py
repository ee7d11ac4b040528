"""Draft a site file from what a SLURM cluster says about itself (`alflow sites init`).

Two commands are read, both cheap and allowed to any user on a login node:

    sinfo -h -o "%P|%a|%l|%D|%c|%m|%G"     (SINFO_FORMAT)
        partition ('*' marks the default) | avail (up/down/...) | time limit |
        node count | CPUs per node | memory per node (MB) | generic resources (GRES)
        - one line per group of alike nodes, so a partition can span several lines
    scontrol show partition -o
        one line of Key=Value pairs per partition (MaxTime, State, Default, Hidden,
        MaxCPUsPerNode, AllowAccounts, ...)

The draft puts the oracle on a CPU partition (cores per worker and thread counts so
PySCF/BLAS do not oversubscribe), and training and sampling on a GPU partition when one has
GPU GRES (one ensemble member per GPU), else on the CPU partition. Walltimes stay below the
partition's MaxTime and task time limits below the walltimes, so the draft passes
`check_feasibility`; comments say what the user must still edit (account, worker_init).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field

from alflow.errors import InputError

SINFO_FORMAT = "%P|%a|%l|%D|%c|%m|%G"
SINFO_CMD = ["sinfo", "-h", "-o", SINFO_FORMAT]
SCONTROL_CMD = ["scontrol", "show", "partition", "-o"]

# walltimes the draft asks for when the partition allows them (s)
_WANT_WALLTIME = {"oracle": 2 * 3600, "train": 4 * 3600, "sample": 3600}
_AVOID = re.compile(r"debug|test|interactive|devel|dev\b|short|preempt", re.I)
_GPU = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


@dataclass
class Partition:
    name: str
    default: bool = False
    up: bool = True
    hidden: bool = False
    nodes: int = 0
    cpus: int | None = None        # per node: the smallest node group of the partition
    mem_mb: int | None = None
    gpus: int = 0                  # per node, on its GPU nodes (0: none)
    max_time_s: int | None = None  # None: no limit
    max_cpus_per_node: int | None = None
    allow_accounts: str = "ALL"
    notes: list[str] = field(default_factory=list)

    @property
    def cores(self) -> int | None:
        if self.cpus and self.max_cpus_per_node:
            return min(self.cpus, self.max_cpus_per_node)
        return self.cpus


# ------------------------------------------------------------------------ parsing
def parse_time(text: str) -> int | None:
    """SLURM time limits: [D-]HH:MM:SS, MM:SS, MM, 'infinite'/'UNLIMITED' -> s (None: no limit)."""
    t = text.strip().lower()
    if t in ("", "infinite", "unlimited", "none", "n/a"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
    parts = [int(p) for p in t.split(":")] if t else [0]
    if len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:
        h, (m, s) = 0, parts
    elif len(parts) == 1 and not days:
        h, m, s = 0, parts[0], 0
    else:  # "D-HH"
        h, m, s = parts[0], 0, 0
    return ((days * 24 + h) * 60 + m) * 60 + s


def format_walltime(seconds: int) -> str:
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    hms = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{d}-{hms}" if d else hms


def _int(text: str) -> int | None:
    m = re.match(r"\d+", text.strip())
    return int(m.group()) if m else None


def gpus_in_gres(gres: str) -> int:
    """GPUs per node in a GRES string: 'gpu:4', 'gpu:a100:4(S:0-1)', 'gpu:a:2,gpu:b:2' -> 4."""
    if not gres or gres.strip() in ("(null)", "N/A"):
        return 0
    return sum(int(n) for n in _GPU.findall(re.sub(r"\([^)]*\)", "", gres.strip())))


def parse_partitions(sinfo_text: str, scontrol_partitions_text: str) -> list[Partition]:
    """Partitions in the order sinfo lists them, node data merged across node groups."""
    parts: dict[str, Partition] = {}
    for line in sinfo_text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 7:
            raise InputError(f"unexpected sinfo line {line!r}; expected the format {SINFO_FORMAT!r}",
                             source="sinfo")
        name, avail, limit, nodes, cpus, mem, gres = fields[:7]
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, Partition(name=name, default=default, max_time_s=parse_time(limit)))
        p.default = p.default or default
        p.up = p.up and avail.lower().startswith("up")
        p.nodes += _int(nodes) or 0
        for attr, value in (("cpus", _int(cpus)), ("mem_mb", _int(mem))):
            if value:
                old = getattr(p, attr)
                setattr(p, attr, value if old is None else min(old, value))
        g = gpus_in_gres(gres)
        if g:
            p.gpus = g if not p.gpus else min(p.gpus, g)
    for line in scontrol_partitions_text.splitlines():
        kv = dict(re.findall(r"(\w+)=(\S*)", line))
        name = kv.get("PartitionName")
        if not name:
            continue
        p = parts.setdefault(name, Partition(name=name))
        if "MaxTime" in kv:
            p.max_time_s = parse_time(kv["MaxTime"])
        p.default = p.default or kv.get("Default") == "YES"
        p.hidden = kv.get("Hidden") == "YES"
        if "State" in kv:
            p.up = p.up and kv["State"] == "UP"
        p.max_cpus_per_node = _int(kv.get("MaxCPUsPerNode", ""))
        p.allow_accounts = kv.get("AllowAccounts", "ALL")
        if p.cpus is None and kv.get("TotalCPUs") and kv.get("TotalNodes"):
            p.cpus = max(1, int(kv["TotalCPUs"]) // max(1, int(kv["TotalNodes"])))
        if kv.get("RootOnly") == "YES":
            p.notes.append("RootOnly=YES")
    if not parts:
        raise InputError("sinfo listed no partitions", source="sinfo")
    return list(parts.values())


# ------------------------------------------------------------------------ choosing
def _rank(p: Partition) -> tuple:
    """Higher is better: usable, not a debug/test queue, default, long, big."""
    return (p.up and not p.hidden and "RootOnly=YES" not in p.notes, not _AVOID.search(p.name),
            p.max_time_s is None or p.max_time_s >= 3600, p.default,
            p.max_time_s or 10**9, p.nodes)


def choose_partitions(parts: list[Partition]) -> tuple[Partition, Partition | None]:
    """(CPU partition for the oracle, GPU partition for train/sample or None)."""
    gpu = [p for p in parts if p.gpus]
    cpu = [p for p in parts if not p.gpus]
    gpu_part = max(gpu, key=lambda p: (_rank(p)[:3], p.gpus, _rank(p)[3:])) if gpu else None
    cpu_part = max(cpu, key=_rank) if cpu else max(parts, key=_rank)
    return cpu_part, gpu_part


def _walltime(p: Partition, role: str) -> int:
    want = _WANT_WALLTIME[role]
    if p.max_time_s is None or p.max_time_s > want:
        return want
    # below MaxTime: 90 % of it in whole minutes (at least one, never above MaxTime)
    return min(p.max_time_s, max(60, (p.max_time_s * 9 // 10) // 60 * 60))


# ------------------------------------------------------------------------ drafting
def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML string


def _provider(p: Partition, role: str, *, cores: int | None, gpus: int | None, max_blocks: int,
              worker_init: str) -> tuple[list[str], int]:
    wall = _walltime(p, role)
    lines = ["    provider:", "      kind: slurm", f"      partition: {_q(p.name)}"]
    if p.allow_accounts not in ("ALL", ""):
        lines.append(f"      account: {_q(p.allow_accounts.split(',')[0])}   "
                     f"# EDIT: this partition allows accounts {p.allow_accounts}")
    else:
        lines.append("      # account: my-project     # EDIT: set if your cluster charges an account")
    limit = "no MaxTime" if p.max_time_s is None else f"MaxTime {format_walltime(p.max_time_s)}"
    lines.append(f"      walltime: {_q(format_walltime(wall))}   # partition {p.name}: {limit}")
    lines.append("      nodes_per_block: 1")
    if cores:
        lines.append(f"      cores_per_node: {cores}")
    if gpus:
        lines.append(f"      gpus_per_node: {gpus}")
    if p.mem_mb:
        lines.append(f"      # mem_per_node_gb: {max(1, p.mem_mb * 9 // 10 // 1024)}   "
                     f"# nodes have {p.mem_mb} MB; request memory if your cluster requires it")
    lines += [f"      max_blocks: {max_blocks}", "      launcher: single",
              f"      worker_init: {_q(worker_init)}   # EDIT: load modules / activate alflow's environment"]
    return lines, wall


def default_worker_init() -> str:
    """Activate the Python environment this draft was made from, if it is a venv."""
    if sys.prefix != sys.base_prefix:
        return f"source {sys.prefix}/bin/activate"
    return ""


def draft_site(sinfo_text: str, scontrol_partitions_text: str, *, name: str,
               worker_init: str | None = None) -> str:
    """YAML text of a site for the cluster `sinfo -h -o SINFO_FORMAT` and
    `scontrol show partition -o` describe. It loads with `load_site` and passes
    `check_feasibility`; comments mark what to edit."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise InputError(f"site name {name!r}: use letters, digits, '.', '_' and '-'", source="name")
    parts = parse_partitions(sinfo_text, scontrol_partitions_text)
    cpu_p, gpu_p = choose_partitions(parts)
    init = default_worker_init() if worker_init is None else worker_init

    out = [f"# Drafted by `alflow sites init {name}` from sinfo and scontrol show partition.",
           "# Partitions seen: " + ", ".join(
               f"{p.name} ({p.nodes} node(s), {p.cores or '?'} CPUs"
               + (f", {p.gpus} GPUs" if p.gpus else "") + (", default" if p.default else "")
               + ("" if p.up else ", DOWN") + ")" for p in parts),
           "# EDIT: account (if your cluster charges one) and worker_init (modules, environment)",
           f"# then check it: `alflow sites check sites/{name}.yaml`.",
           f"name: {_q(name)}"]
    desc = (f"Oracle on {cpu_p.name}; training and sampling on "
            + (f"{gpu_p.name} (one ensemble member per GPU)" if gpu_p else f"{cpu_p.name} (CPU)"))
    out += [f"description: {_q(desc)}", "retries: 2", "heartbeat_period_s: 30",
            "heartbeat_threshold_s: 120",
            "# address: 10.0.0.1   # EDIT if compute nodes cannot reach this host's default address",
            "executors:"]

    # oracle: CPU workers, several cores each when nodes are big, threads pinned to match
    cores = cpu_p.cores or 1
    cpw = 4 if cores >= 16 else (2 if cores >= 4 else 1)
    prov, wall = _provider(cpu_p, "oracle", cores=cores, gpus=None,
                           max_blocks=max(1, min(4, cpu_p.nodes or 1)), worker_init=init)
    threads = _q(str(cpw))
    out += ["  oracle:", *prov,
            f"    workers_per_node: {cores // cpw}",
            f"    cores_per_worker: {cpw}   # threads per oracle calculation (PySCF/BLAS)",
            f"    task_time_limit_s: {int(wall * 0.75)}   # below the walltime: a task never dies with its block",
            f"    env: {{OMP_NUM_THREADS: {threads}, MKL_NUM_THREADS: {threads}, OPENBLAS_NUM_THREADS: {threads}}}"]

    for role in ("train", "sample"):
        if gpu_p is not None:
            g = gpu_p.gpus
            node_cores = gpu_p.cores or g
            # train: the whole GPU node, one member per GPU; sample: one GPU and its share of cores
            n_gpus = g if role == "train" else 1
            req_cores = node_cores if role == "train" else max(1, node_cores // g)
            prov, wall = _provider(gpu_p, role, cores=req_cores, gpus=n_gpus, max_blocks=1,
                                   worker_init=init)
            accel = ", ".join(_q(str(i)) for i in range(n_gpus))
            cpw_role = max(1, req_cores // n_gpus)
            out += [f"  {role}:", *prov,
                    f"    workers_per_node: {n_gpus}",
                    f"    accelerators: [{accel}]" + ("   # one ensemble member per GPU" if role == "train" else ""),
                    f"    cores_per_worker: {cpw_role}",
                    f"    task_time_limit_s: {int(wall * 0.75)}"]
        else:
            cpw_role = max(1, min(8, cores)) if role == "sample" else max(1, min(8, cores // 2 or 1))
            workers = 1 if role == "sample" else max(1, cores // cpw_role)
            # train: the whole node, several members at once; sample: one worker's cores
            prov, wall = _provider(cpu_p, role, cores=cores if role == "train" else cpw_role,
                                   gpus=None, max_blocks=1, worker_init=init)
            t = _q(str(cpw_role))
            out += [f"  {role}:", *prov,
                    f"    workers_per_node: {workers}" + ("   # one ensemble member per worker" if role == "train" else ""),
                    "    accelerators: null   # no GPU partition found: runs on CPU",
                    f"    cores_per_worker: {cpw_role}",
                    f"    task_time_limit_s: {int(wall * 0.75)}",
                    f"    env: {{OMP_NUM_THREADS: {t}, MKL_NUM_THREADS: {t}}}"]
    return "\n".join(out) + "\n"


def collect_cluster_info(timeout: float = 60) -> tuple[str, str]:
    """(`sinfo -h -o SINFO_FORMAT` output, `scontrol show partition -o` output) of the
    cluster this runs on. Raises InputError when SLURM's commands are missing or fail."""
    outs = []
    for cmd in (SINFO_CMD, SCONTROL_CMD):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise InputError(f"`{cmd[0]}` not found: run this on a SLURM login node",
                             source="sites init") from None
        except subprocess.TimeoutExpired:
            raise InputError(f"`{' '.join(cmd)}` did not answer in {timeout:g} s",
                             source="sites init") from None
        if r.returncode != 0:
            raise InputError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.returncode}",
                             source="sites init")
        outs.append(r.stdout)
    return outs[0], outs[1]
