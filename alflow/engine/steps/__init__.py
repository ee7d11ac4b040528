"""The steps of a generation, one module each, all with the same three functions:

    plan(ctx, gen) -> list[WorkItem]            what work the database state still needs
    record(s, ctx, gen, item, outcome) -> None  how one finished piece of work is recorded
    finish(ctx, gen) -> facts | None            the step's summary, for the stop rules

`plan` is idempotent: called again after a crash it asks only for what has no recorded
result (and the scheduler reads back results kept in the run directory), so a resumed
campaign repeats nothing. `record` runs inside the transaction that closes the task row.
Steps that need no workers (select) do their work in `finish`. Stop rules are in `stop`;
`rescore` (streaming) is not a generation state but work each new ensemble does.
"""

from __future__ import annotations

from types import ModuleType

from alflow.engine.states import GenState
from alflow.engine.steps import evaluate, label, rescore, sample, select, train, validate

STEPS: dict[GenState, ModuleType] = {
    GenState.LABEL: label,
    GenState.TRAIN: train,
    GenState.EVALUATE: evaluate,
    GenState.VALIDATE: validate,
    GenState.SAMPLE: sample,
    GenState.SELECT: select,
}
__all__ = ["STEPS", "rescore"]
