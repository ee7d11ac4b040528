"""States of a generation and of a task, as small enums, and the one transition table.

A generation walks LABEL → TRAIN → EVALUATE → VALIDATE → SAMPLE → SELECT → DONE (`NEXT`);
the state is stored on the generation row after each step, so a resumed campaign starts at
the step it was in. A task (one dispatched attempt of one work item) is PENDING until it
is handed to an executor, RUNNING until it reports back, then DONE or FAILED with a
`TaskError` saying why; CANCELLED when the campaign was interrupted.
"""

from __future__ import annotations

from enum import StrEnum


class GenState(StrEnum):
    LABEL = "label"
    TRAIN = "train"
    EVALUATE = "evaluate"
    VALIDATE = "validate"
    SAMPLE = "sample"
    SELECT = "select"
    DONE = "done"


NEXT: dict[GenState, GenState] = {
    GenState.LABEL: GenState.TRAIN,
    GenState.TRAIN: GenState.EVALUATE,
    GenState.EVALUATE: GenState.VALIDATE,
    GenState.VALIDATE: GenState.SAMPLE,
    GenState.SAMPLE: GenState.SELECT,
    GenState.SELECT: GenState.DONE,
}


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskError(StrEnum):
    """Why an attempt failed. The retry policy (`RETRYABLE`) reads this, the task table
    stores it (a CHECK constraint holds the column to these values)."""

    WORKER_LOST = "worker_lost"  # the worker process died mid-task (segfault, OOM, os._exit)
    MANAGER_LOST = "manager_lost"  # a whole worker pool/block stopped answering
    STALLED = "stalled"  # the executor stopped starting or finishing work: its block was replaced
    TIMEOUT = "timeout"  # ran past its time limit
    ORCHESTRATOR_LOST = "orchestrator_lost"  # the orchestrator stopped before the task reported
    APP_ERROR = "app_error"  # the task itself raised: deterministic, not retried
    SUBMIT_ERROR = "submit_error"  # the executor refused the task


RETRYABLE = frozenset({TaskError.WORKER_LOST, TaskError.MANAGER_LOST, TaskError.STALLED,
                       TaskError.TIMEOUT, TaskError.SUBMIT_ERROR})
