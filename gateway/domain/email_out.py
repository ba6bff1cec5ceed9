"""The email a carrier gateway turns into a text: plain UTF-8, empty subject, no HTML.

Built by hand rather than with EmailMessage(policy=SMTP), which costs about 600 µs a message and
caps a core near 1,700 a second; this costs a few tens of µs. The speed must not cost safety: the
standard library's faster compat32 policy lets a CR or LF in a header value through as a second
header, so every value is checked here and refused, whatever field it came from.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import quopri
import re
from dataclasses import dataclass
from email.header import Header

from gateway.domain.address_headers import MAX_NESTING, addresses, too_deep

_ADDR_SPEC = re.compile(r"^[^\s<>()\[\],;:\"@\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_MESSAGE_ID = re.compile(r"^<[^\s<>@]+@[A-Za-z0-9.-]+>$")
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\x00")
MAX_LINE = 998


class HeaderInjectionError(ValueError):
    """A header value carried a line break (or NUL): refused, never folded into the message."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} contains a line break; refused to prevent header injection")
        self.field = field


class AddressError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address with an optional display name, e.g. "Dispatch <dispatch@example.com>"."""

    address: str
    name: str = ""

    @classmethod
    def parse(cls, text: str, field: str = "address") -> Mailbox:
        check_header_value(field, text)
        if too_deep(text):
            raise AddressError(
                f"{field}: too deeply nested (more than {MAX_NESTING} parentheses open at once, "
                f"or more than {MAX_NESTING} colons); write it as Name <user@example.com>"
            )
        found = addresses(text)
        if len(found) != 1:
            raise AddressError(f"{field}: {text!r} must be exactly one email address")
        name, address = found[0]
        if not address or not _ADDR_SPEC.match(address):
            raise AddressError(f"{field}: {text!r} is not an email address")
        return cls(address, name)

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def header(self) -> str:
        if not self.name:
            return self.address
        return _named_address(self.name, self.address)


# The sender writes the same From and, within a second, the same Date on every message:
# formatting them each time was about 8% of its time (py-spy on bench/send_throughput.py).
@functools.lru_cache(maxsize=64)
def _named_address(name: str, address: str) -> str:
    return email.utils.formataddr((name, address), charset="utf-8")


@functools.lru_cache(maxsize=8)
def _date_header(second: dt.datetime) -> str:
    return email.utils.format_datetime(second)


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    sender: Mailbox
    to: str
    message_id: str
    date: dt.datetime
    body: str
    subject: str = ""
    reply_to: Mailbox | None = None


def check_header_value(field: str, value: str) -> None:
    if any(ch in value for ch in _FORBIDDEN_IN_HEADERS):
        raise HeaderInjectionError(field)


def check_field(label: str, value: str, longest: int = 100) -> None:
    """A one-line value someone typed (an order reference, a key, a name): ValueError saying
    what is wrong with it. Such values end up in headers and logs, so no line breaks."""
    check_header_value(label, value)
    if not value.strip() or len(value) > longest:
        raise ValueError(f"the {label} must be 1 to {longest} characters")


def message_id_for(token: str, domain: str) -> str:
    """The Message-ID header value (with angle brackets) for a message enqueued with `token`."""
    value = f"<{token}@{domain}>"
    check_header_value("Message-ID", value)
    if not _MESSAGE_ID.match(value):
        raise ValueError(f"cannot build a Message-ID from {token!r} and {domain!r}")
    return value


def build_email(mail: OutboundEmail) -> bytes:
    """The message as it goes on the wire, CRLF line ends (dot-stuffing is the transport's)."""
    check_header_value("To", mail.to)
    if not _ADDR_SPEC.match(mail.to):
        raise AddressError(f"To: {mail.to!r} is not an email address")
    check_header_value("Subject", mail.subject)
    check_header_value("Message-ID", mail.message_id)
    if not _MESSAGE_ID.match(mail.message_id):
        raise ValueError(f"Message-ID {mail.message_id!r} is not of the form <id@domain>")
    if mail.date.tzinfo is None:
        raise ValueError("the Date of a message must carry its time zone")
    sender = mail.sender.header()
    check_header_value("From", sender)

    headers = [
        f"From: {sender}",
        f"To: {mail.to}",
        f"Subject: {_encode_words(mail.subject)}",
        f"Date: {_date_header(mail.date.replace(microsecond=0))}",
        f"Message-ID: {mail.message_id}",
    ]
    if mail.reply_to is not None:
        reply_to = mail.reply_to.header()
        check_header_value("Reply-To", reply_to)
        headers.append(f"Reply-To: {reply_to}")
    headers.append("MIME-Version: 1.0")

    body = mail.body.replace("\r\n", "\n").replace("\r", "\n")
    if body.isascii() and all(len(line) <= MAX_LINE for line in body.split("\n")):
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 7bit"]
        payload = body.replace("\n", "\r\n").encode("ascii")
    else:
        # Quoted-printable keeps a mostly-Latin text readable and needs no 8BITMIME from any
        # server on the way.
        headers += [
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ]
        payload = quopri.encodestring(body.encode("utf-8")).replace(b"\n", b"\r\n")
    head = "\r\n".join(headers).encode("ascii")
    return head + b"\r\n\r\n" + payload + b"\r\n"


def _encode_words(text: str) -> str:
    if text.isascii():
        return text
    return Header(text, "utf-8").encode()
