"""The outbox queries. SQLAlchemy Core on the hot paths: claiming and recording in batches is
about thirty times faster than the ORM row by row."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.delivery import AttemptOutcome, Decision, State
from gateway.domain.routing import History, Route, channel_of, history_of
from gateway.store import live
from gateway.store.models import (
    DUE_CONDITION,
    FRESH_CONDITION,
    LEASED_CONDITION,
    Contact,
    Conversation,
    DeliveryAttempt,
    Message,
    Order,
)

messages = Message.__table__  # type: ignore[attr-defined]
attempts = DeliveryAttempt.__table__  # type: ignore[attr-defined]
contacts = Contact.__table__  # type: ignore[attr-defined]
orders = Order.__table__  # type: ignore[attr-defined]
conversations = Conversation.__table__  # type: ignore[attr-defined]


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


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    to_address: str
    body: str
    message_id: str
    attempts: int
    first_due_at: dt.datetime
    lease_until: dt.datetime
    history: History = field(default_factory=History)
    # Held to the recipient's allowed hours (automated, or asked for): the sender checks again,
    # since a retry or a late claim may fall in quiet hours.
    quiet: bool = False
    to_phone: str = ""
    order_zone: str | None = None
    # Taken from a lease that ran out: the worker that held it died or stalled, perhaps after
    # the server took the text and before the outcome was written. Sending it again may
    # deliver it twice (with the same Message-ID); that possibility is counted and recorded.
    recovered: bool = False
    channel: str = "email"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    message: int
    number: int  # 1 for the first attempt
    worker: str
    route: str
    route_reason: str
    outcome: AttemptOutcome
    decision: Decision
    started_at: dt.datetime
    finished_at: dt.datetime
    # False for an attempt the same worker follows at once on the other route: it is recorded,
    # but the row stays leased and its state is left to the last attempt.
    final: bool = True
    reservation: int | None = None  # the daily-limit reservation it used, counted down here


# --- enqueue ----------------------------------------------------------------------------------


def upsert_contacts(
    conn: Connection, wanted: dict[str, str | None], carrier_source: str, now: dt.datetime
) -> dict[str, tuple[int, str | None, bool]]:
    """The contacts for the phones of `wanted` (phone -> carrier given, or None), created when
    new, their carrier updated when one is given: phone -> (id, carrier, opted out).

    Every enqueue runs this, so it talks to the driver directly (as record_attempts does):
    building the statements through SQLAlchemy was most of an enqueue's time. Contacts that a
    concurrent writer creates first are found by ON CONFLICT DO NOTHING, with no savepoint."""
    mark, time_param = _driver_style(conn)
    at = time_param(now)
    found = _contacts_by_phone(conn, list(wanted), mark)
    missing = [phone for phone in wanted if phone not in found]
    if missing:
        conn.exec_driver_sql(
            _placeholders(_CONTACT_INSERT, mark),
            [(p, wanted[p], carrier_source if wanted[p] else None, False, at, at) for p in missing],
        )
        found.update(_contacts_by_phone(conn, missing, mark))
    changed = {
        phone: carrier
        for phone, carrier in wanted.items()
        if carrier is not None and carrier != found[phone][1]
    }
    set_carriers(conn, {found[phone][0]: c for phone, c in changed.items()}, carrier_source, now)
    for phone, carrier in changed.items():
        contact_id, _, opted_out = found[phone]
        found[phone] = (contact_id, carrier, opted_out)
    return found


def set_carriers(
    conn: Connection, carriers: dict[int, str], carrier_source: str, now: dt.datetime
) -> None:
    """Set each contact's carrier (contact id -> carrier id)."""
    if not carriers:
        return
    mark, time_param = _driver_style(conn)
    at = time_param(now)
    conn.exec_driver_sql(
        _placeholders(_CONTACT_CARRIER, mark),
        [(carrier, carrier_source, at, contact_id) for contact_id, carrier in carriers.items()],
    )


def upsert_contact(
    conn: Connection, phone: str, carrier: str | None, carrier_source: str, now: dt.datetime
) -> tuple[int, str | None, bool]:
    """The contact for `phone`, as upsert_contacts: its id, its carrier, whether it opted out."""
    return upsert_contacts(conn, {phone: carrier}, carrier_source, now)[phone]


def _contacts_by_phone(
    conn: Connection, phones: Sequence[str], mark: str
) -> dict[str, tuple[int, str | None, bool]]:
    return {
        phone: (int(contact_id), carrier, bool(opted_out))
        for phone, contact_id, carrier, opted_out in _select_in(conn, _CONTACT_FIND, phones, mark)
    }


