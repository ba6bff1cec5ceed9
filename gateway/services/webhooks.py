"""Webhooks: the order system hears of replies, bounces and state changes without polling.

The worker reads what happened since its cursors (inbound rows and delivery attempts, both by
id), writes one delivery row per event and URL in the same transaction as the
cursors, then posts the due deliveries. Nothing on the sending or reading paths waits for it.
Each body is signed: `X-Gateway-Signature: v1=HEX`, the HMAC-SHA256 of "TIMESTAMP.BODY" with the
shared secret, TIMESTAMP being `X-Gateway-Timestamp` (Unix seconds), so a receiver can refuse
stale or forged calls. A failed delivery is retried with backoff; `gateway webhooks log` shows
each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from gateway.domain.health import Health
from gateway.services.runtime import Runtime
from gateway.store.db import failure_words, utcnow
from gateway.store.inbox import final_failure
from gateway.store.tables import attempts, channel_events, cursors, inbound, messages, orders
from gateway.store.tables import webhook_deliveries as deliveries

log = logging.getLogger(__name__)


# States an order system cares to hear about; queued, sending and deferred are the gateway's own.
REPORTED_STATES = ("sent", "delivered", "failed", "bounced", "replied", "suppressed", "cancelled")
BATCH = 200


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(3600, 15 * 2 ** max(0, attempts - 1)))


class Webhooks:
    def __init__(self, runtime: Runtime, engine: Engine) -> None:
        settings = runtime.settings.webhooks
        self.engine = engine
        self.urls = list(settings.urls)
        self.events = set(settings.events)
        self.secret = settings.resolve_secret() if self.urls else ""
        self.timeout = settings.timeout_seconds
        self.max_attempts = settings.max_attempts

    # --- collecting -------------------------------------------------------------------------

    def collect(self, now: dt.datetime) -> int:
        """Queue a delivery per URL for everything that happened since the last call."""
        if not self.urls:
            return 0
        with self.engine.begin() as conn:
            events = (
                self._inbound_events(conn, now)
                + self._state_events(conn, now)
                + self._channel_events(conn, now)
            )
            rows = [
                {"url": url, "event": event, "payload": json.dumps(payload, default=str),
                 "next_at": now, "created_at": now}
                for event, payload in events
                if event in self.events
                for url in self.urls
            ]  # fmt: skip
            if rows:
                conn.execute(insert(deliveries), rows)
            return len(rows)

    def _cursor(self, conn: Connection, name: str, now: dt.datetime) -> Any:
        row = conn.execute(select(cursors).where(cursors.c.name == name)).first()
        if row is not None:
            return row
        # A fresh start reports from now on, not the whole history.
        table = {"inbound": inbound, "attempts": attempts, "channel_events": channel_events}[name]
        last = conn.execute(select(table.c.id).order_by(table.c.id.desc()).limit(1)).scalar()
        conn.execute(insert(cursors).values(name=name, position_id=last or 0, updated_at=now))
        return None

    def _move(self, conn: Connection, name: str, now: dt.datetime, **values: Any) -> None:
        conn.execute(update(cursors).where(cursors.c.name == name).values(updated_at=now, **values))

    def _inbound_events(
        self, conn: Connection, now: dt.datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        cursor = self._cursor(conn, "inbound", now)
        if cursor is None:
            return []
        rows = conn.execute(
            select(
                inbound.c.id, inbound.c.kind, inbound.c.phone, inbound.c.text,
                inbound.c.matched_message_id, inbound.c.match_rule, inbound.c.details,
                inbound.c.stored_at, inbound.c.imported, orders.c.ref.label("order_ref"),
            )
            .select_from(inbound.outerjoin(orders, orders.c.id == inbound.c.order_id))
            .where(inbound.c.id > cursor.position_id)
            .order_by(inbound.c.id)
            .limit(BATCH)
        ).all()  # fmt: skip
        events = []
        for row in rows:
            # Old mail read by `gateway inbox import` is history, not news for the order system.
            # A delay warning is not news yet: the order system hears of the text's failure
            # when a final report comes.
            news = row.kind == "reply" or (row.kind == "bounce" and final_failure(row.details))
            if news and not row.imported:
                payload = {
                    "event": row.kind, "inbound_id": row.id, "phone": row.phone,
                    "text": row.text, "message_id": row.matched_message_id,
                    "order_ref": row.order_ref, "match_rule": row.match_rule,
                    "at": row.stored_at,
                }  # fmt: skip
                if row.kind == "bounce":
                    payload["recipients"] = json.loads(row.details or "{}").get("recipients", [])
                events.append((row.kind, payload))
        if rows:
            self._move(conn, "inbound", now, position_id=rows[-1].id)
        return events

    def _state_events(self, conn: Connection, now: dt.datetime) -> list[tuple[str, dict[str, Any]]]:
        """What the texts attempted since the last call came to (sent, failed, ...), read from
        the append-only attempts table by id: an index on the messages' change time would cost
        every send a fifth of its speed."""
        return self._states_since(conn, "attempts", attempts, now)

    def _channel_events(
        self, conn: Connection, now: dt.datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        """What the SMS channels reported since the last call (a text delivered or failed),
        from their append-only events table by id."""
        return self._states_since(conn, "channel_events", channel_events, now)

    def _states_since(
        self, conn: Connection, name: str, table: Any, now: dt.datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        """The states of the texts `table` names past cursor `name` (each once, as it is)."""
        cursor = self._cursor(conn, name, now)
        if cursor is None:
            return []
        rows = conn.execute(
            select(
                table.c.id.label("position"), messages.c.id, messages.c.state,
                messages.c.reason, messages.c.to_phone, messages.c.message_id,
                messages.c.updated_at, orders.c.ref.label("order_ref"),
            )
            .select_from(
                table.join(messages, messages.c.id == table.c.message_id).outerjoin(
                    orders, orders.c.id == messages.c.order_id
                )
            )
            .where(table.c.id > cursor.position_id)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()  # fmt: skip
        if rows:
            self._move(conn, name, now, position_id=rows[-1].position)
        return _states(rows)

    # --- delivering -------------------------------------------------------------------------

    async def deliver(self, now: dt.datetime) -> int:
        """Post every due delivery once; returns how many were delivered."""
        with self.engine.connect() as conn:
            due = conn.execute(
                select(deliveries)
                .where(
                    deliveries.c.delivered_at.is_(None),
                    deliveries.c.gave_up.is_(False),
                    deliveries.c.next_at <= now,
                )
                .order_by(deliveries.c.next_at, deliveries.c.id)
                .limit(BATCH)
            ).all()
        delivered = 0
        for row in due:
            status, error = await asyncio.to_thread(self._post, row.url, row.event, row.payload)
            attempts = row.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "last_status": status,
                                      "last_error": error}  # fmt: skip
            if error is None:
                values["delivered_at"] = now
                delivered += 1
            elif attempts >= self.max_attempts:
                values["gave_up"] = True
                log.warning("webhook %s to %s given up after %d attempts: %s", row.id, row.url,
                            attempts, error)  # fmt: skip
            else:
                values["next_at"] = now + backoff(attempts)
            with self.engine.begin() as conn:
                conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
        return delivered

    def _post(self, url: str, event: str, payload: str) -> tuple[int | None, str | None]:
        body = payload.encode()
        timestamp = int(dt.datetime.now(dt.UTC).timestamp())
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "gateway-webhooks/1",
                "X-Gateway-Event": event,
                "X-Gateway-Timestamp": str(timestamp),
                "X-Gateway-Signature": signature(self.secret, timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"cannot reach {url}: {reason}"

    async def run(self, stop: asyncio.Event, every: float = 1.0) -> None:
        passing = Health()  # whether a pass works: a failure is said once, not every second
        while not stop.is_set():
            try:
                now = utcnow()
                await asyncio.to_thread(self.collect, now)
                await self.deliver(now)
            except Exception as exc:  # the database being away must not stop the gateway
                error = failure_words(exc)
                if passing.failing(error, utcnow()):
                    log.warning("webhooks pass failed (%s); trying every %s s", error, every)
                log.debug("webhooks pass failed", exc_info=True)
            else:
                if passing.working(utcnow()):
                    log.warning("webhooks passes work again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def delivery_log(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                select(
                    deliveries.c.id, deliveries.c.event, deliveries.c.url, deliveries.c.attempts,
                    deliveries.c.last_status, deliveries.c.last_error, deliveries.c.delivered_at,
                    deliveries.c.gave_up, deliveries.c.next_at,
                )
                .order_by(deliveries.c.id.desc())
                .limit(limit)
            )
        ]  # fmt: skip


def _states(rows: Any) -> list[tuple[str, dict[str, Any]]]:
    """A state event for each text the rows name (once, at its latest), when worth reporting."""
    latest = {row.id: row for row in rows}
    return [
        ("state", {"event": "state", "id": row.id, "state": row.state, "reason": row.reason,
                   "to": row.to_phone, "message_id": row.message_id,
                   "order_ref": row.order_ref, "at": row.updated_at})
        for row in latest.values()
        if row.state in REPORTED_STATES
    ]  # fmt: skip
