"""MIME repair and reading: reports whose boundary was lost or whose delimiters are indented,
headers whose parameters the email package cannot read, parts whose charset or transfer encoding
lies, the report's own text apart from the returned original, and the original's Message-ID (our
own id, which ties a report to its text)."""

from __future__ import annotations

import copy
import email.errors
import email.header
import email.message
import email.policy
import re
from collections.abc import Callable, Iterator
from email.policy import Policy
from functools import cached_property
from typing import Any

from gateway.domain.bounces.codes import ADDRESS, MESSAGE_ID
from gateway.domain.html_text import html_text

# Where the returned original starts in a text report; the report text is what comes before.
_ORIGINAL_MARKERS = re.compile(
    r"^(?:-+ ?(?:this is a copy|below this line|original message|the original message|"
    r"returned message|message header follows|text of the message|undelivered message)|"
    r"-{3,}\s*original message\s*-{3,}|"
    r"the original message (?:was|headers)|"
    r"------ ?(?:this is|a copy)|"
    # Indented on its own line: "\s*" would also run over every blank line before it, from every
    # line start, which a body of blank lines made take time growing with its square.
    r"[ \t]*----- (?:transcript|unsent message|original)|"
    r"return-path:|received: from)",
    re.IGNORECASE | re.MULTILINE,
)


# Headers whose parameters the email package decodes by RFC 2231 when any one is asked for.
_PARAMETER_HEADERS = ("content-type", "content-disposition")


