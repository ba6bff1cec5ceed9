"""Reading inbound mail: replies in the shapes real carriers send, own copies, keywords."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.bounces import MAX_PART_DEPTH, MAX_PARTS
from gateway.domain.carriers_file import load_carriers
from gateway.domain.inbound import (
    Identity,
    Keyword,
    Kind,
    MailError,
    keyword_of,
    parse_mail,
)

REPLIES = Path(__file__).resolve().parents[1] / "data" / "corpus" / "replies"
CARRIERS = load_carriers((Path(__file__).resolve().parents[2] / "carriers.yaml").read_text())
US = Identity(frozenset({"dispatch@example.com", "relay@relay.example.net"}), "example.com")
EXPECTED = json.loads((REPLIES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replies_from_real_carriers(name):
    """Kind, phone, carrier and the typed text of each message in the replies corpus; `null` in
    expected.json means the corpus does not judge that field."""
    expected = EXPECTED[name]
    mail = parse_mail((REPLIES / name).read_bytes(), CARRIERS, US)
    assert mail.kind.value == expected["kind"]
    if expected["phone"] is not None:
        assert mail.phone is not None and mail.phone.national == expected["phone"]
    if expected["carrier"] is not None:
        assert mail.carrier == expected["carrier"]
    if expected["text"] is not None:
        assert " ".join(mail.text.split()) == expected["text"]


def test_a_local_only_number_is_no_phone():
    mail = parse_mail((REPLIES / "att-1.eml").read_bytes(), CARRIERS, US)
    assert mail.carrier == "att" and mail.phone is None  # 5551234@txt.att.net


def mail(headers: str, body: str = "On my way") -> bytes:
    return (headers.strip() + "\n\n" + body + "\n").encode()


def test_text_0_txt_attachment_and_image_give_the_typed_text():
    raw = mail(
        """From: 2065550143@vzwpix.com
To: dispatch@example.com
Subject:
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"
""",
        """--b
Content-Type: text/plain; charset=utf-8; name=text_0.txt
Content-Disposition: attachment; filename=text_0.txt

Gate code is 4412
--b
Content-Type: image/jpeg; name=IMAGE_0.jpg
Content-Transfer-Encoding: base64

