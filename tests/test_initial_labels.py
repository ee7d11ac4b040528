"""`initial_labels:` (issue 16): a campaign starts from labelled data with no oracle call.

Round trip: `alflow export` of a finished campaign (SQLite) imported into a new campaign on
each backend gives the same labels, and generation 0 of the new campaign has no label task.
Mixed methods are refused unless allowed; bad files exit 2 with the number that is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from ase import units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.io import write
from engine_helpers import run_alflow
from model_helpers import cu_campaign, cu_spec, inline_run

from alflow.db import models as m
from alflow.db.session import get_engine, upgrade
from alflow.engine.create import create_campaign
from alflow.spec import load_spec


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished one-generation campaign on SQLite and its labels exported both ways."""
    d = tmp_path_factory.mktemp("source")
    url = f"sqlite:///{d / 'src.db'}"
    cu_campaign(d, url, "src", generations=1)
    for fmt, name in (("ase-db", "labels.db"), ("extxyz", "labels.extxyz")):
        r = run_alflow("export", "src", "-o", str(d / name), "-f", fmt, "--db", url, cwd=d)
        assert r.returncode == 0, r.stderr
    with get_engine(url).connect() as c:
        labels = {h: (e, np.frombuffer(f, "<f8")) for h, e, f in c.execute(sa.text(
            "SELECT g.content_hash, l.energy, l.forces FROM label l JOIN geometry g ON g.id = l.geometry_id "
            "WHERE l.status = 'ok'")).all()}
    return d, labels


def label_spec(tmp_path, name, labels: list[dict], generations=1, **changes):
    path = cu_spec(tmp_path, name, generations, **changes)
    spec = yaml.safe_load(path.read_text())
    spec["initial_geometries"] = changes.get("initial_geometries", [])
    spec["initial_labels"] = labels
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("fmt", ["labels.db", "labels.extxyz"])
def test_export_import_round_trip_same_labels_no_oracle_call(source, tmp_path, db_url, fmt):
    src_dir, src_labels = source
    path = label_spec(tmp_path, "dst", [{"path": str(src_dir / fmt), "method": "oracle", "multiplicity": 2}])
    loaded = load_spec(path)
    upgrade(db_url)
    create_campaign(loaded, db_url, site="inline", workdir=tmp_path / "dst")
    assert inline_run(db_url, "dst") == "max_generations reached (1)"
    with get_engine(db_url).connect() as c:
        rows = c.execute(sa.text(
            "SELECT g.content_hash, l.energy, l.forces, l.task_id, om.code FROM label l "
            "JOIN geometry g ON g.id = l.geometry_id JOIN oracle_method om ON om.id = l.method_id")).all()
        gen0 = c.execute(sa.select(m.Generation.id).where(m.Generation.idx == 0)).scalar_one()
        label_tasks = c.execute(sa.text("SELECT COUNT(*) FROM task WHERE kind = 'label' AND generation_id = :g"),
                                {"g": gen0}).scalar_one()
        n_models = c.execute(sa.text("SELECT COUNT(*) FROM model")).scalar_one()
        ts = c.execute(sa.select(m.TrainingSet.n_train, m.TrainingSet.n_val, m.TrainingSet.n_test)).one()
        run = c.execute(sa.select(m.SamplingRun.params).where(m.SamplingRun.kind == "initial-labels")).scalar_one()
    assert label_tasks == 0  # zero oracle calls in generation 0, by the task table
    assert n_models == 2 and sum(ts) == len(src_labels) == 12  # trained on every imported label
    assert len(rows) == len(src_labels) and all(t is None for *_, t, _ in rows)
    assert {code for *_, code in rows} == {"ase"}  # counted as the campaign oracle's own labels
    exact = fmt.endswith(".db")  # extxyz keeps 8 decimals of forces and positions
    for h, e, f, _, _ in rows:
        e0, f0 = src_labels[h]  # the same geometry (content hash) ...
        assert e == e0  # ... and the same energy (extxyz writes energies in full)
        np.testing.assert_allclose(np.frombuffer(f, "<f8") if isinstance(f, bytes) else f, f0,
                                   atol=0 if exact else 1e-8, rtol=0)
    assert run["method"] == "oracle" and len(run["sha256"]) == 64


