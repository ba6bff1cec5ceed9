import datetime as dt
from pathlib import Path

import pytest

from gateway.domain.carriers import (
    CarrierFileError,
    CarrierStatus,
    GatewayAddress,
    Unreachable,
    resolve_gateway,
)
from gateway.domain.carriers_file import load_carriers
from gateway.domain.phone import parse_phone

SHIPPED = Path(__file__).resolve().parents[2] / "carriers.yaml"
TODAY = dt.date(2026, 11, 24)
US = parse_phone("+12025550143", "US")
CA = parse_phone("+16045550123", "US")
ENTRY = """carriers:
  - id: one
    name: One
    country: US
    sms: one.example
    status: active
    source: test
"""


@pytest.fixture(scope="module")
def book():
    return load_carriers(SHIPPED.read_text(), str(SHIPPED))


def test_shipped_table_has_the_contract_ids(book):
    for carrier_id in [
        "verizon",
        "att",
        "tmobile",
        "uscellular",
        "googlefi",
        "cricket",
        "boost",
        "metro",
        "sprint",
        "consumercellular",
        "rogers",
        "fido",
        "bell",
        "telus",
        "koodo",
        "freedom",
        "sasktel",
        "virgin_ca",
    ]:
        assert book.find(carrier_id) is not None, carrier_id


def test_facts_from_the_issue(book):
    att = book.find("AT&T")
    assert att.id == "att" and att.status is CarrierStatus.RETIRED
    assert att.retired_on == dt.date(2025, 6, 17)
    verizon = book.find("Verizon Wireless")
    assert (verizon.sms, verizon.mms) == ("vtext.com", "vzwpix.com")
    assert verizon.ends_on == dt.date(2027, 3, 31) and verizon.reported
    assert book.find("t-mobile").status is CarrierStatus.RETIRED
    assert book.find("rogers").retired_on.year == 2023
    assert book.find("sprint").status is CarrierStatus.RETIRED


def test_active_carrier_gives_the_national_address(book):
    target = resolve_gateway(US, book.find("uscellular"), TODAY)
    assert isinstance(target, GatewayAddress)
    assert target.address == "2025550143@email.uscc.net" and target.warning is None


def test_ending_carrier_is_sent_with_a_warning(book):
    target = resolve_gateway(US, book.find("verizon"), TODAY)
    assert isinstance(target, GatewayAddress)
    assert target.address == "2025550143@vtext.com"
    assert "2027-03-31" in target.warning and "reportedly" in target.warning


def test_carrier_past_its_end_date_is_retired(book):
    target = resolve_gateway(US, book.find("verizon"), dt.date(2027, 3, 31))
    assert isinstance(target, Unreachable) and target.reason == "carrier_retired"


def test_retired_carrier_is_refused_with_its_date(book):
    target = resolve_gateway(US, book.find("att"), TODAY)
    assert target == Unreachable(
        "carrier_retired", "AT&T closed its email-to-SMS gateway on 2025-06-17"
    )


def test_retired_carrier_without_a_date(book):
    target = resolve_gateway(US, book.find("sprint"), TODAY)
    assert isinstance(target, Unreachable) and "closed" in target.message


def test_unknown_status_is_used(book):
    target = resolve_gateway(CA, book.find("telus"), TODAY)
    assert isinstance(target, GatewayAddress) and target.gateway == "msg.telus.com"


def test_no_carrier_is_suppressed_never_fanned_out():
    target = resolve_gateway(US, None, TODAY)
    assert isinstance(target, Unreachable) and target.reason == "carrier_unknown"


def test_carrier_of_another_country_is_refused(book):
    target = resolve_gateway(US, book.find("telus"), TODAY)
    assert isinstance(target, Unreachable) and target.reason == "carrier_country"


