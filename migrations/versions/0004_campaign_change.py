"""campaign_change: a finished campaign's stop rule raised (old and new values recorded)

Revision ID: campaign_change
Revises: label_queue
Create Date: 2026-12-02 01:00:00

`alflow resume NAME --max-generations N / --oracle-budget N` changes the stored spec of a
campaign; each change is one row with the field, its old and new value (JSON) and the spec
hashes before and after, so the campaign's provenance says what it ran under and when that
changed.
"""
from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'campaign_change'
down_revision: str | None = 'label_queue'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('campaign_change',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('campaign_id', ID, nullable=False),
    sa.Column('field', sa.String(length=80), nullable=False),
    sa.Column('old_value', JSON, nullable=True),
    sa.Column('new_value', JSON, nullable=True),
    sa.Column('old_spec_sha256', sa.String(length=64), nullable=False),
    sa.Column('new_spec_sha256', sa.String(length=64), nullable=False),
    sa.Column('at_generation', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_campaign_change_campaign_id_campaign'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_change'))
    )
    op.create_index(op.f('ix_campaign_change_campaign_id'), 'campaign_change', ['campaign_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_campaign_change_campaign_id'), table_name='campaign_change')
    op.drop_table('campaign_change')
