"""What SMS channels report about texts: each event kept once by its id, and the text it names
moved on (delivered, failed)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, func, select, update

from gateway.domain.delivery import State
from gateway.store.db import insert_or
from gateway.store.tables import channel_events, messages

# A channel's report may arrive before the sender has written down that the text was handed
# over (the phone answers 202 and delivers within the same second): `sending` moves on too.
_DELIVERED_FROM = (State.SENDING.value, State.SENT.value)
_FAILED_FROM = (State.SENDING.value, State.SENT.value, State.DELIVERED.value)


def record_event(
    conn: Connection,
    channel: str,
    event_id: str,
    kind: str,
    message: int | None,
    detail: str | None,
    now: dt.datetime,
) -> bool:
    """Keep the event; False when it was kept before (the channel called again)."""
    statement = (
        insert_or(conn, channel_events)
        .values(
            channel=channel,
            event_id=event_id,
            kind=kind,
            message_id=message,
            detail=detail,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["channel", "event_id"])
    )
    return bool(conn.execute(statement).rowcount)


def text_by_ref(conn: Connection, ref: str) -> Any:
    """The text a channel names by our id for it (id, state, segments), or None."""
    return conn.execute(
        select(messages.c.id, messages.c.state, messages.c.segments, messages.c.contact_id)
        .where(messages.c.channel_ref == ref)
        .order_by(messages.c.id)
        .limit(1)
    ).first()


def events_of(conn: Connection, message: int, kind: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(channel_events)
            .where(channel_events.c.message_id == message, channel_events.c.kind == kind)
        ).scalar_one()
    )


def mark_delivered(conn: Connection, message: int, now: dt.datetime) -> bool:
    done = conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state.in_(_DELIVERED_FROM))
        .values(state=State.DELIVERED.value, updated_at=now)
    )
    return bool(done.rowcount)


def mark_failed(conn: Connection, message: int, reason: str, now: dt.datetime) -> bool:
    done = conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state.in_(_FAILED_FROM))
        .values(state=State.FAILED.value, reason=reason[:2000], updated_at=now)
    )
    return bool(done.rowcount)


def last_event_at(conn: Connection, channel: str, kind: str) -> dt.datetime | None:
    """When the channel's latest event of `kind` was stored."""
    found = conn.execute(
        select(func.max(channel_events.c.received_at)).where(
            channel_events.c.channel == channel, channel_events.c.kind == kind
        )
    ).scalar()
    if isinstance(found, dt.datetime) and found.tzinfo is None:
        return found.replace(tzinfo=dt.UTC)
    return found if isinstance(found, dt.datetime) else None


def in_flight(
    conn: Connection, channel: str, since: dt.datetime, limit: int = 200
) -> list[tuple[int, str]]:
    """Texts the channel took since `since` and has not reported on: (id, our ref)."""
    rows = conn.execute(
        select(messages.c.id, messages.c.channel_ref)
        .where(
            messages.c.channel == channel,
            messages.c.state == State.SENT.value,
            messages.c.sent_at >= since,
            messages.c.channel_ref.is_not(None),
        )
        .order_by(messages.c.sent_at)
        .limit(limit)
    )
    return [(row.id, row.channel_ref) for row in rows]
