"""Email-to-SMS providers: their entries in carriers.yaml, the choice between a contact's
carrier and the provider, and reading what providers mail back (sample messages written in the
shapes their documentation gives)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from gateway.domain.carriers import CarrierFileError, GatewayAddress, Unreachable
from gateway.domain.carriers_file import load_carriers
from gateway.domain.gateways import ProviderPlan, choose_gateway, contacts_at_risk
from gateway.domain.inbound import Identity, Kind, parse_mail
from gateway.domain.phone import parse_phone
from gateway.domain.providers import ReportStatus
from gateway.domain.threading import Rule, Sent, match

SHIPPED = Path(__file__).resolve().parents[2] / "carriers.yaml"
TODAY = dt.date(2026, 12, 1)
US = parse_phone("+12025550143", "US")
UK = parse_phone("+447400123456", "US")
IDENTITY = Identity(frozenset({"dispatch@example.com"}), "example.com")

BOOK_YAML = """carriers:
  - id: open
    name: Open
    country: US
    sms: open.example
    status: active
    source: test
  - id: unsure
    name: Unsure
    country: US
    sms: unsure.example
    status: unknown
    source: test
  - id: closing
    name: Closing
    country: US
    sms: closing.example
    status: active
    ends_on: 2027-03-31
    source: test
  - id: closing_soon
    name: Closing Soon
    country: US
    sms: soon.example
    status: active
    ends_on: 2026-12-20
    source: test
  - id: undated
    name: Undated
    country: US
    sms: undated.example
    status: ending
    source: test
  - id: closed
    name: Closed
    country: US
    sms: closed.example
    status: retired
    retired_on: 2025-06-17
    source: test
  - id: canadian
    name: Canadian
    country: CA
    sms: ca.example
    status: active
    source: test
providers:
  - id: north
    name: North
    country: [US, CA]
    address: "{e164_digits}@sms.north.example"
    max_length: 300
    source: test
  - id: world
    name: World
    country: []
    address: "{e164}@world.example"
    source: test
  - id: gone
    name: Gone
    country: []
    address: "{e164}@gone.example"
    status: retired
    source: test
