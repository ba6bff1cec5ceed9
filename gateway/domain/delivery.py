"""What happens to a message after a delivery attempt: its next state and when to try again."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"
    BOUNCED = "bounced"
    REPLIED = "replied"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


# States a sender may claim a row in (besides an expired lease on `sending`).
DUE_STATES = (State.QUEUED, State.DEFERRED)


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"  # 2xx to the end of DATA
    TEMPORARY = "temporary"  # 4xx: the server asks us to come back
    PERMANENT = "permanent"  # 5xx to this message: it will not be accepted
    NETWORK = "network"  # no connection, or lost before the message was handed over
    AMBIGUOUS = "ambiguous"  # lost after the message was handed over, before the reply
    AUTH = "auth"  # the server refused our sign-in: the route's problem, not the message's
    TLS = "tls"  # TLS could not be set up or the certificate was refused


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    kind: OutcomeKind
    reply: str  # the server's reply line, or what went wrong in words
    code: int | None = None
    phase: str = ""  # connect, mail, rcpt, data


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 30.0
    cap_seconds: float = 1800.0
    # A delivery notice is stale within hours: past this, counted from when the message first
    # became due, it fails instead of going out late.
    lifetime: dt.timedelta = dt.timedelta(hours=6)
    # An ambiguous outcome may already have been delivered; wait long enough that a resend is
    # unlikely to race the first copy.
    ambiguous_hold_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class Decision:
    state: State
    due_at: dt.datetime | None
    reason: str | None


_HINT = re.compile(
    r"(?:try\s+again|retry)(?:\s+later)?\s+(?:in|after)\s+(\d{1,6})\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE,
)
_RETRY_AFTER = re.compile(r"retry-after:\s*(\d{1,6})\b", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_HINT = dt.timedelta(hours=6)


def retry_hint(reply: str) -> dt.timedelta | None:
    """How long a server asks us to wait, when its reply says ("try again in 10 minutes",
    "retry after 300 seconds", "Retry-After: 120"); capped, since the text is the server's."""
    match = _HINT.search(reply)
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]
    else:
        header = _RETRY_AFTER.search(reply)
        if not header:
            return None
        seconds = int(header.group(1))
    if seconds <= 0:
        return None
    return min(dt.timedelta(seconds=seconds), MAX_HINT)


def backoff_seconds(attempts: int, policy: RetryPolicy, jitter: float) -> float:
    """Exponential delay after `attempts` failed tries, capped, with half of it jittered.

    `jitter` in [0, 1) comes from the caller, so this stays a function of its arguments.
    """
    if attempts < 1:
        raise ValueError("attempts counts failed tries, from 1")
    exponent = min(attempts - 1, 32)
    delay = min(policy.cap_seconds, policy.base_seconds * 2.0**exponent)
    return delay * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


AUTH_HINT = (
    "the server refused the sign-in; accounts with two-step sign-in need an app password, "
    "and Microsoft 365 or Google Workspace may require OAuth2 or have SMTP AUTH disabled "
    "for the mailbox"
)


# How the SMTP transport words a sign-in it could not even try: the fix is on our side.
NO_TOKEN = "no OAuth2 access token"
NO_PASSWORD = "is set but no password is configured"


def no_token_hint(section: str | None = None) -> str:
    """What to do when no OAuth2 access token can be had for a server (SMTP or IMAP), naming
    the settings' section where the caller knows it."""
    where = f"{section}." if section else "this section's "
    return (
        "run `gateway auth microsoft` (or `google`) again, or check "
        f"{where}oauth2_token_file or {where}oauth2_token_command"
    )


def auth_hint(reply: str) -> str:
    """What to do about an SMTP server's refusal of the sign-in, read from its words: Microsoft
    365's refusals of password sign-in name OAuth2, a plain 535 names app passwords. A sign-in
    that could not be tried (no token, no password) names what to set or run."""
    lowered = reply.lower()
    if NO_TOKEN.lower() in lowered:
        return f"the OAuth2 sign-in gave no access token: {no_token_hint()}"
    if NO_PASSWORD in lowered:
        return "give this section's password_env or password_file"
    if "5.7.30" in reply or "basic authentication is not supported" in lowered:
        return (
            'Microsoft 365 no longer takes a password for SMTP: set auth = "oauth2" in this '
            "section and run `gateway auth microsoft`"
        )
    if "5.7.139" in reply or "smtpclientauthentication" in lowered:
        return (
            "SMTP AUTH is disabled for this mailbox: an administrator turns on Authenticated "
            'SMTP for it in Microsoft 365, or sign in with OAuth2 (auth = "oauth2", then '
            "`gateway auth microsoft`)"
        )
    if "5.7.8" in reply or reply.startswith("535"):
        return (
            "the user name or password was refused: with two-step sign-in on, the account "
            "needs an app password; Google Workspace and Microsoft 365 may require OAuth2 "
            '(auth = "oauth2", then `gateway auth google` or `gateway auth microsoft`)'
        )
    return AUTH_HINT


