"""Understanding one message from the company mailbox: what it is, who sent it, what they typed.

Inbound mail is written by strangers, so everything here takes bytes and returns plain data,
never raises on odd content (only on bytes that are not a message at all), and bounds its work.

Detectors run in order and the first confident one wins. Mail from an email-to-SMS provider is
read by that provider's own format first (carriers.yaml says how it looks), unless it is a
standard delivery-status report. Reports come next: a carrier's bounce
can carry `Re:` and In-Reply-To like a reply (Verizon's do), and mail systems mark bounces
Auto-Submitted like vacation notices; mail signed by a phone's own number is never a bounce,
whatever its subject says. Our own mail seen in the mailbox comes next, so a copy of
a text is never read as a reply to itself. What is left is a reply when it comes from a phone
(a known gateway domain) or names one of our messages; anything else is `other`.
"""

from __future__ import annotations

import datetime as dt
import email
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import re
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.domain.address_headers import addresses, first_address
from gateway.domain.bounces import (
    Recipient,
    UnreadableMime,
    content_type,
    header_text,
    parse_bounded,
    payload_text,
    read_report,
)
from gateway.domain.carriers import Carrier, CarrierBook
from gateway.domain.html_text import HtmlText, html_text
from gateway.domain.phone import Phone, sender_phone
from gateway.domain.providers import ProviderMail, from_a_provider, read_provider_mail
from gateway.domain.providers import ReportStatus as ProviderReport


class Kind(StrEnum):
    REPLY = "reply"
    BOUNCE = "bounce"
    DELIVERY_REPORT = "delivery_report"
    FEEDBACK = "feedback"
    AUTO_REPLY = "auto_reply"
    OWN_COPY = "own_copy"
    OTHER = "other"


class MailError(ValueError):
    """The bytes are not an email message; the message says what is wrong."""


def reading_failed(exc: Exception) -> str:
    """How a reader's own failure on a message (a bug, not bad mail: that is a MailError) is
    told, the same in the quarantine and in `gateway parse`: its kind and its words."""
    return f"reading failed: {type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who we are in the mailbox: the addresses we send from and the domain of our ids."""

    addresses: frozenset[str]  # lower-case From addresses of both routes
    domain: str  # the company domain: our Message-IDs and plus-addresses end with it
    default_region: str = "US"


@dataclass(frozen=True, slots=True)
class InboundMail:
    kind: Kind
    sender: str  # the From address, lower-case; "" when there is none
    subject: str
    message_id: str | None  # with angle brackets
    phone: Phone | None  # from a gateway address such as 2065550143@vtext.com
    carrier: str | None  # the carrier whose gateway domain the sender is on
    text: str  # what the person typed (a reply), or the report's own words
    in_reply_to: str | None
    referenced_ids: tuple[str, ...] = ()  # In-Reply-To, then References newest first
    plus_tokens: tuple[str, ...] = ()  # from our own address with +TOKEN it was sent to
    original_message_id: str | None = None  # a report's returned original
    recipients: tuple[Recipient, ...] = ()  # a bounce's failed recipients
    feedback_type: str | None = None
    attachments: tuple[str, ...] = ()  # content types of the non-text parts
    provider: str | None = None  # the email-to-SMS provider whose reply or report this is
    provider_report: ProviderReport | None = None  # what a provider's report says
    sent_at: dt.datetime | None = None  # its Date header, when it has a readable one


