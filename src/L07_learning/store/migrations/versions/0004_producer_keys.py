"""API keys bound to sources, kinds and roles; producer signing keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 06:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Producer API keys name the sources and event kinds they may send; keys made before stay unbound, and an
    # unbound producer key is refused at ingestion (E7115) until it is replaced by a bound one.
    with op.batch_alter_table('l07_api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sources', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('kinds', sa.JSON(), nullable=True))
    op.create_table('l07_producer_keys',
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=True),
    sa.Column('public_key_pem', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('sources', sa.JSON(), nullable=False),
    sa.Column('kinds', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_l07_producer_keys')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_l07_producer_keys_fingerprint'))
    )
    # A STAGING or PRODUCTION approval is given for one validation report; approvals recorded before carry none
    # and must be given again.
    with op.batch_alter_table('l07_model_approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('validation_id', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('l07_model_approvals', schema=None) as batch_op:
        batch_op.drop_column('validation_id')
    op.drop_table('l07_producer_keys')
    with op.batch_alter_table('l07_api_keys', schema=None) as batch_op:
        batch_op.drop_column('kinds')
        batch_op.drop_column('sources')