/9j/4AAQSkZJRg==
--b--""",
    )
    found = parse_mail(raw, CARRIERS, US)
    assert (found.kind, found.text, found.carrier) == (Kind.REPLY, "Gate code is 4412", "verizon")
    assert found.phone is not None and found.phone.e164 == "+12065550143"
    assert found.attachments == ("image/jpeg",)


def test_quoted_history_is_dropped():
    raw = mail(
        "From: 2065550143@vtext.com\nTo: dispatch@example.com",
        "Leave it at the back door\n\nOn Tue, Nov 24, 2026, Dispatch wrote:\n> Your order is out",
    )
    assert parse_mail(raw, CARRIERS, US).text == "Leave it at the back door"


def test_a_reply_naming_our_message_is_a_reply_from_any_sender():
    raw = mail(
        "From: someone@mms.newprovider.example\nTo: dispatch@example.com\n"
        "In-Reply-To: <abc123@example.com>\nReferences: <old@example.com> <abc123@example.com>"
    )
    found = parse_mail(raw, CARRIERS, US)
    assert found.kind is Kind.REPLY and found.phone is None and found.carrier is None
    assert found.in_reply_to == "<abc123@example.com>"
    assert found.referenced_ids == ("<abc123@example.com>", "<old@example.com>")


def test_plus_token_makes_a_reply_and_is_read():
    raw = mail("From: friend@elsewhere.example\nTo: Dispatch <dispatch+a1b2c3d4@example.com>")
    found = parse_mail(raw, CARRIERS, US)
    assert found.kind is Kind.REPLY and found.plus_tokens == ("a1b2c3d4",)


def test_address_headers_nesting_comments_thousands_deep_are_read_as_naming_no_one():
    """The email package's address parser calls itself once per nested comment or group
    ("a: b: c@d;;"): a To opening some 580 comments ran it out of stack (found by `make fuzz`,
    2026-12-07, seed 27182). Such a header names no address; the rest of the message is read as
    usual."""
    deep = "(" * 5000
    raw = mail(
        f"From: {deep}x <2065550143@vtext.com>\nTo: {deep}<dispatch+a1b2c3d4@example.com>\n"
        f"Delivered-To: {'g:' * 5000}dispatch+a1b2c3d4@example.com\n"
        "Cc: Dispatch <dispatch+e5f6a7b8@example.com>"
    )
    found = parse_mail(raw, CARRIERS, US)
    assert found.sender == "" and found.phone is None
    assert found.plus_tokens == ("e5f6a7b8",)


def nested_parts(depth: int, kind: str = "multipart") -> bytes:
    """A message nesting `depth` multiparts (or attached messages) one inside the other."""
    head = "From: friend@elsewhere.example\r\nTo: dispatch@example.com\r\nMIME-Version: 1.0\r\n"
    if kind == "multipart":
        levels = "".join(
            f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'
            for i in range(depth)
        )
        return (head + levels + "Content-Type: text/plain\r\n\r\nhello\r\n").encode()
    levels = "Content-Type: message/rfc822\r\n\r\n" * depth
    return (head + levels + "From: x@example.net\r\n\r\nhello").encode()


@pytest.mark.parametrize("kind", ["multipart", "message"])
def test_parts_nested_past_the_bound_are_refused_saying_so(kind):
    """The email package parses, walks and writes parts by calling itself once a level: a
    stranger's message nesting a thousand ran it out of stack. Refused with a reason instead,
    whether the parser itself runs out or the message parses and nests past the bound."""
    assert parse_mail(nested_parts(10, kind), CARRIERS, US).sender == "friend@elsewhere.example"
    with pytest.raises(MailError, match=f"more than {MAX_PART_DEPTH} deep"):
        parse_mail(nested_parts(MAX_PART_DEPTH + 10, kind), CARRIERS, US)
    with pytest.raises(MailError, match="nests its parts too deeply to read"):
        parse_mail(nested_parts(5000, kind), CARRIERS, US)


@pytest.mark.parametrize(
    "body",
    [
        # A multipart of a hundred thousand empty parts.
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + "--b\r\n\r\n" * 100_000,
        # A delivery-status part of a hundred thousand blocks, one a blank line.
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n" + "\r\n" * 100_000,
    ],
)
def test_a_message_of_more_parts_than_the_bound_is_refused_before_it_is_all_parsed(body):
    """The email package makes an object of every part (and of every block of a delivery-status
    part): a stranger's megabyte of tiny parts took hundreds of megabytes to hold. The parser
    is stopped at the bound instead, with a reason."""
    raw = f"From: MAILER-DAEMON@relay.example.org\r\nMIME-Version: 1.0\r\n{body}".encode()
    with pytest.raises(MailError, match=f"more than {MAX_PARTS} parts"):
        parse_mail(raw, CARRIERS, US)


def test_our_own_mail_is_an_own_copy_not_a_reply():
    raw = mail(
        "From: Dispatch <dispatch@example.com>\nTo: 2065550143@vtext.com\n"
        "Message-ID: <tok@example.com>\nIn-Reply-To: <tok0@example.com>"
    )
    assert parse_mail(raw, CARRIERS, US).kind is Kind.OWN_COPY


def test_unrelated_mail_is_other():
    raw = mail("From: newsletter@shop.example\nTo: dispatch@example.com\nSubject: Sale")
    assert parse_mail(raw, CARRIERS, US).kind is Kind.OTHER


def test_a_carrier_bounce_with_re_and_in_reply_to_is_a_bounce():
    """Verizon's bounce comes from post_master@vtext.com with `Re:` and In-Reply-To."""
    raw = (
        Path(__file__).resolve().parents[1] / "data/corpus/bounces/mail/lhost-verizon-02.eml"
    ).read_bytes()
    found = parse_mail(raw, CARRIERS, US)
    assert found.kind is Kind.BOUNCE
    assert [r.address for r in found.recipients] == ["may-be-straycat-nyaaaaaan@vtext.com"]
    assert found.recipients[0].permanent


