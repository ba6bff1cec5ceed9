"""Why a delivery failed, from the server's words and the status code.

The words are a table of patterns, one row per reason; see REASON_WORDS for the order in which
they are tried and why."""

from __future__ import annotations

import re

# Reasons (the corpus's vocabulary) that mean the address itself is bad.
ADDRESS_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})


def _words(*words: str) -> re.Pattern[str]:
    """Any of `words`, each whole: never inside a longer word ("rbl" is not in "marble")."""
    alternatives = "|".join(re.escape(word) for word in words)
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?:s|es|ed|ing)?(?![a-z0-9])")


# Why a delivery failed, in the words of a diagnostic (lower case, spaces squeezed): one row per
# way of saying a reason, tried in this order, and the first that matches names it. The order
# is the precedence, most specific first:
#   1. shapes a word list cannot tell apart (a domain that "does not exist", a host "not
#      found" that is not a lookup to try again, "failed 20 attempts");
#   2. what is wrong with the route or the sender, whatever else is said: no PTR record, an
#      address that moved, a domain that takes no mail (null MX), our own sender refused;
#   3. a local delivery program failing, before the words it quotes;
#   4. the mailbox's state (full, the message too big for it), the host unknown, the account
#      disabled: each more specific than the "user unknown" servers add to them;
#   5. the unknown user;
#   6. content and reputation (virus, sending too fast, block lists, spam, authentication),
#      relaying, too many connections, giving up after retries, network errors, TLS, policy;
#   7. the generic words last (filtered, refused, rejected), which every refusal may use.
# Each pattern matches whole words only. When the words and a specific status code disagree,
# CODE_OVER_WORDS decides.
REASON_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "example.com does not exist": a domain, not a mailbox (no "@" before it).
    ("hostunknown", re.compile(r"(?<![@\w.\-])(?:[a-z0-9\-]+\.)+[a-z]{2,}>? does not exist")),
    ("hostunknown", re.compile(r"\bhost [a-z0-9.\-]+ not found\b(?!, try again)")),
    # "Delivery failed 20 attempts": retried until the queue gave up.
    ("expired", re.compile(r"\bfailed (?:after )?\d+ attempts\b")),
    (
        "requireptr",
        _words(
            "reverse dns", "ptr record", "ptr resource record", "reverse lookup", "no ptr", "rdns"
        ),
    ),
    ("hasmoved", _words("has moved", "address has changed", "no longer valid, please use")),
    (
        "notaccept",
        _words(
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
        _words(
            "domain of sender address",
            "sender address rejected",
            "sender domain",
            "permission to post",
        ),
    ),
    ("mailererror", _words("procmail", "couldn't create", "command died", "pipe to")),
    ("networkerror", _words("host not found, try again", "temporary failure in name resolution")),
    (
        "mailboxfull",
        _words(
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
        _words(
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
        _words(
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
            "domain must exist",
            "unknown domain",
            "domain mentioned in email address is unknown",
            "account or domain may not exist",
        ),
    ),
    # Before an unknown user: servers answer "user unknown" for a disabled account too, and
    # a report that also says the account is disabled has said the more specific thing.
    # Postfix's "delivery temporarily suspended" is its queue holding a destination it could
    # not reach, not an account.
    ("suspend", re.compile(r"(?<!delivery temporarily )(?<![a-z0-9])suspended(?![a-z0-9])")),
    (
        "suspend",
        _words(
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
        _words(
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
            "bad recipient",
            "bad_recipient",
            "badrcptto",
            "not an active address",
            "not a valid user",
            "not a local address",
            "archived recipient",
            "can't accept user",
            "invalid address",
            "no account by that name",
            "no mail box available",
            "non-existent user",
            "nonexistent user",
            "non existent user",
            "recipient is not local",
            "user not active",
            "user not known",
            "unknown mailbox",
            "unknown email address",
            "unknown e-mail address",
            "no one at this address",
            "no longer accepts mail",
            "mailbox not present",
            "mailbox invalid",
            "mailbox is unavailable",
            "missing home directory",
            "address unknown",
            "recipient not exist",
            "recipnotfound",
            "addresses were unknown",
            "no valid recipients",
            "not present in directory",
            "not a valid recipient",
            "no mailbox found",
            "validrcptto",
            "badrecipientto",
            "wrong or no longer valid",
            "utilisateur inconnu",  # French: "unknown user"
            "no existe dicha persona",  # Spanish: "no such person"
            "no existe ese usuario",  # Spanish: "no such user"
            "nessun utente simile",  # Italian: "no such user"
        ),
    ),
    ("virusdetected", _words("virus")),
    # Too much from us in too little time: a limit on our sending, not a verdict on the address
    # (GoDaddy's "has sent to too many recipients this hour" comes under 5.1.1) or our host.
    (
        "ratelimited",
        _words(
            "too many recipients",
            "too many messages",
            "rate limit",
            "rate limited",
            "sending rate",
            "frequency limited",
            "sent too many",
        ),
    ),
    (
        "blocked",
        _words(
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
    # Refused for where it came from: a server that names our sending address ("messages from
    # 192.0.2.1 weren't sent") has turned our host away, not the recipient or the sender.
    ("blocked", re.compile(r"\b(?:messages|mail|connections?) from \[?\d{1,3}(?:\.\d{1,3}){3}\b")),
    ("spamdetected", _words("spam", "junk mail", "bulk mail")),
    ("authfailure", _words("spf", "dkim", "dmarc")),
    (
        "norelaying",
        _words(
            "relay access denied",
            "relaying denied",
            "not permitted to relay",
            "relay not permitted",
            "relaying",
            "unable to relay",
        ),
    ),
    ("toomanyconn", _words("too many connections", "too many concurrent")),
    (
        "expired",
        _words(
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
        _words(
            "no route to host",
            "connection refused",
            "connection reset",
            "network is unreachable",
            "timed out",
            "network error",
        ),
    ),
    ("securityerror", _words("tls", "starttls", "certificate")),
    (
        "policyviolation",
        _words(
            "policy",
        ),
    ),
    (
        "syntaxerror",
        _words(
            "syntax error",
        ),
    ),
    ("systemerror", _words("system error", "local configuration error", "internal error")),
    ("mailererror", _words("mailer error", "command died", "pipe to")),
    ("filtered", _words("filtered", "content filter", "not authorized", "access denied")),
    ("rejected", _words("rejected", "refused")),
)


# What an enhanced status code says when the words said nothing: (class.)subject.detail.
_REASON_BY_STATUS = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.6": "hasmoved",
    "1.10": "notaccept", "2.1": "suspend", "2.2": "mailboxfull", "2.3": "mesgtoobig",
    "3.4": "mesgtoobig", "4.7": "expired", "4.1": "networkerror", "4.4": "networkerror",
    "7.1": "rejected", "7.25": "requireptr", "7.26": "authfailure", "7.23": "authfailure",
    "7.0": "blocked", "3.0": "systemerror", "5.0": "syntaxerror",
    "3.2": "notaccept",  # RFC 3463: "System not accepting network messages"
    "1.7": "rejected", "1.8": "rejected",  # the sender's address or domain, not the recipient's
    "7.17": "hasmoved", "7.18": "hasmoved",  # RFC 7293: the mailbox's or domain's owner changed
}  # fmt: skip
# Where the class changes what a code says: "unable to route" is for now under 4 (a lookup that
# failed) and a domain with no route to it under 5.
_REASON_BY_FULL_STATUS = {"5.4.4": "hostunknown"}


def reason_of(status: str, smtp_code: str, text: str) -> str:
    """The reason a delivery failed: from the server's words (REASON_WORDS), else from the
    codes; where both name one and they differ, CODE_OVER_WORDS says which wins."""
    lowered = " ".join(text.lower().split())
    by_words = reason_by_words(lowered)
    refused = _RECIPIENT_REFUSED.search(lowered)
    if refused:
        # Postfix's "Recipient address rejected: <why>": the words after it say why; with none,
        # or only the access map's "Access denied", the recipient itself was refused. A why
        # with no words we know (a greylist) says nothing about the address.
        why = refused.group(1).strip(" .")
        by_words = "userunknown" if _plain(why) else reason_by_words(why) or by_words
    # An enhanced code is the more specific of the two: a reply code names a reason only where
    # the enhanced one says nothing specific (551 with 5.7.1 is a refusal, not a moved user).
    by_code = _status_reason(status) or _REPLY_REASON.get(smtp_code)
    if by_words and by_code and by_words != by_code:
        code_wins = any(by_words in words and by_code in codes for words, codes in CODE_OVER_WORDS)
        return by_code if code_wins else by_words
    if by_words or by_code:
        return by_words or by_code or ""
    return "undefined" if smtp_code.startswith("4") or not status else "onhold"


# Specific codes that say the address was fine and something else failed.
_ADDRESS_WAS_FINE = frozenset(
    {"mesgtoobig", "mailboxfull", "rejected", "expired", "blocked", "securityerror",
     "authfailure", "requireptr"}
)  # fmt: skip

# Where the words and a specific code name different reasons, the words win, except in these
# cases (the words say one of the first, the code one of the second), where the code does:
CODE_OVER_WORDS: tuple[tuple[frozenset[str], frozenset[str]], ...] = (
    # A bad address in the words, and a specific code saying the address was fine and something
    # else failed (a 5.2.3 "message too long" worded "Recipient address rejected"): calling a
    # good address bad is the costlier mistake, as it sends a dispatcher to fix a number that
    # works. Generic codes (x.0.x, protocol x.5.x, a disabled mailbox x.2.1) are not among
    # them: servers pair those with "user unknown" freely.
    (ADDRESS_REASONS, _ADDRESS_WAS_FINE),
    # A bare refusal in the words; the code says which ("550 5.1.1 Address rejected").
    (frozenset({"rejected", "filtered"}), ADDRESS_REASONS),
    # A disabled account in the words under an addressing code ("inactive address", 5.1.1):
    # the address is gone.
    (frozenset({"suspend"}), ADDRESS_REASONS),
    # 551 "user not local": the server names where they went, however it words the refusal.
    (frozenset({"userunknown"}), frozenset({"hasmoved"})),
)

# Reply codes that name a reason of their own where the enhanced status code names none: 551
# "user not local", 521 "host does not accept mail" (RFC 7504, a null MX's answer).
_REPLY_REASON = {"551": "hasmoved", "521": "notaccept"}


_RECIPIENT_REFUSED = re.compile(r"recipient address rejected\b:?([^;]{0,200})")


def _plain(why: str) -> bool:
    return not why or why.startswith("access denied")


def refused_recipient_plainly(lowered: str) -> bool:
    """Whether `lowered` is Postfix's refusal of the recipient itself: "Recipient address
    rejected" with no reason, or only the access map's "Access denied"."""
    refused = _RECIPIENT_REFUSED.search(lowered)
    return refused is not None and _plain(refused.group(1).strip(" ."))


# Words a reporting system keeps for its own verdict on a recipient, in the letter it writes
# around the server's reply or in a token of its own. Google's "the address couldn't be found.
# Check for typos or unnecessary spaces" (where it is unsure it writes "couldn't be found, or is
# unable to receive mail", and of a domain "the domain ... couldn't be found": neither is this
# verdict).
_REPORTERS_VERDICTS = (
    ("userunknown", re.compile(r"\bthe address couldn't be found\. check for typos")),
    # Exchange's own category of a failure, a token before the server's words: a domain whose
    # MX points back at the sending host is set up wrong, not missing, though the 5.4.4 it comes
    # under is read as a domain with no route.
    ("networkerror", re.compile(r"\bsmtpsend\.dns\.mxloopback\b")),
)


def reporters_verdict(lowered: str) -> str | None:
    """The reason a reporting system's own words (`lowered`: lower case, spaces squeezed) file
    a recipient under, where they state one."""
    said = lowered.replace("\u2019", "'")
    return next((reason for reason, words in _REPORTERS_VERDICTS if words.search(said)), None)


def reason_by_words(lowered: str) -> str | None:
    """The first reason of REASON_WORDS whose words `lowered` (lower case) says."""
    return next((reason for reason, words in REASON_WORDS if words.search(lowered)), None)


def _status_reason(status: str) -> str | None:
    """What a specific enhanced status code says; None for the generic x.0.0 and unknown codes."""
    if not status or status.endswith(".0.0"):
        return None
    _, subject, detail = status.split(".")
    known = _REASON_BY_FULL_STATUS.get(status) or _REASON_BY_STATUS.get(f"{subject}.{detail}")
    if known:
        return known
    if subject == "7":
        return "securityerror" if status.startswith("5.7.") else "blocked"
    if subject == "4":
        return "networkerror"
    return None
