"""One failed recipient, assembled from what a reader found: its codes, the server's words, the
phase they came in, and the reason they give; and the report a reader returns."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.domain.bounces.codes import FAILURE_STATUS, PAIRED_STATUS, REPLY_CODE
from gateway.domain.bounces.phase import looked_up, session_phase
from gateway.domain.bounces.reasons import (
    ADDRESS_REASONS,
    reason_by_words,
    reason_of,
    refused_recipient_plainly,
    reporters_verdict,
)

# Mailing-list services that refuse a post (no such group, no permission to post) in the
# sender's language and with no code: a refusal by the list, not a bad address.
_LIST_DOMAINS = ("googlegroups.com",)


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    status: str  # enhanced status code, e.g. 5.1.1; "" when the report states none
    smtp_code: str  # reply code, e.g. 550; "" when none
    reason: str  # the corpus's vocabulary: userunknown, mailboxfull, blocked, ...
    permanent: bool  # the address itself is bad
    diagnostic: str  # the remote server's words
    # False for a delay warning (RFC 3464 "Action: delayed"): the reporting system is still
    # trying, so the text may yet arrive; nothing is to be done about it or its address yet.
    final: bool = True

    def as_json(self) -> dict[str, str | bool]:
        """The fields `gateway parse`, the stored report and webhooks show."""
        return {
            "address": self.address, "status": self.status, "smtp_code": self.smtp_code,
            "permanent": self.permanent, "reason": self.reason, "diagnostic": self.diagnostic,
            "final": self.final,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # bounce | delivery_report | feedback | auto_reply
    recipients: tuple[Recipient, ...] = ()
    feedback_type: str | None = None
    original_message_id: str | None = None
    reader: str = ""  # which reader found the recipients: delivery-status, a letter's kind


_PHASE_MATTERS = ADDRESS_REASONS | {"filtered"}
# Reasons that say only that delivery was refused, not why.
_GENERIC = frozenset({"filtered", "rejected", "undefined", "onhold"})


# Reasons a policy code (x.7.x) gives that some servers pair with every refused recipient.
_FILED_AS_POLICY = frozenset({"rejected", "securityerror", "blocked"})


def _servers_code_wins(servers: tuple[str, ...], status: str) -> bool:
    """Whether the code in the server's own words outranks the report's Status field: where the
    report states none, or only a generic x.0.0 the server says more than; and a specific code
    of the server's (neither part 0) over the reporter's summary of it, when both are one class."""
    cls, subject, detail = servers
    if not status:
        return True
    if status.endswith(".0.0"):
        return (subject, detail) != ("0", "0")
    return cls == status[0] and "0" not in (subject, detail)


def _only_for_now(reason: str, status: str, code: str) -> bool:
    """Whether a refusal that would make the address bad comes with the reporter's word that
    it is for now: a domain "not accepting mail" under a 4xx code (try again later) may take
    mail again. An unknown user or domain under a 4xx code is still a bad address: read as
    temporary too, right readings of the corpus's hold-out half turned wrong."""
    return reason == "notaccept" and (status or code).startswith("4")


# An X.400 mail system (Exchange's connector) writes an Internet address as a domain-defined
# attribute of its own address, "dda:SMTP=user@example.com" or "RFC-822=user@example.com": "=" is
# allowed in a local part, so the tag would otherwise be read as part of it.
_X400_TAG = re.compile(r"^(?:smtp|rfc-?822)=", re.IGNORECASE)


def recipient(
    address: str,
    status: str,
    code: str,
    diagnostic: str,
    context: str = "",
    about: str = "",
    verdict: str | None = None,
    reporter: str = "",
) -> Recipient:
    """One failed recipient. `context` is the report's whole text and `about` what it says of
    this recipient (when `diagnostic` is the server's words alone); both are read only for how
    the refusal came, as is `reporter`, the domain the report came from. `verdict` is a reason
    the reporting system states in a field of its own; it, or one the reporter states in words
    kept for it (`reporters_verdict`), outranks any reading of the server's words."""
    address = _X400_TAG.sub("", address.strip().strip("<>"))
    found = PAIRED_STATUS.search(diagnostic) or FAILURE_STATUS.search(diagnostic)
    if found and _servers_code_wins(found.groups(), status):
        status = ".".join(found.groups())
    if not code:
        found_code = REPLY_CODE.search(diagnostic)
        code = found_code.group(1) if found_code else ""
    reason = reason_of(status, code, diagnostic)
    lowered = " ".join(diagnostic.lower().split())
    # A verdict the reporter states in words kept for it: its letter's about this recipient,
    # or a token of its own beside the words it passes on.
    verdict = verdict or reporters_verdict(" ".join(f"{diagnostic} {about}".lower().split()))
    unknown_user = reason_by_words(lowered) == "userunknown" or refused_recipient_plainly(lowered)
    # How the refusal came matters only to refusals that could be about the address; reading
    # a transcript for it is left to them.
    phase = None
    if reason in _PHASE_MATTERS or reason in _GENERIC or unknown_user:
        phase = session_phase(address, diagnostic, about, context)
    if verdict:
        reason = verdict
    elif phase == "CONNECT" and reason in _GENERIC:
        # Turned away on connecting, in words that say no more: the server refused our host.
        reason = "blocked"
    elif phase == "MAIL":
        # Refused before any recipient was named: the words are about our sender address.
        reason = "rejected"
    elif phase == "RCPT" and unknown_user and reason in _FILED_AS_POLICY:
        # Refused as soon as it was named, in words of an unknown user: a policy code beside
        # them (5.7.1) is how that server files every refusal of a recipient.
        reason = "userunknown"
    elif reason == "userunknown" and not looked_up(
        status, phase, diagnostic, about, address, reporter
    ):
        # Japanese carriers, content filters after DATA and reporters summing up any failure
        # word their refusals as an unknown user too.
        reason = "filtered"
    if reason in ("undefined", "onhold") and address.lower().endswith(_LIST_DOMAINS):
        reason = "rejected"
    return Recipient(
        address=address.lower(),
        status=status,
        smtp_code=code,
        reason=reason,
        permanent=reason in ADDRESS_REASONS and not _only_for_now(reason, status, code),
        diagnostic=" ".join(diagnostic.split())[:1000],
    )