@pytest.mark.parametrize(
    "subject", ["Re: Delivery failure - order 1042", "Re: Your order was rejected", "Undelivered?"]
)
def test_a_phones_reply_whose_subject_reads_like_a_reports_is_a_reply(subject):
    raw = mail(
        f"From: 2065550143@vtext.com\nTo: dispatch@example.com\nSubject: {subject}",
        "Leave it with my neighbour, ask at ann@example.net",
    )
    found = parse_mail(raw, CARRIERS, US)
    assert found.kind is Kind.REPLY and found.recipients == ()
    assert found.text == "Leave it with my neighbour, ask at ann@example.net"


def test_auto_reply():
    raw = mail("From: boss@partner.example\nAuto-Submitted: auto-replied\nSubject: Out of office")
    assert parse_mail(raw, CARRIERS, US).kind is Kind.AUTO_REPLY


@pytest.mark.parametrize("raw", [b"", b"   \n", b"\x00\x01binary garbage", b"no header here\n"])
def test_bytes_that_are_not_a_message_are_refused(raw):
    with pytest.raises(MailError):
        parse_mail(raw, CARRIERS, US)


def test_markup_the_html_parser_chokes_on_is_read_up_to_there():
    # Found by the fuzz run: html.parser raises AssertionError on a marked section such as
    # "<![Type x]>"; the text before it is the reply.
    raw = (b"From: 2065550143@vtext.com\nContent-Type: text/html\n\n"
           b"<p>Leave it at the door</p><![Type x]><p>never read</p>")  # fmt: skip
    found = parse_mail(raw, CARRIERS, US)
    assert (found.kind, found.text) == (Kind.REPLY, "Leave it at the door")


def test_a_content_type_that_lost_its_semicolon_still_gives_the_typed_text():
    # "text/plain<newline>  charset=...": the email package reads the whole value as the type.
    raw = mail(
        """From: 2065550143@vzwpix.com
To: dispatch@example.com
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"
""",
        """--b
Content-Type: text/plain
   charset="utf-8"

Gate code is 4412
--b
Content-Type: image/jpeg
   name="IMAGE_0.jpg"
Content-Transfer-Encoding: base64

/9j/4AAQSkZJRg==
--b--""",
    )
    found = parse_mail(raw, CARRIERS, US)
    assert (found.text, found.attachments) == ("Gate code is 4412", ("image/jpeg",))


@pytest.mark.parametrize("charset", ['"utf\x00-8"', "x-no-such-charset", '"\x00"'])
def test_a_charset_no_codec_can_have_is_read_as_utf8(charset):
    # Found by the fuzz run (tests/faults/test_fuzz.py): a NUL in the charset name made
    # bytes.decode raise ValueError, which nothing caught.
    raw = f"From: 2065550143@vtext.com\nContent-Type: text/plain; charset={charset}\n\nok".encode()
    assert parse_mail(raw, CARRIERS, US).text == "ok"


def test_eight_bit_text_under_a_charset_with_a_nul_is_read():
    # Found by the fuzz run on another machine: for 8-bit text the email package decodes the
    # undecoded payload by the part's charset name itself, and a NUL in that name raised
    # ValueError out of get_payload() (in the bounce reader's search for indented delimiters).
    raw = (
        b"From: MAILER-DAEMON@example.net\r\nSubject: undeliverable\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; boundary="b"\r\n\r\n--b\r\n'
        b'Content-Type: text/plain; charset="a\x00b"\r\n\r\n  --b\r\nhello \xff\xfe\r\n--b--\r\n'
    )
    assert "hello" in parse_mail(raw, CARRIERS, US).text  # it raised ValueError before


