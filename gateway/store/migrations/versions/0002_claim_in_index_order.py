"""claim in index order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 16:23:51.329900
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_state_due'))
        batch_op.create_index('ix_messages_due', ['due_at', 'id'], unique=False, sqlite_where=sa.text("state IN ('queued', 'deferred')"), postgresql_where=sa.text("state IN ('queued', 'deferred')"))
        batch_op.create_index('ix_messages_leased', ['lease_until'], unique=False, sqlite_where=sa.text("state = 'sending'"), postgresql_where=sa.text("state = 'sending'"))



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_leased', sqlite_where=sa.text("state = 'sending'"), postgresql_where=sa.text("state = 'sending'"))
        batch_op.drop_index('ix_messages_due', sqlite_where=sa.text("state IN ('queued', 'deferred')"), postgresql_where=sa.text("state IN ('queued', 'deferred')"))
        batch_op.create_index(batch_op.f('ix_messages_state_due'), ['state', 'due_at'], unique=False)

