"""Teamwork on conversations: who a conversation is left to, whether it is done, and how far
each user has read it. Each change is one short write; the dashboard records it in the audit
log, which is how the other dispatchers' pages hear of it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, update

from gateway.store.db import insert_or
from gateway.store.tables import conversation_reads, conversations, inbound, users


def newest_reply() -> Any:
    """The id of the conversation's newest reply, 0 when it has none (correlated to the
    conversations row of the statement it is used in): what unread, done and open compare."""
    return (
        select(func.coalesce(func.max(inbound.c.id), 0))
        .where(inbound.c.conversation_id == conversations.c.id, inbound.c.kind == "reply")
        .scalar_subquery()
    )


def mark_read(conn: Connection, conversation_id: int, user_id: int) -> None:
    """Every reply in the conversation so far is read, to this user only."""
    last = conn.execute(
        select(func.max(inbound.c.id)).where(inbound.c.conversation_id == conversation_id)
    ).scalar()
    if not last:
        return
    statement = insert_or(conn, conversation_reads).values(
        conversation_id=conversation_id, user_id=user_id, read_inbound_id=last
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["conversation_id", "user_id"],
            set_={"read_inbound_id": statement.excluded.read_inbound_id},
            where=statement.excluded.read_inbound_id > conversation_reads.c.read_inbound_id,
        )
    )


def assign(conn: Connection, conversation_id: int, user_id: int | None) -> bool:
    """Leave the conversation to `user_id` (None: to everyone); False when there is no such
    conversation or no such active user."""
    if user_id is not None:
        active = conn.execute(
            select(users.c.id).where(users.c.id == user_id, users.c.disabled.is_(False))
        ).scalar()
        if active is None:
            return False
    done = conn.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id)
        .values(assigned_to=user_id)
    ).rowcount
    return bool(done)


def mark_done(conn: Connection, conversation_id: int) -> bool:
    """Done as of its newest reply: a newer one reopens it."""
    done = conn.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id)
        .values(done_through=newest_reply())
    ).rowcount
    return bool(done)


def reopen(conn: Connection, conversation_id: int) -> bool:
    done = conn.execute(
        update(conversations).where(conversations.c.id == conversation_id).values(done_through=None)
    ).rowcount
    return bool(done)