@pytest.mark.parametrize(
    ("status", "extra", "expect"),
    [
        ("active", "", "2025550143@one.example"),
        ("ending", "\n    ends_on: 2027-01-01", "2025550143@one.example"),
        ("unknown", "", "2025550143@one.example"),
        ("retired", "\n    retired_on: 2024-01-01", "carrier_retired"),
        ("active", "\n    ends_on: 2026-11-24", "carrier_retired"),  # closes today
    ],
)
def test_every_status(status, extra, expect):
    book = load_carriers(ENTRY.replace("status: active", f"status: {status}{extra}"))
    target = resolve_gateway(US, book.find("one"), TODAY)
    got = target.address if isinstance(target, GatewayAddress) else target.reason
    assert got == expect
    if status == "ending":
        assert "2027-01-01" in target.warning


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (ENTRY + ENTRY.replace("carriers:\n", ""), 8, "duplicate id 'one'"),
        (ENTRY.replace("    source: test", "    source: test\n    colour: red"), 8, "unknown key"),
        (ENTRY.replace("status: active", "status: active\n    ends_on: 2025-13-01"), 7, "date"),
        (ENTRY.replace("status: active", "status: closed"), 6, "not one of"),
        (ENTRY.replace("    source: test\n", ""), 2, "missing required key 'source'"),
        (ENTRY.replace("sms: one.example", "sms: not a domain"), 5, "not a domain"),
        (ENTRY.replace("name: One", "name: One\n    name: Two"), 4, "given twice"),
        ("carriers: [\n", 2, "not valid YAML"),
        # PyYAML reads a list in a list by calling itself: thousands deep ran it out of stack.
        ("carriers:\n  - " + "[" * 5000, 2, "nested more than 50 levels deep"),
        (
            ENTRY.replace("status: active", "status: retired\n    ends_on: 2020-01-01"),
            2,
            "retired_on",
        ),
        (ENTRY.replace("id: one", "id: One Two"), 2, "lower-case"),
        (
            ENTRY.replace("status: active", "status: active\n    reply_footers: [Sent]"),
            7,
            "must be 8-200 characters",
        ),
    ],
)
def test_bad_files_are_reported_with_the_line_at_fault(text, line, words):
    with pytest.raises(CarrierFileError) as caught:
        load_carriers(text, "carriers.yaml")
    assert words in str(caught.value)
    assert caught.value.line == line, str(caught.value)
    assert str(caught.value).startswith(f"carriers.yaml:{line}:")


def test_alias_taken_by_another_carrier_is_refused():
    text = ENTRY + ENTRY.replace("carriers:\n", "").replace("id: one", "id: two").replace(
        "name: One", "name: Two\n    aliases: [one]"
    )
    with pytest.raises(CarrierFileError, match="already a name of 'one'"):
        load_carriers(text)


def test_lookup_ignores_case_and_punctuation(book):
    assert book.find("  T-MOBILE ").id == "tmobile"
    assert book.find("u.s. cellular").id == "uscellular"
    assert book.find("nope") is None


def test_reply_domains_identify_the_carrier_and_are_never_mailed(book):
    assert book.by_domain("vtext.com").id == "verizon"
    assert book.by_domain("VZWPIX.COM.").id == "verizon"
    assert book.by_domain("cingularme.com").id == "att"
    assert book.by_domain("example.com") is None
    carrier = load_carriers(ENTRY + "    reply_domains: [old.one.example]\n").find("one")
    assert carrier.domains == ("one.example", "old.one.example")
    target = resolve_gateway(US, carrier, TODAY)
    assert target.gateway == "one.example"


def test_a_shared_gateway_belongs_to_the_first_carrier_listed(book):
    # T-Mobile's MVNOs mail through tmomail.net too; a reply from it is T-Mobile's.
    assert book.by_domain("tmomail.net").id == "tmobile"


def test_reply_domains_must_be_domains():
    with pytest.raises(CarrierFileError, match="not a domain name"):
        load_carriers(ENTRY + "    reply_domains: [not a domain]\n")