class TolerantMessage(email.message.Message):
    """A message whose parameters can always be read. The email package cannot order an
    extended (RFC 2231) parameter given both whole ("name*=") and in numbered pieces
    ("name*0="): it raises TypeError for every parameter of that header, which each of its
    getters (boundary, charset, file name) asks for, its parser included. Such a header is read
    by its plain parameters only. The parser makes every part of this class when given it."""

    def get_params(self, *args: Any, **kwargs: Any) -> Any:
        return self._tolerantly(email.message.Message.get_params, 1, args, kwargs)

    def get_param(self, *args: Any, **kwargs: Any) -> Any:
        return self._tolerantly(email.message.Message.get_param, 2, args, kwargs)

    def _tolerantly(
        self,
        getter: Callable[..., Any],
        header_at: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """`getter` as the email package has it, or where that cannot order the header's
        parameters, the same getter on its plain ones. The header is the getter's argument
        `header`, given by keyword or at `header_at`."""
        try:
            return getter(self, *args, **kwargs)
        except TypeError:
            header = args[header_at] if len(args) > header_at else kwargs.get("header")
            header = header or "content-type"
            plain = email.message.Message()
            plain[header] = _plain_parameters(str(self[header]))
            return getter(plain, *args, **kwargs)


def _plain_parameters(value: str) -> str:
    """A header's value without its extended (RFC 2231, "name*") parameters."""
    kind, *parameters = value.split(";")
    return ";".join([kind, *(p for p in parameters if "*" not in p.partition("=")[0])])


def with_readable_parameters(message: email.message.Message) -> email.message.Message:
    """`message`, or a copy of it whose parameters can all be read (see TolerantMessage),
    for a message parsed without that class: a header whose parameters the email package
    cannot read keeps its plain ones."""
    if isinstance(message, TolerantMessage):  # the parser made its parts of that class too
        return message
    if not any(_unreadable(part, h) for part in message.walk() for h in _PARAMETER_HEADERS):
        return message
    repaired = copy.deepcopy(message)
    for part in repaired.walk():
        for header in _PARAMETER_HEADERS:
            if _unreadable(part, header):
                part.replace_header(header, _plain_parameters(str(part[header])))
    return repaired


def _unreadable(part: email.message.Message, header: str) -> bool:
    if part.get(header) is None:
        return False
    try:
        part.get_params(header=header)
    except TypeError:
        return True
    return False


# How deep a message may nest its parts (a multipart in a multipart, a message attached to a
# message), and how many it may have. The email package parses, walks and writes nested parts by
# calling itself once a level, so a stranger's message nesting a thousand ran it out of stack;
# and it makes an object of every part, so a million tiny ones ("--b" over and over, or blank
# lines in a delivery-status part, each a block) took hundreds of megabytes a megabyte. Real
# mail, forwarded reports and a list's bounce for hundreds of recipients included, stays far
# inside both.
MAX_PART_DEPTH = 50
MAX_PARTS = 2000


class UnreadableMime(ValueError):
    """A message that nests its parts too deeply, or has too many, to be read safely; the
    message says which."""


class _CountedParts:
    """The parser's part factory: TolerantMessage parts, and a stop past MAX_PARTS, raised from
    inside the parser before it makes the next one."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, policy: Policy = email.policy.compat32) -> TolerantMessage:
        self.made += 1
        # One more than the parts: the parser makes one first to learn how to call its factory.
        if self.made > MAX_PARTS + 1:
            raise UnreadableMime(f"the message has more than {MAX_PARTS} parts")
        return TolerantMessage(policy=policy)


def parse_bounded(data: bytes | str) -> email.message.Message:
    """`data` parsed as a message of TolerantMessage parts; UnreadableMime where it nests its
    parts more than MAX_PART_DEPTH deep or has more than MAX_PARTS of them."""
    parts = _CountedParts()
    try:
        if isinstance(data, str):
            message = email.message_from_string(data, parts, policy=email.policy.compat32)
        else:
            message = email.message_from_bytes(data, parts, policy=email.policy.compat32)
    except RecursionError:
        raise UnreadableMime("the message nests its parts too deeply to read") from None
    if part_depth(message) > MAX_PART_DEPTH:
        raise UnreadableMime(f"the message nests its parts more than {MAX_PART_DEPTH} deep")
    return message


def part_depth(message: email.message.Message) -> int:
    """How deep `message` nests its parts (1 for a single part), counted without calling
    itself, so that the count cannot run out of stack either."""
    deepest = 0
    pending = [(message, 1)]
    while pending:
        part, depth = pending.pop()
        deepest = max(deepest, depth)
        children = part.get_payload() if part.is_multipart() else []
        pending.extend(
            (child, depth + 1) for child in children if isinstance(child, email.message.Message)
        )
    return deepest


def _parsed_again(text: str, unrepaired: email.message.Message) -> email.message.Message:
    """`text` parsed as a message, or `unrepaired` where the text nests its parts too deeply or
    has too many (a report's body may hold what its own headers did not let the parser see)."""
    try:
        return parse_bounded(text)
    except UnreadableMime:
        return unrepaired


def with_boundary(message: email.message.Message) -> email.message.Message:
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
    body = part_payload(message)
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
    return _parsed_again(rebuilt, message)


def _with_delimiters_unindented(message: email.message.Message) -> email.message.Message:
    boundary = message.get_boundary()
    if not boundary:
        return message
    indented = re.compile(rf"^[ \t]+(--{re.escape(boundary)}(?:--)?[ \t]*)$", re.MULTILINE)
    for part in message.walk():
        payload = part_payload(part)
        if isinstance(payload, str) and indented.search(payload):
            try:
                written = message.as_string()
            except (email.errors.MessageError, LookupError, ValueError):
                # A header the email package parsed but will not write back (one that seems
                # to hold another header, a charset it does not know or whose name holds a
                # NUL, text it cannot encode): read it unrepaired.
                return message
            return _parsed_again(indented.sub(r"\1", written), message)
    return message


# Parts that return the original: RFC 3464's message/rfc822, and RFC 6533's message/global and
# message/global-headers (its headers alone) for mail sent with SMTPUTF8. The email package
# parses each as a message. RETURNED adds text/rfc822-headers, which it keeps as text.
RETURNED_MESSAGE = ("message/rfc822", "message/global", "message/global-headers")
RETURNED = (*RETURNED_MESSAGE, "text/rfc822-headers")


def _returned_message(part: email.message.Message) -> email.message.Message | None:
    """The original `part` returns whole (or its headers alone), where it is such a part."""
    if part.get_content_type() not in RETURNED_MESSAGE:
        return None
    inner = part_payload(part)
    if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
        return inner[0]
    return None


def returned_recipients(message: email.message.Message) -> list[str]:
    for part in message.walk():
        original = _returned_message(part)
        if original is not None:
            to = str(original.get("To", ""))
            return list(dict.fromkeys(a.lower() for a in ADDRESS.findall(to)))[:5]
    return []


def _own_parts(message: email.message.Message) -> Iterator[email.message.Message]:
    """The message's parts in order, not looking inside a part that holds another message
    or a status part's blocks (the email package holds each as a part with parts, and a
    block, having no type of its own, reads as text/plain)."""
    yield message
    payload = part_payload(message)
    if message.get_content_maintype() == "multipart" and isinstance(payload, list):
        for part in payload:
            if isinstance(part, email.message.Message):
                yield from _own_parts(part)


def human_text(message: email.message.Message) -> str:
    """The report's own text, without the returned original: its plain text, or where it has
    none before the original, the text its HTML shows."""
    html: email.message.Message | None = None
    for part in _own_parts(message):
        if content_type(part) in RETURNED:
            break  # the returned original: its text is ours, not the report's
        if part.is_multipart():
            continue
        if content_type(part) == "text/html":
            if html is None:
                html = part  # read only if no plain text follows
            continue
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
    return html_text(payload_text(html)) if html is not None else ""


# The content types of a standard report's status part.
DELIVERY_STATUS = ("message/delivery-status", "message/global-delivery-status")
# A mailbox's "From " line, with which a message quoted whole in a letter begins ("From
# MAILER-DAEMON  Thu Apr 29 23:34:45 2015").
_MBOX_FROM = re.compile(
    r"^From \S+ +\w{3} \w{3} +\d{1,2} \d\d:\d\d:\d\d \d{4}[ \t]*$", re.MULTILINE
)


def forwarded_report(message: email.message.Message) -> email.message.Message | None:
    """A standard report (RFC 3464) that a letter quotes whole after a mailbox's "From " line,
    as a postmaster forwards the report they were sent: that report, parsed; None where the
    letter's text quotes none."""
    text_part = find_part(message, "text/plain")
    if text_part is None or text_part.is_multipart():
        return None
    text = payload_text(text_part)
    start = _MBOX_FROM.search(text)
    if start is None:
        return None
    try:
        quoted = parse_bounded(text[start.end() :].lstrip("\r\n"))
    except UnreadableMime:
        return None
    return quoted if find_part(quoted, *DELIVERY_STATUS) is not None else None


def reporter_domain(message: email.message.Message) -> str:
    """The domain the report came from (its From), lower case; "" when it names none."""
    found = ADDRESS.search(str(message.get("From", "")))
    return found.group(0).rpartition("@")[2].lower() if found else ""


class ReportMail:
    """A report as it arrived, with what each step of reading it asks for (the report's own
    text, the domain it came from, the returned original's Message-ID) worked out at most once
    and only when asked for: a report is read by several readers in turn."""

    def __init__(self, message: email.message.Message) -> None:
        self.message = message

    @cached_property
    def text(self) -> str:
        """The report's own text (`human_text`)."""
        return human_text(self.message)

    @cached_property
    def reporter(self) -> str:
        """The domain the report came from (`reporter_domain`)."""
        return reporter_domain(self.message)

    @cached_property
    def original_id(self) -> str | None:
        """The Message-ID of the returned original: our own id, which ties the bounce to its
        text. From the returned original or its headers, else where the report's text quotes
        it."""
        found = _returned_id(self.message)
        if found is None:
            match = MESSAGE_ID.search(self.text)
            found = match.group(1) if match else None
        return found


def _returned_id(message: email.message.Message) -> str | None:
    """The Message-ID of the original a report returns whole, or of the headers it returns."""
    for part in message.walk():
        original = _returned_message(part)
        if original is not None:
            found = str(original.get("Message-ID", "")).strip()
            if found:
                return found
        elif part.get_content_type() == "text/rfc822-headers":
            match = MESSAGE_ID.search(payload_text(part))
            if match:
                return match.group(1)
    return None


def header_text(message: email.message.Message, name: str) -> str:
    """A header's text with its RFC 2047 encoded words decoded ("=?utf-8?B?...?=", as mail
    systems write a subject in another language), on one line."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        decoded = email.header.decode_header(str(value))
        text = "".join(
            part.decode(charset or "ascii", "replace") if isinstance(part, bytes) else part
            for part, charset in decoded
        )
    except (LookupError, ValueError, email.errors.HeaderParseError):
        text = str(value)
    return " ".join(text.split())[:1000]


def find_part(message: email.message.Message, *types: str) -> email.message.Message | None:
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
        inner = part_payload(part)
        if isinstance(inner, list):
            return "\n\n".join(
                payload_text(p) for p in inner if isinstance(p, email.message.Message)
            )
        return ""
    try:
        data = part.get_payload(decode=True)
    except ValueError:  # UnicodeEncodeError: see _held_text
        return _held_text(part)
    if not isinstance(data, bytes):
        payload = part_payload(part)
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # no such codec, or a name no codec can have (a NUL)
        return data.decode("utf-8", "replace")


def part_payload(part: email.message.Message) -> Any:
    """A part's payload as the email package holds it (a list of parts, or the undecoded text).
    The package decodes stray 8-bit text by the part's charset name and raises ValueError when
    that name holds a NUL (LookupError is caught inside it): such text is read as UTF-8, and
    text its getters cannot give at all (see _held_text) as it is held."""
    try:
        return part.get_payload()
    except ValueError:
        pass
    try:
        data = part.get_payload(decode=True)
    except ValueError:
        return _held_text(part)
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


def _held_text(part: email.message.Message) -> str:
    """A part's text as the email package holds it, where its getters cannot give it: they
    write held text out as ASCII with escaped bytes, which raises UnicodeEncodeError when the
    text holds characters beyond ASCII beside escaped bytes (a message rebuilt from text the
    package had decoded). Read without decoding its transfer encoding."""
    held = getattr(part, "_payload", None)  # the package's own field: no getter reads it as is
    if not isinstance(held, str):
        return ""
    try:  # escaped bytes back to the bytes they were (UTF-8 text among them reads again)
        data = held.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that escapes no byte: kept as a replacement mark
        data = held.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")
