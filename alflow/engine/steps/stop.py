"""Every rule that ends a campaign, in one place, each returning the recorded stop reason.

After LABEL: the failure gate (more than `max_failed_fraction` of the generation's labels
failed, and the spec says to stop on it). After TRAIN: fewer than two members trained (an
ensemble of one has no uncertainty). After a generation (DONE): target held-out force
MAE reached, accurate fraction ≥ X for K generations, max_generations (`model_rules`), the
oracle budget spent, or nothing selected to label next (`supply_rules`; streaming judges
these two on the whole queue, `engine/streaming.py`). The rules are plain functions of
plain facts; `check` gathers the facts from the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from alflow.db import models as m
from alflow.engine.context import CampaignContext
from alflow.engine.states import GenState
from alflow.engine.steps.label import LabelFacts
from alflow.engine.steps.train import TrainFacts
from alflow.spec import StoppingSpec


@dataclass(frozen=True)
class GenerationFacts:
    idx: int
    force_mae: float | None
    oracle_calls: int
    n_selected: int
    buckets: list[tuple[int, int, int]]  # (accurate, candidate, failed), newest first


def failure_gate(stop: StoppingSpec, idx: int, facts: LabelFacts) -> str | None:
    if facts.gate_failed and stop.stop_on_failed_generation:
        return (f"generation {idx} failed: {facts.failed_fraction:.0%} of labels failed "
                f"(max_failed_fraction {stop.max_failed_fraction:.0%})")
    return None


def too_few_members(idx: int, facts: TrainFacts) -> str | None:
    if facts.n_members < 2:
        return f"generation {idx}: only {facts.n_members} ensemble member(s) trained; an uncertainty needs 2"
    return None


def model_rules(stop: StoppingSpec, f: GenerationFacts) -> str | None:
    """Rules about what the campaign has learnt: target force MAE, accurate fraction for K
    generations, max_generations."""
    if stop.target_force_mae is not None and f.force_mae is not None and f.force_mae <= stop.target_force_mae:
        return f"target force MAE reached: {f.force_mae:.4f} <= {stop.target_force_mae} eV/Å"
    if stop.accurate_fraction is not None and len(f.buckets) >= stop.accurate_generations:
        recent = f.buckets[: stop.accurate_generations]
        fracs = [(a or 0) / max(1, (a or 0) + (c or 0) + (x or 0)) for a, c, x in recent]
        if all(fr >= stop.accurate_fraction for fr in fracs):
            return (f"accurate fraction >= {stop.accurate_fraction:.0%} for "
                    f"{stop.accurate_generations} generations")
    if f.idx + 1 >= stop.max_generations:
        return f"max_generations reached ({stop.max_generations})"
    return None


def supply_rules(stop: StoppingSpec, f: GenerationFacts) -> str | None:
    """Rules about what is left to label: the oracle budget, and nothing selected."""
    if stop.oracle_budget is not None and f.oracle_calls >= stop.oracle_budget:
        return f"oracle budget spent ({f.oracle_calls} of {stop.oracle_budget} calls)"
    if not f.n_selected:
        return "no new candidates selected: nothing left to label"
    return None


def after_generation(stop: StoppingSpec, f: GenerationFacts) -> str | None:
    """Generational scheduling, after a generation's selection: every rule, in this order."""
    return model_rules(stop, f) or supply_rules(stop, f)


def generation_facts(ctx: CampaignContext, gen: m.Generation) -> GenerationFacts:
    with ctx.Session() as s:
        row = ctx.ensemble_eval(s, gen.id)
        history = s.execute(sa.select(m.Generation.n_accurate, m.Generation.n_candidate, m.Generation.n_failed)
                            .where(m.Generation.campaign_id == ctx.id, m.Generation.idx <= gen.idx)
                            .order_by(m.Generation.idx.desc())).all()
        n_selected = s.scalar(sa.select(m.Generation.n_selected).where(m.Generation.id == gen.id))
        return GenerationFacts(idx=gen.idx, force_mae=None if row is None else row.force_mae,
                               oracle_calls=ctx.oracle_calls(s), n_selected=int(n_selected or 0),
                               buckets=[tuple(h) for h in history])


def check(ctx: CampaignContext, gen: m.Generation, after: GenState, facts) -> str | None:
    """The stop reason after step `after` of `gen`, or None to go on. Streaming campaigns
    also check the target error on each new ensemble, and leave the supply rules (budget,
    nothing to label) to the streaming loop, which sees the queue and the work in flight."""
    stop = ctx.spec.stopping
    streaming = ctx.spec.scheduling.mode == "streaming"
    if after == GenState.LABEL:
        return failure_gate(stop, gen.idx, facts)
    if after == GenState.TRAIN:
        return too_few_members(gen.idx, facts)
    if after == GenState.EVALUATE and streaming:
        f = generation_facts(ctx, gen)
        if stop.target_force_mae is not None and f.force_mae is not None and f.force_mae <= stop.target_force_mae:
            return f"target force MAE reached: {f.force_mae:.4f} <= {stop.target_force_mae} eV/Å"
    if after == GenState.DONE:
        f = generation_facts(ctx, gen)
        return model_rules(stop, f) if streaming else after_generation(stop, f)
    return None
