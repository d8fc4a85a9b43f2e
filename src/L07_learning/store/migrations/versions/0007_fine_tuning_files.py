"""OpenAI-compatible fine-tuning: uploaded files, fine-tuning jobs and their events

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 06:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('l07_ft_files',
    sa.Column('file_id', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('import_format', sa.String(length=32), nullable=True),
    sa.Column('import_report', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_l07_ft_files'))
    )
    with op.batch_alter_table('l07_ft_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_ft_files_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_l07_ft_files_created_by'), ['created_by'], unique=False)

    op.create_table('l07_ft_jobs',
    sa.Column('ft_job_id', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('base_model_id', sa.String(length=128), nullable=True),
    sa.Column('training_file', sa.String(length=64), nullable=False),
    sa.Column('validation_file', sa.String(length=64), nullable=True),
    sa.Column('suffix', sa.String(length=64), nullable=True),
    sa.Column('method', sa.JSON(), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.String(length=128), nullable=True),
    sa.Column('job_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('ft_job_id', name=op.f('pk_l07_ft_jobs'))
    )
    with op.batch_alter_table('l07_ft_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_ft_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_l07_ft_jobs_created_by'), ['created_by'], unique=False)
        batch_op.create_index(batch_op.f('ix_l07_ft_jobs_job_id'), ['job_id'], unique=False)

    op.create_table('l07_ft_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('ft_job_id', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_l07_ft_events'))
    )
    with op.batch_alter_table('l07_ft_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_l07_ft_events_ft_job_id'), ['ft_job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('l07_ft_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_ft_events_ft_job_id'))
    op.drop_table('l07_ft_events')
    with op.batch_alter_table('l07_ft_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_ft_jobs_job_id'))
        batch_op.drop_index(batch_op.f('ix_l07_ft_jobs_created_by'))
        batch_op.drop_index(batch_op.f('ix_l07_ft_jobs_created_at'))
    op.drop_table('l07_ft_jobs')
    with op.batch_alter_table('l07_ft_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_ft_files_created_by'))
        batch_op.drop_index(batch_op.f('ix_l07_ft_files_created_at'))
    op.drop_table('l07_ft_files')