def test_imported_method_is_refused_unless_mixing_is_allowed(source, tmp_path, sqlite_url):
    src_dir, _ = source
    other = {"name": "PBE/def2-SVP ORCA 5", "code": "orca"}
    path = label_spec(tmp_path, "mixed", [{"path": str(src_dir / "labels.db"), "method": other,
                                           "multiplicity": 2}])
    r = run_alflow("spec", "validate", str(path), cwd=tmp_path)
    assert r.returncode == 2 and "initial_labels[0].method" in r.stderr and "allow_mixed_methods" in r.stderr
    spec = yaml.safe_load(path.read_text())
    spec["allow_mixed_methods"] = True
    path.write_text(yaml.safe_dump(spec))
    upgrade(sqlite_url)
    create_campaign(load_spec(path), sqlite_url, site="inline", workdir=tmp_path / "mixed")
    assert inline_run(sqlite_url, "mixed") == "max_generations reached (1)"
    with get_engine(sqlite_url).connect() as c:
        om = c.execute(sa.select(m.OracleMethod).where(m.OracleMethod.code == "orca")).one()
        assert om.method == other["name"] and om.settings["imported"] is True
        from alflow.engine.artifacts import sha256_file

        assert om.settings["file_sha256"] == sha256_file(src_dir / "labels.db")
        assert c.execute(sa.text("SELECT COUNT(*) FROM label WHERE method_id = :i"), {"i": om.id}).scalar_one() == 12
        assert c.execute(sa.text("SELECT COUNT(*) FROM task WHERE kind = 'label'")).scalar_one() == 0
        assert sum(c.execute(sa.select(m.TrainingSet.n_train, m.TrainingSet.n_val, m.TrainingSet.n_test)).one()) == 12


def md_frames(n=20, seed=0):
    """An 'AIMD' trajectory: EMT Cu13 at 600 K, every third 1 fs step."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    a = Icosahedron("Cu", noshells=2)
    a.calc = EMT()
    MaxwellBoltzmannDistribution(a, temperature_K=600, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(a, 1 * units.fs)
    out = []
    for _ in range(n):
        dyn.run(3)
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces())
        out.append(b)
    return out


def write_labels(path, frames, energy=1.0, force=1.0, drop_forces=False, nan_at=None, swap=None):
    out = []
    for k, a in enumerate(frames):
        b = a.copy()
        if swap is not None and k == 0:
            b.numbers[0] = swap
        res = {"energy": a.get_potential_energy() * energy}
        if nan_at == k:
            res["energy"] = float("nan")
        if not drop_forces:
            res["forces"] = a.get_forces() * force
        b.calc = SinglePointCalculator(b, **res)
        out.append(b)
    write(path, out, format="extxyz")
    return path


@pytest.mark.parametrize("case,needle", [
    ("good", None),
    ("no_forces", "frame 0: has no forces"),
    ("nan", "frame 3: energy is nan"),
    ("kJ/mol", "largest force component is"),
    ("meV", "energies spread by"),
    ("hartree_energy", "times the work the forces do"),
    ("element", "holds element(s) Ag that no initial geometry has (Cu)"),
])
def test_bad_label_files_exit_2_naming_file_and_number(tmp_path, case, needle):
    frames = md_frames()
    f = tmp_path / "aimd.extxyz"
    kw = {"no_forces": dict(drop_forces=True), "nan": dict(nan_at=3), "kJ/mol": dict(force=96.485, energy=96.485),
          "meV": dict(energy=1000.0), "hartree_energy": dict(energy=1 / 27.211386), "element": dict(swap=47)}
    write_labels(f, frames, **kw.get(case, {}))
    geo = tmp_path / "init.extxyz"
    write(geo, [Icosahedron("Cu", noshells=2)])
    path = label_spec(tmp_path, "bad", [{"path": str(f), "method": "oracle", "multiplicity": 2}])
    spec = yaml.safe_load(path.read_text())
    spec["initial_geometries"] = [{"path": str(geo), "multiplicity": 2}]
    path.write_text(yaml.safe_dump(spec))
    r = run_alflow("spec", "validate", str(path), cwd=tmp_path)
    if needle is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2, r.stdout
    line = " ".join(r.stderr.split())
    assert needle in line and "aimd.extxyz" in line, line
    if case == "kJ/mol":
        fmax = max(np.abs(a.get_forces()).max() for a in frames) * 96.485
        assert f"{fmax:.4g}" in line  # the number that looks wrong
    # `alflow run` writes nothing either
    db = tmp_path / "run.db"
    r = run_alflow("run", str(path), "--db", f"sqlite:///{db}", "-q", cwd=tmp_path)
    assert r.returncode == 2 and not db.exists()
