"""mailbox lease

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 22:50:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('holder', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('held_until', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('held_until')
        batch_op.drop_column('holder')
