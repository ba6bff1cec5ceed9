"""search: full-text indexes over texts and replies, kept current by the database itself

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 19:00:00

SQLite: FTS5 tables over messages.body and inbound_messages.text (external content: the words
are not stored twice), kept current by triggers, so in the transaction that stores a text or a
reply. PostgreSQL: GIN indexes over to_tsvector('simple', ...) of the same columns, which the
database keeps current itself. A later migration that rebuilds messages or inbound_messages on
SQLite (a batch alter) must create the triggers again: store/search.py holds them.
"""

from alembic import op

from gateway.store.search import (
    POSTGRES_SEARCH,
    POSTGRES_SEARCH_DROP,
    SQLITE_SEARCH,
    SQLITE_SEARCH_DROP,
)


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    statements = SQLITE_SEARCH if op.get_bind().dialect.name == 'sqlite' else POSTGRES_SEARCH
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for statement in SQLITE_SEARCH_DROP if sqlite else POSTGRES_SEARCH_DROP:
        op.execute(statement)
