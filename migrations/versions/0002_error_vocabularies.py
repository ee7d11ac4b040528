"""error vocabularies: CHECK constraints on label.error_class and task.error_class

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:00:00

Engine v2 records one error vocabulary per table. Labels written before it could carry
'task_error' (kept: it is part of the vocabulary now); task rows carried Parsl exception
names ('WorkerLost', 'ManagerLost', ...), which are mapped onto the task vocabulary.
"""
from typing import Sequence

import sqlalchemy as sa
from alembic import op

from alflow.db.views import VIEWS_V1, create_views, drop_views

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABEL_ERRORS = ("scf_not_converged", "timeout", "crash", "oom", "invalid_input",
                "calculator_error", "task_error")
TASK_ERRORS = ("worker_lost", "manager_lost", "stalled", "timeout", "orchestrator_lost",
               "app_error", "submit_error")
OLD_TASK_ERRORS = {"WorkerLost": "worker_lost", "ManagerLost": "manager_lost",
                   "BadStateException": "manager_lost", "TimeoutError": "timeout",
                   "AppTimeout": "timeout", "orchestrator_lost": "orchestrator_lost"}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IS NULL OR {column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    task = sa.table("task", sa.column("error_class", sa.String))
    for old, new in OLD_TASK_ERRORS.items():
        op.execute(task.update().where(task.c.error_class == old).values(error_class=new))
    op.execute(task.update().where(task.c.error_class.is_not(None), task.c.error_class.notin_(TASK_ERRORS))
               .values(error_class="app_error"))
    label = sa.table("label", sa.column("error_class", sa.String))
    op.execute(label.update().where(label.c.error_class.is_not(None), label.c.error_class.notin_(LABEL_ERRORS))
               .values(error_class="calculator_error"))
    drop_views(op, VIEWS_V1)  # SQLite rebuilds altered tables; the views would dangle
    with op.batch_alter_table("label") as batch:
        batch.create_check_constraint("error_class", _in("error_class", LABEL_ERRORS))
    with op.batch_alter_table("task") as batch:
        batch.create_check_constraint("error_class", _in("error_class", TASK_ERRORS))
    create_views(op, VIEWS_V1)


def downgrade() -> None:
    drop_views(op, VIEWS_V1)
    with op.batch_alter_table("task") as batch:
        batch.drop_constraint(op.f("ck_task_error_class"), type_="check")
    with op.batch_alter_table("label") as batch:
        batch.drop_constraint(op.f("ck_label_error_class"), type_="check")
    create_views(op, VIEWS_V1)
