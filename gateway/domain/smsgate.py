"""SMS Gate, the Android app that sends texts from the company's own phone: what we ask of it,
what its answers mean, and the webhooks it calls (their signature and their events).

Facts from its published API (OpenAPI 3.0.1, `/messages`, `/webhooks`, the payload schemas)
and its documentation: a text we post carries our own id, so posting it again after a lost
answer is answered 409 instead of sending twice; 202 means the phone queued it; 503 that its
queue is full. Webhook calls are signed: `X-Signature` is the lowercase hex HMAC-SHA256, keyed
with the app's signing key, of the raw body followed by the `X-Timestamp` text (Unix seconds);
the app enforces no age, and its documentation advises refusing calls more than 5 minutes off.
A call not answered 2xx is made again, so an event id may arrive more than once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.domain.delivery import AttemptOutcome, OutcomeKind

MAX_SKEW_SECONDS = 300  # a signed call whose timestamp is further off than this is refused
MAX_ID = 36  # the longest message id the API takes
MIN_TTL_SECONDS = 5  # the API's minimum time to live
# The events the gateway registers on the phone and acts on.
HOOK_EVENTS = ("sms:received", "sms:sent", "sms:delivered", "sms:failed")


def message_request(
    message_id: str,
    phone: str,
    text: str,
    ttl_seconds: int | None,
    device_id: str | None = None,
    sim: int | None = None,
) -> dict[str, Any]:
    """The body of `POST /messages` for one text to one number."""
    body: dict[str, Any] = {
        "id": message_id,
        "phoneNumbers": [phone],
        "textMessage": {"text": text},
        "withDeliveryReport": True,
    }
    if ttl_seconds is not None:
        body["ttl"] = max(MIN_TTL_SECONDS, ttl_seconds)
    if device_id:
        body["deviceId"] = device_id
    if sim is not None:
        body["simNumber"] = sim
    return body


def send_outcome(status: int, body: str) -> AttemptOutcome:
    """What the answer to `POST /messages` means for the text."""
    said = _error_text(body)
    reply = f"{status} {said}".strip()
    if status in (200, 201, 202):
        return AttemptOutcome(OutcomeKind.ACCEPTED, f"{status} queued on the phone", status)
    if status == 409:  # our id is already there: an earlier post whose answer was lost
        return AttemptOutcome(OutcomeKind.ACCEPTED, "409 already queued on the phone", status)
    if status in (401, 403):
        return AttemptOutcome(
            OutcomeKind.AUTH,
            f"{reply} (check [smsgate] username and password: the app shows them)",
            status,
            "connect",
        )
    if status == 503:  # its queue is full or the device is offline: the channel, not the text
        return AttemptOutcome(OutcomeKind.TEMPORARY, reply or "503 queue full", status, "connect")
    if status == 400:
        return AttemptOutcome(OutcomeKind.PERMANENT, reply, status, "data")
    if status == 429 or status >= 500:
        return AttemptOutcome(OutcomeKind.TEMPORARY, reply, status, "connect")
    return AttemptOutcome(OutcomeKind.PERMANENT, reply, status, "data")


def _error_text(body: str) -> str:
    """The `message` of an ErrorResponse, or the start of whatever the body is."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body.strip()[:200]
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])[:300]
    return ""


def signature(key: str, body: bytes, timestamp: str) -> str:
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def signature_problem(
    key: str, body: bytes, timestamp: str | None, given: str | None, now: float
) -> str | None:
    """Why a webhook call must be refused (in words), or None when it is the phone's."""
    if not timestamp or not given:
        return "X-Timestamp and X-Signature are required"
    if not re.fullmatch(r"\d{1,12}", timestamp):
        return "X-Timestamp is not Unix seconds"
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        return "X-Timestamp is more than 5 minutes off"
    if not hmac.compare_digest(signature(key, body, timestamp), given.strip().lower()):
        return "the signature does not match ([smsgate] signing key)"
    return None


class EventKind(StrEnum):
    RECEIVED = "sms:received"
    SENT = "sms:sent"
    DELIVERED = "sms:delivered"
    FAILED = "sms:failed"
    OTHER = "other"  # an event we do not act on (system:ping, mms:received, ...)


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # the event's own id: the same id twice is one event
    kind: EventKind
    message_id: str  # the text's id (ours for a text we sent; the phone's for one received)
    phone: str  # the other party: the person who wrote, or the person we texted
    text: str  # a received text
    reason: str  # why a text failed
    at: dt.datetime | None  # when, by the phone's clock
    whole: bool = False  # a report on the whole text (its state read back), not on one part


class EventError(ValueError):
    """The body is not an SMS Gate event; the message says what is wrong."""


def parse_event(body: bytes) -> Event:
    """One webhook body, checked against the payload shapes the API publishes."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise EventError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise EventError("the body is not a JSON object")
    event_id, name, payload = data.get("id"), data.get("event"), data.get("payload")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 100:
        raise EventError("id is missing")
    if not isinstance(name, str) or not isinstance(payload, dict):
        raise EventError("event and payload are required")
    try:
        kind = EventKind(name)
    except ValueError:
        kind = EventKind.OTHER
    if kind is EventKind.OTHER:
        return Event(event_id, kind, "", "", "", "", None)
    message_id = _text(payload, "messageId", 100)
    phone = _text(payload, "phoneNumber", 40)
    if not message_id or not phone:
        raise EventError(f"{name} needs payload.messageId and payload.phoneNumber")
    stamp = {
        EventKind.RECEIVED: "receivedAt",
        EventKind.SENT: "sentAt",
        EventKind.DELIVERED: "deliveredAt",
        EventKind.FAILED: "failedAt",
    }[kind]
    text = _text(payload, "message", 5000) if kind is EventKind.RECEIVED else ""
    reason = _text(payload, "reason", 500) if kind is EventKind.FAILED else ""
    return Event(event_id, kind, message_id, phone, text, reason, parse_time(payload.get(stamp)))


def _text(payload: dict[str, Any], key: str, limit: int) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventError(f"payload.{key} is not text")
    return value.replace("\x00", "")[:limit]


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def our_id(message_id: str) -> str:
    """The id a text carries on the phone: its Message-ID's token (unique, and at most 36)."""
    token = message_id.strip("<>").partition("@")[0]
    return token[:MAX_ID]
