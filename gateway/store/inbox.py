"""The inbound queries: where each mailbox was left, what is already stored, the candidates a
reply or bounce may belong to, and the views `inbox list` and `carriers health` show."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.delivery import State
from gateway.domain.threading import Sent
from gateway.store.db import insert_or
from gateway.store.fastpath import driver_style, insert_rows
from gateway.store.tables import (
    contacts,
    conversations,
    inbound,
    mailboxes,
    messages,
    orders,
    quarantine,
)

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


def hold_mailbox(
    engine: Engine, mailbox: str, holder: str, now: dt.datetime, until: dt.datetime
) -> str | None:
    """Take or renew the lease on `mailbox` for `holder` until `until`. Returns None when
    `holder` has it, else the name of the process that does. One statement: two processes
    asking at once cannot both win."""
    statement = insert_or(engine, mailboxes).values(
        name=mailbox, last_uid=0, updated_at=now, holder=holder, held_until=until
    )
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": holder, "held_until": until},
        where=(mailboxes.c.holder.is_(None)) | (mailboxes.c.holder == holder)
        | (mailboxes.c.held_until < now),
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(statement)
        found = conn.execute(select(mailboxes.c.holder).where(mailboxes.c.name == mailbox)).scalar()
    return None if found == holder else str(found)


def let_go_of_mailbox(engine: Engine, mailbox: str, holder: str) -> None:
    """A clean stop: the next process need not wait for the lease to run out."""
    with engine.begin() as conn:
        conn.execute(
            update(mailboxes)
            .where(mailboxes.c.name == mailbox, mailboxes.c.holder == holder)
            .values(holder=None, held_until=None)
        )


def mailbox_holders(conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    return [
        dict(row._mapping)
        for row in conn.execute(
            select(mailboxes.c.name, mailboxes.c.holder, mailboxes.c.held_until,
                   mailboxes.c.last_uid)
            .where(mailboxes.c.holder.is_not(None), mailboxes.c.held_until > now)
        )
    ]  # fmt: skip


def already_in(
    conn: Connection,
    mailbox: str,
    uidvalidity: int | None,
    uids: Sequence[int],
    keys: Sequence[str],
) -> tuple[set[str], set[int]]:
    """Which of these messages are already in: (dedup keys stored, UIDs stored or quarantined
    at this place in the mailbox)."""
    keys_in = set(
        conn.execute(select(inbound.c.dedup_key).where(inbound.c.dedup_key.in_(list(keys))))
        .scalars()
        .all()
    ) if keys else set()  # fmt: skip
    uids_in: set[int] = set()
    if uids:
        for table in (inbound, quarantine):
            uids_in.update(
                conn.execute(
                    select(table.c.uid).where(
                        table.c.mailbox == mailbox,
                        table.c.uidvalidity == uidvalidity,
                        table.c.uid.in_(list(uids)),
                    )
                ).scalars()
            )
    return keys_in, uids_in


def store_inbound_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Store `rows` (each with the same columns, named by our code), many to a statement."""
    if not rows:
        return
    mark, time_param = driver_style(conn)
    columns = tuple(rows[0])
    insert_rows(
        conn,
        inbound.name,
        columns,
        [
            [
                time_param(value) if isinstance(value, dt.datetime) else value
                for value in (row[column] for column in columns)
            ]
            for row in rows
        ],
        mark,
    )


def store_quarantined(conn: Connection, values: dict[str, Any]) -> None:
    try:
        with conn.begin_nested():
            conn.execute(insert(quarantine).values(**values))
    except IntegrityError:
        pass  # already quarantined by an earlier pass


def quarantined(conn: Connection, quarantined_id: int) -> Any:
    return conn.execute(select(quarantine).where(quarantine.c.id == quarantined_id)).first()


def unquarantine(conn: Connection, quarantined_id: int) -> None:
    conn.execute(delete(quarantine).where(quarantine.c.id == quarantined_id))


# --- candidates -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentThread:
    """An outbound text, with the contact, conversation and order it belongs to."""

    sent: Sent
    contact: int | None
    conversation: int | None
    order: int | None
    gateway: str | None  # the domain it was mailed to


_THREAD_COLUMNS = (
    messages.c.id,
    messages.c.message_id,
    messages.c.sent_at,
    messages.c.created_at,
    messages.c.contact_id,
    messages.c.conversation_id,
    messages.c.order_id,
    messages.c.gateway,
    messages.c.to_phone,
    messages.c.to_address,
)


