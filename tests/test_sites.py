"""Site YAML -> Parsl Config, and the feasibility checks that run before submitting."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from alflow.cli import app
from alflow.engine import sites
from alflow.errors import InputError

runner = CliRunner()


def _write(tmp_path, data, name="site.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _slurm(**over):
    prov = {"kind": "slurm", "partition": "cpu", "walltime": "01:00:00", "cores_per_node": 8}
    prov.update(over.pop("provider", {}))
    return {"provider": prov, **over}


def test_shipped_sites_validate_and_build_one_executor_per_role():
    for name in ("local", "slurm-gpu"):
        site = sites.load_site(name)
        assert sites.check_feasibility(site) == []
        cfg = sites.to_parsl_config(site, "/tmp/alflow-test-runinfo")
        # the local site validates on a worker of its own, beside sampling and labelling
        extra = ["validate"] if name == "local" else []
        assert [e.label for e in cfg.executors] == ["oracle", "train", "sample", *extra]
        # alflow's scheduler retries (recording every attempt) and replaces stalled blocks:
        # Parsl must do neither, or an attempt would run twice unrecorded
        assert cfg.retries == 0
        assert all(not e.block_error_handler.__name__.startswith("simple") for e in cfg.executors)


def test_slurm_gpu_site_puts_one_training_worker_per_gpu():
    cfg = sites.to_parsl_config(sites.load_site("slurm-gpu"), "/tmp/alflow-test-runinfo")
    train = next(e for e in cfg.executors if e.label == "train")
    assert list(train.available_accelerators) == ["0", "1", "2", "3"]
    assert train.max_workers_per_node == 4
    oracle = next(e for e in cfg.executors if e.label == "oracle")
    assert "OMP_NUM_THREADS=4" in oracle.provider.worker_init
    assert oracle.provider.walltime == "02:00:00"


def test_local_oracle_workers_fill_the_machine():
    site = sites.load_site("local")
    assert sites.workers_per_node("oracle", site.executors["oracle"]) == sites.local_cores()


@pytest.mark.parametrize("oracle, needle", [
    (_slurm(task_time_limit_s=7200), "block only lives 3600 s"),
    (_slurm(cores_per_worker=16), "needs 16 cores but a node has 8"),
    (_slurm(workers_per_node=4, cores_per_worker=4), "do not fit a 8-core node"),
    (_slurm(accelerators=["0", "1"]), "gpus_per_node=0"),
    (_slurm(provider={"walltime": "1 hour"}), "not [D-]HH:MM:SS"),
])
def test_infeasible_sites_are_explained(tmp_path, oracle, needle):
    path = _write(tmp_path, {"name": "x", "executors": {"oracle": oracle, "train": {}, "sample": {}}})
    site = sites.load_site(str(path))
    problems = sites.check_feasibility(site)
    assert any(needle in p for p in problems), problems
    with pytest.raises(InputError, match="site x"):
        sites.to_parsl_config(site, tmp_path)
    r = runner.invoke(app, ["sites", "check", str(path)])
    assert r.exit_code == 2 and needle in r.stderr


def test_bad_site_files_name_the_field_and_file(tmp_path):
    p = _write(tmp_path, {"name": "x", "executors": {"oracle": {"cores_per_workr": 2}}})
    with pytest.raises(InputError, match=r"site.yaml: field 'executors.oracle.cores_per_workr'"):
        sites.load_site(str(p))
    p = _write(tmp_path, {"name": "x", "executors": {"oracle": {}}}, "partial.yaml")
    with pytest.raises(InputError, match="missing for role"):
        sites.load_site(str(p))
    with pytest.raises(InputError, match="unknown site 'nowhere'"):
        sites.load_site("nowhere")


def test_walltime_parsing():
    prov = sites.SlurmProviderSpec(partition="p", walltime="1-02:03:04")
    assert prov.walltime_s() == ((24 + 2) * 60 + 3) * 60 + 4


def test_sites_cli_list_and_show():
    r = runner.invoke(app, ["sites", "list"])
    assert r.exit_code == 0 and "local" in r.stdout and "slurm-gpu" in r.stdout
    r = runner.invoke(app, ["sites", "show", "slurm-gpu"])
    shown = yaml.safe_load(r.stdout)
    assert shown["executors"]["train"]["provider"]["gpus_per_node"] == 4
    r = runner.invoke(app, ["sites", "check", "slurm-gpu"])
    assert r.exit_code == 0 and "#SBATCH --partition=gpu" in r.stdout


@pytest.mark.slow
def test_gpu_placement_one_device_per_training_worker_mocked_without_gpus(tmp_path):
    """No GPU here: the site names two (fake) accelerators, and each training worker must
    see exactly one of them through CUDA_VISIBLE_DEVICES, a different one per worker."""
    import subprocess

    import parsl
    from parsl import python_app

    path = _write(tmp_path, {"name": "fake-gpus", "executors": {
        "oracle": {"workers_per_node": 1}, "sample": {"workers_per_node": 1},
        "train": {"accelerators": ["0", "1"], "workers_per_node": "auto"}}})
    site = sites.load_site(str(path))
    assert sites.workers_per_node("train", site.executors["train"]) == 2
    dfk = parsl.load(sites.to_parsl_config(site, tmp_path / "runinfo"))
    try:
        # a stdlib function, so the worker needs nothing from this test module; $PPID is
        # the worker process running the command
        app = python_app(subprocess.check_output, executors=["train"])
        cmd = ["sh", "-c", "sleep 0.3; echo $PPID ${CUDA_VISIBLE_DEVICES:-none}"]
        seen = dict(f.result().decode().split() for f in [app(cmd) for _ in range(8)])
    finally:
        dfk.cleanup()
        parsl.clear()
    assert len(seen) == 2 and sorted(seen.values()) == ["0", "1"]


@pytest.mark.parametrize(("over", "needle"), [
    ({"oracle": {"workers_per_node": 0}}, "field 'executors.oracle.workers_per_node': must be 'auto' or"),
    ({"oracle": {"workers_per_node": -3}}, "got -3"),
    ({"oracle": {"workers_per_node": "many"}}, "got 'many'"),
    ({"train": {"cores_per_worker": float("inf")}}, "field 'executors.train.cores_per_worker': Input should be a finite"),
    ({"sample": {"task_time_limit_s": float("inf")}}, "field 'executors.sample.task_time_limit_s'"),
    ({"heartbeat_period_s": 10, "heartbeat_threshold_s": 5}, "field 'heartbeat_threshold_s': 5 s must be above"),
    ({"heartbeat_period_s": 10, "heartbeat_threshold_s": 10}, "must be above heartbeat_period_s (10 s)"),
])
def test_site_numbers_are_sane(tmp_path, over, needle):
    data = {"name": "x", "executors": {"oracle": {}, "train": {}, "sample": {}}}
    for key, value in over.items():
        if key in sites.ROLES:
            data["executors"][key] = value
        else:
            data[key] = value
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        sites.load_site(str(path))
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value), str(info.value)


def test_unknown_site_blames_what_named_it(tmp_path):
    with pytest.raises(InputError, match=r"^spec\.yaml: field 'site': unknown site 'nosuchsite'"):
        sites.load_site("nosuchsite", origin="spec.yaml: field 'site'")
    with pytest.raises(InputError, match=r"^--site: site file '.*nope\.yaml' not found"):
        sites.load_site(str(tmp_path / "nope.yaml"))
    infeasible = _write(tmp_path, {"name": "x", "executors": {
        "oracle": _slurm(task_time_limit_s=7200), "train": {}, "sample": {}}})
    with pytest.raises(InputError, match=rf"^{infeasible}: site x cannot run: oracle: a task may run"):
        sites.check_site(str(infeasible))
