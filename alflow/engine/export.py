"""Export a campaign's labelled geometries for other trainers (extxyz or an ASE database)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from ase.calculators.singlepoint import SinglePointCalculator

from alflow.db import models as m
from alflow.db.session import session_factory
from alflow.db.writers import atoms_from_geometry
from alflow.errors import InputError

FORMATS = ("extxyz", "ase-db")


def export_campaign(url: str, name: str, out: str | Path, fmt: str) -> int:
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", source="export")
    out = Path(out)
    if out.exists():
        raise InputError("output file exists; choose another name", source=str(out))
    with session_factory(url)() as s:
        camp = s.scalar(sa.select(m.Campaign.id).where(m.Campaign.name == name))
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        chosen = (sa.select(m.Sample.geometry_id).join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
                  .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
                  .where(m.Generation.campaign_id == camp, m.Sample.selected.is_(True)))
        rows = s.execute(sa.select(m.Label, m.Geometry, m.OracleMethod)
                         .join(m.Geometry, m.Geometry.id == m.Label.geometry_id)
                         .join(m.OracleMethod, m.OracleMethod.id == m.Label.method_id)
                         .where(m.Label.status == "ok", m.Label.geometry_id.in_(chosen))
                         .order_by(m.Label.id)).all()
    frames = []
    for lab, geo, method in rows:
        atoms = atoms_from_geometry(geo)
        atoms.info.update(label_id=lab.id, geometry_hash=geo.content_hash, origin=geo.origin,
                          oracle=f"{method.code}:{method.method or ''}/{method.basis or ''}")
        # an energy-only oracle (forces not computed) still exports its energy
        results = {"energy": lab.energy}
        if lab.forces is not None:
            results["forces"] = lab.forces.reshape(-1, 3)
        if lab.stress is not None:
            results["stress"] = lab.stress.reshape(3, 3)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    if fmt == "extxyz":
        from ase.io import write

        write(tmp, frames, format="extxyz")
    else:
        from ase.db import connect

        with connect(tmp, type="db") as db:
            for atoms in frames:
                db.write(atoms, data={"label_id": atoms.info["label_id"]}, origin=atoms.info["origin"])
    tmp.replace(out)
    return len(frames)
