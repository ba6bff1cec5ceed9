"""Where the company's phone cannot reach `gateway serve` (no public address), its news is read
from it instead ([smsgate] poll_seconds): the texts it received (`GET /inbox`) and the states of
the texts it is carrying (`GET /messages/{id}`), applied exactly as its webhooks would be."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging

from sqlalchemy import Engine

from gateway.domain.health import Health
from gateway.domain.smsgate import Event, EventKind, parse_time
from gateway.services.channel_events import EventRefused, apply_smsgate
from gateway.services.runtime import Runtime
from gateway.store import channel_events
from gateway.store.db import failure_words, utcnow
from gateway.transport.smsgate import SmsGateClient, SmsGateError

log = logging.getLogger("gateway.channels")
MARGIN = dt.timedelta(minutes=10)  # the phone's clock and ours may differ


class PhonePoller:
    def __init__(self, runtime: Runtime, engine: Engine, client: SmsGateClient) -> None:
        self.runtime = runtime
        self.engine = engine
        self.client = client
        self.reading = Health()  # how reading the phone fares: a failure is said once

    async def once(self) -> int:
        """Read the phone's news once; how many events were new."""
        now = utcnow()
        window = dt.timedelta(hours=self.runtime.settings.inbound.reply_window_hours)
        last = await asyncio.to_thread(self._last_received)
        since = (last or now - window) - MARGIN
        new = 0
        try:
            # The texts' states first: a reply read after them finds each text as it ended.
            lifetime = dt.timedelta(hours=self.runtime.settings.policy.lifetime_hours)
            for _, ref in await asyncio.to_thread(self._in_flight, now - lifetime):
                new += await self._apply(_state_event(ref, await self.client.state(ref)))
            received = await self.client.inbox(since.isoformat().replace("+00:00", "Z"))
            for item in received:
                new += await self._apply(_received(item))
        except SmsGateError as exc:
            if self.reading.failing(str(exc), utcnow()):
                log.warning("reading the phone (SMS Gate) failed: %s", exc)
            return new
        if self.reading.working(utcnow()):
            log.warning("reading the phone (SMS Gate) works again")
        return new

    async def run(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except Exception as exc:  # the database away, or a bug: the next look tries again
                error = failure_words(exc)
                if self.reading.failing(error, utcnow()):  # said once, not at every look
                    log.warning("reading the phone failed (%s)", error)
                log.debug("reading the phone failed", exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def _last_received(self) -> dt.datetime | None:
        with self.engine.connect() as conn:
            return channel_events.last_event_at(conn, "smsgate", EventKind.RECEIVED.value)

    def _in_flight(self, since: dt.datetime) -> list[tuple[int, str]]:
        with self.engine.connect() as conn:
            return channel_events.in_flight(conn, "smsgate", since)

    async def _apply(self, event: Event | None) -> int:
        if event is None:
            return 0
        raw = json.dumps({"polled": event.kind.value, "id": event.message_id}).encode()
        try:
            done = await asyncio.to_thread(
                apply_smsgate, self.runtime, self.engine, event, raw, utcnow()
            )
        except EventRefused as exc:
            log.warning("the phone's %s %s was not stored: %s", event.kind, event.id, exc)
            return 0
        return 1 if done == "stored" else 0


def _received(item: dict[str, object]) -> Event | None:
    """An entry of the phone's inbox as the event its webhook would have sent."""
    ident, sender, text = item.get("id"), item.get("sender"), item.get("contentPreview")
    if not isinstance(ident, str) or not isinstance(sender, str) or not isinstance(text, str):
        return None
    if item.get("type", "SMS") != "SMS":
        return None
    return Event(f"inbox:{ident}"[:100], EventKind.RECEIVED, ident, sender, text, "",
                 parse_time(item.get("createdAt")))  # fmt: skip


def _state_event(ref: str, state: dict[str, object]) -> Event | None:
    """A text's state on the phone as the event its webhook would have sent, when final."""
    recipients = state.get("recipients")
    first = recipients[0] if isinstance(recipients, list) and recipients else {}
    phone = str(first.get("phoneNumber", "")) if isinstance(first, dict) else ""
    if state.get("state") == "Delivered":
        return Event(f"state:{ref}:delivered", EventKind.DELIVERED, ref, phone, "", "", None, True)
    if state.get("state") == "Failed":
        reason = str(first.get("error") or "failed") if isinstance(first, dict) else "failed"
        return Event(f"state:{ref}:failed", EventKind.FAILED, ref, phone, "", reason, None, True)
    return None
