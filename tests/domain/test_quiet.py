"""Quiet hours on the recipient's clock, across DST changes and multi-zone area codes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.quiet import (
    QuietHours,
    QuietPolicy,
    is_allowed,
    next_allowed,
    parse_clock,
    phone_zones,
    recipient_zones,
)

HOURS = QuietHours(dt.time(8), dt.time(21))
NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def at(text: str, zone=NY) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


def test_within_hours_goes_at_once():
    assert next_allowed(at("2026-11-24T12:00"), [NY], HOURS) == at("2026-11-24T12:00")


def test_late_evening_is_held_to_next_morning():
    assert next_allowed(at("2026-11-24T21:00"), [NY], HOURS) == at("2026-11-25T08:00")
    assert next_allowed(at("2026-11-24T02:30"), [NY], HOURS) == at("2026-11-24T08:00")


def test_held_across_the_spring_dst_change_in_new_york():
    # 2026-03-08: clocks go from 02:00 to 03:00. 22:00 the evening before is 03:00 UTC; the
    # morning's 08:00 is EDT (12:00 UTC), not 13:00 UTC as adding 10 hours would give.
    held = next_allowed(at("2026-03-07T22:00"), [NY], HOURS)
    assert held == at("2026-03-08T08:00")
    assert held.astimezone(UTC) == dt.datetime(2026, 3, 8, 12, 0, tzinfo=UTC)


def test_held_across_the_autumn_dst_change_in_new_york():
    held = next_allowed(at("2026-10-31T23:30"), [NY], HOURS)
    assert held.astimezone(UTC) == dt.datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_an_allowed_window_may_open_inside_a_dst_gap():
    early = QuietHours(dt.time(2, 30), dt.time(21))  # 02:30 does not exist on 2026-03-08
    held = next_allowed(at("2026-03-08T01:00"), [NY], early)
    assert held.astimezone(NY).time() >= dt.time(2, 30) and is_allowed(held, [NY], early)


def test_a_multi_zone_area_code_must_be_awake_in_all_its_zones():
    zones = phone_zones("+12085550143")  # Idaho: Boise (Mountain) and Los Angeles (Pacific)
    assert {z.key for z in zones} == {"America/Boise", "America/Los_Angeles"}
    # 08:00 in Boise is 07:00 in Los Angeles: the later start wins.
    held = next_allowed(at("2026-11-24T07:30", ZoneInfo("America/Boise")), zones, HOURS)
    assert held.astimezone(ZoneInfo("America/Los_Angeles")).time() == dt.time(8)
    # 20:30 in Los Angeles is 21:30 in Boise: the earlier end wins.
    assert not is_allowed(at("2026-11-24T20:30", ZoneInfo("America/Los_Angeles")), zones, HOURS)


def test_whose_clock():
    company = ZoneInfo("America/Chicago")
    assert [z.key for z in recipient_zones("Europe/Paris", "+12125550143", company)] == [
        "Europe/Paris"
    ]
    assert [z.key for z in recipient_zones(None, "+12125550143", company)] == ["America/New_York"]
    assert [z.key for z in recipient_zones(None, "+15555550100", company)] == ["America/Chicago"]
    with pytest.raises(ValueError, match="not a time zone"):
        recipient_zones("Mars/Olympus", "+12125550143", company)


def test_the_policy_holds_a_text_on_the_recipients_clock():
    """Enqueue, the sender, order previews and the dashboard's counter all ask this."""
    policy = QuietPolicy(HOURS, ZoneInfo("America/Chicago"))
    late_in_new_york = at("2026-03-02T22:30")
    assert policy.first_allowed(late_in_new_york, "+12125550143") == at("2026-03-03T08:00")
    # The order's zone is the clock that counts: 04:30 in Paris, held until 08:00 there.
    paris = ZoneInfo("Europe/Paris")
    held = policy.first_allowed(late_in_new_york, "+12125550143", "Europe/Paris")
    assert held == dt.datetime(2026, 3, 3, 8, tzinfo=paris)
    # A number with no zone of its own is on the company's clock (21:30 there: held).
    assert policy.first_allowed(late_in_new_york, "+15555550100") == at(
        "2026-03-03T08:00", ZoneInfo("America/Chicago")
    )
    noon = at("2026-03-02T12:00")
    assert policy.first_allowed(noon, "+12125550143") == noon


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="before"):
        QuietHours(dt.time(21), dt.time(8))
    with pytest.raises(ValueError, match="08:00"):
        parse_clock("8am", "allowed_from")
    assert parse_clock(" 07:30", "x") == dt.time(7, 30)


@given(st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1)))
def test_the_answer_is_allowed_and_never_earlier(naive):
    start = naive.replace(tzinfo=UTC)
    held = next_allowed(start, [NY], HOURS)
    assert held >= start and is_allowed(held, [NY], HOURS)
    assert held - start <= dt.timedelta(hours=12, minutes=1)
