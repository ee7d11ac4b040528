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

        start = min(loaded.geometries, key=atoms_hash)
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
        s.execute(sa.insert(m.Sample), samples)
        if edges:
            s.execute(sa.insert(m.GeometryEdge), edges)
        chosen = s.execute(sa.select(m.Sample.geometry_id, m.Sample.id).where(
            m.Sample.sampling_run_id == run.id, m.Sample.selected.is_(True)).order_by(m.Sample.id)).all()
        queue.enqueue(s, camp.id, gen.id, [(g, sid, None) for g, sid in chosen])
        return camp.id
