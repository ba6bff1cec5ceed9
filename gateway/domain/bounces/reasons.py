"""Why a delivery failed, from the server's words and the status code.

The words are a table of patterns, one row per reason; see REASON_WORDS for the order in which
they are tried and why."""

from __future__ import annotations

import re

# Reasons (the corpus's vocabulary) that mean the address itself is bad.
ADDRESS_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

# Words of a diagnostic, most specific first; the first that matches names the reason.
_REASON_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "requireptr",
        ("reverse dns", "ptr record", "ptr resource record", "reverse lookup", "no ptr", "rdns"),
    ),
    ("hasmoved", ("has moved", "address has changed", "no longer valid, please use")),
    (
        "notaccept",
        (
            "does not accept mail",
            "null mx",
            "accepts no mail",
            "not accept any mail",
            "no smtp service",
            "couldn't find a mail exchanger",
        ),
    ),
    # Refusals about our own sender address or domain: nothing to do with the recipient.
    (
        "rejected",
        (
            "domain of sender address",
            "sender address rejected",
            "sender domain",
            "permission to post",
        ),
    ),
    ("mailererror", ("procmail", "couldn't create", "command died", "pipe to")),
    ("networkerror", ("host not found, try again", "temporary failure in name resolution")),
    (
        "mailboxfull",
        (
            "mailbox full",
            "mailbox is full",
            "over quota",
            "quota exceeded",
            "exceeded storage",
            "insufficient storage",
            "mailbox has exceeded",
            "is over its quota",
            "full mailbox",
            "quota",
            "mailbox exceeds",
        ),
    ),
    (
        "mesgtoobig",
        (
            "message too big",
            "message is too large",
            "too large",
            "size exceeds",
            "exceeds the maximum size",
            "message size exceeds",
            "size limit",
        ),
    ),
    (
        "hostunknown",
        (
            "host not found",
            "domain not found",
            "unknown host",
            "host unknown",
            "no such domain",
            "domain does not exist",
            "unrouteable mail domain",
            "name or service not known",
            "nxdomain",
            "no mx",
            "host or domain name not found",
            "non-existent hosts",
            "no valid mx",
            "domain is not reachable",
            "unrouteable address",
        ),
    ),
    # Before an unknown user: servers answer "user unknown" for a disabled account too, and
    # a report that also says the account is disabled has said the more specific thing.
    (
        "suspend",
        (
            "suspended",
            "account disabled",
            "is disabled",
            "deactivated",
            "inactive",
            "account has been disabled",
            "mailbox disabled",
            "account is locked",
        ),
    ),
    (
        "userunknown",
        (
            "user unknown",
            "unknown user",
            "no such user",
            "no such mailbox",
            "user not found",
            "recipient not found",
            "does not exist",
            "doesn't exist",
            "invalid recipient",
            "unknown recipient",
            "recipient unknown",
            "mailbox not found",
            "not a valid mailbox",
            "invalid mailbox",
            "no such recipient",
            "unknown local part",
            "address does not exist",
            "is not a known user",
            "no mailbox here",
            "mailbox unavailable",
            "user doesn't exist",
            "account does not exist",
            "no such person",
            "addressee unknown",
            "bad destination mailbox",
            "unknown address",
            "not our customer",
            "mailbox does not exist",
            "user does not exist",
            "user not exist",
            "not listed in",
            "ディレクトリには見つかりません",  # Notes in Japanese: "not found in the directory"
            "doesn't have a",
            "no such address",
            "name is not recognized",
            "name is not recognised",
        ),
    ),
    ("virusdetected", ("virus",)),
    (
        "blocked",
        (
            "blocked",
            "blacklist",
            "block list",
            "blocklist",
            "spamhaus",
            "rbl",
            "dnsbl",
            "use the smtp server of your isp",
            "dynamic ip",
            "poor reputation",
        ),
    ),
    ("spamdetected", ("spam", "junk mail", "bulk mail")),
    ("authfailure", ("spf", "dkim", "dmarc")),
    (
        "norelaying",
        (
            "relay access denied",
            "relaying denied",
            "not permitted to relay",
            "relay not permitted",
            "relaying",
            "unable to relay",
        ),
    ),
    ("toomanyconn", ("too many connections", "too many concurrent")),
    (
        "expired",
        (
            "retry timeout exceeded",
            "delivery time expired",
            "time expired",
            "could not be delivered within",
            "giving up",
            "has been delayed",
            "expired",
            "too long in queue",
            "aborted after",
            # In a final report, a connection that kept timing out was retried until it expired.
            "connection timed out",
            "did not accept our requests to connect",
        ),
    ),
    (
        "networkerror",
        (
            "no route to host",
            "connection refused",
            "connection reset",
            "network is unreachable",
            "timed out",
            "network error",
        ),
    ),
    ("securityerror", ("tls", "certificate", "security")),
    ("policyviolation", ("policy",)),
    ("syntaxerror", ("syntax error",)),
    ("systemerror", ("system error", "local configuration error", "internal error")),
    ("mailererror", ("mailer error", "command died", "pipe to")),
    ("filtered", ("filtered", "content filter", "not authorized", "access denied")),
    ("rejected", ("rejected", "refused")),
)

