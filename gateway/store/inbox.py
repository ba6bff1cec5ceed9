"""The inbound queries: where each mailbox was left, what is already stored, the candidates a
reply or bounce may belong to, and the views `inbox list` and `carriers health` show."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.delivery import State
from gateway.domain.threading import Sent
from gateway.store.models import InboundMessage, MailboxState, QuarantinedMessage
from gateway.store.outbox import contacts, conversations, messages, orders

inbound = InboundMessage.__table__  # type: ignore[attr-defined]
quarantine = QuarantinedMessage.__table__  # type: ignore[attr-defined]
mailboxes = MailboxState.__table__  # type: ignore[attr-defined]

# States a reply or a report can move an outbound text out of. A text still queued or being
# sent has not reached the phone, so a reply cannot be to it.
_REPLIED_FROM = (State.SENT.value, State.DELIVERED.value)
_BOUNCED_FROM = (State.SENT.value, State.DELIVERED.value, State.REPLIED.value)
_PENDING = (State.QUEUED.value, State.DEFERRED.value)


@dataclass(frozen=True, slots=True)
class Position:
    uidvalidity: int | None
    last_uid: int


def position(conn: Connection, mailbox: str) -> Position:
    row = conn.execute(
        select(mailboxes.c.uidvalidity, mailboxes.c.last_uid).where(mailboxes.c.name == mailbox)
    ).first()
    return Position(row.uidvalidity, row.last_uid) if row else Position(None, 0)


def read_position(engine: Engine, mailbox: str) -> Position:
    with engine.connect() as conn:
        return position(conn, mailbox)


def save_position(
    conn: Connection, mailbox: str, uidvalidity: int | None, last_uid: int, now: dt.datetime
) -> None:
    values = {"uidvalidity": uidvalidity, "last_uid": last_uid, "updated_at": now}
    done = conn.execute(update(mailboxes).where(mailboxes.c.name == mailbox).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(mailboxes).values(name=mailbox, **values))


def is_stored(
    conn: Connection, mailbox: str, uidvalidity: int | None, uid: int | None, dedup_key: str
) -> bool:
    """Whether this message is already in (as stored or quarantined)."""
    same_place = (
        (inbound.c.mailbox == mailbox)
        & (inbound.c.uidvalidity == uidvalidity)
        & (inbound.c.uid == uid)
    )
    condition = inbound.c.dedup_key == dedup_key
    if uid is not None:
        condition = or_(condition, same_place)
    if conn.execute(select(inbound.c.id).where(condition).limit(1)).first() is not None:
        return True
    if uid is None:
        return False
    quarantined = conn.execute(
        select(quarantine.c.id)
        .where(
            quarantine.c.mailbox == mailbox,
            quarantine.c.uidvalidity == uidvalidity,
            quarantine.c.uid == uid,
        )
        .limit(1)
    ).first()
    return quarantined is not None


def store_inbound(conn: Connection, values: dict[str, Any]) -> int | None:
    """Insert one inbound row; None when a concurrent reader stored the same message first."""
    try:
        with conn.begin_nested():
            statement = insert(inbound).values(**values).returning(inbound.c.id)
            return int(conn.execute(statement).scalar_one())
    except IntegrityError:
        return None


def store_quarantined(conn: Connection, values: dict[str, Any]) -> None:
    try:
        with conn.begin_nested():
            conn.execute(insert(quarantine).values(**values))
    except IntegrityError:
        pass  # already quarantined by an earlier pass


# --- candidates -------------------------------------------------------------------------------

_SENT_COLUMNS = (messages.c.id, messages.c.message_id, messages.c.sent_at, messages.c.created_at)


def _sent(row: Any) -> Sent:
    return Sent(row.id, row.message_id, row.sent_at, row.created_at)


def sent_by_message_id(conn: Connection, ids: Sequence[str]) -> dict[str, Sent]:
    if not ids:
        return {}
    rows = conn.execute(select(*_SENT_COLUMNS).where(messages.c.message_id.in_(list(ids))))
    return {row.message_id: _sent(row) for row in rows}


def latest_sent_to_phone(conn: Connection, phone: str) -> Sent | None:
    """Our most recent text that reached (or may have reached) `phone`."""
    row = conn.execute(
        select(*_SENT_COLUMNS)
        .where(messages.c.to_phone == phone, messages.c.sent_at.is_not(None))
        .order_by(messages.c.sent_at.desc(), messages.c.id.desc())
        .limit(1)
    ).first()
    return _sent(row) if row else None


def latest_sent_to_address(conn: Connection, address: str) -> Sent | None:
    row = conn.execute(
        select(*_SENT_COLUMNS)
        .where(messages.c.to_address == address.lower(), messages.c.sent_at.is_not(None))
        .order_by(messages.c.sent_at.desc(), messages.c.id.desc())
        .limit(1)
    ).first()
    return _sent(row) if row else None


def thread_of(
    conn: Connection, message: int
) -> tuple[int | None, int | None, int | None, str | None]:
    """(contact, conversation, order, gateway domain) of an outbound text; LookupError when
    there is none."""
    row = conn.execute(
        select(
            messages.c.contact_id,
            messages.c.conversation_id,
            messages.c.order_id,
            messages.c.gateway,
        ).where(messages.c.id == message)
    ).first()
    if row is None:
        raise LookupError(f"there is no outbound message {message}")
    return row.contact_id, row.conversation_id, row.order_id, row.gateway


# --- effects on outbound texts and contacts ---------------------------------------------------


def mark_replied(conn: Connection, message: int, now: dt.datetime) -> None:
    conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state.in_(_REPLIED_FROM))
        .values(state=State.REPLIED.value, updated_at=now)
    )


def mark_delivered(conn: Connection, message: int, now: dt.datetime) -> None:
    conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state == State.SENT.value)
        .values(state=State.DELIVERED.value, updated_at=now)
    )


def mark_bounced(conn: Connection, message: int, reason: str, now: dt.datetime) -> bool:
    done = conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state.in_(_BOUNCED_FROM))
        .values(state=State.BOUNCED.value, reason=reason, updated_at=now)
    )
    return bool(done.rowcount)


def learn_carrier(conn: Connection, contact: int, carrier: str, now: dt.datetime) -> None:
    """A reply from the carrier's own gateway domain: that is the contact's carrier."""
    conn.execute(
        update(contacts)
        .where(contacts.c.id == contact)
        .values(carrier=carrier, carrier_source="reply", carrier_doubt=None, updated_at=now)
    )


def doubt_carrier(conn: Connection, contact: int, why: str, now: dt.datetime) -> None:
    conn.execute(
        update(contacts).where(contacts.c.id == contact).values(carrier_doubt=why, updated_at=now)
    )


def set_opted_out(conn: Connection, contact: int, opted_out: bool, now: dt.datetime) -> int:
    """Record the contact's choice; opting out also suppresses what is still waiting to go.
    Returns how many waiting texts were suppressed."""
    conn.execute(
        update(contacts).where(contacts.c.id == contact).values(opted_out=opted_out, updated_at=now)
    )
    if not opted_out:
        return 0
    done = conn.execute(
        update(messages)
        .where(messages.c.contact_id == contact, messages.c.state.in_(_PENDING))
        .values(state=State.SUPPRESSED.value, reason="opted_out", updated_at=now)
    )
    return int(done.rowcount)


def new_conversation(conn: Connection, contact: int, now: dt.datetime) -> int:
    """A conversation for a reply that answers none of our texts."""
    return int(
        conn.execute(
            insert(conversations)
            .values(contact_id=contact, order_id=None, created_at=now, last_message_at=now)
            .returning(conversations.c.id)
        ).scalar_one()
    )


def touch_conversation(conn: Connection, conversation: int, now: dt.datetime) -> None:
    conn.execute(
        update(conversations).where(conversations.c.id == conversation).values(last_message_at=now)
    )


# --- views ------------------------------------------------------------------------------------


def list_inbound(engine: Engine, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        select(
            inbound.c.id,
            inbound.c.kind,
            inbound.c.phone,
            inbound.c.carrier,
            inbound.c.from_address.label("from"),
            inbound.c.text,
            inbound.c.keyword,
            inbound.c.matched_message_id,
            orders.c.ref.label("order_ref"),
            inbound.c.conversation_id,
            inbound.c.match_rule,
            inbound.c.confidence,
            inbound.c.details,
            inbound.c.stored_at,
        )
        .select_from(inbound.outerjoin(orders, orders.c.id == inbound.c.order_id))
        .order_by(inbound.c.id.desc())
        .limit(limit)
    )
    if kind is not None:
        query = query.where(inbound.c.kind == kind)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def list_quarantine(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        select(
            quarantine.c.id,
            quarantine.c.mailbox,
            quarantine.c.uid,
            quarantine.c.size,
            quarantine.c.error,
            quarantine.c.stored_at,
        )
        .order_by(quarantine.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def inbound_row(conn: Connection, inbound_id: int) -> Any:
    return conn.execute(select(inbound).where(inbound.c.id == inbound_id)).first()


def set_thread(
    conn: Connection,
    inbound_id: int,
    *,
    message: int | None,
    contact: int | None,
    conversation: int | None,
    order: int | None,
    rule: str,
    confidence: float,
) -> None:
    conn.execute(
        update(inbound)
        .where(inbound.c.id == inbound_id)
        .values(
            matched_message_id=message,
            contact_id=contact,
            conversation_id=conversation,
            order_id=order,
            match_rule=rule,
            confidence=confidence,
        )
    )


def gateway_counts(engine: Engine, since: dt.datetime) -> dict[str, dict[str, int]]:
    """Per gateway domain since `since`: texts sent, bounced, and replies received."""
    counts: dict[str, dict[str, int]] = {}

    def add(domain: str | None, key: str, value: int) -> None:
        if domain:
            counts.setdefault(domain, {"sent": 0, "bounced": 0, "replied": 0})[key] += value

    with engine.connect() as conn:
        for row in conn.execute(
            select(messages.c.gateway, func.count())
            .where(messages.c.sent_at >= since)
            .group_by(messages.c.gateway)
        ):
            add(row[0], "sent", row[1])
        bounced = (
            select(messages.c.gateway, func.count(func.distinct(messages.c.id)))
            .select_from(inbound.join(messages, messages.c.id == inbound.c.matched_message_id))
            .where(inbound.c.kind == "bounce", inbound.c.stored_at >= since)
            .group_by(messages.c.gateway)
        )
        for row in conn.execute(bounced):
            add(row[0], "bounced", row[1])
        for row in conn.execute(
            select(inbound.c.from_domain, func.count())
            .where(inbound.c.kind == "reply", inbound.c.stored_at >= since)
            .group_by(inbound.c.from_domain)
        ):
            add(row[0], "replied", row[1])
    return counts
