"""resolved failures: the text a failure was re-sent as, and who dismissed it when

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 13:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resent_as', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('dismissed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('dismissed_by', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('dismissed_by')
        batch_op.drop_column('dismissed_at')
        batch_op.drop_column('resent_as')
