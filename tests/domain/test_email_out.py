import datetime as dt
import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.email_out import (
    AddressError,
    HeaderInjectionError,
    Mailbox,
    OutboundEmail,
    build_email,
    message_id_for,
)

WHEN = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def mail(**changes):
    fields = dict(
        sender=Mailbox.parse("Dispatch <dispatch@example.com>"),
        to="2025550143@vtext.com",
        message_id="<abc@example.com>",
        date=WHEN,
        body="Your order is out for delivery.",
    )
    fields.update(changes)
    return OutboundEmail(**fields)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_plain_text_empty_subject_no_html():
    data = build_email(mail())
    message = parse(data)
    assert message["Subject"] == "" and message["To"] == "2025550143@vtext.com"
    assert message["Message-ID"] == "<abc@example.com>"
    assert message.get_content_type() == "text/plain" and not message.is_multipart()
    assert message.get_content().strip() == "Your order is out for delivery."
    assert b"\r\n\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")


def test_non_ascii_body_and_name_round_trip():
    message = parse(
        build_email(mail(sender=Mailbox.parse("Chloé <d@example.com>"), body="Déjà 😀"))
    )
    assert str(message["From"]) == "Chloé <d@example.com>"
    assert message.get_content().strip() == "Déjà 😀"


def test_reply_to_when_given():
    message = parse(build_email(mail(reply_to=Mailbox.parse("dispatch@example.com"))))
    assert message["Reply-To"] == "dispatch@example.com"


INJECTIONS = [
    "x\r\nBcc: victim@example.org",
    "x\nBcc: victim@example.org",
    "x\rBcc: v@e.org",
    "x\x00",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["to", "subject", "message_id"])
def test_line_breaks_in_any_header_value_are_refused(field, payload):
    with pytest.raises((HeaderInjectionError, ValueError)):
        build_email(mail(**{field: "2025550143@vtext.com" + payload if field == "to" else payload}))


@pytest.mark.parametrize("payload", INJECTIONS)
def test_line_breaks_in_addresses_are_refused(payload):
    with pytest.raises(ValueError):
        Mailbox.parse("Dispatch" + payload + " <d@example.com>")
    with pytest.raises(ValueError):
        Mailbox.parse("d@example.com" + payload)


def test_line_breaks_in_a_display_name_set_directly_are_refused():
    with pytest.raises(HeaderInjectionError):
        build_email(mail(sender=Mailbox("d@example.com", "Dispatch\r\nBcc: v@e.org")))


def test_body_cannot_inject_headers():
    message = parse(build_email(mail(body="\r\nBcc: victim@example.org\r\n\r\nhi")))
    assert message["Bcc"] is None


@pytest.mark.parametrize("bad", ["a b@c.com", "Foo <a@b.com>, c@d.com", "nobody", "<>"])
def test_one_plain_address_only(bad):
    with pytest.raises(AddressError):
        Mailbox.parse(bad)


def test_an_address_nesting_thousands_deep_is_refused_with_a_reason():
    """The email package's address parser calls itself once per nested comment or group: a
    typed Reply-To opening hundreds of either ran it out of stack instead of saying what is
    wrong (`make fuzz`, 2026-12-07, seed 27182)."""
    with pytest.raises(AddressError, match="too deeply nested"):
        Mailbox.parse("(" * 5000 + "x <dispatch@example.com>", "reply_to")
    with pytest.raises(AddressError, match="too deeply nested"):
        Mailbox.parse("g:" * 5000 + "dispatch@example.com", "reply_to")
    assert Mailbox.parse("Dispatch (front desk) <d@example.com>").address == "d@example.com"


def test_message_id_is_bracketed_on_the_company_domain():
    assert message_id_for("f00d", "example.com") == "<f00d@example.com>"
    with pytest.raises(ValueError):
        message_id_for("a b", "example.com")


def test_naive_date_is_refused():
    with pytest.raises(ValueError):
        build_email(mail(date=dt.datetime(2026, 1, 1)))


def test_long_lines_are_wrapped_by_quoted_printable():
    data = build_email(mail(body="x" * 5000))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert parse(data).get_content().strip() == "x" * 5000


@given(st.text(max_size=300), st.text(max_size=40))
def test_any_body_and_subject_build_or_are_refused(body, subject):
    try:
        data = build_email(mail(body=body, subject=subject))
    except HeaderInjectionError:
        assert any(ch in subject for ch in "\r\n\x00")
        return
    message = parse(data)
    assert message["Bcc"] is None
    assert len([k for k in message if k.lower() == "to"]) == 1
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    content = message.get_content().replace("\r\n", "\n")
    assert content.rstrip("\n") == expected.rstrip("\n")


@pytest.mark.parametrize("body", ["plain ascii", "Déjà vu"])
def test_always_declared_utf8_plain_text(body):
    message = parse(build_email(mail(body=body)))
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