def _select_in(conn: Connection, sql: str, items: Sequence[Any], mark: str) -> Iterator[Any]:
    """The rows of `sql`, whose `{marks}` is an IN list, over `items` in bounded chunks."""
    for statement, chunk in _in_lists(sql, items, mark):
        yield from conn.exec_driver_sql(statement, tuple(chunk))


def _in_lists(sql: str, items: Sequence[Any], mark: str) -> Iterator[tuple[str, Sequence[Any]]]:
    # Bounded IN lists: SQLite and PostgreSQL drivers both cap the parameters of a statement.
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        yield _placeholders(sql, mark).format(marks=", ".join([mark] * len(chunk))), chunk


_CONTACT_FIND = "SELECT phone, id, carrier, opted_out FROM contacts WHERE phone IN ({marks})"
_CONTACT_INSERT = (
    "INSERT INTO contacts (phone, carrier, carrier_source, opted_out, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (phone) DO NOTHING"
)
_CONTACT_CARRIER = (
    "UPDATE contacts SET carrier = ?, carrier_source = ?, updated_at = ? WHERE id = ?"
)


def ensure_order(conn: Connection, ref: str, customer_id: int, now: dt.datetime) -> int:
    """The order with reference `ref`, created bare (customer only) when it does not exist."""
    find = select(orders.c.id).where(orders.c.ref == ref)
    found = conn.execute(find).scalar()
    if found is not None:
        return int(found)
    return insert_once(
        conn,
        insert(orders)
        .values(ref=ref, customer_id=customer_id, created_at=now, updated_at=now)
        .returning(orders.c.id),
        find,
    )


def insert_once(conn: Connection, statement: Any, find: Any) -> int:
    """Insert a row that a unique key identifies; when a concurrent writer inserted it first,
    use theirs. Any other integrity error (a foreign key, say) is raised, not retried."""
    try:
        with conn.begin_nested():
            return int(conn.execute(statement).scalar_one())
    except IntegrityError:
        found = conn.execute(find).scalar()
        if found is None:
            raise
        return int(found)


def ensure_conversations(
    conn: Connection, pairs: Iterable[tuple[int, int | None]], now: dt.datetime
) -> dict[tuple[int, int | None], int]:
    """The conversation with each contact about each order (or about no order), its last
    message time moved to `now`; created where there is none: (contact, order) -> id. Driver
    SQL, as in upsert_contacts."""
    mark, time_param = _driver_style(conn)
    at = time_param(now)
    wanted = list(dict.fromkeys(pairs))
    found = _conversations_of(conn, wanted, mark)
    missing = [pair for pair in wanted if pair not in found]
    if missing:
        conn.exec_driver_sql(
            _placeholders(_CONVERSATION_NEW, mark),
            [(contact_id, order_id, at, at, 0) for contact_id, order_id in missing],
        )
        found.update(_conversations_of(conn, missing, mark))
    made = set(missing)
    touched = [found[pair] for pair in wanted if pair not in made]
    for statement, chunk in _in_lists(_CONVERSATION_TOUCH, touched, mark):
        conn.exec_driver_sql(statement, (at, *chunk))
    return found


def ensure_conversation(
    conn: Connection, contact_id: int, order_id: int | None, now: dt.datetime
) -> int:
    """The conversation with the contact about the order, as ensure_conversations."""
    return ensure_conversations(conn, [(contact_id, order_id)], now)[(contact_id, order_id)]


def _conversations_of(
    conn: Connection, pairs: Sequence[tuple[int, int | None]], mark: str
) -> dict[tuple[int, int | None], int]:
    # The oldest conversation of each pair is the one texts go to (a concurrent writer may have
    # made a second one).
    wanted = set(pairs)
    found: dict[tuple[int, int | None], int] = {}
    contact_ids = sorted({contact_id for contact_id, _ in pairs})
    for contact_id, order_id, first in _select_in(conn, _CONVERSATIONS_FIND, contact_ids, mark):
        pair = (int(contact_id), None if order_id is None else int(order_id))
        if pair in wanted:
            found[pair] = int(first)
    return found


