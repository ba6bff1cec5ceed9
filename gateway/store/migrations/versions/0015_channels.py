"""channels: the channel that carries each text and its id there; SMS channels' events, kept once

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 15:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('channel', sa.String(length=20), nullable=False, server_default='email')
        )
        batch_op.add_column(sa.Column('channel_ref', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_messages_channel_ref', ['channel_ref'], unique=False)
    op.create_table(
        'channel_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('event_id', sa.String(length=100), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('channel', 'event_id', name='uq_channel_events_event'),
    )
    op.create_index(
        'ix_channel_events_message', 'channel_events', ['message_id', 'kind'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_channel_events_message', table_name='channel_events')
    op.drop_table('channel_events')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_channel_ref')
        batch_op.drop_column('channel_ref')
        batch_op.drop_column('channel')
