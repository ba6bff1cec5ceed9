"""inbound: mailboxes, inbound messages, quarantine, carrier doubt

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 17:57:45.520569
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mailboxes',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('last_uid', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mailbox', sa.String(length=255), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('uid', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('mailbox', 'uidvalidity', 'uid', name='uq_quarantine_uid')
    )
    op.create_table('inbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mailbox', sa.String(length=255), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=True),
    sa.Column('uid', sa.BigInteger(), nullable=True),
    sa.Column('dedup_key', sa.String(length=300), nullable=False),
    sa.Column('message_id', sa.String(length=300), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('from_address', sa.String(length=320), nullable=True),
    sa.Column('from_domain', sa.String(length=255), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('carrier', sa.String(length=40), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('in_reply_to', sa.String(length=300), nullable=True),
    sa.Column('original_message_id', sa.String(length=300), nullable=True),
    sa.Column('details', sa.Text(), nullable=True),
    sa.Column('keyword', sa.String(length=10), nullable=True),
    sa.Column('matched_message_id', sa.Integer(), nullable=True),
    sa.Column('contact_id', sa.Integer(), nullable=True),
    sa.Column('conversation_id', sa.Integer(), nullable=True),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('match_rule', sa.String(length=20), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ),
    sa.ForeignKeyConstraint(['matched_message_id'], ['messages.id'], ),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedup_key', name='uq_inbound_messages_dedup_key'),
    sa.UniqueConstraint('mailbox', 'uidvalidity', 'uid', name='uq_inbound_messages_uid')
    )
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_messages_conversation', ['conversation_id', 'id'], unique=False)
        batch_op.create_index('ix_inbound_messages_from_domain', ['from_domain', 'stored_at'], unique=False)
        batch_op.create_index('ix_inbound_messages_kind', ['kind', 'id'], unique=False)

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('carrier_doubt', sa.Text(), nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_to_address', ['to_address', 'sent_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_to_address')

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('carrier_doubt')

    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_messages_kind')
        batch_op.drop_index('ix_inbound_messages_from_domain')
        batch_op.drop_index('ix_inbound_messages_conversation')

    op.drop_table('inbound_messages')
    op.drop_table('quarantine')
    op.drop_table('mailboxes')
