"""one thread per contact: a contact's conversations (one per order, one for no order) merged

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 18:30:00

Each contact's texts and replies move to its oldest conversation; the others are deleted. The
merged thread's read mark is the lowest of the marks of the threads that had an unread reply,
so no reply unread before is read after (a few read ones may show unread again). Orders are
labels on the texts (messages.order_id), no longer on the conversation.
"""

from typing import Any

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    conversations = sa.table(
        'conversations',
        sa.column('id', sa.Integer),
        sa.column('contact_id', sa.Integer),
        sa.column('last_message_at', sa.DateTime(timezone=True)),
        sa.column('read_inbound_id', sa.BigInteger),
    )
    inbound = sa.table(
        'inbound_messages',
        sa.column('id', sa.Integer),
        sa.column('conversation_id', sa.Integer),
        sa.column('kind', sa.String),
    )
    messages = sa.table('messages', sa.column('conversation_id', sa.Integer))
    threads: dict[int, list[Any]] = {}
    for row in bind.execute(
        sa.select(conversations).order_by(conversations.c.contact_id, conversations.c.id)
    ):
        threads.setdefault(row.contact_id, []).append(row)
    for rows in threads.values():
        if len(rows) < 2:
            continue
        keep, others = rows[0], [row.id for row in rows[1:]]
        unread_marks = []
        for row in rows:
            newest = bind.execute(
                sa.select(sa.func.max(inbound.c.id)).where(
                    inbound.c.conversation_id == row.id, inbound.c.kind == 'reply'
                )
            ).scalar()
            if newest is not None and newest > row.read_inbound_id:
                unread_marks.append(row.read_inbound_id)
        mark = min(unread_marks) if unread_marks else max(row.read_inbound_id for row in rows)
        for table in (messages, inbound):
            bind.execute(
                sa.update(table)
                .where(table.c.conversation_id.in_(others))
                .values(conversation_id=keep.id)
            )
        bind.execute(
            sa.update(conversations)
            .where(conversations.c.id == keep.id)
            .values(
                last_message_at=max(row.last_message_at for row in rows), read_inbound_id=mark
            )
        )
        bind.execute(sa.delete(conversations).where(conversations.c.id.in_(others)))
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_contact_order')
        batch_op.drop_column('order_id')
        batch_op.create_index('ix_conversations_contact', ['contact_id'], unique=True)
    # A thread's contact is a driver or a customer by the orders that name them.
    op.create_index('ix_orders_driver', 'orders', ['driver_id'], unique=False)
    op.create_index('ix_orders_customer', 'orders', ['customer_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_orders_customer', table_name='orders')
    op.drop_index('ix_orders_driver', table_name='orders')
    # The merged threads stay merged: each is the conversation about no order.
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_contact')
        batch_op.add_column(sa.Column('order_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_conversations_order_id_orders', 'orders', ['order_id'], ['id']
        )
        batch_op.create_index(
            'ix_conversations_contact_order', ['contact_id', 'order_id'], unique=False
        )