def test_a_report_whose_parameters_the_email_package_cannot_order_is_still_read():
    # Found by the fuzz run (seed 4711): a parameter given both whole and in numbered pieces
    # (RFC 2231) made every getter of that header raise TypeError, the parser's own included.
    raw = (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; boundary="b"; x*=a; x*0=b\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset*=us-ascii; charset*5=x\r\n\r\n"
        b"<2065550143@vtext.com>: 550 5.1.1 User unknown\r\n--b--\r\n"
    )
    found = parse_mail(raw, CARRIERS, US)
    assert found.kind == "bounce"
    assert [r.address for r in found.recipients] == ["2065550143@vtext.com"]


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_any_bytes_give_a_result_or_mail_error(data):
    with contextlib.suppress(MailError):
        parse_mail(data, CARRIERS, US)


@settings(max_examples=200)
@given(st.text(max_size=500))
def test_any_header_text_gives_a_result_or_mail_error(text):
    with contextlib.suppress(MailError):
        parse_mail(f"From: {text}\nSubject: {text}\n\n{text}".encode(), CARRIERS, US)


# --- structured hostile MIME ----------------------------------------------------------------

CHARSETS = st.sampled_from(["utf-8", "us-ascii", "iso-8859-1", "utf-16", "utf-7", "shift_jis",
                            "x-no-such-charset", "", "utf-8\"; boundary=x", "koi8-r"])  # fmt: skip
ENCODINGS = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode",
                             "binary", "base-64", ""])  # fmt: skip
JUNK = st.binary(max_size=300)
# RFC 2231 parameters, well and badly formed: a parameter given both whole and in numbered
# pieces is one the email package cannot order (found by the fuzzer).
EXTENDED = st.sampled_from(["", "; title*=utf-8''caf%C3%A9", "; title*0=a; title*1=b",
                            "; title*=x; title*0=y", "; charset*=us-ascii; charset*5=x",
                            "; filename*1=a; filename*=b", "; x*0*=utf-8''%; x*=z"])  # fmt: skip


@st.composite
def mime_part(draw, depth: int = 0) -> bytes:
    """A MIME part as a stranger's mail client (or a fuzzer) might write it: nested multiparts
    with missing or lying boundaries, charsets that do not exist or do not match the bytes,
    broken transfer encodings, attached messages, encoded words that do not decode."""
    kind = draw(st.sampled_from(["text/plain", "text/html", "image/jpeg", "message/rfc822"]
                                + (["multipart/mixed", "multipart/alternative",
                                    "multipart/related"] if depth < 4 else [])))  # fmt: skip
    multipart = kind.startswith("multipart/")
    boundary = draw(st.sampled_from(["b1", "", "b1\r\n--b1", "a" * 80, "=_x"])) if multipart else ""
    named = f'boundary="{boundary}"' if multipart else f'charset="{draw(CHARSETS)}"'
    headers = [f"Content-Type: {kind}; {named}{draw(EXTENDED)}"]
    headers.append(f"Content-Transfer-Encoding: {draw(ENCODINGS)}")
    if draw(st.booleans()):
        name = draw(st.text(max_size=30))
        headers.append(f'Content-Disposition: attachment; filename="{name}"{draw(EXTENDED)}')
    if multipart:
        children = draw(st.lists(mime_part(depth + 1), max_size=4))
        closing = draw(st.sampled_from([f"--{boundary}--", "", f"--{boundary}"]))
        body = b"".join(f"--{boundary}\r\n".encode() + child + b"\r\n" for child in children)
        body += closing.encode() + b"\r\n"
    elif kind == "message/rfc822":
        body = draw(mime_message(depth + 1)) if depth < 4 else draw(JUNK)
    else:
        body = draw(JUNK)
    return ("\r\n".join(headers) + "\r\n\r\n").encode(errors="replace") + body


