"""quota reservations

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 23:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quota_reservations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('route', sa.String(length=20), nullable=False),
    sa.Column('worker', sa.String(length=100), nullable=False),
    sa.Column('remaining', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quota_reservations', schema=None) as batch_op:
        batch_op.create_index('ix_quota_reservations_route', ['route', 'expires_at'], unique=False)
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quota_checked_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.drop_column('quota_checked_at')
    with op.batch_alter_table('quota_reservations', schema=None) as batch_op:
        batch_op.drop_index('ix_quota_reservations_route')
    op.drop_table('quota_reservations')