# Shapes of words a substring cannot tell apart, tried before the words above.
_REASON_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "example.com does not exist": a domain, not a mailbox (no "@" before it).
    ("hostunknown", re.compile(r"(?<![@\w.\-])(?:[a-z0-9\-]+\.)+[a-z]{2,}>? does not exist")),
    ("hostunknown", re.compile(r"\bhost [a-z0-9.\-]+ not found\b(?!, try again)")),
    # "Delivery failed 20 attempts": retried until the queue gave up.
    ("expired", re.compile(r"\bfailed (?:after )?\d+ attempts\b")),
)

# What an enhanced status code says when the words said nothing: (class.)subject.detail.
_REASON_BY_STATUS = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.6": "hasmoved",
    "1.10": "notaccept", "2.1": "suspend", "2.2": "mailboxfull", "2.3": "mesgtoobig",
    "3.4": "mesgtoobig", "4.7": "expired", "4.1": "networkerror", "4.4": "networkerror",
    "7.1": "rejected", "7.25": "requireptr", "7.26": "authfailure", "7.23": "authfailure",
    "7.0": "blocked", "3.0": "systemerror", "5.0": "syntaxerror",
    "1.7": "rejected", "1.8": "rejected",  # the sender's address or domain, not the recipient's
}  # fmt: skip


def reason_of(status: str, smtp_code: str, text: str) -> str:
    """The reason a delivery failed: from the server's words, else from the status code.

    Words that point at a bad address give way to a specific status code that says otherwise
    (a 5.2.3 "message too long" worded "Recipient address rejected: ..."): calling a good
    address bad is the costlier mistake, since it sends a dispatcher to fix a number that works.
    """
    lowered = " ".join(text.lower().split())
    by_words = reason_by_words(lowered)
    refused = _RECIPIENT_REFUSED.search(lowered)
    if refused:
        # Postfix's "Recipient address rejected: <why>": the words after it say why; with none,
        # or only the access map's "Access denied", the recipient itself was refused. A why
        # with no words we know (a greylist) says nothing about the address.
        why = refused.group(1).strip(" .")
        plain = not why or why.startswith("access denied")
        by_words = "userunknown" if plain else reason_by_words(why) or by_words
    by_status = _status_reason(status)
    if by_words in ADDRESS_REASONS and by_status in _STATUS_OUTRANKS_WORDS:
        return by_status
    if by_words in ("rejected", "filtered") and by_status in ADDRESS_REASONS:
        return by_status  # "550 5.1.1 Address rejected": the code says which refusal
    if smtp_code == "551" and by_words in (None, "userunknown"):
        return "hasmoved"  # 551: user not local, the server names where they went
    if by_words == "suspend" and by_status in ADDRESS_REASONS:
        return by_status  # "inactive address" under 5.1.1: the address is gone
    if by_words:
        return by_words
    if by_status:
        return by_status
    return "undefined" if smtp_code.startswith("4") or not status else "onhold"


_RECIPIENT_REFUSED = re.compile(r"recipient address rejected\b:?([^;]{0,200})")


def reason_by_words(lowered: str) -> str | None:
    by_pattern = next(
        (reason for reason, pattern in _REASON_PATTERNS if pattern.search(lowered)), None
    )
    return by_pattern or next(
        (reason for reason, words in _REASON_WORDS if any(word in lowered for word in words)),
        None,
    )


# Specific codes that say the address was fine and something else failed: they outrank words
# that call the address bad. Generic ones (x.0.x, protocol x.5.x, a disabled mailbox x.2.1)
# do not: servers pair them with "user unknown" freely.
_STATUS_OUTRANKS_WORDS = frozenset(
    {"mesgtoobig", "mailboxfull", "rejected", "expired", "blocked", "securityerror",
     "authfailure", "requireptr"}
)  # fmt: skip


def _status_reason(status: str) -> str | None:
    """What a specific enhanced status code says; None for the generic x.0.0 and unknown codes."""
    if not status or status.endswith(".0.0"):
        return None
    _, subject, detail = status.split(".")
    known = _REASON_BY_STATUS.get(f"{subject}.{detail}")
    if known:
        return known
    if subject == "7":
        return "securityerror" if status.startswith("5.7.") else "blocked"
    if subject == "4":
        return "networkerror"
    return None
