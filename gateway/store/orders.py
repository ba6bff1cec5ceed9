"""The order queries: upsert, the facts rules read, events, superseding waiting texts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.orm import aliased

from gateway.domain.delivery import State
from gateway.domain.rules import TERMINAL, DriverDay, OrderFacts
from gateway.store.contacts import insert_once
from gateway.store.db import insert_or
from gateway.store.tables import contacts, job_runs, messages, orders
from gateway.store.tables import order_events as events

_WAITING = (State.QUEUED.value, State.DEFERRED.value)


def upsert_order(conn: Connection, ref: str, values: dict[str, Any], now: dt.datetime) -> int:
    """Create the order `ref` or change the given fields of it; returns its id."""
    find = select(orders.c.id).where(orders.c.ref == ref)
    found = conn.execute(find).scalar()
    if found is None:
        created = insert(orders).values(ref=ref, **values, created_at=now, updated_at=now)
        # When another writer created it meanwhile, theirs gets our values below.
        found = insert_once(conn, created.returning(orders.c.id), find)
    if values:
        conn.execute(update(orders).where(orders.c.id == found).values(**values, updated_at=now))
    return int(found)


def order_facts(conn: Connection, ref: str) -> tuple[int, OrderFacts] | None:
    customer = aliased(contacts)
    driver = aliased(contacts)
    row = conn.execute(
        select(
            orders.c.id,
            orders.c.ref,
            customer.c.phone.label("customer_phone"),
            customer.c.name.label("customer_name"),
            driver.c.phone.label("driver_phone"),
            driver.c.name.label("driver_name"),
            orders.c.window_start,
            orders.c.window_end,
            orders.c.timezone,
        )
        .select_from(
            orders.outerjoin(customer, customer.c.id == orders.c.customer_id).outerjoin(
                driver, driver.c.id == orders.c.driver_id
            )
        )
        .where(orders.c.ref == ref)
    ).first()
    if row is None:
        return None
    return row.id, OrderFacts(
        ref=row.ref,
        customer_phone=row.customer_phone,
        customer_name=row.customer_name,
        driver_phone=row.driver_phone,
        driver_name=row.driver_name,
        window_start=row.window_start,
        window_end=row.window_end,
        timezone=row.timezone,
    )


def event_by_key(conn: Connection, key: str) -> Any:
    return conn.execute(select(events).where(events.c.idempotency_key == key)).first()


def insert_event(conn: Connection, values: dict[str, Any]) -> int:
    return int(conn.execute(insert(events).values(**values).returning(events.c.id)).scalar_one())


def set_status(conn: Connection, order: int, status: str, now: dt.datetime) -> None:
    conn.execute(update(orders).where(orders.c.id == order).values(status=status, updated_at=now))


def waiting_automated(conn: Connection, order: int) -> list[tuple[int, str | None]]:
    """(id, rule) of the order's automated texts that have not gone yet."""
    rows = conn.execute(
        select(messages.c.id, messages.c.rule).where(
            messages.c.order_id == order,
            messages.c.state.in_(_WAITING),
            messages.c.automated.is_(True),
        )
    )
    return [(row.id, row.rule) for row in rows]


def cancel(conn: Connection, ids: Collection[int], reason: str, now: dt.datetime) -> int:
    if not ids:
        return 0
    done = conn.execute(
        update(messages)
        .where(messages.c.id.in_(list(ids)), messages.c.state.in_(_WAITING))
        .values(state=State.CANCELLED.value, reason=reason, updated_at=now)
    )
    return int(done.rowcount)


def texts_of_event(conn: Connection, event: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            messages.c.id,
            messages.c.rule,
            messages.c.to_phone,
            messages.c.state,
            messages.c.reason,
            messages.c.due_at,
        )
        .where(messages.c.event_id == event)
        .order_by(messages.c.id)
    )
    return [dict(row._mapping) for row in rows]


def driver_days(conn: Connection, start: dt.datetime, end: dt.datetime) -> list[DriverDay]:
    """Each driver's open orders with a window starting in [start, end)."""
    driver = aliased(contacts)
    rows = conn.execute(
        select(
            driver.c.phone,
            driver.c.name,
            orders.c.ref,
            orders.c.window_start,
        )
        .select_from(orders.join(driver, driver.c.id == orders.c.driver_id))
        .where(
            orders.c.window_start >= start,
            orders.c.window_start < end,
            or_(orders.c.status.is_(None), orders.c.status.not_in(tuple(TERMINAL))),
        )
        .order_by(driver.c.phone, orders.c.window_start, orders.c.ref)
    )
    days: dict[str, DriverDay] = {}
    for row in rows:
        day = days.get(row.phone)
        if day is None:
            days[row.phone] = DriverDay(row.phone, row.name, (row.ref,), row.window_start)
        else:
            days[row.phone] = DriverDay(day.phone, day.name, (*day.refs, row.ref), day.first_window)
    return list(days.values())


def claim_job_run(
    conn: Connection, job_id: str, slot: dt.datetime, worker: str, now: dt.datetime
) -> int | None:
    """The run's id when this worker is the one to do it; None when another already did.

    A plain INSERT ... ON CONFLICT DO NOTHING, not a savepoint: on SQLite a savepoint that
    opens the transaction commits when released, which would commit the claim before the work
    and lose the run if the process died in between."""
    statement = (
        insert_or(conn, job_runs)
        .values(job_id=job_id, slot=slot, worker=worker, fired_at=now)
        .on_conflict_do_nothing(index_elements=["job_id", "slot"])
        .returning(job_runs.c.id)
    )
    found = conn.execute(statement).scalar()
    return int(found) if found is not None else None


def finish_job_run(conn: Connection, run: int, texts: int) -> None:
    conn.execute(update(job_runs).where(job_runs.c.id == run).values(texts=texts))
