"""How busy each role's workers were over the whole campaign (read from the task table).

    utilisation(role) = Σ busy / Σ_runs (workers(role, run) × span(run))

- busy: Σ (finished_at − started_at) of the role's task attempts (warm-ups excluded;
  failed attempts count, they held a worker);
- a run is one orchestrator's life (`resources.run` of its tasks); its span runs from its
  first task's submission to its last task's end, so the time a crashed campaign sat
  dead before `alflow resume` is not charged as allocated;
- workers(role, run): the `workers` the scheduler recorded in the role's task resources
  (what the site gave it), else the most of its tasks seen running at once.

This is the number `alflow status` and the report print first: it shows an oracle idling
while models train. The older figure, utilisation *during labelling windows only*, is
still given (`alflow.report.oracle_utilisation`), labelled as such.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from alflow.db import models as m
from alflow.db.queries import require_schema
from alflow.db.session import get_engine
from alflow.errors import InputError

DEFINITION = (
    "utilisation(role) = Σ busy / Σ_runs (workers × span): busy is the summed run time "
    "(finished_at − started_at) of the role's task attempts, warm-ups excluded; a run is one "
    "orchestrator's life, from its first task's submission to its last task's end; workers "
    "is what the scheduler recorded for the role in its tasks' resources (else the most "
    "tasks of the role seen running at once)."
)


@dataclass(frozen=True)
class RoleUtilisation:
    role: str
    busy_s: float
    allocated_s: float
    workers: int  # largest over runs
    tasks: int

    @property
    def utilisation(self) -> float | None:
        return self.busy_s / self.allocated_s if self.allocated_s > 0 else None


def _utc(value) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _concurrency(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def utilisation_of(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per role from task dicts (kind, executor, submitted_at, started_at, finished_at,
    resources): {"roles": {role: RoleUtilisation}, "wall_s": Σ run spans, "runs": n}."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        res = t.get("resources") if isinstance(t.get("resources"), dict) else {}
        runs[str(res.get("run", "-"))].append(t)
    busy: dict[str, float] = defaultdict(float)
    allocated: dict[str, float] = defaultdict(float)
    workers: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    wall = 0.0
    for run_tasks in runs.values():
        starts = [_utc(t["submitted_at"] or t["started_at"]) for t in run_tasks if t["submitted_at"] or t["started_at"]]
        ends = [_utc(t["finished_at"]) for t in run_tasks if t["finished_at"]]
        if not starts or not ends:
            continue
        span = max(0.0, (max(ends) - min(starts)).total_seconds())
        wall += span
        by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t in run_tasks:
            if t["executor"]:
                by_role[t["executor"]].append(t)
        for role, rts in by_role.items():
            timed = [(_utc(t["started_at"]), _utc(t["finished_at"])) for t in rts
                     if t["started_at"] and t["finished_at"] and not str(t["kind"]).startswith("warmup")]
            declared = [int(t["resources"]["workers"]) for t in rts
                        if isinstance(t.get("resources"), dict) and isinstance(t["resources"].get("workers"), int)]
            w = max(declared) if declared else _concurrency(timed)
            busy[role] += sum(max(0.0, (b - a).total_seconds()) for a, b in timed)
            allocated[role] += w * span
            workers[role] = max(workers[role], w)
            count[role] += len(timed)
    roles = {r: RoleUtilisation(r, busy[r], allocated[r], workers[r], count[r]) for r in allocated}
    return {"roles": roles, "wall_s": wall, "runs": len(runs), "definition": DEFINITION}


def campaign_utilisation(url: str | None, name: str) -> dict[str, Any]:
    """`utilisation_of` the campaign's tasks (InputError for an unknown campaign)."""
    url = require_schema(url)
    with get_engine(url).connect() as conn:
        cid = conn.execute(sa.select(m.Campaign.id).where(m.Campaign.name == name)).scalar()
        if cid is None:
            raise InputError(f"no campaign named {name!r} in this database", source="campaign")
        t = m.Task
        tasks = [dict(r) for r in conn.execute(sa.select(
            t.kind, t.executor, t.submitted_at, t.started_at, t.finished_at, t.resources)
            .where(t.campaign_id == cid)).mappings()]
    return utilisation_of(tasks)
