"""Streaming scheduling: the oracle labels while models train, sample and validate.

The starting geometries are the queue's first entries: generation 0 trains as soon as the
whole held-out set and `retrain_every` others are labelled, while the oracle goes on with
the rest (which its ensemble then re-scores). From then on several generations are under
way at once, each walking the usual states:

- the newest generation *collects*: it stays in LABEL while the oracle labels the label
  queue's most uncertain frames (`oracle_lookahead` tasks beyond the free oracle workers,
  so re-scoring can still reorder the rest); labels handed out count against the oracle
  budget the moment they are sent;
- it starts TRAIN once the generation before it has trained and `retrain_every` new labels
  have arrived since that one froze its training set (or fewer, when no more are coming:
  the budget is spent, or the queue is empty and no selection is pending); its training
  set is frozen then, and the next generation starts collecting;
- EVALUATE, then the new ensemble re-scores the queue (`steps/rescore.py`) beside
  VALIDATE (never waited for) and SAMPLE; SELECT adds to the queue; DONE.

Stop rules are checked on each new ensemble and each finished generation; when one fires,
nothing new is handed out, what is in flight is recorded, and the campaign ends. The state
is all in the database (generation states, the queue, the task rows), so `alflow resume`
after a crash re-plans each generation's current step and takes dispatched queue entries
again, reading finished oracle calls back from the run directory.
"""

from __future__ import annotations

import sqlalchemy as sa

from alflow.db import models as m
from alflow.engine import queue
from alflow.engine.context import CampaignContext
from alflow.engine.runner import Runner, begin, finish_campaign, set_state
from alflow.engine.scheduler import Scheduler
from alflow.engine.states import NEXT, GenState
from alflow.engine.steps import STEPS, stop

TRAINED = (GenState.EVALUATE, GenState.VALIDATE, GenState.SAMPLE, GenState.SELECT, GenState.DONE)