"""
BOOK = load_carriers(BOOK_YAML)


@pytest.fixture(scope="module")
def shipped():
    return load_carriers(SHIPPED.read_text(), str(SHIPPED))


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "phone", "address"),
    [
        ("{national}@p.example", US, "2025550143@p.example"),
        ("{e164}@p.example", US, "+12025550143@p.example"),
        ("{e164_digits}@p.example", US, "12025550143@p.example"),
        ("{country_code}.{national}@p.example", US, "1.2025550143@p.example"),
        ("{national}@p.example", UK, "7400123456@p.example"),
        ("{e164}@p.example", UK, "+447400123456@p.example"),
        ("{e164_digits}@p.example", UK, "447400123456@p.example"),
        ("sms-{country_code}-{national}@p.example", UK, "sms-44-7400123456@p.example"),
    ],
)
def test_every_placeholder_renders(template, phone, address):
    book = load_carriers(
        f'providers:\n  - id: p\n    name: P\n    country: []\n    address: "{template}"\n'
        "    source: test\n"
    )
    assert book.provider("p").address_for(phone) == address


def test_shipped_providers_load_with_their_sources(shipped):
    ids = [p.id for p in shipped.providers]
    assert ids == ["textapp", "worldtext", "gatewayapi", "generic"]
    textapp = shipped.provider("textapp")
    assert textapp.address_for(UK) == "+447400123456@sms.textapp.net"
    assert textapp.authorise_sender and textapp.max_length == 918 and textapp.replies
    assert shipped.provider("worldtext").address_for(UK) == "447400123456@sms.world-text.com"
    assert shipped.provider("gatewayapi").address_for(UK) == "447400123456@smtp.gatewayapi.com"
    assert all(p.source for p in shipped.providers)
    assert shipped.find("textapp") is None  # a provider is no carrier a contact is on


PROVIDER = "providers:\n  - id: p\n    name: P\n    country: []\n    source: test\n"


@pytest.mark.parametrize(
    ("entry", "line", "words"),
    [
        ('    address: "{phone}@p.example"\n', 6, "unknown placeholder {phone}"),
        ('    address: "sms@p.example"\n', 6, "needs a placeholder"),
        ('    address: "{national}@not a domain"\n', 6, "is not local-part@domain"),
        ('    address: "{national}"\n', 6, "is not local-part@domain"),
        ('    address: "{national}}@p.example"\n', 6, "Single '}'"),
        ('    address: "{national} x@p.example"\n', 6, "characters an address cannot carry"),
        ('    address: "{e164}@p.example"\n    status: ending\n', 7, "active, unknown or retired"),
        ('    address: "{e164}@p.example"\n    colour: red\n', 7, "unknown key 'colour'"),
        ('    address: "{e164}@p.example"\n    replies:\n      from: ["*@p.example"]\n'
         "      phone: {in: from}\n      text: {in: header}\n", 10, "`in` must be from, subject"),
        ('    address: "{e164}@p.example"\n    replies:\n      from: ["*@p.example"]\n'
         "      phone: {in: body, pattern: 'Sender: \\d+'}\n      text: {in: body}\n", 9,
         "capture the value in a group"),
        ('    address: "{e164}@p.example"\n    replies:\n      from: ["*@p.example"]\n'
         "      phone: {in: body, pattern: '(unclosed'}\n      text: {in: body}\n", 9,
         "not a valid regular expression"),
        ('    address: "{e164}@p.example"\n    replies:\n      from: [p.example]\n'
         "      phone: {in: from}\n      text: {in: body}\n", 8, "not an address pattern"),
        ('    address: "{e164}@p.example"\n    replies:\n      phone: {in: from}\n'
         "      text: {in: body}\n", 8, "missing required key 'from'"),
        ('    address: "{e164}@p.example"\n    reports:\n      from: ["r@p.example"]\n'
         "      phone: {in: body, label: To}\n      status: {in: body, label: Status}\n"
         "      delivered: [delivered]\n", 8, "missing required key 'failed'"),
        ('    address: "{e164}@p.example"\n    replies:\n      from: ["*@p.example"]\n'
         "      phone: {in: from, label: Sender}\n      text: {in: body}\n", 9,
         "a sender address has no labels"),
    ],
)  # fmt: skip
def test_bad_provider_entries_are_reported_with_the_line_at_fault(entry, line, words):
    with pytest.raises(CarrierFileError) as caught:
        load_carriers(PROVIDER + entry, "carriers.yaml")
    assert caught.value.line == line, str(caught.value)
    assert words in str(caught.value)


def test_a_provider_may_not_take_a_carriers_id():
    text = BOOK_YAML.replace("  - id: north", "  - id: open")
    with pytest.raises(CarrierFileError, match=re.escape("duplicate id 'open' (first on line 2)")):
        load_carriers(text)


# --- which gateway ------------------------------------------------------------------------------

WITH = ProviderPlan("north")
WITHOUT = ProviderPlan()


def choose(carrier, plan, phone=US, today=TODAY):
    return choose_gateway(phone, BOOK.find(carrier) if carrier else None, BOOK, plan, today)


@pytest.mark.parametrize(
    ("carrier", "plan", "expect", "why"),
    [
        ("open", WITH, "2025550143@open.example", "contact's carrier Open (open)"),
        ("open", WITHOUT, "2025550143@open.example", "contact's carrier Open (open)"),
        ("unsure", WITH, "2025550143@unsure.example", "contact's carrier Unsure"),
        ("unsure", WITHOUT, "2025550143@unsure.example", "contact's carrier Unsure"),
        ("closing", WITH, "2025550143@closing.example", "moves to North from 2027-03-01"),
        ("closing", WITHOUT, "2025550143@closing.example", "closes its email-to-SMS gateway"),
        ("closing_soon", WITH, "12025550143@sms.north.example", "so texts go through North"),
        ("closing_soon", WITHOUT, "2025550143@soon.example", "closes its email-to-SMS gateway"),
        ("undated", WITH, "12025550143@sms.north.example", "soon (no date announced)"),
        ("undated", WITHOUT, "2025550143@undated.example", "soon (no date announced)"),
        ("closed", WITH, "12025550143@sms.north.example", "closed its email-to-SMS gateway"),
        ("closed", WITHOUT, "carrier_retired", "configure an email-to-SMS provider"),
        (None, WITH, "12025550143@sms.north.example", "is not known"),
        (None, WITHOUT, "carrier_unknown", "configure an email-to-SMS provider"),
        ("canadian", WITH, "12025550143@sms.north.example", "serves CA, but +12025550143"),
        ("canadian", WITHOUT, "carrier_country", "serves CA"),
    ],
)  # fmt: skip
def test_each_carrier_status_with_and_without_a_provider(carrier, plan, expect, why):
    target = choose(carrier, plan)
    if isinstance(target, GatewayAddress):
        assert target.address == expect
        assert why in target.why
        assert (target.provider is not None) == ("north" in target.address)
        if target.provider is None:
            assert target.carrier is not None and target.carrier.id == carrier
    else:
        assert isinstance(target, Unreachable)
        assert target.reason == expect and why in target.message


def test_leave_ending_days_sets_when_texts_move():
    stays = choose("closing_soon", ProviderPlan("north", leave_ending_days=10))
    assert stays.provider is None and stays.carrier.id == "closing_soon"  # 19 days > 10
    assert "texts move to North from 2026-12-10" in stays.warning
    moved = choose("closing_soon", ProviderPlan("north", leave_ending_days=19))
    assert moved.provider is not None and moved.provider.id == "north"
    on_the_day = choose("closing", WITH, today=dt.date(2027, 3, 31))  # past its date: retired
    assert on_the_day.provider is not None and "closed" in on_the_day.why


def test_the_country_picks_the_provider_and_an_unserved_country_is_refused():
    plan = ProviderPlan("north", {"GB": "world"})
    assert choose(None, plan, phone=UK).address == "+447400123456@world.example"
    assert choose(None, plan).address == "12025550143@sms.north.example"
    refused = choose(None, WITH, phone=UK)
    assert isinstance(refused, Unreachable) and refused.reason == "carrier_unknown"
    assert "North does not serve GB" in refused.message
    retired = choose("closed", ProviderPlan("gone"))
    assert isinstance(retired, Unreachable) and "Gone is retired" in retired.message


def test_the_provider_sets_the_length_a_text_may_have():
    assert choose("closed", WITH).max_length == 300
    assert choose("open", WITH).max_length is None  # the test carrier gives none


def test_contacts_at_risk_counts_closed_and_soon_closing_carriers():
    counts = {"open": 5, "closing": 2, "closing_soon": 3, "closed": 4, "undated": 1, "nope": 9}
    risks = contacts_at_risk(counts, BOOK, WITHOUT, TODAY)
    assert [(r.carrier.id, r.contacts, r.provider) for r in risks] == [
        ("closed", 4, None), ("closing_soon", 3, None), ("undated", 1, None),
    ]  # "closing" is 120 days away: not yet  # fmt: skip
    covered = contacts_at_risk(counts, BOOK, WITH, TODAY)
    assert all(r.provider is not None and r.provider.id == "north" for r in covered)
    assert "4 contacts: Closed closed" in covered[0].describe(TODAY)
    assert "their texts go through North" in covered[0].describe(TODAY)


# --- what providers mail back -------------------------------------------------------------------


def mail(sender: str, subject: str, body: str, **headers: str) -> bytes:
    lines = [f"From: {sender}", "To: Dispatch <dispatch@example.com>", f"Subject: {subject}",
             "Message-ID: <m1@provider.example>"]  # fmt: skip
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


# As TextApp's "Receiving Replies" page describes it: from +number@sms.textapp.net, a fixed
# subject, and labelled fields in the body, the typed text under Body.
TEXTAPP_REPLY = mail(
    "+447400123456@sms.textapp.net",
    "New SMS reply message",
    "Sender: +447400123456\nDate: 01/12/2026\nApplication Ref: 7731902\nTime: 14:02\n"
    "Body: Yes, leave it with the neighbour\nat number 12 please\n"
    "Original message: Your parcel A-1 arrives at 14:40",
)


def test_a_textapp_reply(shipped):
    found = parse_mail(TEXTAPP_REPLY, shipped, IDENTITY)
    assert (found.kind, found.provider, found.carrier) == (Kind.REPLY, "textapp", None)
    assert found.phone is not None and found.phone.e164 == "+447400123456"
    assert found.text == "Yes, leave it with the neighbour\nat number 12 please"


def test_a_textapp_notice_with_another_subject_is_not_a_reply(shipped):
    other = TEXTAPP_REPLY.replace(b"New SMS reply message", b"Your account balance is low")
    assert parse_mail(other, shipped, IDENTITY).kind is Kind.OTHER


def test_a_generic_reply_is_cleaned_like_a_carriers(shipped):
    found = parse_mail(
        mail("12025550143@sms.provider.example", "", "On my way\n\n-- \nSent by Example provider"),
        shipped,
        IDENTITY,
    )
    assert (found.kind, found.provider, found.text) == (Kind.REPLY, "generic", "On my way")
    assert found.phone.e164 == "+12025550143"


def report(status: str, reason: str = "", to: str = "+12025550143") -> bytes:
    body = f"To: {to}\nStatus: {status}\n" + (f"Reason: {reason}\n" if reason else "")
    return mail("Provider reports <reports@provider.example>", "Delivery report 5512", body)


@pytest.mark.parametrize(
    ("status", "reason", "kind", "outcome"),
    [
        ("Delivered", "", Kind.DELIVERY_REPORT, ReportStatus.DELIVERED),
        ("DELIVERED to handset", "", Kind.DELIVERY_REPORT, ReportStatus.DELIVERED),
        ("Failed", "Number unreachable", Kind.BOUNCE, ReportStatus.FAILED),
        ("Undeliverable", "", Kind.BOUNCE, ReportStatus.FAILED),
        ("Rejected: opted out", "Recipient replied STOP", Kind.BOUNCE, ReportStatus.OPTED_OUT),
        ("Queued", "", Kind.OTHER, ReportStatus.UNKNOWN),
        ("Undelivered", "", Kind.OTHER, ReportStatus.UNKNOWN),  # not "delivered": a whole word
    ],
)
def test_generic_delivery_reports(shipped, status, reason, kind, outcome):
    found = parse_mail(report(status, reason), shipped, IDENTITY)
    assert (found.kind, found.provider, found.provider_report) == (kind, "generic", outcome)
    assert found.phone.e164 == "+12025550143"
    if kind is Kind.BOUNCE:
        (failed,) = found.recipients
        assert failed.address == "12025550143@sms.provider.example"  # the address we mailed
        assert not failed.permanent  # one text failed; the provider said nothing of the number
        assert failed.reason == ("optedout" if outcome is ReportStatus.OPTED_OUT else "undefined")
        assert found.text == (reason or status)


def test_a_report_without_a_readable_number_threads_nothing(shipped):
    found = parse_mail(report("Failed", to="call me\r\nBcc: x@y.example"), shipped, IDENTITY)
    assert found.kind is Kind.OTHER and found.phone is None


def test_a_standard_bounce_from_a_provider_domain_is_read_as_a_bounce(shipped):
    boundary = "b1"
    raw = (
        "From: MAILER-DAEMON@sms.provider.example\r\nTo: dispatch@example.com\r\n"
        "Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
        f"\r\n\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nNo such user.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.provider.example\r\n\r\n"
        "Final-Recipient: rfc822; 12025550143@sms.provider.example\r\nAction: failed\r\n"
        f"Status: 5.1.1\r\n\r\n--{boundary}--\r\n"
    ).encode()
    found = parse_mail(raw, shipped, IDENTITY)
    assert found.kind is Kind.BOUNCE and found.provider is None
    assert found.recipients[0].status == "5.1.1"


def test_provider_mail_never_raises_on_hostile_input(shipped):
    for body in ("", "\x00" * 50, "Body:" * 5000, "To: " + "9" * 10_000, "Status: \udcff"):
        for sender in ("+447400123456@sms.textapp.net", "reports@provider.example"):
            raw = mail(sender, "New SMS reply message", body.encode("utf-8", "replace").decode())
            assert parse_mail(raw, shipped, IDENTITY).kind in set(Kind)


def test_a_provider_reply_threads_by_phone_to_the_latest_text():
    found = parse_mail(
        mail("12025550143@sms.provider.example", "", "yes"), load_carriers(SHIPPED.read_text()),
        IDENTITY,
    )  # fmt: skip
    now = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    latest = Sent(7, "<a@example.com>", now - dt.timedelta(minutes=5), now)
    threaded = match(found, "example.com", {}, latest, now, dt.timedelta(hours=72))
    assert (threaded.rule, threaded.sent) == (Rule.PHONE, latest)
