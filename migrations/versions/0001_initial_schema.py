"""initial schema: provenance tables and the v1 views

Revision ID: 0001
Revises:
Create Date: 2026-11-24 15:36:18.951684
"""
from typing import Sequence

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alflow.db.views import VIEWS_V1, create_views, drop_views

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('artifact',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact')),
    sa.UniqueConstraint('sha256', name=op.f('uq_artifact_sha256'))
    )
    op.create_table('campaign',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('spec_sha256', sa.String(length=64), nullable=False),
    sa.Column('alflow_version', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='created', nullable=False),
    sa.Column('stop_reason', sa.Text(), nullable=True),
    sa.Column('site', sa.Text(), nullable=True),
    sa.Column('workdir', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('created','running','stopped','finished','failed')", name=op.f('ck_campaign_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign')),
    sa.UniqueConstraint('name', name=op.f('uq_campaign_name'))
    )
    op.create_table('geometry',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('natoms', sa.Integer(), nullable=False),
    sa.Column('formula', sa.String(length=200), nullable=False),
    sa.Column('numbers', sa.LargeBinary(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.Column('cell', sa.LargeBinary(), nullable=True),
    sa.Column('pbc', sa.Integer(), server_default='0', nullable=False),
    sa.Column('charge', sa.Integer(), server_default='0', nullable=False),
    sa.Column('multiplicity', sa.Integer(), server_default='1', nullable=False),
    sa.Column('origin', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_geometry')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_geometry_content_hash'))
    )
    with op.batch_alter_table('geometry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_geometry_formula'), ['formula'], unique=False)

    op.create_table('oracle_method',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('version', sa.String(length=40), nullable=True),
    sa.Column('method', sa.String(length=80), nullable=True),
    sa.Column('basis', sa.String(length=80), nullable=True),
    sa.Column('settings', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('settings_sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oracle_method')),
    sa.UniqueConstraint('settings_sha256', name=op.f('uq_oracle_method_settings_sha256'))
    )
    op.create_table('generation',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='label', nullable=False),
    sa.Column('trust_lo', sa.Float(), nullable=True),
    sa.Column('trust_hi', sa.Float(), nullable=True),
    sa.Column('n_accurate', sa.Integer(), nullable=True),
    sa.Column('n_candidate', sa.Integer(), nullable=True),
    sa.Column('n_failed', sa.Integer(), nullable=True),
    sa.Column('n_selected', sa.Integer(), nullable=True),
    sa.Column('n_labels', sa.Integer(), nullable=True),
    sa.Column('label_failed_fraction', sa.Float(), nullable=True),
    sa.Column('failed', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('stop_reason', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_generation_campaign_id_campaign'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generation')),
    sa.UniqueConstraint('campaign_id', 'idx', name=op.f('uq_generation_campaign_id_idx'))
    )
    with op.batch_alter_table('generation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generation_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('task',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=True),
    sa.Column('parsl_task_id', sa.Integer(), nullable=True),
    sa.Column('site', sa.Text(), nullable=True),
    sa.Column('executor', sa.String(length=32), nullable=True),
    sa.Column('slurm_job_id', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('tries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resources', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error_class', sa.String(length=40), nullable=True),
    sa.Column('error_msg', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('pending','running','done','failed','cancelled')", name=op.f('ck_task_status')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_task_campaign_id_campaign'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_task_generation_id_generation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task'))
    )
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_key'), ['key'], unique=False)

    op.create_table('training_set',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.Column('n_val', sa.Integer(), nullable=False),
    sa.Column('n_test', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_training_set_campaign_id_campaign'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_training_set_generation_id_generation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_set'))
    )
    with op.batch_alter_table('training_set', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_set_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_set_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_set_sha256'), ['sha256'], unique=False)

    op.create_table('label',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('geometry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('method_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('energy', sa.Float(), nullable=True),
    sa.Column('forces', sa.LargeBinary(), nullable=True),
    sa.Column('stress', sa.LargeBinary(), nullable=True),
    sa.Column('error_class', sa.String(length=40), nullable=True),
    sa.Column('error_msg', sa.Text(), nullable=True),
    sa.Column('wall_s', sa.Float(), nullable=True),
    sa.Column('cpu_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.CheckConstraint("status IN ('ok','failed')", name=op.f('ck_label_status')),
    sa.ForeignKeyConstraint(['geometry_id'], ['geometry.id'], name=op.f('fk_label_geometry_id_geometry')),
    sa.ForeignKeyConstraint(['method_id'], ['oracle_method.id'], name=op.f('fk_label_method_id_oracle_method')),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_label_task_id_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label'))
    )
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_label_geometry_id'), ['geometry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_label_method_id'), ['method_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_label_task_id'), ['task_id'], unique=False)
        batch_op.create_index('uq_label_ok_geometry_method', ['geometry_id', 'method_id'], unique=True, postgresql_where=sa.text("status = 'ok'"), sqlite_where=sa.text("status = 'ok'"))

    op.create_table('model',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('member', sa.Integer(), nullable=False),
    sa.Column('training_set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('val_energy_mae', sa.Float(), nullable=True),
    sa.Column('val_force_mae', sa.Float(), nullable=True),
    sa.Column('epochs', sa.Integer(), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['artifact.id'], name=op.f('fk_model_checkpoint_id_artifact')),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_model_generation_id_generation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_model_task_id_task')),
    sa.ForeignKeyConstraint(['training_set_id'], ['training_set.id'], name=op.f('fk_model_training_set_id_training_set')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('generation_id', 'member', name=op.f('uq_model_generation_id_member'))
    )
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_checkpoint_id'), ['checkpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_task_id'), ['task_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_training_set_id'), ['training_set_id'], unique=False)

    op.create_table('sampling_run',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('seed_geometry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('model_generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('n_frames', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_sampling_run_generation_id_generation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_generation_id'], ['generation.id'], name=op.f('fk_sampling_run_model_generation_id_generation')),
    sa.ForeignKeyConstraint(['seed_geometry_id'], ['geometry.id'], name=op.f('fk_sampling_run_seed_geometry_id_geometry')),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_sampling_run_task_id_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sampling_run'))
    )
    with op.batch_alter_table('sampling_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sampling_run_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sampling_run_model_generation_id'), ['model_generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sampling_run_seed_geometry_id'), ['seed_geometry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sampling_run_task_id'), ['task_id'], unique=False)

    op.create_table('geometry_edge',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('child_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('relation', sa.String(length=32), nullable=False),
    sa.Column('sampling_run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('info', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['child_id'], ['geometry.id'], name=op.f('fk_geometry_edge_child_id_geometry')),
    sa.ForeignKeyConstraint(['parent_id'], ['geometry.id'], name=op.f('fk_geometry_edge_parent_id_geometry')),
    sa.ForeignKeyConstraint(['sampling_run_id'], ['sampling_run.id'], name=op.f('fk_geometry_edge_sampling_run_id_sampling_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_geometry_edge')),
    sa.UniqueConstraint('child_id', 'parent_id', 'relation', 'sampling_run_id', name=op.f('uq_geometry_edge_child_id_parent_id_relation_sampling_run_id'))
    )
    with op.batch_alter_table('geometry_edge', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_geometry_edge_child_id'), ['child_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_geometry_edge_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_geometry_edge_sampling_run_id'), ['sampling_run_id'], unique=False)

    op.create_table('model_eval',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('generation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('eval_set', sa.String(length=32), server_default='test', nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('energy_mae', sa.Float(), nullable=True),
    sa.Column('force_mae', sa.Float(), nullable=True),
    sa.Column('force_rmse', sa.Float(), nullable=True),
    sa.Column('calibration_scale', sa.Float(), nullable=True),
    sa.Column('spearman', sa.Float(), nullable=True),
    sa.Column('miscalibration_area', sa.Float(), nullable=True),
    sa.Column('stability_time_fs', sa.Float(), nullable=True),
    sa.Column('hr_error', sa.Float(), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['generation_id'], ['generation.id'], name=op.f('fk_model_eval_generation_id_generation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_model_eval_model_id_model')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_eval'))
    )
    with op.batch_alter_table('model_eval', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_eval_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_eval_model_id'), ['model_id'], unique=False)

    op.create_table('sample',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sampling_run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('geometry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('energy_mean', sa.Float(), nullable=True),
    sa.Column('sigma_f2', sa.Float(), nullable=True),
    sa.Column('sigma_f2_initial', sa.Float(), nullable=True),
    sa.Column('u_max', sa.Float(), nullable=True),
    sa.Column('u_mean', sa.Float(), nullable=True),
    sa.Column('log_p', sa.Float(), nullable=True),
    sa.Column('atomic_uncertainty', sa.LargeBinary(), nullable=True),
    sa.Column('bucket', sa.String(length=16), nullable=True),
    sa.Column('selected', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('reason', sa.String(length=80), nullable=True),
    sa.Column('carve_center', sa.Integer(), nullable=True),
    sa.Column('carve_map', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.CheckConstraint("bucket IN ('accurate','candidate','failed')", name=op.f('ck_sample_bucket')),
    sa.ForeignKeyConstraint(['geometry_id'], ['geometry.id'], name=op.f('fk_sample_geometry_id_geometry')),
    sa.ForeignKeyConstraint(['sampling_run_id'], ['sampling_run.id'], name=op.f('fk_sample_sampling_run_id_sampling_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sample'))
    )
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sample_geometry_id'), ['geometry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sample_sampling_run_id'), ['sampling_run_id'], unique=False)

    op.create_table('training_set_label',
    sa.Column('training_set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('label_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=False),
    sa.CheckConstraint("split IN ('train','val','test')", name=op.f('ck_training_set_label_split')),
    sa.ForeignKeyConstraint(['label_id'], ['label.id'], name=op.f('fk_training_set_label_label_id_label')),
    sa.ForeignKeyConstraint(['training_set_id'], ['training_set.id'], name=op.f('fk_training_set_label_training_set_id_training_set'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('training_set_id', 'label_id', name=op.f('pk_training_set_label'))
    )
    with op.batch_alter_table('training_set_label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_set_label_label_id'), ['label_id'], unique=False)

    create_views(op, VIEWS_V1)


def downgrade() -> None:
    drop_views(op, VIEWS_V1)
    with op.batch_alter_table('training_set_label', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_set_label_label_id'))

    op.drop_table('training_set_label')
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sample_sampling_run_id'))
        batch_op.drop_index(batch_op.f('ix_sample_geometry_id'))

    op.drop_table('sample')
    with op.batch_alter_table('model_eval', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_eval_model_id'))
        batch_op.drop_index(batch_op.f('ix_model_eval_generation_id'))

    op.drop_table('model_eval')
    with op.batch_alter_table('geometry_edge', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_geometry_edge_sampling_run_id'))
        batch_op.drop_index(batch_op.f('ix_geometry_edge_parent_id'))
        batch_op.drop_index(batch_op.f('ix_geometry_edge_child_id'))

    op.drop_table('geometry_edge')
    with op.batch_alter_table('sampling_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sampling_run_task_id'))
        batch_op.drop_index(batch_op.f('ix_sampling_run_seed_geometry_id'))
        batch_op.drop_index(batch_op.f('ix_sampling_run_model_generation_id'))
        batch_op.drop_index(batch_op.f('ix_sampling_run_generation_id'))

    op.drop_table('sampling_run')
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_training_set_id'))
        batch_op.drop_index(batch_op.f('ix_model_task_id'))
        batch_op.drop_index(batch_op.f('ix_model_generation_id'))
        batch_op.drop_index(batch_op.f('ix_model_checkpoint_id'))

    op.drop_table('model')
    with op.batch_alter_table('label', schema=None) as batch_op:
        batch_op.drop_index('uq_label_ok_geometry_method', postgresql_where=sa.text("status = 'ok'"), sqlite_where=sa.text("status = 'ok'"))
        batch_op.drop_index(batch_op.f('ix_label_task_id'))
        batch_op.drop_index(batch_op.f('ix_label_method_id'))
        batch_op.drop_index(batch_op.f('ix_label_geometry_id'))

    op.drop_table('label')
    with op.batch_alter_table('training_set', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_set_sha256'))
        batch_op.drop_index(batch_op.f('ix_training_set_generation_id'))
        batch_op.drop_index(batch_op.f('ix_training_set_campaign_id'))

    op.drop_table('training_set')
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_key'))
        batch_op.drop_index(batch_op.f('ix_task_generation_id'))
        batch_op.drop_index(batch_op.f('ix_task_campaign_id'))

    op.drop_table('task')
    with op.batch_alter_table('generation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generation_campaign_id'))

    op.drop_table('generation')
    op.drop_table('oracle_method')
    with op.batch_alter_table('geometry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_geometry_formula'))

    op.drop_table('geometry')
    op.drop_table('campaign')
    op.drop_table('artifact')
