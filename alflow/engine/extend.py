"""Extend a campaign: raise its stop rule (`max_generations`, `oracle_budget`) so that
`alflow resume` continues from its last generation.

The stored spec is updated (and its sha256 with it); each raised value is recorded in
`campaign_change` with the old and new value and both spec hashes. Only raising is allowed:
a lower or equal value, or a budget on a campaign that has none, is an `InputError` and
nothing changes. A finished campaign becomes `stopped` (its stop reason stays on the
generation that stopped it), so the next run asks the stop rules again.
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa

from alflow.db import models as m
from alflow.db.session import session_factory
from alflow.errors import InputError
from alflow.spec import parse_spec, spec_json


def extend_campaign(url: str, name: str, *, max_generations: int | None = None,
                    oracle_budget: int | None = None) -> list[tuple[str, object, object]]:
    """Raise the campaign's stop rule; returns the (field, old, new) changes recorded."""
    asked = {k: v for k, v in (("max_generations", max_generations), ("oracle_budget", oracle_budget))
             if v is not None}
    if not asked:
        return []
    with session_factory(url).begin() as s:
        camp = s.scalars(sa.select(m.Campaign).where(m.Campaign.name == name)).one_or_none()
        if camp is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        spec = parse_spec(camp.spec, source=f"campaign {name}")
        stopping = spec.stopping.model_dump()
        changes = []
        for field, new in asked.items():
            old = stopping[field]
            flag = "--" + field.replace("_", "-")
            if new < 1:
                raise InputError(f"must be at least 1, not {new}", source=flag)
            if old is None:
                raise InputError(f"campaign {name!r} has no {field} (it is unlimited already); "
                                 "nothing to raise", source=flag)
            if new <= old:
                raise InputError(f"{new} does not raise the campaign's {field} ({old}); give a "
                                 "larger value", source=flag)
            stopping[field] = new
            changes.append((field, old, new))
        new_spec = parse_spec({**json.loads(spec_json(spec)), "stopping": stopping},
                              source=f"campaign {name}")
        text = spec_json(new_spec)
        new_sha = hashlib.sha256(text.encode()).hexdigest()
        gen = s.scalar(sa.select(sa.func.max(m.Generation.idx)).where(m.Generation.campaign_id == camp.id))
        for field, old, new in changes:
            s.add(m.CampaignChange(campaign_id=camp.id, field=f"stopping.{field}", old_value={"value": old},
                                   new_value={"value": new}, old_spec_sha256=camp.spec_sha256,
                                   new_spec_sha256=new_sha, at_generation=gen,
                                   reason=f"alflow resume --{field.replace('_', '-')} {new}"))
        values = {"spec": json.loads(text), "spec_sha256": new_sha}
        if camp.status == "finished":
            values.update(status="stopped", stop_reason=None)
        s.execute(sa.update(m.Campaign).where(m.Campaign.id == camp.id).values(**values))
    return changes
