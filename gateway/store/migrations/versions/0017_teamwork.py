"""teamwork: a conversation's dispatcher and whether it is done; what each user has read

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 18:40:00

Read state was one mark per conversation, shared by everyone: each existing user now starts from
that mark. A user added later starts from the newest reply when they are added.
"""

from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'conversation_reads',
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('read_inbound_id', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id']),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.PrimaryKeyConstraint('conversation_id', 'user_id'),
    )
    op.execute(
        'INSERT INTO conversation_reads (conversation_id, user_id, read_inbound_id) '
        'SELECT conversations.id, users.id, conversations.read_inbound_id '
        'FROM conversations CROSS JOIN users WHERE conversations.read_inbound_id > 0'
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('unread_after', sa.BigInteger(), nullable=False, server_default='0')
        )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assigned_to', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('done_through', sa.BigInteger(), nullable=True))
        batch_op.create_foreign_key(
            'fk_conversations_assigned_to_users', 'users', ['assigned_to'], ['id']
        )
        batch_op.create_index('ix_conversations_assigned', ['assigned_to'], unique=False)
        batch_op.drop_column('read_inbound_id')


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('read_inbound_id', sa.BigInteger(), nullable=False, server_default='0')
        )
        batch_op.drop_index('ix_conversations_assigned')
        batch_op.drop_constraint('fk_conversations_assigned_to_users', type_='foreignkey')
        batch_op.drop_column('done_through')
        batch_op.drop_column('assigned_to')
    op.execute(
        'UPDATE conversations SET read_inbound_id = COALESCE((SELECT MIN(read_inbound_id) '
        'FROM conversation_reads WHERE conversation_reads.conversation_id = conversations.id), 0)'
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('unread_after')
    op.drop_table('conversation_reads')
