"""Worker heartbeats: each `gateway run` writes one row every few seconds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gateway.domain.health import Health
from gateway.store.tables import heartbeats

BEAT_SECONDS = 10.0
# A worker not heard from in this long is taken for dead (three beats missed).
ALIVE_WITHIN = dt.timedelta(seconds=3 * BEAT_SECONDS + 5)


def beat(
    engine: Engine,
    name: str,
    now: dt.datetime,
    mailbox_lag: float | None,
    mailbox: Health | None = None,
) -> None:
    """This process is alive; `mailbox` is how its reader fares (None: it reads no mailbox, or
    has not tried yet)."""
    reader = mailbox if mailbox is not None else Health()  # not tried: all None
    values = {
        "seen_at": now,
        "mailbox_lag_seconds": mailbox_lag,
        "mailbox_ok": reader.ok,
        "mailbox_error": (reader.error or "")[:2000] or None,
        "mailbox_since": reader.since,
    }
    with engine.begin() as conn:
        done = conn.execute(
            update(heartbeats).where(heartbeats.c.name == name).values(**values)
        ).rowcount
        if not done:  # the first beat (one process per name: nobody else writes this row)
            conn.execute(insert(heartbeats).values(name=name, started_at=now, **values))
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
    # The mailbox reader, as the live workers that read one say (one reads it at a time; after
    # a take-over the old holder may still say): working if any says so, else failing since
    # the earliest. None when no live worker reads a mailbox.
    mailbox_ok: bool | None = None
    mailbox_error: str | None = None
    mailbox_since: dt.datetime | None = None


def processes(conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """Each `gateway run` heard from lately: what it holds (texts leased, mailboxes read)."""
    from gateway.store.inbox import mailbox_holders
    from gateway.store.tables import messages

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
            "mailbox_ok": beat.mailbox_ok, "mailbox_error": beat.mailbox_error,
        })  # fmt: skip
    return rows


def workers(conn: Connection, now: dt.datetime) -> Workers:
    rows = conn.execute(
        select(heartbeats.c.mailbox_lag_seconds, heartbeats.c.mailbox_ok,
               heartbeats.c.mailbox_error, heartbeats.c.mailbox_since)
        .where(heartbeats.c.seen_at > now - ALIVE_WITHIN)
    ).all()  # fmt: skip
    lags = [row.mailbox_lag_seconds for row in rows if row.mailbox_lag_seconds is not None]
    lag = min(lags) if lags else None
    working = [row for row in rows if row.mailbox_ok is True]
    failing = sorted((row for row in rows if row.mailbox_ok is False),
                     key=lambda row: _aware(row.mailbox_since) or now)  # fmt: skip
    if working:
        return Workers(len(rows), lag, True, None, _aware(working[0].mailbox_since))
    if failing:
        first = failing[0]
        return Workers(len(rows), lag, False, first.mailbox_error, _aware(first.mailbox_since))
    return Workers(len(rows), lag)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive times; they are stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