@st.composite
def mime_message(draw, depth: int = 0) -> bytes:
    subject = draw(st.sampled_from(["", "=?utf-8?B?!!not-base64?=", "=?x-nope?Q?hi?=",
                                    "Re: =?utf-8?Q?caf=C3=A9?=", "\x00"]))  # fmt: skip
    sender = draw(st.sampled_from(["2065550143@vtext.com", "+447400123456@sms.textapp.net",
                                   "reports@provider.example", "<>", "a@b@c", "",
                                   "(" * 5000 + "x <2065550143@vtext.com>"]))  # fmt: skip
    # Comments or groups nested thousands deep ran the email package's address parser out of
    # stack.
    to = draw(st.sampled_from(["dispatch@example.com", "Desk <dispatch+ab12@example.com>",
                               "(" * 5000 + "<dispatch+ab12@example.com>", '"(" <d@example.com>',
                               "g:" * 5000 + "dispatch+ab12@example.com"]))  # fmt: skip
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\n")  # fmt: skip
    return head.encode(errors="replace") + draw(mime_part(depth))


@settings(max_examples=300, deadline=None)
@given(mime_message())
def test_hostile_mime_gives_a_result_or_mail_error(raw):
    """Nested multiparts, broken boundaries, bad charsets and encodings, attached messages:
    a result with bounded text, or a refusal that says why, never another exception."""
    try:
        found = parse_mail(raw, CARRIERS, US)
    except MailError as exc:
        assert str(exc)
        return
    assert found.kind in set(Kind) and len(found.text) <= 2000


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", Keyword.STOP),
        ("  stop. ", Keyword.STOP),
        ("Unsubscribe!", Keyword.STOP),
        ("opt-out", Keyword.STOP),
        ("Quit", Keyword.STOP),
        ("STOPALL", Keyword.STOP),
        ("start", Keyword.START),
        ("Unstop", Keyword.START),
        ("yes!", Keyword.START),
        ("help?", Keyword.HELP),
        ("please stop texting me", None),
        ("don't stop", None),
        ("", None),
        ("Stopping by at 5", None),
    ],
)
def test_keywords(text, keyword):
    assert keyword_of(text) is keyword


@pytest.mark.parametrize(
    ("sender", "body", "typed"),
    [
        # A carrier's promotional paragraph after what was typed: its name, or its website.
        ("2065550143@vzwpix.com", "Running 5 min late\n\nGet more from your phone with "
         "Verizon Wireless. Learn more at www.verizonwireless.com/mms", "Running 5 min late"),
        ("2065550143@tmomail.net", "Be there soon\n\nThis message was sent from a wireless "
         "phone. Visit t-mobile.com for more.", "Be there soon"),
        ("2065550143@mms.att.net", "Gate code 4411\n\nAT&T: more ways to share, at att.com",
         "Gate code 4411"),
        # The carrier named by the person is kept: nothing follows a blank line, or it is the
        # only paragraph.
        ("2065550143@vtext.com", "My Verizon phone is broken, call my wife",
         "My Verizon phone is broken, call my wife"),
        ("2065550143@vtext.com", "Hi\n\nLeave it at the door", "Hi Leave it at the door"),
    ],
)  # fmt: skip
def test_a_trailing_paragraph_naming_the_carrier_is_its_footer(sender, body, typed):
    raw = mail(f"From: {sender}\nTo: dispatch@example.com\nSubject:", body)
    parsed = parse_mail(raw, CARRIERS, US)
    assert parsed.kind is Kind.REPLY and " ".join(parsed.text.split()) == typed


def test_a_carriers_listed_footer_is_cut_where_it_begins():
    raw = mail("From: 2065550143@txt.att.net\nTo: dispatch@example.com\nSubject:",
               "See you at 5\nThis mobile text message is brought to you by AT&T")  # fmt: skip
    assert parse_mail(raw, CARRIERS, US).text == "See you at 5"
    other = mail("From: 2065550143@vtext.com\nTo: dispatch@example.com\nSubject:",
                 "See you at 5\nThis mobile text message is brought to you by AT&T")  # fmt: skip
    assert "brought to you" in parse_mail(other, CARRIERS, US).text  # AT&T's, not Verizon's
