"""Model export and loading (issue 16): a finished tiny PaiNN campaign (inline backend, EMT
Cu13) exported with `alflow model export`, read back by SchNetPack's own loader and
calculator and by `torch.jit.load`, and by `alflow.load_potential`; bad input exits 2 and
writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.cluster import Icosahedron
from engine_helpers import run_alflow
from model_helpers import cu_campaign

NAME = "cu_model"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    d = tmp_path_factory.mktemp("cu_model")
    url = f"sqlite:///{d / 'alflow.db'}"
    assert cu_campaign(d, url, NAME, training={"max_epochs": 40}) == "max_generations reached (2)"
    return d, url


@pytest.fixture(scope="module")
def exported(campaign):
    d, url = campaign
    out = d / "export"
    r = run_alflow("model", "export", NAME, "-g", "best", "-o", str(out), "--db", url, cwd=d)
    assert r.returncode == 0, r.stderr
    return out, json.loads((out / "manifest.json").read_text())


def probe(seed=7):
    a = Icosahedron("Cu", noshells=2)
    a.positions += np.random.default_rng(seed).normal(0, 0.1, a.positions.shape)
    return a


def alflow_member(url, generation, member):
    """What alflow's own ensemble says for one member (the reference)."""
    from alflow.engine.model_export import load_ensemble

    ens, _, _ = load_ensemble(url, NAME, generation, device="cpu", dtype=torch.float64)
    out = ens.predict([probe()], members=True)
    return out.energy_members[member, 0], out.forces_members[0][member]


def test_model_list_shows_errors_and_names_the_best(campaign):
    d, url = campaign
    r = run_alflow("model", "list", NAME, "--db", url, cwd=d)
    assert r.returncode == 0, r.stderr
    from alflow.engine.model_export import generations

    _, gens = generations(url, NAME)
    assert [len(g.members) for g in gens] == [2, 2]
    assert all(g.force_mae is not None and g.force_mae > 0 for g in gens)
    best = min(gens, key=lambda g: (g.force_mae, -g.idx))
    assert f"best (lowest held-out force MAE): generation {best.idx}" in r.stdout
    assert f"{gens[0].force_mae:.4f}" in r.stdout and f"{gens[1].force_mae:.4f}" in r.stdout


def test_exported_member_loads_in_schnetpack_and_torchscript_and_agrees(campaign, exported):
    import schnetpack as spk

    d, url = campaign
    out, manifest = exported
    from alflow.engine.model_export import generations

    _, gens = generations(url, NAME)
    best = min(gens, key=lambda g: (g.force_mae, -g.idx))
    assert manifest["generation"] == best.idx and manifest["chosen_by"].startswith("best")
    assert manifest["n_members"] == 2 and manifest["elements"] == [29] and manifest["cutoff"] == 4.0
    assert manifest["units"]["energy"] == "eV" and manifest["oracle_method"]["kind"] == "ase"
    assert manifest["training_set_sha256"] == best.training_set_sha256
    assert manifest["calibration_scale"] == pytest.approx(best.calibration_scale)
    assert manifest["torchscript"] == "produced"
    for k in (0, 1):
        e_ref, f_ref = alflow_member(url, manifest["generation"], k)
        # SchNetPack's own calculator, from the file alone
        atoms = probe()
        atoms.calc = spk.interfaces.SpkCalculator(
            model=str(out / f"member-{k}.spk.pt"),
            neighbor_list=spk.transform.MatScipyNeighborList(cutoff=manifest["cutoff"]),
            energy_unit="eV", position_unit="Angstrom", dtype=torch.float64)
        assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-6)
        assert abs(e_ref) > 1.0  # absolute energies (with the element reference), not residuals
        # the deployed TorchScript member, through torch.jit.load and SchNetPack's converter
        jit = torch.jit.load(str(out / f"member-{k}.jit.pt"))
        conv = spk.interfaces.AtomsConverter(
            neighbor_list=spk.transform.MatScipyNeighborList(cutoff=manifest["cutoff"]), dtype=torch.float64)
        res = jit(conv(probe()))
        assert float(res["energy"].detach()) == pytest.approx(e_ref, abs=1e-6)
        np.testing.assert_allclose(res["forces"].detach().numpy(), f_ref, atol=1e-6)