class Stream:
    def __init__(self, ctx: CampaignContext, runner: Runner):
        self.ctx, self.runner = ctx, runner
        self.scheduler = runner.scheduler
        self.handed_out: set[tuple[int, str]] = set()  # (generation, step) planned in this run
        self.reason: str | None = None
        self.reason_gen: m.Generation | None = None

    # ------------------------------------------------------------------ facts
    def generations(self) -> list[m.Generation]:
        with self.ctx.Session() as s:
            gens = s.scalars(sa.select(m.Generation).where(m.Generation.campaign_id == self.ctx.id)
                             .order_by(m.Generation.idx)).all()
            for g in gens:
                s.expunge(g)
        return list(gens)

    def labels_since(self, gen: m.Generation) -> int:
        """Successful labels recorded since `gen` froze its training set."""
        with self.ctx.Session() as s:
            now = len(self.ctx.labels(s))
            frozen = s.scalar(sa.select(m.TrainingSet.n_train + m.TrainingSet.n_val + m.TrainingSet.n_test)
                              .where(m.TrainingSet.generation_id == gen.id).order_by(m.TrainingSet.id.desc()))
        return now - int(frozen or 0)

    def labels_in_flight(self) -> int:
        return self.scheduler.in_flight("oracle") + self.scheduler.queued("oracle")

    def budget_left(self) -> int | None:
        budget = self.ctx.spec.stopping.oracle_budget
        if budget is None:
            return None
        with self.ctx.Session() as s:
            used = self.ctx.oracle_calls(s)
            taken = s.scalar(sa.select(sa.func.count()).select_from(queue.Q).where(
                queue.Q.campaign_id == self.ctx.id, queue.Q.status == "dispatched")) or 0
        return budget - used - taken

    def queued(self) -> int:
        with self.ctx.Session() as s:
            return queue.counts(s, self.ctx.id).get("queued", 0)

    def no_more_labels(self, gens: list[m.Generation]) -> bool:
        """Nothing will be labelled any more unless a generation trains first."""
        if self.labels_in_flight():
            return False
        left = self.budget_left()
        if left is not None and left <= 0:
            return True
        selecting = any(GenState(g.state) in (GenState.TRAIN, GenState.EVALUATE, GenState.VALIDATE,
                                              GenState.SAMPLE, GenState.SELECT) for g in gens)
        return self.queued() == 0 and not selecting

    def first_ready(self) -> bool:
        """Generation 0 trains once the whole test set and `retrain_every` other starting
        geometries are labelled (or no more are coming); the rest of the starting geometries
        wait in the queue, to be re-scored by its ensemble."""
        ctx = self.ctx
        with ctx.Session() as s:
            waiting = s.scalars(sa.select(m.Geometry).join(queue.Q, queue.Q.geometry_id == m.Geometry.id)
                                .where(queue.Q.campaign_id == ctx.id, queue.Q.status.in_(queue.WAITING))).all()
            if any(ctx.split(g) == "test" for g in waiting):
                return False
            fit = sum(ctx.split(g) != "test" for _, g in ctx.labels(s))
        if fit >= ctx.spec.scheduling.retrain_every:
            return True
        return not waiting and not self.labels_in_flight()

    # ------------------------------------------------------------------ moves
    def stop(self, reason: str | None, gen: m.Generation) -> None:
        if reason and self.reason is None:
            self.reason, self.reason_gen = reason, gen

    def once(self, gen: m.Generation, state: GenState, **kw) -> bool:
        if (gen.id, state.value) in self.handed_out:
            return False
        self.handed_out.add((gen.id, state.value))
        self.runner.submit(gen, state, **kw)
        return True

    def open_generation(self, after: m.Generation) -> None:
        if after.idx + 1 < self.ctx.spec.stopping.max_generations:
            with self.ctx.Session.begin() as s:
                exists = s.scalar(sa.select(m.Generation.id).where(
                    m.Generation.campaign_id == self.ctx.id, m.Generation.idx == after.idx + 1))
                if exists is None:
                    s.add(m.Generation(campaign_id=self.ctx.id, idx=after.idx + 1, state=GenState.LABEL.value))

    def advance(self, gen: m.Generation, gens: list[m.Generation]) -> bool:
        """Move `gen` on if its current step is done; True if anything changed."""
        state = GenState(gen.state)
        if state == GenState.DONE:
            return False
        if state == GenState.LABEL and gen.idx == 0:
            if not self.first_ready():
                return False
        elif state == GenState.LABEL:
            prev = next(g for g in gens if g.idx == gen.idx - 1)
            if GenState(prev.state) not in TRAINED:
                return False
            since = self.labels_since(prev)
            if since < self.ctx.spec.scheduling.retrain_every and not (since > 0 and self.no_more_labels(gens)):
                return False
        elif state not in (GenState.SELECT,):
            if self.once(gen, state):
                return True
            if self.runner.pending(gen.id, state.value) and state != GenState.VALIDATE:
                return False
        facts = STEPS[state].finish(self.ctx, gen)
        self.stop(stop.check(self.ctx, gen, state, facts), gen)
        set_state(self.ctx, gen, NEXT[state])
        if state == GenState.LABEL:
            self.open_generation(gen)  # the next one collects while this one trains
        if state == GenState.EVALUATE:
            self.runner.submit(gen, "rescore")  # beside validation and sampling
        if NEXT[state] == GenState.DONE:
            self.stop(stop.check(self.ctx, gen, GenState.DONE, None), gen)
        return True

    def feed_oracle(self, gens: list[m.Generation]) -> None:
        """Keep the oracle's workers busy from the queue, within the budget."""
        collecting = [g for g in gens if GenState(g.state) == GenState.LABEL]
        if not collecting or self.reason is not None:
            return
        capacity = self.scheduler.backend.capacity("oracle")
        slots = capacity + self.ctx.spec.scheduling.oracle_lookahead - self.labels_in_flight()
        n = slots * self.ctx.spec.evaluation.label_batch_size
        left = self.budget_left()
        if left is not None:
            n = min(n, left)
        if n > 0:
            self.runner.submit(collecting[0], GenState.LABEL, limit=n)

    def finished(self, gens: list[m.Generation]) -> str | None:
        """A stop reason that needs the whole picture: nothing left to label or to learn."""
        trained = [g for g in gens if GenState(g.state) in TRAINED]
        newest = trained[-1] if trained else None
        if newest is None or GenState(newest.state) in (GenState.EVALUATE, GenState.VALIDATE):
            return None
        if not self.no_more_labels(gens) or self.labels_since(newest) > 0:
            return None
        if any(GenState(g.state) not in (GenState.DONE, GenState.LABEL) for g in gens):
            return None  # a generation is still sampling or selecting
        left = self.budget_left()
        if left is not None and left <= 0:
            with self.ctx.Session() as s:
                used = self.ctx.oracle_calls(s)
            return f"oracle budget spent ({used} of {self.ctx.spec.stopping.oracle_budget} calls)"
        return "no new candidates selected: nothing left to label"


def run_streaming(ctx: CampaignContext, scheduler: Scheduler, warm_roles: list[str] | None) -> str:
    runner = Runner(ctx, scheduler)
    done = begin(ctx, runner, warm_roles)
    if done is not None:
        return done
    stream = Stream(ctx, runner)
    while True:
        gens = stream.generations()
        moved = False
        for gen in gens:
            moved |= stream.advance(gen, gens)
        if stream.reason is None:
            gens = stream.generations()
            final = stream.finished(gens)
            if final:
                stream.stop(final, gens[-1])
        if stream.reason is not None:
            return finish_campaign(ctx, runner, stream.reason_gen, stream.reason)
        stream.feed_oracle(gens)
        latest = gens[-1]
        ctx.emit(generation=latest.idx, step=f"{latest.state} (streaming)")
        runner.pump(0.05 if moved else 1.0)