def _date(value: str) -> dt.datetime | None:
    """A Date header as an aware time; None when it is missing or cannot be read."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


_ANGLE_ID = re.compile(r"<[^<>\s]{1,250}>")
MAX_TEXT = 2000  # characters kept of a reply's text; a text message is never longer


def parse_mail(raw: bytes, carriers: CarrierBook, identity: Identity) -> InboundMail:
    """Classify and read one message. Raises MailError only when `raw` is not a message."""
    message = read_message(raw)
    sender = _sender(message)
    subject = header_text(message, "Subject")
    message_id = _first_id(header_text(message, "Message-ID"))
    in_reply_to = _first_id(header_text(message, "In-Reply-To"))
    referenced = _referenced_ids(message)
    attachments = tuple(
        content_type(part)
        for part in message.walk()
        if part.get_content_maintype() not in ("multipart", "text", "message")
    )
    domain = sender.rpartition("@")[2]
    carrier = carriers.by_domain(domain) if domain else None
    phone = None
    if carrier is not None:
        region = carrier.countries[0] if carrier.countries else identity.default_region
        phone = _phone(sender, region)
    base = InboundMail(
        kind=Kind.OTHER,
        sender=sender,
        subject=subject,
        message_id=message_id,
        phone=phone,
        carrier=carrier.id if carrier else None,
        text="",
        in_reply_to=in_reply_to,
        referenced_ids=referenced,
        plus_tokens=_plus_tokens(message, identity.domain),
        attachments=attachments,
        sent_at=_date(header_text(message, "Date")),
    )

    providers = carriers.providers
    if from_a_provider(providers, sender) and content_type(message) != "multipart/report":
        body = _first_text(message) or _html_text(message)
        found = read_provider_mail(providers, sender, subject, body)
        if found is not None:
            return _from_provider(base, found)

    report = read_report(message)
    if report is not None and report.kind == "bounce" and phone is not None:
        # Mail signed by a phone is what its owner typed ("Re: Delivery failure", "ask at
        # ann@example.net" reads like a report's letter): mail systems sign their reports with
        # their own addresses (Verizon's post_master@vtext.com), never a subscriber's number.
        report = None
    if report is not None:
        return replace(
            base,
            kind=Kind(report.kind),
            text=_clip(_first_text(message)),
            original_message_id=report.original_message_id,
            recipients=report.recipients,
            feedback_type=report.feedback_type,
        )
    ours_suffix = f"@{identity.domain.lower()}>"
    if sender in identity.addresses or (message_id or "").lower().endswith(ours_suffix):
        return replace(base, kind=Kind.OWN_COPY, text=_clip(_first_text(message)))
    names_ours = any(ref.lower().endswith(ours_suffix) for ref in referenced)
    if carrier is not None or names_ours or base.plus_tokens:
        return replace(base, kind=Kind.REPLY, text=reply_text(message, carrier))
    return replace(base, text=_clip(_first_text(message)))


def _from_provider(base: InboundMail, found: ProviderMail) -> InboundMail:
    """A provider's reply is a reply like a carrier's; its report becomes a delivery report, or
    a bounce naming the address we mailed for that number; one it words in a way its format
    does not know is `other`, for a person to read."""
    mail = replace(base, phone=found.phone, carrier=None, provider=found.provider.id)
    if found.report is None:
        return replace(mail, kind=Kind.REPLY, text=_clip(clean_text(found.text)))
    words = found.text or found.status_text
    mail = replace(mail, provider_report=found.report, text=_clip(words))
    if found.report is ProviderReport.DELIVERED:
        return replace(mail, kind=Kind.DELIVERY_REPORT)
    if found.report is ProviderReport.UNKNOWN or found.phone is None:
        return replace(mail, kind=Kind.OTHER)
    opted_out = found.report is ProviderReport.OPTED_OUT
    failed = Recipient(
        address=found.provider.address_for(found.phone),
        status="",
        smtp_code="",
        reason="optedout" if opted_out else "undefined",
        permanent=False,  # the provider's word on one text, not on the number
        diagnostic=_clip(f"{found.provider.name}: {words}")[:500],
    )
    return replace(mail, kind=Kind.BOUNCE, recipients=(failed,))


def read_message(raw: bytes) -> email.message.Message:
    """The parsed message; MailError when the bytes have no header section to speak of, or nest
    their parts too deeply or have too many of them (bounces.parse_bounded)."""
    if not raw.strip():
        raise MailError("the message is empty")
    head = raw[:4096].lstrip(b"\r\n")
    first_line = head.split(b"\n", 1)[0]
    if not re.match(rb"^[!-9;-~]+[ \t]*:", first_line) and not first_line.startswith(b"From "):
        raise MailError("the message does not start with a header line")
    try:
        message = parse_bounded(raw)
    except UnreadableMime as exc:
        raise MailError(str(exc)) from None
    if not message.keys():
        raise MailError("the message has no headers")
    if not (message.get("From") or message.get("Message-ID") or message.get("Received")):
        raise MailError("the message has neither From, Message-ID nor Received")
    return message


# --- who sent it ------------------------------------------------------------------------------


def _sender(message: email.message.Message) -> str:
    for name in ("From", "Sender", "Return-Path"):
        value = str(message.get(name) or "")
        if value:
            address = first_address(value).strip().lower()
            if "@" in address and len(address) <= 320:
                return address
    return ""


def _phone(sender: str, region: str) -> Phone | None:
    """The phone number a gateway address is for (2065550143@vtext.com)."""
    return sender_phone(sender.partition("@")[0].lstrip("+"), region)


def _first_id(value: str) -> str | None:
    found = _ANGLE_ID.search(value)
    return found.group(0) if found else None


def _referenced_ids(message: email.message.Message) -> tuple[str, ...]:
    ids = _ANGLE_ID.findall(header_text(message, "In-Reply-To"))
    ids += reversed(_ANGLE_ID.findall(header_text(message, "References")))
    return tuple(dict.fromkeys(ids))[:20]


def _plus_tokens(message: email.message.Message, domain: str) -> tuple[str, ...]:
    """Tokens of our plus-addresses (dispatch+TOKEN@domain) the message was addressed to."""
    suffix = "@" + domain.lower()
    found = []
    for name in ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To"):
        for value in message.get_all(name) or ():
            for _, address in addresses(str(value)):
                address = address.lower()
                local = address.removesuffix(suffix)
                if local != address and "+" in local:
                    token = local.split("+", 1)[1]
                    if re.fullmatch(r"[a-z0-9]{4,64}", token):
                        found.append(token)
    return tuple(dict.fromkeys(found))


# --- what they typed --------------------------------------------------------------------------

# A carrier's wrapper around a picture message, or a notice that one is waiting: not typed text.
_NOTICES = re.compile(
    r"^(this message was sent using|you have (new|received) |new (picture|video) mail|"
    r"uve received a|this is an mms message|you have a new (picture|video|multimedia)|"
    r"click go/view)",
    re.IGNORECASE,
)
# Where a carrier's footer or a quoted earlier message begins: everything from there is dropped.
# Carriers' own footers are data (carriers.yaml `reply_footers`), and a trailing paragraph naming
# the carrier is dropped by rule (without_carrier_footer); these lines are any mail's.
_FOOTER_LINE = re.compile(
    r"^(--\s*|={4,}.*|_{4,}.*|-{4,}.*|sent from my .*|sent using .*|"
    r"on .{1,200} wrote:\s*|-+\s*original message\s*-+\s*|>.*)$",
    re.IGNORECASE,
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A host name as a footer writes it (verizonwireless.com): labels bounded as RFC 1035 bounds them,
# so a search through a stranger's "a.a.a.a..." does not try every label at every position.
_WEBSITE = re.compile(r"\b(?:www\.)?((?:[a-z0-9-]{1,63}\.){1,10}[a-z]{2,6})\b")
# Parts a phone's MMS gives its typed text (text_0.txt, smil.txt, media2.txt, ...): all text/plain.
_MEDIA = ("image", "video", "audio", "application")


def reply_text(message: email.message.Message, carrier: Carrier | None = None) -> str:
    """The text a person typed on their phone, without carrier wrappers, footers or quotes
    (`carrier`'s own footers too, when the sender's carrier is known)."""
    texts: list[str] = []
    html_parts: list[email.message.Message] = []
    notice_seen = False
    for part in message.walk():
        kind = content_type(part)
        if kind == "text/plain":
            raw = payload_text(part)
            cleaned = without_carrier_footer(clean_text(raw), carrier)
            if cleaned:
                texts.append(cleaned)
            notice_seen = notice_seen or bool(_NOTICES.match(raw.strip()))
        elif kind == "text/html":
            html_parts.append(part)
    if texts:
        return _clip("\n".join(texts))
    has_media = any(part.get_content_maintype() in _MEDIA for part in message.walk())
    for part in html_parts:
        page = payload_text(part)
        # Picture-message pages are layout around a <pre> holding what was typed (Sprint);
        # any other page with pictures is a carrier's wrapper with nothing typed in it.
        reader = HtmlText()
        reader.read(page)
        wrapper = reader.saw_pre or has_media or notice_seen
        typed = reader.preformatted if wrapper else reader.text
        cleaned = without_carrier_footer(clean_text("\n".join(typed)), carrier)
        if cleaned:
            return _clip(cleaned)
    return ""


def without_carrier_footer(text: str, carrier: Carrier | None) -> str:
    """`text` without what its carrier appended: from a line where one of the carrier's
    `reply_footers` begins, and any trailing paragraph (after a blank line) that names the
    carrier, its brand or its website, as carriers' promotional footers do."""
    if carrier is None or not text:
        return text
    lines = text.split("\n")
    for index, line in enumerate(lines):
        said = " ".join(line.lower().split())
        if any(said.startswith(footer) for footer in carrier.reply_footers):
            lines = lines[:index]
            break
    paragraphs = _PARAGRAPH_BREAK.split("\n".join(lines).strip())
    while len(paragraphs) > 1 and _names_carrier(paragraphs[-1], carrier):
        paragraphs.pop()
    return "\n\n".join(paragraphs).strip()


