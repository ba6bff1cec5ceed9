"""Twilio Programmable Messaging: what we ask of it, what its answers and status callbacks mean,
and how its webhooks are signed.

From its published API (the Messages resource, 2010-04-01) and documentation: a text is a
form-encoded create with `To`, `Body`, `From` or `MessagingServiceSid`, `StatusCallback` and
`ValidityPeriod` (seconds it may wait in Twilio's queue, at most 36,000); 201 answers with the
message's `sid` and `status`. Create has no idempotency key: an answer lost after Twilio took
the text leaves it unknown whether it went. Status callbacks and incoming texts are form POSTs
signed in `X-Twilio-Signature`: the base64 HMAC-SHA1, keyed with the Auth Token, of the full
URL as configured (query included) followed by each POST parameter, sorted by name, as name then
value. Twilio answers STOP, START and HELP itself; a text to a number that opted out is refused
with HTTP 400, error 21610.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.domain.delivery import AttemptOutcome, OutcomeKind, State

MAX_VALIDITY_SECONDS = 36_000
OPTED_OUT = 21610

# What Twilio's error codes mean, in a dispatcher's words (Twilio's error dictionary).
ERROR_MEANINGS = {
    21211: "the number is not a valid phone number",
    21408: "the account may not text this country (Twilio's Geo Permissions)",
    21610: "the person opted out of texts from this number (they replied STOP)",
    21612: "Twilio cannot reach this number from the sending number",
    21614: "the number is not a mobile number",
    30003: "the phone is unreachable (off or out of coverage)",
    30004: "the message was blocked (by the person or their carrier)",
    30005: "the number is unknown to its carrier (it may no longer exist)",
    30006: "a landline or a carrier that cannot take texts",
    30007: "the carrier filtered the message as spam",
    30008: "the carrier gave an unknown error",
    30032: "the toll-free sending number is not verified",
    30034: "the sending number is not registered for US A2P 10DLC",
}


def meaning(code: int | None) -> str:
    if code is None:
        return "no error code given"
    return f"error {code}: {ERROR_MEANINGS.get(code, 'see Twilio error ' + str(code))}"


def create_params(
    to: str,
    body: str,
    status_callback: str,
    from_number: str | None,
    messaging_service_sid: str | None,
    ttl_seconds: int | None,
) -> dict[str, str]:
    """The form of a Messages create for one text."""
    params = {"To": to, "Body": body, "StatusCallback": status_callback}
    if messaging_service_sid:
        params["MessagingServiceSid"] = messaging_service_sid
    elif from_number:
        params["From"] = from_number
    if ttl_seconds is not None:
        params["ValidityPeriod"] = str(max(1, min(MAX_VALIDITY_SECONDS, ttl_seconds)))
    return params


def create_outcome(status: int, body: str) -> AttemptOutcome:
    """What the answer to a Messages create means for the text."""
    try:
        parsed = json.loads(body) if body else {}
    except (ValueError, RecursionError):
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    code = parsed.get("code")
    code = code if isinstance(code, int) else None
    said = str(parsed.get("message") or body.strip()[:200])
    if status in (200, 201):
        sid = str(parsed.get("sid") or "")
        return AttemptOutcome(
            OutcomeKind.ACCEPTED, f"{status} {parsed.get('status') or 'queued'} {sid}", status
        )
    reply = f"{status} {meaning(code) if code else said}"
    if code is not None and code != OPTED_OUT and code not in ERROR_MEANINGS:
        reply += f": {said}"
    if status in (401, 403):
        return AttemptOutcome(
            OutcomeKind.AUTH,
            f"{reply} (check [twilio] account_sid and the auth token)",
            code or status,
            "connect",
        )
    if status == 429 or status >= 500:
        return AttemptOutcome(OutcomeKind.TEMPORARY, reply, code or status, "connect")
    return AttemptOutcome(OutcomeKind.PERMANENT, reply, code or status, "data")


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    state: State | None  # None: a step on the way (queued, sent, ...), nothing to change
    reason: str | None


def status_update(status: str, error_code: str | None) -> StatusUpdate:
    """What a status callback's MessageStatus (and ErrorCode) mean for the text."""
    code = int(error_code) if error_code and error_code.isdigit() else None
    if status == "delivered":
        return StatusUpdate(State.DELIVERED, None)
    if status in ("undelivered", "failed", "canceled"):
        return StatusUpdate(State.FAILED, f"failed: Twilio said {status}, {meaning(code)}")
    return StatusUpdate(None, None)


def signature(token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    # Twilio's own validators sort the parameters by name, then value, and take a pair sent
    # twice once (their published vector with a repeated parameter says so).
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_problem(
    token: str, url: str, params: Iterable[tuple[str, str]], given: str | None
) -> str | None:
    """Why a webhook call must be refused (in words), or None when Twilio signed it. Twilio
    may sign the address with or without its default port (:443, :80): both are taken."""
    if not given:
        return "X-Twilio-Signature is required"
    pairs = list(params)
    for variant in _port_variants(url):
        if hmac.compare_digest(signature(token, variant, pairs), given.strip()):
            return None
    return "the signature does not match ([twilio] auth token, [web] public_url)"


def _port_variants(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [url]
    host = parts.netloc.rsplit("@", 1)[-1]
    bare = host.rsplit(":", 1)[0] if parts.port is not None else host
    if parts.port not in (None, default):
        return [url]
    with_port = parts._replace(netloc=f"{bare}:{default}").geturl()
    without = parts._replace(netloc=bare).geturl()
    return [url, without if parts.port is not None else with_port]
