"""Reading delivery reports: which recipients failed, how, and whether the address itself is bad.

Mail comes back in two shapes. Standard reports (RFC 3464) carry a message/delivery-status part
with a block per recipient: its address, Action, Status (an enhanced code such as 5.1.1) and the
remote server's words. Many systems still send a letter instead ("The following address(es)
failed: ..."), so the same facts are also read from the report's text.

"Permanent" here is about the address, not the status class: a 5xx refusal for policy, spam or
reputation fails that message but says nothing about the number; only reasons that mean the
address is wrong (unknown user or host, moved, accepts no mail) make it permanent, and only then
should a contact's carrier or number be questioned.

"User unknown" alone does not show that: filters (Japanese carriers' sender filters, content
filters after DATA) word their refusals the same way. It is read as a bad address only where the
report shows the mailbox was looked up: refused at RCPT, under an addressing code (x.1.x), in a
directory's words, by the recipient's own mail system, or in the reporter's own category field.
"""

from __future__ import annotations

import email.message
import email.policy
import re
from dataclasses import dataclass
from typing import Any

# Reasons (the corpus's vocabulary) that mean the address itself is bad.
ADDRESS_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE = re.compile(r"(?<![\d.\-])([245]\d\d)(?=[ \-])")
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?"
)

_RCPT_TO = re.compile(
    r"rcpt to:\s*<?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]*[A-Za-z0-9])", re.IGNORECASE
)
_MESSAGE_ID = re.compile(r"^message-id:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)

# The phase of the SMTP session a refusal came in, as reports word it: in answer to DATA (after
# the message was seen), to RCPT (the recipient), or to MAIL (our own sender address).
_AT_DATA = re.compile(
    r"end of data|after data|>>> data|in reply to data|reply to end of data|"
    r"after end of data|data command|during data",
    re.IGNORECASE,
)
_AT_MAIL = re.compile(r"after mail from|in reply to mail from|mail from command", re.IGNORECASE)
_AT_RCPT = re.compile(
    r"(?:after|in reply to|like our|smtp:) ?rcpt\b|rcpt(?: to)? command|\[rcpt_to\]|"
    r"server has rejected (?:the )?(?:address|recipient)|recipient address rejected",
    re.IGNORECASE,
)
# An enhanced code right after the reply code is the remote server's own, where a reporter puts
# its own category first ("5.1.0 - Unknown address error 550-'5.7.1 ... Access denied'").
_PAIRED_STATUS = re.compile(r"(?<![\d.])[245]\d\d[ \-]'?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# A refusal whose address slot is empty ("550 : User unknown"): no mailbox was looked up, so the
# words are a filter's, not a directory's.
_NO_ADDRESS = re.compile(r"(?<![\d.])[45]\d\d(?:[ \-][245]\.\d{1,3}\.\d{1,3})? +: ")
# Mailing-list services that refuse a post (no such group, no permission to post) in the
# sender's language and with no code: a refusal by the list, not a bad address.
_LIST_DOMAINS = ("googlegroups.com",)

# Where the returned original starts in a text report; the report text is what comes before.
_ORIGINAL_MARKERS = re.compile(
    r"^(?:-+ ?(?:this is a copy|below this line|original message|the original message|"
    r"returned message|message header follows|text of the message|undelivered message)|"
    r"-{3,}\s*original message\s*-{3,}|"
    r"the original message (?:was|headers)|"
    r"------ ?(?:this is|a copy)|"
    r"\s*----- (?:transcript|unsent message|original)|"
    r"return-path:|received: from)",
    re.IGNORECASE | re.MULTILINE,
)

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


# When a report states no status of its own, the corpus's convention gives each reason a code of
# its own in the otherwise unused x.0.9NN range, so that reports stay comparable by code.
_PSEUDO_STATUS = {
    "undefined": "900", "blocked": "901", "onhold": "901", "norelaying": "909",
    "filtered": "910", "userunknown": "911", "hostunknown": "912", "rejected": "918",
    "suspend": "921", "mailboxfull": "922", "systemerror": "930", "notaccept": "932",
    "mesgtoobig": "934", "mailererror": "939", "networkerror": "944", "expired": "947",
    "spamdetected": "980",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    status: str  # enhanced status code, e.g. 5.1.1; "" when the report states none
    smtp_code: str  # reply code, e.g. 550; "" when none
    reason: str  # the corpus's vocabulary: userunknown, mailboxfull, blocked, ...
    permanent: bool  # the address itself is bad
    diagnostic: str  # the remote server's words


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # bounce | delivery_report | feedback | auto_reply
    recipients: tuple[Recipient, ...] = ()
    feedback_type: str | None = None
    original_message_id: str | None = None


def reason_of(status: str, smtp_code: str, text: str) -> str:
    """The reason a delivery failed: from the server's words, else from the status code.

    Words that point at a bad address give way to a specific status code that says otherwise
    (a 5.2.3 "message too long" worded "Recipient address rejected: ..."): calling a good
    address bad is the costlier mistake, since it sends a dispatcher to fix a number that works.
    """
    lowered = " ".join(text.lower().split())
    by_words = _reason_by_words(lowered)
    refused = _RECIPIENT_REFUSED.search(lowered)
    if refused:
        # Postfix's "Recipient address rejected: <why>": the words after it say why; with none,
        # or only the access map's "Access denied", the recipient itself was refused. A why
        # with no words we know (a greylist) says nothing about the address.
        why = refused.group(1).strip(" .")
        plain = not why or why.startswith("access denied")
        by_words = "userunknown" if plain else _reason_by_words(why) or by_words
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


def _reason_by_words(lowered: str) -> str | None:
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


_PHASE_MATTERS = ADDRESS_REASONS | {"filtered"}
_TEMPORARY_WORDS = ("has been delayed", "warning message only", "retry timeout exceeded")


# Reasons a policy code (x.7.x) gives that some servers pair with every refused recipient.
_FILED_AS_POLICY = frozenset({"rejected", "securityerror", "blocked"})
# Words of a directory lookup by the system that holds the mailbox (Notes, Exchange): the address
# was looked up and is not there, whatever the session phase.
_DIRECTORY_LOOKUP = re.compile(
    r"not listed in .{0,40}director|ディレクトリには見つかりません|"
    r"recipient name is not recogni[sz]ed|not found in (?:the )?(?:address book|directory)"
)


def _looked_up(
    status: str, phase: str | None, diagnostic: str, about: str, address: str, reporter: str
) -> bool:
    """Whether a refusal worded as an unknown user came from looking the mailbox up, rather
    than from a filter that words its refusals so. A lookup shows as a refusal at RCPT with an
    address in it, an addressing code (x.1.x, "bad destination mailbox"), a directory's words,
    or a report from the recipient's own mail system, which knows its users; after DATA, or
    where a relay does not say, the words alone do not show it."""
    if phase == "RCPT" and not _NO_ADDRESS.search(diagnostic):
        return True
    if status.split(".")[1:2] == ["1"]:
        return True
    if _same_organisation(address.rpartition("@")[2].lower(), reporter):
        return True
    return bool(_DIRECTORY_LOOKUP.search(" ".join(f"{diagnostic} {about}".lower().split())))


def _same_organisation(domain: str, other: str) -> bool:
    """Whether two domains are one, or one is under the other (mx.example.jp, example.jp)."""
    if not domain or not other or "." not in domain or "." not in other:
        return False
    return domain == other or domain.endswith(f".{other}") or other.endswith(f".{domain}")


def _phase(address: str, diagnostic: str, about: str, transcript: str) -> str | None:
    """The SMTP command a refusal answered (MAIL, RCPT or DATA), where the report says: in the
    server's words, in the report's words about the recipient ("... (in reply to RCPT TO
    command)"), or in a session transcript."""
    for wording, phase in ((_AT_MAIL, "MAIL"), (_AT_DATA, "DATA"), (_AT_RCPT, "RCPT")):
        if wording.search(diagnostic) or wording.search(about):
            return phase
    return _command_before(transcript, diagnostic, address)


def _command_before(transcript: str, reply: str, address: str) -> str | None:
    """The command a session transcript shows answered by `reply` (">>> DATA" then
    "<<< 550 ..."), or refused right after naming `address` (">>> RCPT To:<a@b>" then a 4xx or
    5xx): the phase the refusal came in, or None when the transcript does not show it."""
    wanted = " ".join(reply.lower().split())[:40]
    command = named = None
    for line in transcript.splitlines():
        stripped = line.strip()
        sent = re.match(r">>> ?([A-Za-z]+)", stripped)
        if sent:
            command = sent.group(1).upper()
            named = address.lower() in stripped.lower() if address else False
        elif stripped.startswith("<<<"):
            answer = " ".join(stripped[3:].lower().split())
            if len(wanted) >= 8 and wanted in answer:
                return command
            if named and command == "RCPT" and answer[:1] in ("4", "5"):
                return command
    return None


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
    the reporting system states in a field of its own, which outranks any reading of words."""
    if not status or status.endswith(".0.0"):
        # The server's own words often carry a more specific code than the report's x.0.0.
        found = _PAIRED_STATUS.search(diagnostic) or _STATUS.search(diagnostic)
        if found and (not status or found.groups()[1:] != ("0", "0")):
            status = ".".join(found.groups())
    if not code:
        found_code = _REPLY_CODE.search(diagnostic)
        code = found_code.group(1) if found_code else ""
    reason = reason_of(status, code, diagnostic)
    lowered = " ".join(diagnostic.lower().split())
    unknown_user = _reason_by_words(lowered) == "userunknown"
    # How the refusal came matters only to refusals that could be about the address; reading
    # a transcript for it is left to them.
    phase = None
    if reason in _PHASE_MATTERS or unknown_user:
        phase = _phase(address, diagnostic, about, context)
    if verdict:
        reason = verdict
    elif phase == "MAIL":
        # Refused before any recipient was named: the words are about our sender address.
        reason = "rejected"
    elif phase == "RCPT" and unknown_user and reason in _FILED_AS_POLICY:
        # Refused as soon as it was named, in words of an unknown user: a policy code beside
        # them (5.7.1) is how that server files every refusal of a recipient.
        reason = "userunknown"
    elif reason == "userunknown" and not _looked_up(
        status, phase, diagnostic, about, address, reporter
    ):
        # Japanese carriers, content filters after DATA and reporters summing up any failure
        # word their refusals as an unknown user too.
        reason = "filtered"
    if reason in ("undefined", "onhold") and address.lower().endswith(_LIST_DOMAINS):
        reason = "rejected"
    if not status and reason in _PSEUDO_STATUS:
        # A delivery given up after temporary errors lasted too long keeps their class.
        temporary = code.startswith("4") or any(words in lowered for words in _TEMPORARY_WORDS)
        status = f"{'4' if temporary else '5'}.0.{_PSEUDO_STATUS[reason]}"
    return Recipient(
        address=address.strip().strip("<>").lower(),
        status=status,
        smtp_code=code,
        reason=reason,
        permanent=reason in ADDRESS_REASONS,
        diagnostic=" ".join(diagnostic.split())[:1000],
    )


# --- reading a report -------------------------------------------------------------------------


def read_report(message: email.message.Message) -> Report | None:
    """The report `message` is, or None when it is not a report of any kind."""
    message = _with_boundary(message)
    param = message.get_param("report-type")
    report_type = param.lower() if isinstance(param, str) else ""
    if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _feedback(message)
    # Bounces before auto-replies: mail systems mark their bounces Auto-Submitted too.
    status_part = _part(message, "message/delivery-status", "message/global-delivery-status")
    if status_part is not None:
        report = _from_status_part(message, status_part)
        if report is not None:
            return report
    if _looks_like_bounce(message):
        report = _from_text(message)
        if report is not None:
            return report
        # A report with no word on its recipients (Postfix's "Delivery report unavailable"):
        # the returned original's To is who it was for.
        returned = _returned_recipients(message)
        if returned:
            text = _human_text(message)
            reporter = _reporter_domain(message)
            failed = tuple(
                recipient(a, "", "", _near(text, a, returned), reporter=reporter) for a in returned
            )
            return Report("bounce", failed, original_message_id=_original_id(message))
    if _is_auto_reply(message):
        return Report("auto_reply")
    return None


def _feedback(message: email.message.Message) -> Report:
    part = _part(message, "message/feedback-report")
    blocks = _status_blocks(part) if part is not None else []
    kind = next((b["feedback-type"] for b in blocks if b.get("feedback-type")), None)
    return Report("feedback", feedback_type=kind.lower() if kind else None)


def _is_auto_reply(message: email.message.Message) -> bool:
    auto = str(message.get("Auto-Submitted", "")).lower()
    if auto.startswith("auto-replied"):
        return True
    subject = str(message.get("Subject", "")).lower()
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    return any(
        word in subject
        for word in ("out of office", "out of the office", "automatic reply", "auto-reply",
                     "autoreply", "vacation", "abwesenheit", "absence")
    )  # fmt: skip


# Reporting systems that file each failure under a category of their own, in a field of the
# recipient's block (PowerMTA's X-PowerMTA-BounceCategory): the categories that name the reason.
_REPORTER_CATEGORIES = {
    "bad-mailbox": "userunknown", "bad-domain": "hostunknown", "inactive-mailbox": "suspend",
    "quota-issues": "mailboxfull", "message-expired": "expired", "spam-related": "spamdetected",
    "virus-related": "virusdetected", "relaying-issues": "norelaying",
}  # fmt: skip


def _from_status_part(message: email.message.Message, part: email.message.Message) -> Report | None:
    failed: list[Recipient] = []
    delivered = 0
    human = _human_text(message)
    reporter = _reporter_domain(message)
    blocks = _status_blocks(part)
    block_addresses = [
        found
        for b in blocks
        if (found := _address_field(b.get("final-recipient") or b.get("original-recipient")))
    ]
    for fields in blocks:
        address = _address_field(fields.get("final-recipient") or fields.get("original-recipient"))
        if not address:
            continue
        action = fields.get("action", "").lower()
        status_found = _STATUS.search(fields.get("status", ""))
        status = ".".join(status_found.groups()) if status_found else ""
        if action in ("delivered", "relayed", "expanded") or status.startswith("2."):
            delivered += 1
            continue
        near = _near(human, address, block_addresses)
        diagnostic = fields.get("diagnostic-code", "")
        diagnostic = re.sub(r"^\s*(smtp|x-[\w\-]+)\s*;\s*", "", diagnostic, flags=re.IGNORECASE)
        code_found = _REPLY_CODE.search(diagnostic + " ")
        failed.append(
            recipient(
                address,
                status,
                code_found.group(1) if code_found else "",
                # With no Diagnostic-Code, a letter about one recipient is about it throughout
                # ("The user's account is disabled" before the address).
                diagnostic or (human[:2000] if len(set(block_addresses)) <= 1 else near),
                human,
                # The Status field's comment ("5.0.0 (Remote SMTP server has rejected address)")
                # is the reporter's own word on how the refusal came.
                f"{fields.get('status', '')} {near}",
                _REPORTER_CATEGORIES.get(fields.get("x-powermta-bouncecategory", "").lower()),
                reporter,
            )
        )
    if failed:
        return Report("bounce", tuple(failed), original_message_id=_original_id(message))
    if delivered:
        return Report("delivery_report", original_message_id=_original_id(message))
    return None


def _from_text(message: email.message.Message) -> Report | None:
    text = _human_text(message)
    addresses = _failed_addresses(message, text)
    if not addresses:
        return None
    failed = []
    reporter = _reporter_domain(message)
    for address in addresses:
        near = _near(text, address, addresses)
        found = recipient(address, "", "", near, text, reporter=reporter)
        if found.reason in ("undefined", "onhold"):
            # Some letters give the server's words before naming the address (Verizon's
            # "Error message below: 550 ... / RCPT TO: ..."): read the whole letter.
            found = recipient(address, "", "", text[:2000], text, reporter=reporter)
        failed.append(found)
    return Report("bounce", tuple(failed), original_message_id=_original_id(message))


def _failed_addresses(message: email.message.Message, text: str) -> list[str]:
    header = str(message.get("X-Failed-Recipients", ""))
    if header.strip():
        return list(dict.fromkeys(a.lower() for a in _ADDRESS.findall(header)))
    reporter = {a.lower() for a in _ADDRESS.findall(str(message.get("From", "")))}
    reporter_domains = {a.rpartition("@")[2] for a in reporter}

    def robot(address: str) -> bool:
        # The reporting system's own postmaster is not a failure; someone else's may be.
        local, _, domain = address.partition("@")
        return address in reporter or (local in _ROBOTS and domain in reporter_domains)

    # A report that quotes the envelope names the failed recipient after RCPT TO; Sendmail's
    # transcript also gives a verdict line for each recipient it gave up on ("554 <a@b>... why"),
    # including those refused before any RCPT (an unknown host). In the order the text names them.
    named = [(m.start(), m.group(1)) for m in _RCPT_TO.finditer(text)]
    named += [(m.start(), m.group(1)) for m in _VERDICT.finditer(text)]
    envelope = [a.lower() for _, a in sorted(named) if not robot(a.lower())]
    if envelope:
        return list(dict.fromkeys(envelope))
    # A list of failures, one a line, each line starting with its address. The original's
    # sender may be the failed recipient too (mail to oneself), so To is not ruled out here.
    leading = [a.lower().strip(".") for a in _LEADING_ADDRESS.findall(text)]
    leading = [a for a in dict.fromkeys(leading) if not robot(a)]
    if leading:
        return leading
    # Anywhere in the text: the letter may name the original's sender (our To) first.
    ignore = {a.lower() for a in _ADDRESS.findall(str(message.get("To", "")))}
    found = [a.lower().strip(".") for a in _ADDRESS.findall(text)]
    found = [a for a in found if not robot(a) and a not in ignore]
    return found[:1]


_FAILURE_WORDS = (
    "could not be delivered", "couldn't be delivered", "was not delivered", "undeliverable",
    "delivery has failed", "delivery failed", "permanent error", "unable to deliver",
)  # fmt: skip
_VERDICT = re.compile(
    r"^[45]\d\d <([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]*[A-Za-z0-9])>\.\.\. ",
    re.MULTILINE,
)
_ROBOTS = frozenset({"mailer-daemon", "postmaster", "root", "noreply"})
_LEADING_ADDRESS = re.compile(
    r"^[ \t]*[<\"']?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]*[A-Za-z0-9])[>\"']?:?"
    r"(?:[ \t]|$)",
    re.MULTILINE,
)


def _near(text: str, address: str, others: list[str]) -> str:
    """What a text report says about `address`: from the start of the line that first names it
    (a letter's opening lines are the same for every failure and say nothing about this one)
    to the line that names the next failed address."""
    lowered = text.lower()
    at = lowered.find(address.lower())
    if at < 0:
        return text[:1000]
    for verdict in _VERDICT.finditer(text):
        if verdict.group(1).lower() == address.lower():
            # A transcript's verdict on this recipient is whole in its line.
            return text[verdict.start() : text.find("\n", verdict.start()) % (len(text) + 1)]
    line_start = text.rfind("\n", 0, at) + 1
    end = at + 700
    for other in others:
        if not other or other.lower() == address.lower():
            continue
        next_at = lowered.find(other.lower(), at + len(address))
        if next_at >= 0:
            end = min(end, text.rfind("\n", 0, next_at) + 1 or next_at)
    return text[line_start : max(end, at + len(address))]


def _with_boundary(message: email.message.Message) -> email.message.Message:
    """`message` again with its parts, when its multipart boundary was lost on the way (a
    parameter folded without indentation): the boundary is read from the body's first
    delimiter line. A delimiter written indented is not one to the email package, which then
    reads the parts after it as the text before it: those lines are unindented."""
    if message.is_multipart():
        return _with_delimiters_unindented(message)
    # A MIME report whose top headers lost their Content-Type (Sendmail's, pasted under an mbox
    # "From " line) defaults to text/plain: its delimiter lines still say it is a multipart.
    lost = message.get("Content-Type") is None and message.get("MIME-Version") is None
    if message.get_content_maintype() != "multipart" and not lost:
        return message
    body = _payload(message)
    if not isinstance(body, str):
        return message
    found = re.search(r"^--([^\s]{1,70})\s*$", body, re.MULTILINE)
    if found is None or f"--{found.group(1)}--" not in body:
        return message
    if lost and found.start() > 300:
        return message  # a letter that quotes a MIME original, not a MIME report itself
    head = "".join(f"{k}: {v}\n" for k, v in message.items() if k.lower() != "content-type")
    kind = "multipart/mixed" if lost else message.get_content_type()
    rebuilt = f'{head}Content-Type: {kind}; boundary="{found.group(1)}"\n\n{body}'
    return email.message_from_string(rebuilt, policy=email.policy.compat32)


def _with_delimiters_unindented(message: email.message.Message) -> email.message.Message:
    boundary = message.get_boundary()
    if not boundary:
        return message
    indented = re.compile(rf"^[ \t]+(--{re.escape(boundary)}(?:--)?[ \t]*)$", re.MULTILINE)
    for part in message.walk():
        payload = _payload(part)
        if isinstance(payload, str) and indented.search(payload):
            text = indented.sub(r"\1", message.as_string())
            return email.message_from_string(text, policy=email.policy.compat32)
    return message


def _returned_recipients(message: email.message.Message) -> list[str]:
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            inner = _payload(part)
            if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
                to = str(inner[0].get("To", ""))
                return list(dict.fromkeys(a.lower() for a in _ADDRESS.findall(to)))[:5]
    return []


def _looks_like_bounce(message: email.message.Message) -> bool:
    sender = str(message.get("From", "")).lower()
    subject = str(message.get("Subject", "")).lower()
    if message.get("X-Failed-Recipients"):
        return True
    # "post_master@", "Mailer-Daemon@", "MAILER_DAEMON": systems spell their robots many ways.
    squeezed = re.sub(r"[^a-z]", "", sender)
    if any(who in squeezed for who in ("mailerdaemon", "postmaster", "maildelivery")):
        return True
    # A letter that says it could not deliver and returns the original, whoever signs it.
    if _part(message, "message/rfc822", "text/rfc822-headers") is not None:
        opening = " ".join(_human_text(message)[:600].lower().split())
        if any(words in opening for words in _FAILURE_WORDS):
            return True
    return any(
        word in subject
        for word in ("undeliver", "delivery status", "delivery failure", "failure notice",
                     "returned mail", "delivery has failed", "could not be delivered",
                     "mail delivery failed", "non-delivery", "nondeliverable", "rejected",
                     "delivery notification", "undelivered")
    )  # fmt: skip


def _human_text(message: email.message.Message) -> str:
    """The report's own text, without the returned original."""
    for part in message.walk():
        if part.is_multipart():
            continue
        if content_type(part) in ("message/rfc822", "text/rfc822-headers"):
            break
        # A multipart whose boundary parameter was lost (folded without indentation) arrives
        # as one text: read it as the report's text rather than finding nothing.
        if (
            content_type(part) == "text/plain"
            or part is message
            or (part.get_content_maintype() == "multipart")
        ):
            text = payload_text(part).replace("\r\n", "\n")
            marker = _ORIGINAL_MARKERS.search(text)
            return text[: marker.start()] if marker and marker.start() > 40 else text
    return ""


def _reporter_domain(message: email.message.Message) -> str:
    """The domain the report came from (its From), lower case; "" when it names none."""
    found = _ADDRESS.search(str(message.get("From", "")))
    return found.group(0).rpartition("@")[2].lower() if found else ""


def _original_id(message: email.message.Message) -> str | None:
    """The Message-ID of the returned original: our own id, which ties the bounce to its text."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = _payload(part)
            if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
                found = str(inner[0].get("Message-ID", "")).strip()
                if found:
                    return found
        elif kind == "text/rfc822-headers":
            match = _MESSAGE_ID.search(payload_text(part))
            if match:
                return match.group(1)
    match = _MESSAGE_ID.search(_human_text(message))
    return match.group(1) if match else None


def _part(message: email.message.Message, *types: str) -> email.message.Message | None:
    for part in message.walk():
        if content_type(part) in types:
            return part
    return None


def content_type(part: email.message.Message) -> str:
    """A part's content type, also where its header lost the ";" before the parameters
    ("text/plain<newline>  charset=..."), which the email package reads as one long type."""
    return part.get_content_type().split(None, 1)[0]  # never empty: it always holds a "/"


def payload_text(part: email.message.Message) -> str:
    """A part's content as text, whatever its transfer encoding or charset claims."""
    if part.is_multipart():
        inner = _payload(part)
        if isinstance(inner, list):
            return "\n\n".join(
                payload_text(p) for p in inner if isinstance(p, email.message.Message)
            )
        return ""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        payload = _payload(part)
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # no such codec, or a name no codec can have (a NUL)
        return data.decode("utf-8", "replace")


def _payload(part: email.message.Message) -> Any:
    """A part's payload as the email package holds it (a list of parts, or the undecoded text).
    The package decodes stray 8-bit text by the part's charset name and raises ValueError when
    that name holds a NUL (LookupError is caught inside it): such text is read as UTF-8."""
    try:
        return part.get_payload()
    except ValueError:
        data = part.get_payload(decode=True)
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


def _status_blocks(part: email.message.Message) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part: the first is about the message, the rest
    are one per recipient."""
    payload = _payload(part)
    if isinstance(payload, list):  # the email package parses each block into a header-only part
        return [
            {str(k).lower(): _from_jis(" ".join(str(v).split())) for k, v in block.items()}
            for block in payload
            if isinstance(block, email.message.Message)
        ]
    text = _from_jis(payload_text(part))
    return [_fields(b) for b in re.split(r"\r?\n\s*\r?\n", text) if b.strip()]


def _from_jis(value: str) -> str:
    """`value` with its ISO-2022-JP runs read: Japanese systems write them, escape sequences and
    all, into fields that are meant to be ASCII (a Notes Diagnostic-Code)."""
    if "\x1b$" not in value:
        return value
    try:
        return value.encode("latin-1").decode("iso-2022-jp")
    except (UnicodeError, LookupError):
        return value


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and current:
            fields[current] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            current = name.strip().lower()
            fields.setdefault(current, value.strip())
    return fields


def _address_field(value: str | None) -> str:
    if not value:
        return ""
    value = re.sub(r"^\s*[\w\-]+\s*;\s*", "", value)  # "rfc822; user@host"
    found = _ADDRESS.search(value)
    return found.group(0) if found else ""