def test_load_potential_from_export_and_from_database_agree(campaign, exported):
    import alflow

    d, url = campaign
    out, manifest = exported
    a, b = probe(), probe()
    a.calc = alflow.load_potential(out)
    b.calc = alflow.load_potential(url, NAME, generation=manifest["generation"])
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-5)
    r = a.calc.results
    assert r["sigma_f"] > 0 and r["atomic_uncertainty"].shape == (13,) and r["energy_std"] >= 0
    assert r["sigma_f_calibrated"] == pytest.approx(r["sigma_f"] * manifest["calibration_scale"])
    last = alflow.load_potential(url, NAME)  # "last"
    assert last.source["generation"] == 1


def test_load_potential_gives_stress_for_a_periodic_cell(campaign):
    import alflow
    from ase.build import bulk

    _, url = campaign
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.rattle(0.05, seed=1)
    cu.calc = alflow.load_potential(url, NAME, generation=0, dtype=torch.float64)  # fd needs float64
    s = cu.get_stress()
    assert s.shape == (6,) and np.all(np.isfinite(s))
    from ase.calculators.fd import calculate_numerical_stress

    np.testing.assert_allclose(s, calculate_numerical_stress(cu, eps=1e-5, force_consistent=False), atol=1e-6)


def test_bad_exports_exit_2_and_write_nothing(campaign, exported, tmp_path):
    d, url = campaign
    out, _ = exported
    # a generation that does not exist; a campaign that does not exist
    r = run_alflow("model", "export", NAME, "-g", "7", "-o", str(tmp_path / "x"), "--db", url, cwd=d)
    assert r.returncode == 2 and "no generation 7" in r.stderr and not (tmp_path / "x").exists()
    r = run_alflow("model", "export", "nope", "-o", str(tmp_path / "y"), "--db", url, cwd=d)
    assert r.returncode == 2 and "no campaign named 'nope'" in r.stderr and not (tmp_path / "y").exists()
    # into a directory that is not empty
    r = run_alflow("model", "export", NAME, "-o", str(out), "--db", url, cwd=d)
    assert r.returncode == 2 and "not an empty directory" in r.stderr
    # a manifest whose file no longer hashes to its entry
    import shutil

    import alflow
    from alflow.errors import InputError

    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    blob = bytearray((bad / "member-1.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "member-1.pt").write_bytes(bytes(blob))
    with pytest.raises(InputError, match="sha256 mismatch"):
        alflow.load_potential(bad)


def test_export_of_a_campaign_without_trained_members_exits_2(tmp_path):
    from alflow.db.session import upgrade
    from alflow.engine.create import create_campaign
    from alflow.spec import load_spec
    from model_helpers import cu_spec

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    create_campaign(load_spec(cu_spec(tmp_path, "fresh")), url, site="inline", workdir=tmp_path / "fresh")
    r = run_alflow("model", "export", "fresh", "-o", str(tmp_path / "out"), "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "no trained ensemble members" in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


# ------------------------------------------------------------------------- alflow md
MD_2PS = ("--steps", "500", "--timestep", "4", "--temperature", "300", "--bond-guard", "1.5",
          "--multiplicity", "2", "--seed", "3")


def start_file(path, scale=1.0, swap=None):
    from ase.io import write

    a = Icosahedron("Cu", noshells=2)
    a.positions *= scale
    if swap is not None:
        a.numbers[0] = swap
    write(path, a)
    return path


def sigma_cal(calc, scale):
    a = Icosahedron("Cu", noshells=2)
    a.positions *= scale
    a.calc = calc
    a.get_potential_energy()
    return calc.results["sigma_f_calibrated"]


def test_md_runs_2_ps_nvt_and_writes_a_trajectory_ase_reads(campaign, exported, tmp_path):
    from ase.io import read

    d, _ = campaign
    out, _ = exported
    traj = tmp_path / "prod.traj"
    r = run_alflow("md", str(start_file(tmp_path / "start.xyz")), "--model", str(out), "-o", str(traj),
                   "--max-uncertainty", "10", *MD_2PS, cwd=d)
    assert r.returncode == 0, r.stderr
    assert "stopped: max_steps" in r.stdout and "500/500 steps" in r.stdout  # the progress bar, finished
    frames = read(traj, ":")
    assert len(frames) == 501 and frames[-1].info["time_fs"] == 2000.0
    sig = np.array([f.info["sigma_f_calibrated"] for f in frames])
    assert np.all(np.isfinite(sig)) and np.all(sig >= 0) and sig.max() < 10
    assert all(np.isfinite(f.get_potential_energy()) and f.get_forces().shape == (13, 3) for f in frames)
    assert len(frames[7].info["atomic_uncertainty"]) == 13
    assert not np.allclose(frames[0].positions, frames[-1].positions)  # it moved


def test_md_stops_on_a_high_uncertainty_start_and_flags_in_flag_mode(campaign, exported, tmp_path):
    import alflow
    from ase.io import read

    d, _ = campaign
    out, _ = exported
    calc = alflow.load_potential(out)
    hot, cold = sigma_cal(calc, 0.8), sigma_cal(calc, 1.0)
    assert hot > 5 * cold  # the compressed cluster is far from anything the ensemble saw
    threshold = f"{(hot * cold) ** 0.5:.6g}"
    start = start_file(tmp_path / "hot.xyz", 0.8)
    r = run_alflow("md", str(start), "--model", str(out), "-o", str(tmp_path / "stop.traj"),
                   "--max-uncertainty", threshold, *MD_2PS, "-q", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "stopped: trust_hi" in r.stdout and "wrote 1 frames (0 steps" in r.stdout
    (frame,) = read(tmp_path / "stop.traj", ":")
    assert frame.info["flagged"] and frame.info["sigma_f_calibrated"] == pytest.approx(hot, rel=1e-5)
    r = run_alflow("md", str(start), "--model", str(out), "-o", str(tmp_path / "flag.traj"),
                   # a few very short steps: the compressed cluster relaxes violently and trips
                   # the energy guard within ~5 fs (how soon depends on the fit, which threaded
                   # in-process training does not reproduce to the bit)
                   "--max-uncertainty", threshold, "--on-uncertain", "flag", "--steps", "5",
                   "--timestep", "0.1", *MD_2PS[4:], "-q", cwd=d)
    assert r.returncode == 0, r.stderr
    frames = read(tmp_path / "flag.traj", ":")
    assert len(frames) == 6 and frames[0].info["flagged"], r.stdout  # went on past the threshold
    assert all(f.info["flagged"] == (f.info["sigma_f_calibrated"] >= float(threshold)) for f in frames)


def test_md_feed_queues_flagged_frames_and_resume_labels_them(campaign, tmp_path):
    import sqlalchemy as sa
    from model_helpers import inline_run

    from alflow.db import models as m
    from alflow.db.session import get_engine
    from alflow.engine.extend import extend_campaign

    d, url = campaign
    import sqlite3

    db = tmp_path / "fed.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # a copy that includes what is still in the WAL
    fed = f"sqlite:///{db}"
    start = start_file(tmp_path / "hot.xyz", 0.8)
    r = run_alflow("md", str(start), "--feed", NAME, "--db", fed, "-o", str(tmp_path / "fed.traj"),
                   "--max-uncertainty", "0.05", "--on-uncertain", "flag", "--steps", "30", "--timestep", "4",
                   "--bond-guard", "1.5", "--multiplicity", "2", "--save-every", "10", "-q", cwd=d)
    assert r.returncode == 0, r.stderr
    with get_engine(fed).connect() as c:
        run = c.execute(sa.select(m.SamplingRun).where(m.SamplingRun.kind == "production-md")).one()
        samples = c.execute(sa.select(m.Sample.geometry_id, m.Sample.selected, m.Sample.reason)
                            .where(m.Sample.sampling_run_id == run.id)).all()
        queued = c.execute(sa.text("SELECT COUNT(*) FROM label_queue q JOIN sample s ON s.id = q.sample_id "
                                   "WHERE q.status = 'queued' AND s.sampling_run_id = :r"), {"r": run.id}).scalar_one()
        cap = c.execute(sa.select(m.Campaign.spec)).scalar_one()["selection"]["max_per_generation"]
    flagged = [g for g, sel, _ in samples if sel]
    # the campaign's selection chose among the flagged frames: deduped, capped, each verdict kept
    assert 1 <= len(flagged) <= cap and queued == len(flagged)
    assert all(reason.startswith("production-md flagged; ") for _, sel, reason in samples if not sel)
    assert f"{queued} queued as candidates of {NAME}" in r.stdout
    assert run.params["threshold_eV_A"] == 0.05 and run.model_generation_id is not None
    extend_campaign(fed, NAME, max_generations=3)
    assert inline_run(fed, NAME) == "max_generations reached (3)"
    with get_engine(fed).connect() as c:
        gen2 = c.execute(sa.select(m.Generation.id).where(m.Generation.idx == 2)).scalar_one()
        labelled = set(c.execute(sa.text(
            "SELECT l.geometry_id FROM label l JOIN task t ON t.id = l.task_id "
            "WHERE t.generation_id = :g AND t.kind = 'label'"), {"g": gen2}).scalars())
    assert set(flagged) <= labelled  # the production frames were labelled in the next generation


def test_md_bad_input_exits_2_and_writes_nothing(campaign, exported, tmp_path):
    import shutil

    d, _ = campaign
    out, _ = exported
    traj = tmp_path / "t.traj"
    cases = [
        (("--model", str(out), str(start_file(tmp_path / "ag.xyz", swap=47))), "not trained on element(s) Ag"),
        (("--model", str(out), str(start_file(tmp_path / "s.xyz")), "--ensemble", "npt"), "NPT is not available"),
        ((str(tmp_path / "s.xyz"),), "give one of --model"),
    ]
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    (bad / "member-0.pt").write_bytes(b"not a checkpoint")
    cases.append((("--model", str(bad), str(tmp_path / "s.xyz")), "sha256 mismatch"))
    for args, needle in cases:
        r = run_alflow("md", *args, "-o", str(traj), "--max-uncertainty", "1", "--multiplicity", "2",
                       "--steps", "2", cwd=d)
        assert r.returncode == 2 and needle in " ".join(r.stderr.split()), (args, r.stderr)
        assert not traj.exists()


def test_an_export_carries_its_threshold_and_md_defaults_to_it(campaign, exported, tmp_path):
    """Without --max-uncertainty, md on an export stops at the exported generation's own
    trust_hi (calibrated eV/Å), as it does for a recorded campaign."""
    import sqlalchemy as sa

    from alflow.db import models as m
    from alflow.db.session import get_engine

    d, url = campaign
    out, manifest = exported
    with get_engine(url).connect() as c:
        trust_hi = c.execute(sa.select(m.Generation.trust_hi).where(
            m.Generation.idx == manifest["generation"])).scalar_one()
    assert trust_hi is not None and manifest["trust_hi_eV_A"] == pytest.approx(trust_hi)
    r = run_alflow("md", str(start_file(tmp_path / "s.xyz")), "--model", str(out), "-o", str(tmp_path / "t.traj"),
                   "--steps", "2", "--multiplicity", "2", "-q", cwd=d)
    assert r.returncode == 0, r.stderr
    assert f"σ_cal {trust_hi:.3g} eV/Å" in r.stdout
