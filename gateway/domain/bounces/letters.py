"""The readers of reports written as letters, one per way mail systems name the failed
recipients: a header (Exim's X-Failed-Recipients), the envelope quoted in a session transcript
(RCPT TO, Sendmail's verdict lines), a list of addresses a line each (qmail, Postfix's letter),
or, failing those, the first address the letter names."""

from __future__ import annotations

import email.message
import email.policy
import re
from collections.abc import Callable
from dataclasses import replace

from gateway.domain.bounces.codes import ADDRESS, ADDRESS_PATTERN, RCPT_TO
from gateway.domain.bounces.mime import (
    RETURNED,
    ReportMail,
    find_part,
    header_text,
)
from gateway.domain.bounces.recipient import Report, recipient


def from_text(mail: ReportMail, stated: str = "", delayed: bool = False) -> Report | None:
    """The failed recipients a letter names. `stated` is a status the report states for its one
    failed recipient in a part that does not name it (a delivery-status block without an
    address); `delayed`, that such a part says the reporter is still trying."""
    text = mail.text
    found = failed_addresses(mail.message, text)
    if found is None:
        return None
    reader, addresses = found
    status = stated if len(addresses) == 1 else ""
    failed = []
    reporter = mail.reporter
    final = not (delayed or still_trying(text))
    for address in addresses:
        near = text_about(text, address, addresses)
        failure = recipient(address, status, "", near, text, reporter=reporter)
        if failure.reason in ("undefined", "onhold"):
            # Some letters give the server's words before naming the address (Verizon's
            # "Error message below: 550 ... / RCPT TO: ..."): read the whole letter.
            failure = recipient(address, status, "", text[:2000], text, reporter=reporter)
        failed.append(failure if final else replace(failure, final=False))
    return Report("bounce", tuple(failed), original_message_id=mail.original_id, reader=reader)


def still_trying(text: str) -> bool:
    """Whether a letter is a delay warning: the mail system says it is still trying (Sendmail's
    and Postfix's "THIS IS A WARNING MESSAGE ONLY. YOU DO NOT NEED TO RESEND", Exim's "has not
    yet been delivered ... Delivery attempts will continue", Gmail's "will retry for 45 more
    hours"), in the opening where such letters say it."""
    return _STILL_TRYING.search(" ".join(text[:1500].lower().split())) is not None


_STILL_TRYING = re.compile(
    r"you do not need to resend|warning message only|this is a warning only"
    r"|has not yet been delivered|attempts will continue|continue to be attempted"
    r"|will retry for|will keep trying|will continue to try|delivery is delayed|still trying"
)


# A reader: the failed addresses a letter names in its way, or None when it is not written so.
Reader = Callable[[email.message.Message, str, Callable[[str], bool]], list[str] | None]


def _by_header(
    message: email.message.Message, text: str, robot: Callable[[str], bool]
) -> list[str] | None:
    """Exim's X-Failed-Recipients header: the list, whatever the letter says."""
    header = str(message.get("X-Failed-Recipients", ""))
    if not header.strip():
        return None
    return list(dict.fromkeys(a.lower() for a in ADDRESS.findall(header)))


def _by_envelope(
    message: email.message.Message, text: str, robot: Callable[[str], bool]
) -> list[str] | None:
    """A session transcript: the failed recipient named after RCPT TO, and Sendmail's verdict
    line for each recipient it gave up on ("554 <a@b>... why"), including those refused before
    any RCPT (an unknown host). In the order the text names them."""
    named = [(m.start(), m.group(1)) for m in RCPT_TO.finditer(text)]
    named += [(m.start(), m.group(1)) for m in _VERDICT.finditer(text)]
    envelope = [a.lower() for _, a in sorted(named) if not robot(a.lower())]
    return list(dict.fromkeys(envelope)) or None


def _by_listing(
    message: email.message.Message, text: str, robot: Callable[[str], bool]
) -> list[str] | None:
    """A list of failures, one a line, each line starting with its address (qmail, Postfix's
    letter). The original's sender may be the failed recipient too (mail to oneself), so To is
    not ruled out here."""
    leading = [a.lower().strip(".") for a in _LEADING_ADDRESS.findall(text)]
    return [a for a in dict.fromkeys(leading) if not robot(a)] or None


