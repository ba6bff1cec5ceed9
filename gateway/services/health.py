"""Whether the gateway works, as every face shows it: /readyz, /metrics, `gateway status` and
the dashboard's banner all ask `overview`, so they cannot disagree.

Two parts can fail while the processes stay alive: the mailbox reader (its `gateway run` says
how it fares in each heartbeat) and sending (each route's breaker, in the database). A part is
*down* once it has failed for longer than `[imap] ready_grace_seconds`: a restart or a blip of a
server is not an outage."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from gateway.config import Settings
from gateway.domain.routing import BreakerPolicy, BreakerState, breaker_state
from gateway.store import heartbeats
from gateway.store.routes import breakers_in


@dataclass(frozen=True, slots=True)
class PartState:
    ok: bool
    error: str | None
    since: dt.datetime | None

    def down(self, now: dt.datetime, grace: float) -> bool:
        """Failing for longer than `grace` seconds."""
        if self.ok:
            return False
        return self.since is None or (now - self.since).total_seconds() > grace

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error,
                "since": self.since.isoformat() if self.since else None}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Overview:
    workers: int
    mailbox_lag_seconds: float | None
    mailbox: PartState | None  # None: no `gateway run` reads a mailbox (none set, or not yet)
    routes: dict[str, PartState]  # the enabled routes
    grace: float

    @property
    def sending(self) -> PartState | None:
        """Failing only when every enabled route fails (one working route still sends)."""
        if not self.routes:
            return None
        if any(route.ok for route in self.routes.values()):
            return PartState(True, None, None)
        errors = "; ".join(f"{name}: {route.error}" for name, route in self.routes.items())
        since = [route.since for route in self.routes.values() if route.since is not None]
        return PartState(False, errors, max(since) if since else None)

    def problems(self, now: dt.datetime) -> list[str]:
        """What is down, in words, for a banner or a 503."""
        found = []
        if self.mailbox is not None and self.mailbox.down(now, self.grace):
            found.append(f"the mailbox cannot be read: {self.mailbox.error}")
        sending = self.sending
        if sending is not None and sending.down(now, self.grace):
            found.append(f"no route can send: {sending.error}")
        return found


def overview(conn: Connection, settings: Settings, now: dt.datetime) -> Overview:
    alive = heartbeats.workers(conn, now)
    mailbox = None
    if alive.mailbox_ok is not None:
        mailbox = PartState(alive.mailbox_ok, alive.mailbox_error, alive.mailbox_since)
    policy = BreakerPolicy()
    routes = {}
    stored = breakers_in(conn)
    used = {"own": settings.smtp.enabled, "relay": settings.relay.enabled}
    used |= {name: True for name in settings.channels.order if name != "email"}
    for name, enabled in used.items():
        if not enabled:
            continue
        breaker = stored.get(name)
        if breaker is None or breaker_state(breaker, policy, now) is BreakerState.CLOSED:
            routes[name] = PartState(True, None, None)
        else:
            routes[name] = PartState(False, breaker.last_error, breaker.failing_since)
    return Overview(alive.alive, alive.mailbox_lag_seconds, mailbox, routes,
                    settings.imap.ready_grace_seconds)  # fmt: skip
