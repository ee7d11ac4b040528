"""A campaign's state for `alflow status`: generations, tasks and oracle cost (read only)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from alflow.db import models as m
from alflow.db.session import session_factory
from alflow.errors import InputError


def campaign_summary(url: str, name: str) -> dict[str, Any]:
    Session = session_factory(url)
    with Session() as s:
        camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        gens = s.execute(sa.select(m.Generation.idx, m.Generation.state, m.Generation.n_labels,
                                   m.Generation.label_failed_fraction, m.Generation.n_selected,
                                   m.Generation.n_accurate, m.Generation.n_candidate,
                                   m.Generation.n_failed)
                         .where(m.Generation.campaign_id == camp.id).order_by(m.Generation.idx)).all()
        errors = dict(s.execute(sa.select(m.Generation.idx, m.ModelEval.force_mae).join(
            m.Generation, m.Generation.id == m.ModelEval.generation_id).where(
            m.Generation.campaign_id == camp.id, m.ModelEval.model_id.is_(None))).all())
        tasks = dict(s.execute(sa.select(m.Task.status, sa.func.count()).where(
            m.Task.campaign_id == camp.id).group_by(m.Task.status)).all())
        cpu = s.scalar(sa.select(sa.func.sum(m.Label.cpu_s)).join(m.Task).where(m.Task.campaign_id == camp.id))
    return {"name": camp.name, "status": camp.status, "stop_reason": camp.stop_reason,
            "site": camp.site, "workdir": camp.workdir, "tasks": tasks, "oracle_cpu_s": cpu or 0.0,
            "generations": [dict(g._mapping) | {"force_mae": errors.get(g.idx)} for g in gens]}
