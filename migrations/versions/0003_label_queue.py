"""label queue: what a campaign chose to label, from selection to its label

Revision ID: label_queue
Revises: 0002
Create Date: 2026-12-01 23:00:00

Streaming campaigns label from a persistent, prioritised queue that each new ensemble
re-scores; generational ones use the same table, so every label knows the queue entry (and
through it the sample and sampling run) it came from in both modes. Existing campaigns get
one entry per selected geometry: 'labelled' where the campaign has labelled it, else 'queued'.
"""
from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'label_queue'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('label_queue',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('campaign_id', ID, nullable=False),
    sa.Column('geometry_id', ID, nullable=False),
    sa.Column('sample_id', ID, nullable=True),
    sa.Column('generation_id', ID, nullable=False),
    sa.Column('priority', sa.Float(), nullable=True),
    sa.Column('scored_by_id', ID, nullable=True),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('dropped_by_id', ID, nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('task_id', ID, nullable=True),
    sa.Column('label_id', ID, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('queued','dispatched','labelled','dropped')", name=op.f('ck_label_queue_status')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_label_queue_campaign_id_campaign'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['dropped_by_id'], ['generation.id'], name=op.f('fk_label_queue_dropped_by_id_generation')),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_label_queue_generation_id_generation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['geometry_id'], ['geometry.id'], name=op.f('fk_label_queue_geometry_id_geometry')),
    sa.ForeignKeyConstraint(['label_id'], ['label.id'], name=op.f('fk_label_queue_label_id_label')),
    sa.ForeignKeyConstraint(['sample_id'], ['sample.id'], name=op.f('fk_label_queue_sample_id_sample')),
    sa.ForeignKeyConstraint(['scored_by_id'], ['generation.id'], name=op.f('fk_label_queue_scored_by_id_generation')),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_label_queue_task_id_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label_queue')),
    sa.UniqueConstraint('campaign_id', 'geometry_id', name=op.f('uq_label_queue_campaign_id_geometry_id'))
    )
    for col in ('campaign_id', 'dropped_by_id', 'generation_id', 'geometry_id', 'label_id', 'sample_id',
                'scored_by_id', 'task_id'):
        op.create_index(op.f(f'ix_label_queue_{col}'), 'label_queue', [col], unique=False)
    op.execute("""
        INSERT INTO label_queue (campaign_id, geometry_id, sample_id, generation_id, status)
        SELECT g.campaign_id, s.geometry_id, s.id, g.id,
               CASE WHEN EXISTS (SELECT 1 FROM label l JOIN task t ON t.id = l.task_id
                                 WHERE l.geometry_id = s.geometry_id AND t.campaign_id = g.campaign_id)
                    THEN 'labelled' ELSE 'queued' END
        FROM sample s JOIN sampling_run r ON r.id = s.sampling_run_id
        JOIN generation g ON g.id = r.generation_id
        WHERE s.selected AND s.id = (
            SELECT MIN(s2.id) FROM sample s2 JOIN sampling_run r2 ON r2.id = s2.sampling_run_id
            JOIN generation g2 ON g2.id = r2.generation_id
            WHERE s2.selected AND s2.geometry_id = s.geometry_id AND g2.campaign_id = g.campaign_id)
    """)


def downgrade() -> None:
    for col in ('campaign_id', 'dropped_by_id', 'generation_id', 'geometry_id', 'label_id', 'sample_id',
                'scored_by_id', 'task_id'):
        op.drop_index(op.f(f'ix_label_queue_{col}'), table_name='label_queue')
    op.drop_table('label_queue')
