"""`alflow md --feed CAMPAIGN`: frames a production run flagged become candidates of the
campaign's next generation.

They are recorded as one sampling run of kind ``production-md`` in the campaign's latest
generation (params: the trajectory, the threshold, the ensemble's source), each flagged frame
a sample (bucket 'candidate') with its σ_F. Consecutive MD steps above a threshold are
near-copies, so the campaign's own selection rules choose among them, as for any sampler:
duplicates of its labelled geometries and of each other (`selection.dedupe_tol`) are
dropped and at most `selection.max_per_generation` are kept (`selection.strategy`); each
sample records why it was or was not chosen. The chosen ones are queued for labelling with
that generation: the next generation labels them (`alflow resume`, with --max-generations if the
campaign had finished). The start geometry is recorded as the run's seed, each frame with an
edge to it (relation 'production-md').
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from ase import Atoms

from alflow.db import models as m
from alflow.sampling.selection import select_frames
from alflow.spec import parse_spec
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
        unique: dict[int, Atoms] = {}
        for a, gid in zip(frames, ids, strict=True):
            unique.setdefault(gid, a)
        gids, atoms = list(unique), list(unique.values())
        sel = parse_spec(camp.spec, source=f"campaign {name}").selection
        # what the campaign has chosen already (labelled or queued) is not chosen again
        chosen_before = s.scalars(
            sa.select(m.Geometry.content_hash).join(m.Sample, m.Sample.geometry_id == m.Geometry.id)
            .join(m.SamplingRun, m.SamplingRun.id == m.Sample.sampling_run_id)
            .join(m.Generation, m.Generation.id == m.SamplingRun.generation_id)
            .where(m.Generation.campaign_id == camp.id, m.Sample.selected.is_(True),
                   m.SamplingRun.id != run.id)).all()
        by_id = dict(s.execute(sa.select(m.Geometry.id, m.Geometry.content_hash).where(m.Geometry.id.in_(gids))).all())
        hashes = [by_id[g] for g in gids]
        # every flagged frame is a candidate already (above the run's threshold): the
        # selection only dedupes and caps
        verdicts = select_frames(atoms, [float(a.info["sigma_f"]) for a in atoms], trust_lo=0.0,
                                 trust_hi=float("inf"), training_hashes=chosen_before, hashes=hashes,
                                 dedupe_tol=sel.dedupe_tol, max_per_generation=sel.max_per_generation,
                                 strategy=sel.strategy, seed=int(run.id)).verdicts
        rows, edges = [], []
        for a, gid, v in zip(atoms, gids, verdicts, strict=True):
            rows.append({"sampling_run_id": run.id, "geometry_id": gid, "step": int(a.info["step"]),
                         "energy_mean": float(a.get_potential_energy()),
                         "sigma_f2": float(a.info["sigma_f"]) ** 2, "u_max": float(a.info["u_max"]),
                         "bucket": "candidate", "selected": v.selected,
                         "reason": "production-md flagged" if v.selected else f"production-md flagged; {v.reason}"})
            if gid != seed_id:
                edges.append({"child_id": gid, "parent_id": seed_id, "relation": "production-md",
                              "sampling_run_id": run.id, "info": {"step": int(a.info["step"])}})
        s.execute(sa.insert(m.Sample), rows)
        if edges:
            s.execute(sa.insert(m.GeometryEdge), edges)
        chosen = s.execute(sa.select(m.Sample.geometry_id, m.Sample.id, m.Sample.sigma_f2).where(
            m.Sample.sampling_run_id == run.id, m.Sample.selected.is_(True))).all()
        return queue.enqueue(s, camp.id, gen.id, [(g, sid, (s2 or 0.0) ** 0.5) for g, sid, s2 in chosen])
