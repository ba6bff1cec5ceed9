"""Route state shared by every worker: breakers, and each route's rolling 24-hour count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.routing import COUNTS_AGAINST_LIMIT, Breaker, BreakerState
from gateway.store.tables import attempts, reservations, routes

COUNTED = sorted(kind.value for kind in COUNTS_AGAINST_LIMIT)
WINDOW = dt.timedelta(hours=24)


def load_breakers(engine: Engine) -> dict[str, Breaker]:
    with engine.connect() as conn:
        return breakers_in(conn)


def breakers_in(conn: Connection) -> dict[str, Breaker]:
    return {
        row.name: Breaker(
            BreakerState(row.breaker), row.failures, row.opened_at, row.last_error,
            row.failing_since,
        )
        for row in conn.execute(select(routes))
    }  # fmt: skip


def save_breakers(engine: Engine, breakers: Mapping[str, Breaker], now: dt.datetime) -> None:
    with engine.begin() as conn:
        for name, breaker in breakers.items():
            values = {
                "breaker": breaker.state.value,
                "failures": breaker.failures,
                "opened_at": breaker.opened_at,
                "last_error": breaker.last_error,
                "failing_since": breaker.failing_since,
                "updated_at": now,
            }
            changed = conn.execute(update(routes).where(routes.c.name == name).values(**values))
            if changed.rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(routes.insert().values(name=name, **values))
                except IntegrityError:  # another worker inserted it meanwhile
                    conn.execute(update(routes).where(routes.c.name == name).values(**values))


def take_quota(
    engine: Engine,
    route: str,
    limit: int,
    want: int,
    worker: str,
    now: dt.datetime,
    until: dt.datetime,
) -> tuple[int | None, int]:
    """Reserve up to `want` sends on `route`, as many as its rolling 24-hour count (with every
    worker's reserved sends) leaves below `limit`. Returns (reservation id, sends granted);
    (None, 0) when the route is full. The route's row is written first and so locked until
    commit (a row lock on PostgreSQL, the write lock on SQLite): two processes can never both
    take the last send of the day."""
    with engine.begin() as conn:
        locked = conn.execute(
            update(routes).where(routes.c.name == route).values(quota_checked_at=now)
        ).rowcount
        if not locked:
            try:
                with conn.begin_nested():
                    conn.execute(routes.insert().values(
                        name=route, breaker=BreakerState.CLOSED.value, updated_at=now,
                        quota_checked_at=now))  # fmt: skip
            except IntegrityError:
                conn.execute(
                    update(routes).where(routes.c.name == route).values(quota_checked_at=now)
                )
        # Sent and held are read in one statement, so from one snapshot: recording a send
        # moves it from held to sent in one commit, and on PostgreSQL (read committed) two
        # statements could see either side of that commit and count it nowhere.
        sent_today = (
            select(func.count())
            .where(
                attempts.c.route == route,
                attempts.c.finished_at > now - WINDOW,
                attempts.c.outcome.in_(COUNTED),
            )
            .scalar_subquery()
        )
        held_now = (
            select(func.coalesce(func.sum(reservations.c.remaining), 0))
            .where(reservations.c.route == route, reservations.c.expires_at > now)
            .scalar_subquery()
        )
        sent, held = conn.execute(select(sent_today, held_now)).one()
        granted = min(want, limit - int(sent) - int(held))
        conn.execute(delete(reservations).where(reservations.c.expires_at <= now))
        if granted <= 0:
            return None, 0
        found = conn.execute(
            reservations.insert()
            .values(route=route, worker=worker, remaining=granted, expires_at=until)
            .returning(reservations.c.id)
        ).scalar_one()
        return int(found), granted


def give_back_quota(engine: Engine, reservations_ids: list[int]) -> None:
    """Sends reserved but not made (the worker went idle or stops): free for others now."""
    if reservations_ids:
        with engine.begin() as conn:
            conn.execute(delete(reservations).where(reservations.c.id.in_(reservations_ids)))


def sent_last_24h(engine: Engine, now: dt.datetime) -> dict[str, int]:
    """Per route, the attempts in the 24 hours before `now` that the server took (or may have)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(attempts.c.route, func.count())
            .where(attempts.c.finished_at > now - WINDOW, attempts.c.outcome.in_(COUNTED))
            .group_by(attempts.c.route)
        )
        return {route: int(count) for route, count in rows}
