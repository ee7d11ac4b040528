"""Campaign creation: the campaign row, its initial geometries and generation 0, in one
transaction (callers check every input first: `alflow.engine.preflight`).

A periodic starting frame of a carving campaign is not labelled whole: it is recorded (not
selected) and the clusters carved around `carving.initial_centres` spread-out atoms are
what generation 0 labels (`alflow.sampling.condensed.initial_clusters`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from alflow import __version__
from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import session_factory
from alflow.engine import queue
from alflow.engine.context import PROFILE_ORIGIN, REFERENCE_MD_ORIGIN
from alflow.engine.states import GenState
from alflow.errors import InputError
from alflow.spec import LoadedSpec, spec_json


def _held_out(loaded: LoadedSpec, workdir: str | Path) -> list[tuple]:
    """(Atoms, origin, reason) of the frames recorded only to evaluate on, labelled in
    generation 0 and never trained on (`CampaignContext.split`): `evaluation.reference_md_frames`
    frames of the validation's reference trajectory (run here once, cached by content in
    the run directory, where the validate step finds it), then the profile path in order."""
    from alflow.geometry import atoms_hash

    spec = loaded.spec
    out = []
    n = spec.evaluation.reference_md_frames
    if n:
        from alflow.validation import campaign_reference

        # as CampaignContext.reference_start: a starting geometry, else an imported one
        start = min(loaded.geometries or [a for lf in loaded.labels for a in lf.atoms], key=atoms_hash)
        ref = campaign_reference(start, spec.validation, spec.oracle,
                                 cache_dir=Path(workdir) / "validation-reference")
        # between the walkers' starts (which are frame_indices(walkers)): other frames
        for k in ref.frame_indices(n, skip=spec.validation.equilibration_frames + 1):
            out.append((ref.atoms(int(k), start), REFERENCE_MD_ORIGIN, "evaluation: reference MD"))
    for atoms in loaded.profile:
        out.append((atoms, PROFILE_ORIGIN, "profile"))
    return out


def create_campaign(loaded: LoadedSpec, url: str, *, site: str | None, workdir: str | Path) -> int:
    """Record a new campaign; returns its id."""
    from alflow.sampling.condensed import initial_clusters

    spec = loaded.spec
    Session = session_factory(url)
    held_out = _held_out(loaded, workdir)  # a reference MD may take minutes: outside the transaction
    with Session.begin() as s:
        if s.scalar(sa.select(m.Campaign.id).where(m.Campaign.name == spec.name)) is not None:
            raise InputError(
                f"campaign {spec.name!r} already exists in this database; "
                f"continue it with `alflow resume {spec.name}` or rename it", source=str(loaded.path))
        camp = m.Campaign(
            name=spec.name, spec=json.loads(spec_json(spec)), spec_sha256=loaded.sha256,
            alflow_version=__version__, status="created", site=site or spec.site,
            workdir=str(Path(workdir).resolve()))
        s.add(camp)
        s.flush()
        gen = m.Generation(campaign_id=camp.id, idx=0, state=GenState.LABEL.value)
        s.add(gen)
        s.flush()
        ids = writers.write_geometries(s, [writers.geometry_row(a, "initial") for a in loaded.geometries])
        run = m.SamplingRun(generation_id=gen.id, kind="initial", n_frames=len(ids),
                            params={"sources": [g.path for g in spec.initial_geometries]})
        s.add(run)
        s.flush()
        samples, edges = [], []
        seen: set[int] = set()
        for atoms, gid in zip(loaded.geometries, ids, strict=True):
            if gid in seen:  # the same geometry listed twice is one sample
                continue
            seen.add(gid)
            if not (spec.carving.enabled and atoms.pbc.any()):
                samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": True,
                                "reason": "initial"})
                continue
            samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": False,
                            "reason": "carved"})
            clusters = initial_clusters(atoms, spec.carving, spec.carving_radius, spec.seed)
            cids = writers.write_geometries(s, [writers.geometry_row(c.atoms, "initial-carved") for c in clusters])
            for cl, cid in zip(clusters, cids, strict=True):
                samples.append({"sampling_run_id": run.id, "geometry_id": cid, "selected": True,
                                "reason": "initial cluster", "carve_center": int(cl.centre),
                                "carve_map": np.asarray(cl.source_indices, dtype=np.int64)})
                edges.append({"child_id": cid, "parent_id": gid, "relation": "carved",
                              "sampling_run_id": run.id, "info": {"centre": int(cl.centre)}})
        for atoms, origin, reason in held_out:
            gid = writers.write_geometries(s, [writers.geometry_row(atoms, origin)])[0]
            if gid in seen:
                continue
            seen.add(gid)
            samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": True, "reason": reason})
        if samples:
            s.execute(sa.insert(m.Sample), samples)
        if edges:
            s.execute(sa.insert(m.GeometryEdge), edges)
        chosen = s.execute(sa.select(m.Sample.geometry_id, m.Sample.id).where(
            m.Sample.sampling_run_id == run.id, m.Sample.selected.is_(True)).order_by(m.Sample.id)).all()
        queue.enqueue(s, camp.id, gen.id, [(g, sid, None) for g, sid in chosen])
        if loaded.labels:
            record_initial_labels(s, loaded, camp.id, gen.id)
        return camp.id


def _oracle_record(spec) -> dict:
    from alflow.oracles import make_oracle

    oracle = make_oracle(spec.oracle)  # identity only
    try:
        return oracle.method_record()
    finally:
        oracle.close()


def record_initial_labels(s, loaded: LoadedSpec, campaign_id: int, gen_id: int) -> int:
    """The spec's `initial_labels` as labels (no task: no oracle call), each file one
    sampling run of kind 'initial-labels' whose params name the file, its sha256 and the
    method id; a label that exists for (geometry, method) is kept if it agrees and refused
    if it does not. Returns how many labels were written."""
    written = 0
    oracle_id = None
    for lf in loaded.labels:
        if lf.imported:
            method_id = writers.ensure_oracle_method(s, lf.method_record())
            method = {"name": lf.method.name, "code": lf.method.code}
        else:
            if oracle_id is None:
                oracle_id = writers.ensure_oracle_method(s, _oracle_record(loaded.spec))
            method_id, method = oracle_id, "oracle"
        ids = writers.write_geometries(s, [writers.geometry_row(a, "initial-labels") for a in lf.atoms])
        run = m.SamplingRun(generation_id=gen_id, kind="initial-labels", n_frames=len(ids),
                            params={"path": str(lf.path), "sha256": lf.sha256, "method": method,
                                    "method_id": method_id})
        s.add(run)
        s.flush()
        existing = {lab.geometry_id: lab for lab in s.scalars(sa.select(m.Label).where(
            m.Label.method_id == method_id, m.Label.status == "ok", m.Label.geometry_id.in_(set(ids))))}
        rows, samples, seen = [], [], {}
        for k, gid in enumerate(ids):
            e, f = float(lf.energies[k]), lf.forces[k]
            prior = existing.get(gid)
            if prior is not None:
                pe, pf = prior.energy, prior.forces.reshape(-1, 3)
            elif gid in seen:
                pe, pf = seen[gid]
            else:
                pe = pf = None
            if pe is not None:
                if abs(pe - e) > 1e-6 or float(np.abs(pf - f).max()) > 1e-6:
                    where = "an earlier frame of the file" if prior is None else "the label recorded for it"
                    raise InputError(f"frame {k}: the same geometry as {where}, with another energy or "
                                     f"forces ({e!r} vs {pe!r} eV)", source=str(lf.path))
                continue
            seen[gid] = (e, f)
            samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": True,
                            "reason": "imported label", "energy_mean": e})
            rows.append(writers.label_row(gid, method_id, status="ok", energy=e, forces=f,
                                          stress=lf.stresses[k]))
        for gid in existing:
            if gid not in seen:
                k = ids.index(gid)
                samples.append({"sampling_run_id": run.id, "geometry_id": gid, "selected": True,
                                "reason": "imported label (recorded before)", "energy_mean": float(lf.energies[k])})
                seen[gid] = None
        if samples:
            s.execute(sa.insert(m.Sample), samples)
        written += writers.write_labels(s, rows)
        chosen = s.execute(sa.select(m.Sample.geometry_id, m.Sample.id).where(
            m.Sample.sampling_run_id == run.id)).all()
        queue.enqueue(s, campaign_id, gen_id, [(g, sid, None) for g, sid in chosen])
        queue.close(s, campaign_id, method_id, [g for g, _ in chosen], None)
    return written
