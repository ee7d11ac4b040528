"""validation protocol: walker spread and survival, profile errors per generation

Revision ID: validation_protocol
Revises: campaign_change
Create Date: 2026-12-02 01:00:00

The per-generation validation now runs many NN-MD walkers (Fu et al. protocol): model_eval
gains the interquartile range of their stability times, the fraction that survived, the
standard deviation of their h(r) errors, and the profile MAE and barrier error
(`evaluation.profile`). The errors view returns them (VIEWS_V2).
"""
from typing import Sequence

import sqlalchemy as sa
from alembic import op

from alflow.db.views import VIEWS_V1, VIEWS_V2, create_views, drop_views

revision: str = 'validation_protocol'
down_revision: str | None = 'campaign_change'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("stability_iqr_fs", "survival_fraction", "hr_error_std", "profile_mae", "barrier_error")


def upgrade() -> None:
    drop_views(op, VIEWS_V1)  # SQLite rebuilds altered tables; the views would dangle
    with op.batch_alter_table("model_eval") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    create_views(op, VIEWS_V2)


def downgrade() -> None:
    drop_views(op, VIEWS_V2)
    with op.batch_alter_table("model_eval") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
    create_views(op, VIEWS_V1)
