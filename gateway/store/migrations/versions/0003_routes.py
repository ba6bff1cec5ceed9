"""routes: breaker state, route reasons

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 16:32:40.066526
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('routes',
    sa.Column('name', sa.String(length=20), nullable=False),
    sa.Column('breaker', sa.String(length=20), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('route_reason', sa.String(length=500), nullable=True))
        batch_op.create_index('ix_delivery_attempts_route_time', ['route', 'finished_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_attempts_route_time')
        batch_op.drop_column('route_reason')

    op.drop_table('routes')
