"""Read-only views the API and dashboard show: a text, conversations, a thread, the counts
/metrics exports."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, func, select

from gateway.domain.delivery import DUE_STATES
from gateway.store.inbox import inbound
from gateway.store.outbox import contacts, conversations, messages, orders

MESSAGE_FIELDS = (
    messages.c.id,
    messages.c.to_phone.label("to"),
    messages.c.to_address,
    messages.c.carrier,
    messages.c.gateway,
    messages.c.state,
    messages.c.reason,
    messages.c.route,
    messages.c.attempts,
    messages.c.last_reply,
    messages.c.message_id,
    messages.c.body.label("text"),
    messages.c.segments,
    messages.c.part,
    messages.c.parts,
    messages.c.rule,
    messages.c.due_at,
    messages.c.sent_at,
    messages.c.created_at,
    messages.c.conversation_id,
    orders.c.ref.label("order_ref"),
)


def message(conn: Connection, message_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(*MESSAGE_FIELDS)
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .where(messages.c.id == message_id)
    ).first()
    return dict(row._mapping) if row else None


def _conversations(*more: Any) -> Any:
    """Conversations with their contact and order."""
    return select(
        conversations.c.id,
        contacts.c.phone,
        contacts.c.name,
        orders.c.ref.label("order_ref"),
        conversations.c.last_message_at,
        *more,
    ).select_from(
        conversations.join(contacts, contacts.c.id == conversations.c.contact_id).outerjoin(
            orders, orders.c.id == conversations.c.order_id
        )
    )


def conversation_list(
    conn: Connection, limit: int = 50, before: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Conversations, the most recently active first."""
    query = (
        _conversations()
        .order_by(conversations.c.last_message_at.desc(), conversations.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(conversations.c.last_message_at < before)
    return [dict(row._mapping) for row in conn.execute(query)]


def conversation(conn: Connection, conversation_id: int) -> dict[str, Any] | None:
    head = conn.execute(
        _conversations(contacts.c.carrier, contacts.c.opted_out).where(
            conversations.c.id == conversation_id
        )
    ).first()
    if head is None:
        return None
    items: list[dict[str, Any]] = []
    for row in conn.execute(
        select(*MESSAGE_FIELDS)
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .where(messages.c.conversation_id == conversation_id)
    ):
        items.append({"direction": "out", "at": row.sent_at or row.created_at, **row._mapping})
    for reply in conn.execute(
        select(
            inbound.c.id,
            inbound.c.kind,
            inbound.c.text,
            inbound.c.phone,
            inbound.c.match_rule,
            inbound.c.confidence,
            inbound.c.matched_message_id,
            inbound.c.stored_at,
        ).where(inbound.c.conversation_id == conversation_id)
    ):
        items.append({"direction": "in", "at": reply.stored_at, **reply._mapping})
    items.sort(key=lambda item: (item["at"], item["direction"], item["id"]))
    return {**head._mapping, "messages": items}


def counts(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    by_state: dict[str, int] = dict(
        conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)).all()
    )
    by_kind: dict[str, int] = dict(
        conn.execute(select(inbound.c.kind, func.count()).group_by(inbound.c.kind)).all()
    )
    due = conn.execute(
        select(func.count()).where(
            messages.c.state.in_([s.value for s in DUE_STATES]), messages.c.due_at <= now
        )
    ).scalar()
    return {"messages": by_state, "inbound": by_kind, "due": due or 0}
