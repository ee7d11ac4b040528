"""`alflow md --feed CAMPAIGN`: frames a production run flagged become candidates of the
campaign's next generation.

They are recorded as one sampling run of kind ``production-md`` in the campaign's latest
generation (params: the trajectory, the threshold, the ensemble's source), each frame a
selected sample (bucket 'candidate') with its σ_F, and queued for labelling with that
generation: the next generation labels them (`alflow resume`, with --max-generations if the
campaign had finished). The start geometry is recorded as the run's seed, each frame with an
edge to it (relation 'production-md').
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ase import Atoms

from alflow.db import models as m
from alflow.db import writers
from alflow.db.session import session_factory
from alflow.engine import queue
from alflow.errors import InputError


def feed_frames(url: str, name: str, start: Atoms, frames: list[Atoms], params: dict[str, Any],
                model_generation: int | None = None) -> int:
    """Record `frames` as candidates of campaign `name`; returns how many were queued."""
    Session = session_factory(url)
    with Session.begin() as s:
        camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="--feed")
        gen = s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == camp.id)
                        .order_by(m.Generation.idx.desc()).limit(1)).one()
        model_gen_id = None
        if model_generation is not None:
            model_gen_id = s.scalar(sa.select(m.Generation.id).where(
                m.Generation.campaign_id == camp.id, m.Generation.idx == model_generation))
        (seed_id,) = writers.write_geometries(s, [writers.geometry_row(start, "production-md-start")])
        run = m.SamplingRun(generation_id=gen.id, kind="production-md", params=params,
                            seed_geometry_id=seed_id, model_generation_id=model_gen_id, n_frames=len(frames))
        s.add(run)
        s.flush()
        if not frames:
            return 0
        ids = writers.write_geometries(s, [writers.geometry_row(a, "production-md") for a in frames])
        rows, edges, seen = [], [], set()
        for a, gid in zip(frames, ids, strict=True):
            if gid in seen:
                continue
            seen.add(gid)
            rows.append({"sampling_run_id": run.id, "geometry_id": gid, "step": int(a.info["step"]),
                         "energy_mean": float(a.get_potential_energy()),
                         "sigma_f2": float(a.info["sigma_f"]) ** 2, "u_max": float(a.info["u_max"]),
                         "bucket": "candidate", "selected": True, "reason": "production-md flagged"})
            if gid != seed_id:
                edges.append({"child_id": gid, "parent_id": seed_id, "relation": "production-md",
                              "sampling_run_id": run.id, "info": {"step": int(a.info["step"])}})
        s.execute(sa.insert(m.Sample), rows)
        if edges:
            s.execute(sa.insert(m.GeometryEdge), edges)
        chosen = s.execute(sa.select(m.Sample.geometry_id, m.Sample.id, m.Sample.sigma_f2).where(
            m.Sample.sampling_run_id == run.id)).all()
        return queue.enqueue(s, camp.id, gen.id, [(g, sid, (s2 or 0.0) ** 0.5) for g, sid, s2 in chosen])
