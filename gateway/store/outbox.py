"""The outbox as enqueue writes it: new texts (their idempotency keys, the contact's recent
automated texts, the order's zone) and cancelling texts that wait."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from gateway.domain.delivery import State
from gateway.store import live
from gateway.store.fastpath import as_utc, driver_style, insert_rows, select_in
from gateway.store.tables import messages, orders


@dataclass(frozen=True, slots=True)
class NewMessage:
    to_phone: str
    carrier: str | None
    to_address: str | None
    gateway: str | None
    gateway_reason: str | None
    body: str
    template: str | None
    encoding: str
    segments: int
    part: int
    parts: int
    message_id: str
    idempotency_key: str | None
    state: State
    reason: str | None
    due_at: dt.datetime
    contact_id: int | None = None
    order_id: int | None = None
    conversation_id: int | None = None
    automated: bool = False
    rule: str | None = None
    event_id: int | None = None
    fresh_until: dt.datetime | None = None
    respect_quiet_hours: bool = False
    pinned_route: str | None = None
    channel: str = "email"
    channel_ref: str | None = None


def find_by_key(conn: Connection, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The rows an earlier request with these idempotency keys created, first part first."""
    if not keys:
        return []
    result = conn.execute(
        select(
            messages.c.id,
            messages.c.state,
            messages.c.to_address,
            messages.c.message_id,
            messages.c.reason,
            messages.c.gateway_reason,
            messages.c.idempotency_key,
            messages.c.channel,
        )
        .where(messages.c.idempotency_key.in_(list(keys)))
        .order_by(messages.c.part, messages.c.id)
    )
    return [dict(row._mapping) for row in result]


def insert_messages(conn: Connection, rows: Iterable[NewMessage], now: dt.datetime) -> list[int]:
    """Insert the rows; their ids, in order. Driver SQL, as in upsert_contacts: SQLAlchemy
    inserts one row a statement on SQLite when it must return ids in order, and building each
    was most of a bulk enqueue. The ids are read back by Message-ID, which is unique."""
    mark, time_param = driver_style(conn)
    times: dict[dt.datetime, object] = {}  # a batch shares a few times: convert each once

    def at(value: dt.datetime | None) -> object:
        if value is None:
            return None
        if value not in times:
            times[value] = time_param(value)
        return times[value]

    created = at(now)
    values = [
        (
            row.conversation_id, row.contact_id, row.order_id, row.to_phone, row.carrier,
            row.to_address, row.gateway, row.gateway_reason, row.body, row.template,
            row.encoding, row.segments, row.part, row.parts, row.message_id,
            row.idempotency_key, row.state.value, row.reason, 0, at(row.due_at), at(row.due_at),
            created, created, row.automated, row.rule, row.event_id, at(row.fresh_until),
            row.respect_quiet_hours, row.pinned_route, row.channel, row.channel_ref,
        )
        for row in rows
    ]  # fmt: skip
    if not values:
        return []
    insert_rows(conn, "messages", _MESSAGE_COLUMNS, values, mark)
    live.notify_outbox(conn)
    wanted = [str(row[_MESSAGE_ID_COLUMN]) for row in values]
    ids = {key: int(row_id) for key, row_id in select_in(conn, _IDS_BY_MESSAGE_ID, wanted, mark)}
    return [ids[key] for key in wanted]


_MESSAGE_COLUMNS = (
    "conversation_id", "contact_id", "order_id", "to_phone", "carrier", "to_address", "gateway",
    "gateway_reason", "body", "template", "encoding", "segments", "part", "parts", "message_id",
    "idempotency_key", "state", "reason", "attempts", "due_at", "first_due_at", "created_at",
    "updated_at", "automated", "rule", "event_id", "fresh_until", "respect_quiet_hours",
    "pinned_route", "channel", "channel_ref",
)  # fmt: skip
_MESSAGE_ID_COLUMN = _MESSAGE_COLUMNS.index("message_id")
_IDS_BY_MESSAGE_ID = "SELECT message_id, id FROM messages WHERE message_id IN ({marks})"


def automated_times(
    conn: Connection, contact_id: int, around: dt.datetime, span: dt.timedelta
) -> list[dt.datetime]:
    """When the contact's automated texts went or will go, within `span` of `around`: what
    the per-contact cap counts."""
    rows = conn.execute(
        select(messages.c.sent_at, messages.c.due_at).where(
            messages.c.contact_id == contact_id,
            messages.c.automated.is_(True),
            messages.c.due_at >= around - span,
            messages.c.due_at <= around + span,
            messages.c.state.not_in((State.CANCELLED.value, State.SUPPRESSED.value)),
        )
    )
    return [as_utc(r.sent_at or r.due_at) for r in rows]


def order_zone(conn: Connection, order_id: int) -> str | None:
    return conn.execute(select(orders.c.timezone).where(orders.c.id == order_id)).scalar()


def cancel_waiting(engine: Engine, ids: Sequence[int], reason: str, now: dt.datetime) -> list[int]:
    """A person's cancel: the texts among `ids` that had not gone yet; returns those."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(messages)
            .where(
                messages.c.id.in_(list(ids)),
                messages.c.state.in_(
                    (State.QUEUED.value, State.DEFERRED.value, State.SUPPRESSED.value)
                ),
            )
            .values(state=State.CANCELLED.value, reason=reason, updated_at=now)
            .returning(messages.c.id)
        )
        return sorted(int(r) for r in rows.scalars())