_CONVERSATIONS_FIND = (
    "SELECT contact_id, order_id, MIN(id) FROM conversations WHERE contact_id IN ({marks}) "
    "GROUP BY contact_id, order_id"
)
_CONVERSATION_TOUCH = "UPDATE conversations SET last_message_at = ? WHERE id IN ({marks})"
_CONVERSATION_NEW = (
    "INSERT INTO conversations (contact_id, order_id, created_at, last_message_at, "
    "read_inbound_id) VALUES (?, ?, ?, ?, ?)"
)


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
    mark, time_param = _driver_style(conn)
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
    marks = ", ".join([mark] * len(_MESSAGE_COLUMNS))
    conn.exec_driver_sql(f"INSERT INTO messages ({_MESSAGE_COLUMNS_SQL}) VALUES ({marks})", values)
    live.notify_outbox(conn)
    wanted = [str(row[_MESSAGE_ID_COLUMN]) for row in values]
    ids = {key: int(row_id) for key, row_id in _select_in(conn, _IDS_BY_MESSAGE_ID, wanted, mark)}
    return [ids[key] for key in wanted]


_MESSAGE_COLUMNS = (
    "conversation_id", "contact_id", "order_id", "to_phone", "carrier", "to_address", "gateway",
    "gateway_reason", "body", "template", "encoding", "segments", "part", "parts", "message_id",
    "idempotency_key", "state", "reason", "attempts", "due_at", "first_due_at", "created_at",
    "updated_at", "automated", "rule", "event_id", "fresh_until", "respect_quiet_hours",
    "pinned_route", "channel", "channel_ref",
)  # fmt: skip
_MESSAGE_COLUMNS_SQL = ", ".join(_MESSAGE_COLUMNS)
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
    return [_utc(r.sent_at or r.due_at) for r in rows]


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


def cancel_stale(conn: Connection, now: dt.datetime) -> int:
    """Waiting texts past their freshness deadline are cancelled, never sent late."""
    done = conn.execute(
        update(messages)
        .where(_DUE_FRESH, messages.c.fresh_until < now)
        .values(state=State.CANCELLED.value, reason="stale", updated_at=now)
    )
    return int(done.rowcount)


# --- the sender's side ------------------------------------------------------------------------


_DUE = text(DUE_CONDITION)
_LEASED = text(LEASED_CONDITION)
_DUE_FRESH = text(FRESH_CONDITION)


# A text email carries needs its address; one an SMS channel carries, its number only.
_SENDABLE = or_(messages.c.to_address.is_not(None), messages.c.channel != "email")


def _due_rows(now: dt.datetime) -> Any:
    return and_(_DUE, messages.c.due_at <= now)


def _expired_leases(now: dt.datetime) -> Any:
    # A lease that ran out belongs to a worker that died or stalled: the row is due again.
    return and_(_LEASED, messages.c.lease_until < now)


