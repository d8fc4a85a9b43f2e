"""production feedback: per-model outcomes, release watches, incidents, component circuit breakers

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 06:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('l07_component_breakers',
    sa.Column('component', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('trips', sa.Integer(), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('probe_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('component', name=op.f('pk_l07_component_breakers'))
    )
    op.create_table('l07_incidents',
    sa.Column('incident_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('model_name', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('error_code', sa.String(length=8), nullable=False),
    sa.Column('rolled_back_to', sa.String(length=128), nullable=True),
    sa.Column('policy', sa.String(length=128), nullable=True),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('incident_id', name=op.f('pk_l07_incidents'))
    )
    with op.batch_alter_table('l07_incidents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_incidents_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_l07_incidents_model_id'), ['model_id'], unique=False)

    op.create_table('l07_model_outcomes',
    sa.Column('execution_id', sa.String(length=512), nullable=False),
    sa.Column('model_id', sa.String(length=256), nullable=True),
    sa.Column('model_ref', sa.String(length=256), nullable=True),
    sa.Column('model_source', sa.String(length=16), nullable=True),
    sa.Column('task_type', sa.String(length=128), nullable=True),
    sa.Column('served_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('total_tokens', sa.Integer(), nullable=True),
    sa.Column('quality_score', sa.Float(), nullable=True),
    sa.Column('failure', sa.String(length=32), nullable=True),
    sa.Column('is_error', sa.Boolean(), nullable=True),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('execution_id', name=op.f('pk_l07_model_outcomes'))
    )
    with op.batch_alter_table('l07_model_outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_model_outcomes_completed_at'), ['completed_at'], unique=False)
        batch_op.create_index('ix_l07_model_outcomes_model_completed', ['model_id', 'completed_at'], unique=False)

    op.create_table('l07_model_watches',
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('model_name', sa.String(length=256), nullable=False),
    sa.Column('baseline_model_id', sa.String(length=128), nullable=True),
    sa.Column('policy', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('windows_evaluated', sa.Integer(), nullable=False),
    sa.Column('last_result', sa.JSON(), nullable=False),
    sa.Column('canary_status', sa.String(length=16), nullable=True),
    sa.Column('canary', sa.JSON(), nullable=False),
    sa.Column('claimed_by', sa.String(length=256), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model_id', name=op.f('pk_l07_model_watches'))
    )
    with op.batch_alter_table('l07_model_watches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_model_watches_model_name'), ['model_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_l07_model_watches_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('l07_model_watches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_model_watches_status'))
        batch_op.drop_index(batch_op.f('ix_l07_model_watches_model_name'))

    op.drop_table('l07_model_watches')
    with op.batch_alter_table('l07_model_outcomes', schema=None) as batch_op:
        batch_op.drop_index('ix_l07_model_outcomes_model_completed')
        batch_op.drop_index(batch_op.f('ix_l07_model_outcomes_completed_at'))

    op.drop_table('l07_model_outcomes')
    with op.batch_alter_table('l07_incidents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_incidents_model_id'))
        batch_op.drop_index(batch_op.f('ix_l07_incidents_created_at'))

    op.drop_table('l07_incidents')
    op.drop_table('l07_component_breakers')