def _thread(row: Any) -> SentThread:
    sent = Sent(row.id, row.message_id, row.sent_at, row.created_at)
    return SentThread(sent, row.contact_id, row.conversation_id, row.order_id, row.gateway)


def sent_by_message_id(conn: Connection, ids: Sequence[str]) -> dict[str, SentThread]:
    if not ids:
        return {}
    rows = conn.execute(select(*_THREAD_COLUMNS).where(messages.c.message_id.in_(list(ids))))
    return {row.message_id: _thread(row) for row in rows}


def latest_sent_to(
    conn: Connection, column: str, values: Sequence[str], since: dt.datetime
) -> dict[str, SentThread]:
    """Per phone (column "to_phone") or gateway address ("to_address"): our most recent text
    to it sent since `since`."""
    if not values:
        return {}
    target = messages.c[column]
    rows = conn.execute(
        select(*_THREAD_COLUMNS)
        .where(target.in_(list(values)), messages.c.sent_at >= since)
        .order_by(messages.c.sent_at, messages.c.id)
    )
    return {getattr(row, column): _thread(row) for row in rows}  # the latest is written last


def thread_of(conn: Connection, message: int) -> SentThread:
    """The outbound text `message` and its thread; LookupError when there is none."""
    row = conn.execute(select(*_THREAD_COLUMNS).where(messages.c.id == message)).first()
    if row is None:
        raise LookupError(f"there is no outbound message {message}")
    return _thread(row)


def contacts_by_phone(conn: Connection, phones: Sequence[str]) -> dict[str, int]:
    if not phones:
        return {}
    rows = conn.execute(
        select(contacts.c.phone, contacts.c.id).where(contacts.c.phone.in_(list(phones)))
    )
    return {row.phone: row.id for row in rows}


# --- effects on outbound texts and contacts ---------------------------------------------------


def mark_replied(conn: Connection, ids: Sequence[int], now: dt.datetime) -> None:
    if ids:
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(list(ids)), messages.c.state.in_(_REPLIED_FROM))
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


def learn_carrier(conn: Connection, ids: Sequence[int], carrier: str, now: dt.datetime) -> None:
    """Replies from the carrier's own gateway domain: that is these contacts' carrier."""
    if ids:
        conn.execute(
            update(contacts)
            .where(contacts.c.id.in_(list(ids)))
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


def touch_conversations(conn: Connection, ids: Sequence[int], now: dt.datetime) -> None:
    if ids:
        conn.execute(
            update(conversations)
            .where(conversations.c.id.in_(list(ids)))
            .values(last_message_at=now)
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


def contacts_per_carrier(engine: Engine) -> dict[str, int]:
    """Contacts who may still be texted (not opted out), per carrier id."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(contacts.c.carrier, func.count())
            .where(contacts.c.carrier.is_not(None), contacts.c.opted_out.is_(False))
            .group_by(contacts.c.carrier)
        ).all()
    return {row[0]: row[1] for row in rows}


def final_failure(details: str | None) -> bool:
    """Whether a stored bounce's details report a final failure, not only a delay warning (the
    reporting system still trying). Reports stored before delay warnings were told apart say
    nothing of it and count as final."""
    recipients = json.loads(details or "{}").get("recipients") or [{}]
    return any(r.get("final", True) for r in recipients)


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
        # Texts a final failure report answered: a delay warning is not a bounce (yet). Such
        # reports are few (a window of one carrier's bounces), so their details are read here.
        bounced: dict[str | None, set[int]] = {}
        for row in conn.execute(
            select(messages.c.gateway, messages.c.id, inbound.c.details)
            .select_from(inbound.join(messages, messages.c.id == inbound.c.matched_message_id))
            .where(inbound.c.kind == "bounce", inbound.c.stored_at >= since)
        ):
            if final_failure(row.details):
                bounced.setdefault(row.gateway, set()).add(row.id)
        for domain, ids in bounced.items():
            add(domain, "bounced", len(ids))
        for row in conn.execute(
            select(inbound.c.from_domain, func.count())
            .where(inbound.c.kind == "reply", inbound.c.stored_at >= since)
            .group_by(inbound.c.from_domain)
        ):
            add(row[0], "replied", row[1])
    return counts