def _by_mention(
    message: email.message.Message, text: str, robot: Callable[[str], bool]
) -> list[str] | None:
    """The first address the letter names that is neither the reporter's nor the original
    sender's (our To: a letter may name it first), nor a Message-ID it quotes, with every other
    address named in a line worded as that one's ("Unknown user: a@b", "Unknown user: c@d": a
    letter listing its failures). Where the letter says which recipients failed ("did not reach
    the following recipient(s):"), the first after those words: a letter may quote the
    original's To before them (a list's address)."""
    ignore = {a.lower() for a in ADDRESS.findall(str(message.get("To", "")))}
    announced = _ANNOUNCEMENT.search(text)
    for words in (text[announced.start() :] if announced else "", text):
        named: list[tuple[str, str]] = []
        for line in _ID_LINES.sub("", words).splitlines():
            found = ADDRESS.findall(line)
            if not found:
                continue
            shape = _shape(line)  # once a line, whatever the number of addresses it names
            for written in found:
                address = written.lower().strip(".")
                if not robot(address) and address not in ignore:
                    named.append((address, shape))
        if named:
            first_shape = named[0][1]
            return list(dict.fromkeys(a for a, shape in named if shape == first_shape))
    return []


def _shape(line: str) -> str:
    """How a line is worded, whatever addresses it names."""
    return ADDRESS.sub("@", " ".join(line.lower().split()))


# Quoted header lines naming Message-IDs, which are written like addresses and are none.
_ID_LINES = re.compile(
    r"^[> \t]*(?:message-id|references|in-reply-to):.*$", re.IGNORECASE | re.MULTILINE
)
_ANNOUNCEMENT = re.compile(
    r"did not reach|could not be delivered to|following (?:recipient|address)", re.IGNORECASE
)


# Tried in this order: the first that recognises the letter names its failed recipients.
READERS: tuple[tuple[str, Reader], ...] = (
    ("x-failed-recipients", _by_header),
    ("transcript", _by_envelope),
    ("address list", _by_listing),
    ("first address", _by_mention),
)


def failed_addresses(message: email.message.Message, text: str) -> tuple[str, list[str]] | None:
    """The failed recipients a letter names, and the reader that found them."""
    reporter = {a.lower() for a in ADDRESS.findall(str(message.get("From", "")))}
    reporter_domains = {a.rpartition("@")[2] for a in reporter}

    def robot(address: str) -> bool:
        # The reporting system's own postmaster is not a failure; someone else's may be.
        local, _, domain = address.partition("@")
        return address in reporter or (local in _ROBOTS and domain in reporter_domains)

    for name, reader in READERS:
        found = reader(message, text, robot)
        if found is not None:
            return (name, found) if found else None
    return None


_FAILURE_WORDS = (
    "could not be delivered", "couldn't be delivered", "was not delivered", "undeliverable",
    "delivery has failed", "delivery failed", "permanent error", "unable to deliver",
)  # fmt: skip
_VERDICT = re.compile(
    rf"^[45]\d\d <({ADDRESS_PATTERN})>\.\.\. ",
    re.MULTILINE,
)
_ROBOTS = frozenset({"mailer-daemon", "postmaster", "root", "noreply"})
_LEADING_ADDRESS = re.compile(
    rf"^[ \t]*[<\"']?({ADDRESS_PATTERN})[>\"']?:?"
    r"(?:[ \t]|$)",
    re.MULTILINE,
)


def text_about(text: str, address: str, others: list[str]) -> str:
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


def looks_like_bounce(mail: ReportMail) -> bool:
    """Whether a message with no status part is written as a report: by its headers, its
    sender, or a letter that says it could not deliver and returns the original."""
    message = mail.message
    sender = header_text(message, "From").lower()
    subject = header_text(message, "Subject").lower()
    if message.get("X-Failed-Recipients"):
        return True
    # "post_master@", "Mailer-Daemon@", "MAILER_DAEMON": systems spell their robots many ways.
    squeezed = re.sub(r"[^a-z]", "", sender)
    if any(who in squeezed for who in ("mailerdaemon", "postmaster", "maildelivery")):
        return True
    # A letter that says it could not deliver and returns the original, whoever signs it.
    if find_part(message, *RETURNED) is not None:
        opening = " ".join(mail.text[:600].lower().split())
        if any(words in opening for words in _FAILURE_WORDS):
            return True
    return any(word in subject for word in _FAILURE_SUBJECTS)


_FAILURE_SUBJECTS = (
    "undeliver", "delivery status", "delivery failure", "failure notice", "returned mail",
    "delivery has failed", "could not be delivered", "mail delivery failed", "non-delivery",
    "nondeliverable", "rejected", "delivery notification", "undelivered",
    # Exchange's "Undeliverable:" in the other languages it is set to.
    "non remis", "non recapitabile", "unzustellbar", "onbestelbaar", "no se puede entregar",
)  # fmt: skip
