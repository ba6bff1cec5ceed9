"""Which outbound text an inbound message answers, by which rule, and how sure that is.

Replies from carrier gateways rarely carry In-Reply-To, so the rules are tried from the most
certain to the least: a header naming one of our Message-IDs, then the plus-address token we
sent from, then the sender's phone number and our latest text to it within a window. Bounces
name their original by its returned headers, else by the address that failed.

The shell looks the candidates up (by id, by phone, by address); this module only decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.domain.inbound import InboundMail, Kind


class Rule(StrEnum):
    IN_REPLY_TO = "in_reply_to"
    PLUS_TOKEN = "plus_token"
    PHONE = "phone"
    ORIGINAL = "original"  # a bounce's returned original headers
    RECIPIENT = "recipient"  # a bounce's failed recipient address
    MANUAL = "manual"
    NONE = "none"


# How sure each rule is. A header naming our id is certain; a plus token is almost (it can be
# forwarded); a phone match assumes the person answers our latest text, which usually holds
# within hours and less so after.
CONFIDENCE = {
    Rule.IN_REPLY_TO: 1.0,
    Rule.PLUS_TOKEN: 0.95,
    Rule.ORIGINAL: 1.0,
    Rule.RECIPIENT: 0.7,
    Rule.MANUAL: 1.0,
    Rule.NONE: 0.0,
}
PHONE_RECENT = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=5)  # a reply "before" our text: their clock, not a mismatch
PHONE_CONFIDENCE_RECENT = 0.8
PHONE_CONFIDENCE_OLDER = 0.6


@dataclass(frozen=True, slots=True)
class Sent:
    """An outbound text as the matcher needs it."""

    id: int
    message_id: str
    sent_at: dt.datetime | None
    created_at: dt.datetime

    @property
    def at(self) -> dt.datetime:
        return self.sent_at or self.created_at


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    confidence: float
    sent: Sent | None = None


NO_MATCH = Match(Rule.NONE, 0.0)


def token_message_id(token: str, domain: str) -> str:
    """The Message-ID our text with plus-address `token` was sent under (they share a token)."""
    return f"<{token}@{domain}>"


def ids_to_look_up(mail: InboundMail, domain: str) -> tuple[str, ...]:
    """Every Message-ID the matcher may ask about: referenced, returned, and from plus tokens."""
    ids = list(mail.referenced_ids)
    if mail.original_message_id:
        ids.append(mail.original_message_id)
    ids += [token_message_id(token, domain) for token in mail.plus_tokens]
    return tuple(dict.fromkeys(ids))


def match(
    mail: InboundMail,
    domain: str,
    by_message_id: Mapping[str, Sent],
    latest: Sent | None,
    now: dt.datetime,
    window: dt.timedelta,
) -> Match:
    """The outbound text `mail` answers or reports on.

    `latest` is our most recent text to the sender's phone (a reply) or to the failed address
    (a bounce), as the shell found it; it counts only within `window` of `now`."""
    if mail.kind in (Kind.BOUNCE, Kind.DELIVERY_REPORT, Kind.FEEDBACK):
        original = by_message_id.get(mail.original_message_id or "")
        if original is not None:
            return Match(Rule.ORIGINAL, CONFIDENCE[Rule.ORIGINAL], original)
        for ref in mail.referenced_ids:
            if ref in by_message_id:
                return Match(Rule.ORIGINAL, CONFIDENCE[Rule.ORIGINAL], by_message_id[ref])
        # A bounce to our plus-addressed envelope sender names the text by its token.
        by_token = _by_token(mail, domain, by_message_id)
        if by_token is not None:
            return by_token
        if latest is not None and now - latest.at <= window:
            return Match(Rule.RECIPIENT, CONFIDENCE[Rule.RECIPIENT], latest)
        return NO_MATCH
    if mail.kind is not Kind.REPLY:
        return NO_MATCH
    for ref in mail.referenced_ids:
        if ref in by_message_id:
            return Match(Rule.IN_REPLY_TO, CONFIDENCE[Rule.IN_REPLY_TO], by_message_id[ref])
    by_token = _by_token(mail, domain, by_message_id)
    if by_token is not None:
        return by_token
    if mail.phone is not None and latest is not None:
        age = now - latest.at
        if -CLOCK_SKEW <= age <= window:
            sure = PHONE_CONFIDENCE_RECENT if age <= PHONE_RECENT else PHONE_CONFIDENCE_OLDER
            return Match(Rule.PHONE, sure, latest)
    return NO_MATCH


def _by_token(mail: InboundMail, domain: str, by_message_id: Mapping[str, Sent]) -> Match | None:
    for token in mail.plus_tokens:
        found = by_message_id.get(token_message_id(token, domain))
        if found is not None:
            return Match(Rule.PLUS_TOKEN, CONFIDENCE[Rule.PLUS_TOKEN], found)
    return None
