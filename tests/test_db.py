"""Provenance database on a real PostgreSQL and on SQLite (every test runs on both)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from ase import Atoms
from ase.build import bulk, molecule
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alflow.db import writers
from alflow.db.models import Base, Geometry, Label
from alflow.db.session import downgrade, get_engine, upgrade
from alflow.db.views import VIEWS_V1
from alflow.geometry import atoms_hash

TABLES = set(Base.metadata.tables)


def _method(conn, tag="m"):
    return writers.ensure_oracle_method(
        conn,
        {"code": "pyscf", "version": "2.14", "method": "HF", "basis": "sto-3g",
         "settings": {"tag": tag}, "settings_sha256": (tag * 64)[:64]},
    )


def _tables_and_views(url):
    insp = sa.inspect(get_engine(url))
    return set(insp.get_table_names()), set(insp.get_view_names())


def test_migrations_upgrade_from_empty_and_downgrade_to_empty(empty_db_url):
    upgrade(empty_db_url)
    tables, views = _tables_and_views(empty_db_url)
    assert TABLES <= tables
    assert set(VIEWS_V1) <= views

    downgrade(empty_db_url, "base")
    get_engine.cache_clear()
    tables, views = _tables_and_views(empty_db_url)
    assert tables <= {"alembic_version"} and not views

    upgrade(empty_db_url)  # and back up again: the tree is reversible
    assert TABLES <= _tables_and_views(empty_db_url)[0]



def test_autogenerate_yields_no_diff(db_url):
    with get_engine(db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def _noisy_ethanol(seed=0):
    rng = np.random.default_rng(seed)
    atoms = molecule("CH3CH2OH")
    atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
    return atoms


def test_geometry_and_label_round_trip_is_bit_exact(engine):
    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    atoms.cell[0, 1] = 0.123456789012345  # a triclinic cell with full float precision
    atoms.info.update(charge=-1, multiplicity=2)
    forces = rng.normal(size=(len(atoms), 3)) * 1e-3
    forces[0, 0] = np.nextafter(1.0, 2.0)  # values one ulp apart must survive
    forces[0, 1] = 5e-324  # subnormal
    stress = rng.normal(size=(3, 3))
    with engine.begin() as conn:
        method = _method(conn)
        (gid,) = writers.write_geometries(conn, [writers.geometry_row(atoms, "initial")])
        writers.write_labels(conn, [writers.label_row(
            gid, method, status="ok", energy=-1234.567890123456789, forces=forces, stress=stress)])

    with Session(engine) as s:
        geo = s.get(Geometry, gid)
        label = s.scalars(sa.select(Label).where(Label.geometry_id == gid)).one()
        back = writers.atoms_from_geometry(geo)
    assert back.positions.tobytes() == atoms.positions.tobytes()
    assert back.cell.array.tobytes() == atoms.cell.array.tobytes()
    assert list(back.numbers) == list(atoms.numbers) and list(back.pbc) == [True] * 3
    assert back.info == {"charge": -1, "multiplicity": 2}
    assert label.forces.reshape(-1, 3).tobytes() == forces.tobytes()
    assert label.stress.reshape(3, 3).tobytes() == stress.tobytes()
    assert label.energy == -1234.567890123456789
    assert geo.content_hash == atoms_hash(atoms) and geo.formula == "Cu16"


def test_same_geometry_twice_is_one_row(engine):
    a = _noisy_ethanol()
    b = a.copy()
    b.positions += 1e-7  # below the 1e-5 Å identity resolution
    c = a.copy()
    c.info["charge"] = 1  # a cation is a different geometry
    with engine.begin() as conn:
        ids = writers.write_geometries(conn, [writers.geometry_row(x, "md") for x in (a, b, c)])
        again = writers.write_geometries(conn, [writers.geometry_row(a, "adversarial")])
        n = conn.execute(sa.select(sa.func.count()).select_from(Geometry)).scalar_one()
    assert ids[0] == ids[1] == again[0] and ids[2] != ids[0]
    assert n == 2


def test_database_refuses_second_successful_label(engine):
    with engine.begin() as conn:
        method = _method(conn)
        (gid,) = writers.write_geometries(conn, [writers.geometry_row(_noisy_ethanol(), "md")])
    with Session(engine) as s:
        s.add(Label(geometry_id=gid, method_id=method, status="ok", energy=1.0))
        s.commit()
        # failures are data: several failed attempts for one geometry are all kept
        s.add_all([Label(geometry_id=gid, method_id=method, status="failed",
                         error_class="scf_not_converged") for _ in range(2)])
        s.commit()
        s.add(Label(geometry_id=gid, method_id=method, status="ok", energy=2.0))
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        # the same geometry with another oracle method is a different label
        other = _method(s.connection(), "n")
        s.add(Label(geometry_id=gid, method_id=other, status="ok", energy=3.0))
        s.commit()
        counts = dict(s.execute(sa.select(Label.status, sa.func.count()).group_by(Label.status)).tuples().all())
    assert counts == {"ok": 2, "failed": 2}


def test_bulk_label_writer_is_idempotent(engine):
    frames = [_noisy_ethanol(i) for i in range(50)]
    with engine.begin() as conn:
        method = _method(conn)
        ids = writers.write_geometries(conn, [writers.geometry_row(a, "md") for a in frames])
        rows = [writers.label_row(g, method, status="ok", energy=float(i), forces=np.zeros((9, 3)))
                for i, g in enumerate(ids)]
        assert writers.write_labels(conn, rows) == 50
        assert writers.write_labels(conn, rows[:10]) == 0  # resume: nothing recomputed/duplicated
        ok = conn.execute(sa.text("SELECT COUNT(*) FROM label WHERE status = 'ok'")).scalar_one()
        assert ok == 50
        failed = [writers.label_row(ids[0], method, status="failed", error_class="timeout")]
        assert writers.write_labels(conn, failed) == 1


def test_a_failing_batch_writes_nothing(engine):
    frames = [_noisy_ethanol(100 + i) for i in range(5)]
    with pytest.raises(Exception):
        with engine.begin() as conn:
            method = _method(conn)
            ids = writers.write_geometries(conn, [writers.geometry_row(a, "md") for a in frames])
            bad = [writers.label_row(g, method, status="weird") for g in ids]  # violates CHECK
            writers.write_labels(conn, bad)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Geometry)).scalar_one() == 0


def test_geometry_hash_ignores_cell_of_molecules_and_sees_periodicity():
    mol = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    boxed = mol.copy()
    boxed.cell = [10, 10, 10]  # a cell on a non-periodic molecule changes nothing
    periodic = boxed.copy()
    periodic.pbc = True
    assert atoms_hash(mol) == atoms_hash(boxed) != atoms_hash(periodic)
