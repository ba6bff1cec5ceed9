"""orders: events, automated texts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 18:29:48.328466
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('order_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=40), nullable=False),
    sa.Column('eta', sa.String(length=100), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key', name='uq_order_events_idempotency_key')
    )
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.create_index('ix_order_events_order', ['order_id', 'id'], unique=False)

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('automated', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('rule', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('event_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('fresh_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('respect_quiet_hours', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index('ix_messages_contact_due', ['contact_id', 'due_at'], unique=False)
        batch_op.create_index('ix_messages_fresh', ['fresh_until'], unique=False, sqlite_where=sa.text("state IN ('queued', 'deferred') AND fresh_until IS NOT NULL"), postgresql_where=sa.text("state IN ('queued', 'deferred') AND fresh_until IS NOT NULL"))
        batch_op.create_index('ix_messages_order', ['order_id', 'state'], unique=False)
        batch_op.create_foreign_key('fk_messages_event_id', 'order_events', ['event_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('fk_messages_event_id', type_='foreignkey')
        batch_op.drop_index('ix_messages_order')
        batch_op.drop_index('ix_messages_fresh', sqlite_where=sa.text("state IN ('queued', 'deferred') AND fresh_until IS NOT NULL"), postgresql_where=sa.text("state IN ('queued', 'deferred') AND fresh_until IS NOT NULL"))
        batch_op.drop_index('ix_messages_contact_due')
        batch_op.drop_column('respect_quiet_hours')
        batch_op.drop_column('fresh_until')
        batch_op.drop_column('event_id')
        batch_op.drop_column('rule')
        batch_op.drop_column('automated')

    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.drop_index('ix_order_events_order')

    op.drop_table('order_events')
