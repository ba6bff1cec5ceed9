"""health and history: the mailbox reader's state in each heartbeat, since when a route fails,
and which inbound mail was imported (older mail read on request)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 12:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mailbox_ok', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('mailbox_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('mailbox_since', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('imported', sa.Boolean(), nullable=False, server_default=sa.text('false'))
        )


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_column('imported')
    with op.batch_alter_table('routes', schema=None) as batch_op:
        batch_op.drop_column('failing_since')
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_column('mailbox_since')
        batch_op.drop_column('mailbox_error')
        batch_op.drop_column('mailbox_ok')