# Microsoft 365's (and Outlook.com's) SMTP servers, by the name they are reached by or the name
# they give in their greeting ("220 XX0PR01CA0001.outlook.office365.com Microsoft ESMTP MAIL
# Service ready"), which shows them behind a company's own name for the host too.
_MICROSOFT_SMTP = re.compile(
    r"(?:^|[.\s])(?:office365\.com|outlook\.com)\.?(?:$|\s)|microsoft esmtp mail service", re.I
)


def password_sign_in_ends_hint(section: str | None = None) -> str:
    """What to do before Microsoft 365 stops taking passwords for SMTP, naming the settings'
    section where the caller knows it."""
    where = f"in [{section}]" if section else "for this server"
    return (
        "Microsoft 365 turns password sign-in for SMTP off by default at the end of December "
        f'2026: set auth = "oauth2" {where} and run `gateway auth microsoft` before then'
    )


def password_sign_in_ends(host: str, greeting: str) -> bool:
    """Whether a password sign-in to this SMTP server will stop working: the server is
    Microsoft 365's, by its host name or by the name and words of its greeting."""
    return any(_MICROSOFT_SMTP.search(said) for said in (host, greeting))


def decide(
    outcome: AttemptOutcome,
    attempts: int,
    first_due_at: dt.datetime,
    now: dt.datetime,
    policy: RetryPolicy,
    jitter: float,
) -> Decision:
    """The message's next state after its `attempts`-th attempt ended with `outcome`."""
    if outcome.kind is OutcomeKind.ACCEPTED:
        return Decision(State.SENT, None, None)
    if outcome.kind is OutcomeKind.PERMANENT:
        return Decision(State.FAILED, None, f"refused by the server: {outcome.reply}")

    delay = backoff_seconds(attempts, policy, jitter)
    hint = retry_hint(outcome.reply) if outcome.kind is OutcomeKind.TEMPORARY else None
    if hint is not None:
        delay = max(delay, hint.total_seconds())
    if outcome.kind is OutcomeKind.AMBIGUOUS:
        delay = max(delay, policy.ambiguous_hold_seconds)
        reason = (
            "ambiguous: the connection was lost after the message was handed over and before "
            f"the server answered ({outcome.reply}); it will be tried again later on the same route"
        )
    elif outcome.kind is OutcomeKind.AUTH:
        # No reply code: the sign-in was never put to the server (no token, no password, no AUTH).
        refused = "sign-in refused" if outcome.code is not None else "cannot sign in"
        reason = f"{refused}: {outcome.reply} ({auth_hint(outcome.reply)})"
    elif outcome.kind is OutcomeKind.TLS:
        reason = f"TLS failed: {outcome.reply}"
    elif outcome.kind is OutcomeKind.TEMPORARY:
        reason = f"temporarily refused: {outcome.reply}"
    else:
        reason = f"connection problem: {outcome.reply}"

    due_at = now + dt.timedelta(seconds=delay)
    if due_at > first_due_at + policy.lifetime:
        hours = policy.lifetime.total_seconds() / 3600
        return Decision(
            State.FAILED, None, f"expired: not delivered within {hours:g} h; last: {reason}"
        )
    return Decision(State.DEFERRED, due_at, reason)


def postpone(
    reason: str,
    first_due_at: dt.datetime,
    now: dt.datetime,
    until: dt.datetime,
    policy: RetryPolicy,
) -> Decision:
    """No route can take the message now: it waits (no attempt is counted) until `until`, or
    fails if that is past its lifetime."""
    if until > first_due_at + policy.lifetime:
        hours = policy.lifetime.total_seconds() / 3600
        return Decision(State.FAILED, None, f"expired: not delivered within {hours:g} h; {reason}")
    return Decision(State.DEFERRED, until, reason)
