"""Index of preference pairs by their chosen example: a stored-pairs DPO job finds its file's pairs through the
examples the file became (``pairs_for_examples``), a lookup that otherwise reads every pair once per chunk of ids

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 16:00:00
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_l07_preference_pairs_chosen_example_id', 'l07_preference_pairs', ['chosen_example_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_l07_preference_pairs_chosen_example_id', table_name='l07_preference_pairs')