def _names_carrier(paragraph: str, carrier: Carrier) -> bool:
    words = paragraph.lower()
    for brand in carrier.brand_words:
        if re.search(rf"(?<![a-z0-9]){re.escape(brand)}(?![a-z0-9])", words):
            return True
    # Its website, however written: verizonwireless.com, www.att.com, t-mobile.com.
    names = {re.sub(r"[^a-z0-9]", "", n.lower()) for n in (carrier.name, *carrier.aliases)}
    names = {n for n in names if len(n) >= 3}
    for host in _WEBSITE.findall(words):
        letters = re.sub(r"[^a-z0-9]", "", host.rsplit(".", 1)[0])
        if any(name in letters for name in names):
            return True
    return False


def clean_text(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for line in lines:
        if _FOOTER_LINE.match(line.strip()) and (kept or line.strip().startswith(">")):
            if line.strip().startswith(">"):
                continue
            break
        kept.append(line.rstrip())
    cleaned = "\n".join(kept).strip()
    if _NOTICES.match(cleaned):
        return ""
    return cleaned


def _html_text(message: email.message.Message) -> str:
    for part in message.walk():
        if content_type(part) == "text/html":
            return html_text(payload_text(part))
    return ""


def _first_text(message: email.message.Message) -> str:
    for part in message.walk():
        if content_type(part) == "text/plain":
            return payload_text(part)
    return ""


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


# --- keywords ---------------------------------------------------------------------------------


class Keyword(StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"


_KEYWORDS = {
    **dict.fromkeys(
        ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"),
        Keyword.STOP,
    ),
    **dict.fromkeys(("START", "UNSTOP", "YES"), Keyword.START),
    "HELP": Keyword.HELP,
}


def keyword_of(text: str) -> Keyword | None:
    """The keyword a reply consists of (STOP, START, HELP and their synonyms), if it is one.

    Only a reply that is the keyword alone counts ("Stop." does, "don't stop" does not), the
    way carriers and the CTIA handle short-code keywords."""
    word = re.sub(r"^[\W_]+|[\W_]+$", "", text.strip()).upper()
    return _KEYWORDS.get(word.replace(" ", "").replace("-", "")) if len(word) <= 20 else None
