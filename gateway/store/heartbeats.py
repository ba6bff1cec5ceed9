"""Worker heartbeats: each `gateway run` writes one row every few seconds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gateway.store.models import WorkerHeartbeat

heartbeats = WorkerHeartbeat.__table__  # type: ignore[attr-defined]

BEAT_SECONDS = 10.0
# A worker not heard from in this long is taken for dead (three beats missed).
ALIVE_WITHIN = dt.timedelta(seconds=3 * BEAT_SECONDS + 5)


def beat(engine: Engine, name: str, now: dt.datetime, mailbox_lag: float | None) -> None:
    with engine.begin() as conn:
        done = conn.execute(
            update(heartbeats)
            .where(heartbeats.c.name == name)
            .values(seen_at=now, mailbox_lag_seconds=mailbox_lag)
        ).rowcount
        if not done:  # the first beat (one process per name: nobody else writes this row)
            conn.execute(
                insert(heartbeats).values(
                    name=name, started_at=now, seen_at=now, mailbox_lag_seconds=mailbox_lag
                )
            )
        # Rows of workers long gone are not kept.
        conn.execute(delete(heartbeats).where(heartbeats.c.seen_at < now - dt.timedelta(days=1)))


def gone(engine: Engine, name: str) -> None:
    """A worker that stops cleanly says so: it is not counted as alive a moment longer."""
    with engine.begin() as conn:
        conn.execute(delete(heartbeats).where(heartbeats.c.name == name))


@dataclass(frozen=True, slots=True)
class Workers:
    alive: int
    mailbox_lag_seconds: float | None  # the freshest view any live worker has


def processes(conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """Each `gateway run` heard from lately: what it holds (texts leased, mailboxes read)."""
    from gateway.store.inbox import mailbox_holders
    from gateway.store.outbox import messages

    leased: dict[str, int] = dict(
        conn.execute(
            select(messages.c.lease_owner, func.count())
            .where(messages.c.state == "sending", messages.c.lease_until > now)
            .group_by(messages.c.lease_owner)
        ).all()
    )
    held: dict[str, list[str]] = {}
    for row in mailbox_holders(conn, now):
        held.setdefault(row["holder"], []).append(row["name"])
    rows = []
    for beat in conn.execute(
        select(heartbeats).where(heartbeats.c.seen_at > now - ALIVE_WITHIN)
        .order_by(heartbeats.c.started_at)
    ):  # fmt: skip
        rows.append({
            "process": beat.name, "started_at": beat.started_at, "seen_at": beat.seen_at,
            "texts_leased": leased.get(beat.name, 0), "mailboxes": held.get(beat.name, []),
            "mailbox_lag_seconds": beat.mailbox_lag_seconds,
        })  # fmt: skip
    return rows


def workers(conn: Connection, now: dt.datetime) -> Workers:
    rows = conn.execute(
        select(heartbeats.c.mailbox_lag_seconds).where(heartbeats.c.seen_at > now - ALIVE_WITHIN)
    ).scalars().all()  # fmt: skip
    lags = [lag for lag in rows if lag is not None]
    return Workers(len(rows), min(lags) if lags else None)
