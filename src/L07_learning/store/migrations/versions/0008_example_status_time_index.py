"""Index of examples by (status, created_at): the overview counts a window's ACCEPTED examples from the index alone
instead of reading every example row of the window

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:45:00
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_l07_training_examples_status_created', 'l07_training_examples', ['status', 'created_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_l07_training_examples_status_created', table_name='l07_training_examples')
