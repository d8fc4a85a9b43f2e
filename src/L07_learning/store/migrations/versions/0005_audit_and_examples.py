"""hash-chained audit rows with client address; example identity by example_id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:10:00
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa

# Alembic loads this file by path, so the package is imported absolutely (as env.py does).
from L07_learning.store.audit_chain import GENESIS_HASH, link


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('l07_audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ip_address', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('user_agent', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('seq', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('row_hash', sa.String(length=64), nullable=True))
    op.create_table('l07_audit_chain',
    sa.Column('chain_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('anchor_seq', sa.Integer(), nullable=False),
    sa.Column('anchor_hash', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', name=op.f('pk_l07_audit_chain'))
    )
    _chain_existing_rows()
    with op.batch_alter_table('l07_audit_log', schema=None) as batch_op:
        batch_op.alter_column('seq', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('row_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(batch_op.f('ix_l07_audit_log_seq'), ['seq'], unique=True)

    # Several examples may share one execution (contract §9); idempotency is on example_id.
    with op.batch_alter_table('l07_training_examples', schema=None) as batch_op:
        batch_op.drop_constraint('uq_l07_training_examples_source_exec', type_='unique')
        batch_op.create_index('ix_l07_training_examples_source_exec', ['source_type', 'execution_id'], unique=False)


def _chain_existing_rows() -> None:
    """Chain the rows written before the chain existed, oldest first, with the code that chains new rows."""
    log = sa.table('l07_audit_log', *(sa.column(c) for c in (
        'audit_id', 'actor_type', 'actor_id', 'ip_address', 'user_agent', 'action', 'resource_type', 'resource_id',
        'result', 'error_code', 'request_id', 'seq', 'prev_hash', 'row_hash')),
        sa.column('timestamp', sa.DateTime(timezone=True)), sa.column('details', sa.JSON()))
    conn = op.get_bind()
    rows = [dict(r) for r in conn.execute(sa.select(log).order_by(log.c.timestamp, log.c.audit_id)).mappings()]
    if not rows:
        return
    for row in rows:
        row['details'] = row['details'] or {}
    seq, last = link(rows, 0, GENESIS_HASH)
    for row in rows:
        conn.execute(log.update().where(log.c.audit_id == row['audit_id'])
                     .values(seq=row['seq'], prev_hash=row['prev_hash'], row_hash=row['row_hash'],
                             details=row['details']))
    head = sa.table('l07_audit_chain', sa.column('chain_id'), sa.column('seq'), sa.column('last_hash'),
                    sa.column('anchor_seq'), sa.column('anchor_hash'),
                    sa.column('updated_at', sa.DateTime(timezone=True)))
    conn.execute(head.insert().values(chain_id=1, seq=seq, last_hash=last, anchor_seq=0, anchor_hash=GENESIS_HASH,
                                      updated_at=datetime.now(timezone.utc)))


def downgrade() -> None:
    # Fails when examples now share an execution: the old unique key cannot hold them (delete the extras first).
    with op.batch_alter_table('l07_training_examples', schema=None) as batch_op:
        batch_op.drop_index('ix_l07_training_examples_source_exec')
        batch_op.create_unique_constraint('uq_l07_training_examples_source_exec', ['source_type', 'execution_id'])

    with op.batch_alter_table('l07_audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_l07_audit_log_seq'))
        batch_op.drop_column('row_hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('seq')
        batch_op.drop_column('user_agent')
        batch_op.drop_column('ip_address')
    op.drop_table('l07_audit_chain')
