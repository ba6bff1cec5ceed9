"""What an SMS channel tells us, applied: a text received becomes a reply (threaded, STOP, START
and HELP as mail replies are), a text delivered or failed moves on. Each event is kept once by
its id, in the same transaction as its effects: a call made again changes nothing."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import Engine

from gateway.domain.delivery import State
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.smsgate import Event, EventKind
from gateway.domain.twilio import status_update
from gateway.services.inbound import Ingest, ReceivedText
from gateway.services.runtime import Runtime
from gateway.store import channel_events, live

log = logging.getLogger("gateway.channels")


class EventRefused(ValueError):
    """The event names something that cannot be: nothing was stored."""


def apply_smsgate(
    runtime: Runtime, engine: Engine, event: Event, raw: bytes, now: dt.datetime
) -> str:
    """Apply one SMS Gate event; what happened, in a word ("stored", "duplicate", "ignored")."""
    if event.kind is EventKind.OTHER:
        return "ignored"
    phone = None
    if event.kind is EventKind.RECEIVED:
        try:
            phone = parse_phone(event.phone, runtime.settings.carriers.default_region)
        except PhoneError as exc:
            raise EventRefused(f"payload.phoneNumber: {exc.reason}") from None
    with engine.begin() as conn:
        text = None
        if event.kind is not EventKind.RECEIVED:
            text = channel_events.text_by_ref(conn, event.message_id)
        detail = event.reason or None
        message = text.id if text is not None else None
        if not channel_events.record_event(
            conn, "smsgate", event.id, event.kind.value, message, detail, now
        ):
            return "duplicate"
        if event.kind is EventKind.RECEIVED:
            assert phone is not None
            # Keyed by the event: the app derives a received text's messageId from its words,
            # so two texts saying "OK" share one (its documentation says not to rely on it).
            received = ReceivedText(f"smsgate:{event.id}", phone, event.text, event.at, raw)
            Ingest(runtime, engine).store_texts(conn, "smsgate", [received], now)
            return "stored"
        if text is None:
            log.info("SMS Gate reported %s on %s, which is not ours", event.kind, event.message_id)
            return "stored"
        if event.kind is EventKind.DELIVERED:
            # The phone reports each part of a long text: delivered once every part is.
            parts = channel_events.events_of(conn, text.id, EventKind.DELIVERED.value)
            if event.whole or parts >= max(1, text.segments):
                channel_events.mark_delivered(conn, text.id, now)
        elif event.kind is EventKind.FAILED:
            reason = f"failed: the phone reported: {event.reason or 'no reason given'}"
            channel_events.mark_failed(conn, text.id, reason, now)
        live.notify(conn)
    return "stored"


def apply_twilio_status(engine: Engine, ref: str, params: dict[str, str], now: dt.datetime) -> str:
    """Apply a Twilio status callback for our text `ref` (from the callback's own address)."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if not sid or not status:
        raise EventRefused("MessageSid and MessageStatus are required")
    update = status_update(status, params.get("ErrorCode"))
    with engine.begin() as conn:
        text = channel_events.text_by_ref(conn, ref) if ref else None
        message = text.id if text is not None else None
        detail = update.reason or status
        event_id = f"{sid}:{status}"[:100]
        if not channel_events.record_event(conn, "twilio", event_id, status, message, detail, now):
            return "duplicate"
        if text is None or update.state is None:
            return "stored"
        if update.state is State.DELIVERED:
            channel_events.mark_delivered(conn, text.id, now)
        else:
            channel_events.mark_failed(conn, text.id, update.reason or status, now)
        live.notify(conn)
    return "stored"


def apply_twilio_incoming(
    runtime: Runtime, engine: Engine, params: dict[str, str], raw: bytes, now: dt.datetime
) -> str:
    """Store a text Twilio received for our number. Twilio answers STOP, START and HELP itself:
    the opt-out or opt-in is recorded and no answer of ours is sent."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    sender = params.get("From") or ""
    if not sid or not sender:
        raise EventRefused("MessageSid and From are required")
    try:
        phone = parse_phone(sender, runtime.settings.carriers.default_region)
    except PhoneError as exc:
        raise EventRefused(f"From: {exc.reason}") from None
    text = (params.get("Body") or "").replace("\x00", "")
    with engine.begin() as conn:
        if not channel_events.record_event(conn, "twilio", sid[:100], "received", None, None, now):
            return "duplicate"
        received = ReceivedText(f"twilio:{sid}", phone, text, None, raw)
        Ingest(runtime, engine).store_texts(conn, "twilio", [received], now, answers=False)
    return "stored"