def claim_due(
    engine: Engine, worker: str, now: dt.datetime, lease: dt.timedelta, limit: int
) -> list[Claimed]:
    """Take up to `limit` due rows for `worker` until `now + lease`: rows whose lease ran out
    first, then the oldest due.

    Each UPDATE picks its rows in index order (ix_messages_leased, ix_messages_due), so a claim
    costs the same with a backlog of a million rows as with ten. On PostgreSQL the inner SELECT
    skips rows other workers hold locked, so concurrent claims never block on or take each
    other's rows; SQLite has one writer at a time, which gives the same guarantee.
    """
    lease_until = now + lease
    claimed: list[Any] = []
    recovered: set[int] = set()
    with engine.begin() as conn:
        cancel_stale(conn, now)
        for condition, order in (
            (_expired_leases(now), messages.c.lease_until),
            (_due_rows(now), messages.c.due_at),
        ):
            room = limit - len(claimed)
            if room <= 0:
                break
            chosen = (
                select(messages.c.id)
                .where(condition, _SENDABLE)
                .order_by(order, messages.c.id)
                .limit(room)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            claimed += conn.execute(
                update(messages)
                .where(messages.c.id.in_(chosen))
                .values(
                    state=State.SENDING.value,
                    lease_owner=worker,
                    lease_until=lease_until,
                    updated_at=now,
                )
                .returning(
                    messages.c.id,
                    messages.c.to_address,
                    messages.c.body,
                    messages.c.message_id,
                    messages.c.attempts,
                    messages.c.first_due_at,
                    messages.c.respect_quiet_hours,
                    messages.c.to_phone,
                    messages.c.order_id,
                    messages.c.pinned_route,
                    messages.c.channel,
                )
            ).all()
            if order is messages.c.lease_until:
                recovered = {r.id for r in claimed}  # what the expired leases gave
        # Retries need their history to choose a route; first attempts (nearly all) have none.
        retried = [r.id for r in claimed if r.attempts > 0]
        histories: dict[int, list[tuple[str, str, str | None]]] = {}
        if retried:
            for row in conn.execute(
                select(
                    attempts.c.message_id, attempts.c.route, attempts.c.outcome, attempts.c.phase
                )
                .where(attempts.c.message_id.in_(retried))
                .order_by(attempts.c.message_id, attempts.c.number, attempts.c.id)
            ):
                histories.setdefault(row.message_id, []).append((row.route, row.outcome, row.phase))
        quiet_orders = {r.order_id for r in claimed if r.respect_quiet_hours and r.order_id}
        zones: dict[int, str | None] = {}
        if quiet_orders:
            zones = dict(
                conn.execute(
                    select(orders.c.id, orders.c.timezone).where(orders.c.id.in_(quiet_orders))
                ).all()
            )
    return [
        Claimed(
            r.id,
            r.to_address or "",
            r.body,
            r.message_id,
            r.attempts,
            r.first_due_at,
            lease_until,
            _pinned(history_of(histories[r.id]) if r.id in histories else History(), r),
            quiet=bool(r.respect_quiet_hours),
            to_phone=r.to_phone,
            order_zone=zones.get(r.order_id) if r.order_id else None,
            recovered=r.id in recovered,
            channel=r.channel,
        )
        for r in claimed
    ]


def record_attempts(engine: Engine, records: Sequence[AttemptRecord]) -> None:
    """Store the outcome of each attempt and move its message on, in one transaction.

    A message whose lease another worker has since taken keeps the state that worker gives it;
    the attempt itself is recorded all the same, since it happened.

    This runs once for every message sent, so it goes to the driver's executemany directly:
    SQLAlchemy's per-row parameter processing cost about a quarter of the sender's throughput
    (bench/send_throughput.py). Times are written as SQLAlchemy writes them (see _time_param).
    """
    if not records:
        return
    with engine.begin() as conn:
        mark, time_param = _driver_style(conn)
        update_sql = _placeholders(_RECORD_UPDATE, mark)
        insert_sql = _placeholders(_RECORD_INSERT, mark)
        updates = []
        progress = []
        history = []
        for r in records:
            reply = r.outcome.reply[:2000]
            finished = time_param(r.finished_at)
            due = r.decision.due_at
            channel = channel_of(Route(r.route)).value
            if not r.final:
                progress.append((r.route, channel, reply, r.number, finished, r.message, r.worker))
            else:
                updates.append(
                    (
                        r.decision.state.value,
                        r.decision.reason,
                        None if due is None else time_param(due),
                        r.route,
                        channel,
                        reply,
                        r.number,
                        finished,
                        finished if r.decision.state is State.SENT else None,
                        r.message,
                        r.worker,
                    )
                )
            history.append(
                (
                    r.message,
                    r.number,
                    r.route,
                    r.route_reason[:500],
                    r.worker,
                    r.outcome.kind.value,
                    r.outcome.phase or None,
                    r.outcome.code,
                    reply,
                    time_param(r.started_at),
                    finished,
                )
            )
        if progress:
            conn.exec_driver_sql(_placeholders(_RECORD_PROGRESS, mark), progress)
        if updates:
            conn.exec_driver_sql(update_sql, updates)
        conn.exec_driver_sql(insert_sql, history)
        opted_out = [(r.message,) for r in records if r.outcome.code == OPTED_OUT_CODE
                     and r.route == Route.TWILIO.value]  # fmt: skip
        if opted_out:
            # Twilio refuses the number: the person opted out with Twilio (STOP). Recorded as
            # an opt-out, so the contact's other texts are held, not refused one by one.
            conn.exec_driver_sql(_placeholders(_OPT_OUT_CONTACT, mark), opted_out)
            conn.exec_driver_sql(_placeholders(_SUPPRESS_CONTACT, mark), opted_out)
        used = Counter(r.reservation for r in records if r.reservation is not None)
        if used:
            # In the same transaction as the attempts: the sends move from reserved to counted
            # (one statement per reservation, not per send: a batch nearly always has one).
            conn.exec_driver_sql(
                _placeholders(_USE_QUOTA, mark), [(n, rid) for rid, n in used.items()]
            )
        live.notify(conn)


OPTED_OUT_CODE = 21610  # Twilio's "attempt to send to unsubscribed recipient"
_CONTACT_OF = "(SELECT contact_id FROM messages WHERE id = ?)"
_OPT_OUT_CONTACT = f"UPDATE contacts SET opted_out = TRUE WHERE id = {_CONTACT_OF}"
_SUPPRESS_CONTACT = (
    "UPDATE messages SET state = 'suppressed', reason = 'opted_out' "
    f"WHERE contact_id = {_CONTACT_OF} AND state IN ('queued', 'deferred')"
)
_USE_QUOTA = "UPDATE quota_reservations SET remaining = remaining - ? WHERE id = ?"
# A text still `sending` takes the attempt's state; one an SMS channel already reported on
# (delivered or failed, its webhook faster than this write) keeps what the channel said.
_RECORD_UPDATE = (
    "UPDATE messages SET state = CASE WHEN state = 'sending' THEN ? ELSE state END, "
    "reason = CASE WHEN state = 'sending' THEN ? ELSE reason END, "
    "due_at = COALESCE(?, due_at), route = ?, channel = ?, last_reply = ?, attempts = ?, "
    "lease_owner = NULL, lease_until = NULL, updated_at = ?, sent_at = COALESCE(?, sent_at) "
    "WHERE id = ? AND lease_owner = ?"
)
_RECORD_PROGRESS = (
    "UPDATE messages SET route = ?, channel = ?, last_reply = ?, attempts = ?, updated_at = ? "
    "WHERE id = ? AND lease_owner = ?"
)
_RECORD_INSERT = (
    "INSERT INTO delivery_attempts (message_id, number, route, route_reason, worker, outcome, "
    "phase, smtp_code, reply, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _pinned(history: History, row: Any) -> History:
    if row.pinned_route is None:
        return history
    return dataclasses.replace(history, pinned=Route(row.pinned_route))


def _placeholders(sql: str, mark: str) -> str:
    return sql if mark == "?" else sql.replace("?", mark)


def _driver_style(conn: Connection) -> tuple[str, Callable[[dt.datetime], object]]:
    """The driver's placeholder, and how a time must be passed to it to be stored exactly as
    SQLAlchemy's column type stores it."""
    if conn.dialect.name == "sqlite":
        # SQLAlchemy keeps times on SQLite as UTC text, "2026-01-02 03:04:05.000678"; string
        # comparisons in queries rely on every row having that exact shape.
        return "?", _sqlite_time
    if conn.dialect.paramstyle in ("format", "pyformat"):
        return "%s", _utc
    raise NotImplementedError(f"no fast path for the {conn.dialect.name} driver")


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.UTC)


def _sqlite_time(value: dt.datetime) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(frozen=True, slots=True)
class Postponement:
    """No route could take the message: it waits, with no attempt counted."""

    message: int
    worker: str
    decision: Decision
    at: dt.datetime


def postpone(engine: Engine, items: Sequence[Postponement]) -> None:
    if not items:
        return
    with engine.begin() as conn:
        mark, time_param = _driver_style(conn)
        conn.exec_driver_sql(
            _placeholders(
                "UPDATE messages SET state = ?, reason = ?, due_at = COALESCE(?, due_at), "
                "lease_owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_owner = ?",
                mark,
            ),
            [
                (
                    p.decision.state.value,
                    p.decision.reason,
                    None if p.decision.due_at is None else time_param(p.decision.due_at),
                    time_param(p.at),
                    p.message,
                    p.worker,
                )
                for p in items
            ],
        )


def release(engine: Engine, worker: str, ids: Sequence[int], now: dt.datetime) -> int:
    """Give back claimed rows that were never tried: they are due again at once."""
    if not ids:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(messages)
            .where(
                messages.c.id.in_(list(ids)),
                messages.c.lease_owner == worker,
                messages.c.state == State.SENDING.value,
            )
            .values(
                state=case(
                    (messages.c.attempts > 0, State.DEFERRED.value), else_=State.QUEUED.value
                ),
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
        )
        return int(result.rowcount)


def count_due(engine: Engine, now: dt.datetime) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(messages)
                .where(or_(_due_rows(now), _expired_leases(now)), _SENDABLE)
            ).scalar_one()
        )


# --- reading --------------------------------------------------------------------------------


def list_messages(
    engine: Engine, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Outbox rows, newest first, with the fields `gateway outbox list` shows."""
    query = (
        select(
            messages.c.id,
            messages.c.to_phone.label("to"),
            messages.c.to_address,
            messages.c.carrier,
            messages.c.gateway,
            messages.c.gateway_reason,
            messages.c.channel,
            messages.c.state,
            messages.c.route,
            messages.c.attempts,
            messages.c.last_reply,
            messages.c.message_id,
            messages.c.reason,
            orders.c.ref.label("order_ref"),
            messages.c.due_at,
            messages.c.part,
            messages.c.parts,
            messages.c.segments,
            messages.c.body,
        )
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .order_by(messages.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(messages.c.state == state)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def attempts_of(engine: Engine, message: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                select(attempts).where(attempts.c.message_id == message).order_by(attempts.c.id)
            )
        ]
