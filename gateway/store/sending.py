"""The sender's queries: claiming due texts under a lease, recording attempts and outcomes in
batches, postponing and releasing. SQLAlchemy Core and driver SQL on these hot paths: claiming
and recording in batches is about thirty times faster than the ORM row by row."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, text, update

from gateway.domain.delivery import AttemptOutcome, Decision, State
from gateway.domain.routing import History, Route, channel_of, history_of
from gateway.store import live
from gateway.store.fastpath import driver_style, placeholders
from gateway.store.models import (
    DUE_CONDITION,
    FRESH_CONDITION,
    LEASED_CONDITION,
)
from gateway.store.tables import attempts, messages, orders


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


# --- the sender's side ------------------------------------------------------------------------


_DUE = text(DUE_CONDITION)
_LEASED = text(LEASED_CONDITION)
_DUE_FRESH = text(FRESH_CONDITION)


# A text email carries needs its address; one an SMS channel carries, its number only.
_SENDABLE = or_(messages.c.to_address.is_not(None), messages.c.channel != "email")


def cancel_stale(conn: Connection, now: dt.datetime) -> int:
    """Waiting texts past their freshness deadline are cancelled, never sent late."""
    done = conn.execute(
        update(messages)
        .where(_DUE_FRESH, messages.c.fresh_until < now)
        .values(state=State.CANCELLED.value, reason="stale", updated_at=now)
    )
    return int(done.rowcount)


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
        mark, time_param = driver_style(conn)
        update_sql = placeholders(_RECORD_UPDATE, mark)
        insert_sql = placeholders(_RECORD_INSERT, mark)
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
            conn.exec_driver_sql(placeholders(_RECORD_PROGRESS, mark), progress)
        if updates:
            conn.exec_driver_sql(update_sql, updates)
        conn.exec_driver_sql(insert_sql, history)
        opted_out = [(r.message,) for r in records if r.outcome.code == OPTED_OUT_CODE
                     and r.route == Route.TWILIO.value]  # fmt: skip
        if opted_out:
            # Twilio refuses the number: the person opted out with Twilio (STOP). Recorded as
            # an opt-out, so the contact's other texts are held, not refused one by one.
            conn.exec_driver_sql(placeholders(_OPT_OUT_CONTACT, mark), opted_out)
            conn.exec_driver_sql(placeholders(_SUPPRESS_CONTACT, mark), opted_out)
        used = Counter(r.reservation for r in records if r.reservation is not None)
        if used:
            # In the same transaction as the attempts: the sends move from reserved to counted
            # (one statement per reservation, not per send: a batch nearly always has one).
            conn.exec_driver_sql(
                placeholders(_USE_QUOTA, mark), [(n, rid) for rid, n in used.items()]
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
        mark, time_param = driver_style(conn)
        conn.exec_driver_sql(
            placeholders(
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
