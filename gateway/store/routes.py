"""Route state shared by every worker: breakers, and each route's rolling 24-hour count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from gateway.domain.routing import COUNTS_AGAINST_LIMIT, Breaker, BreakerState
from gateway.store.models import DeliveryAttempt, RouteState

routes = RouteState.__table__  # type: ignore[attr-defined]
attempts = DeliveryAttempt.__table__  # type: ignore[attr-defined]

COUNTED = sorted(kind.value for kind in COUNTS_AGAINST_LIMIT)
WINDOW = dt.timedelta(hours=24)


def load_breakers(engine: Engine) -> dict[str, Breaker]:
    with engine.connect() as conn:
        return {
            row.name: Breaker(
                BreakerState(row.breaker), row.failures, row.opened_at, row.last_error
            )
            for row in conn.execute(select(routes))
        }


def save_breakers(engine: Engine, breakers: Mapping[str, Breaker], now: dt.datetime) -> None:
    with engine.begin() as conn:
        for name, breaker in breakers.items():
            values = {
                "breaker": breaker.state.value,
                "failures": breaker.failures,
                "opened_at": breaker.opened_at,
                "last_error": breaker.last_error,
                "updated_at": now,
            }
            changed = conn.execute(update(routes).where(routes.c.name == name).values(**values))
            if changed.rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(routes.insert().values(name=name, **values))
                except IntegrityError:  # another worker inserted it meanwhile
                    conn.execute(update(routes).where(routes.c.name == name).values(**values))


def sent_last_24h(engine: Engine, now: dt.datetime) -> dict[str, int]:
    """Per route, the attempts in the 24 hours before `now` that the server took (or may have)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(attempts.c.route, func.count())
            .where(attempts.c.finished_at > now - WINDOW, attempts.c.outcome.in_(COUNTED))
            .group_by(attempts.c.route)
        )
        return {route: int(count) for route, count in rows}
