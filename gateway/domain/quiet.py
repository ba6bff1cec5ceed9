"""Quiet hours: an automated text reaches a person only between `allowed_from` and
`allowed_until` on their own clock.

Whose clock: the order's time zone when it has one, else the phone number's (the numbering
plan's time zones; a number whose area spans several zones must be in the allowed hours in all
of them, so the latest start and the earliest end count), else the company's. Times are aware
datetimes; local clocks come from zoneinfo, so DST changes are handled by the zone rules, not
by adding hours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone


@dataclass(frozen=True, slots=True)
class QuietHours:
    allowed_from: dt.time  # local time the first text may arrive
    allowed_until: dt.time  # local time after which none may

    def __post_init__(self) -> None:
        if self.allowed_from >= self.allowed_until:
            raise ValueError(
                f"allowed_from ({self.allowed_from:%H:%M}) must be before allowed_until "
                f"({self.allowed_until:%H:%M})"
            )


@dataclass(frozen=True, slots=True)
class QuietPolicy:
    """The one place that decides when a text may reach a person: the allowed hours on each
    clock they may be on (the order's zone, else the number's, else the company's)."""

    hours: QuietHours
    company_zone: ZoneInfo

    def zones(self, e164: str, order_zone: str | None = None) -> tuple[ZoneInfo, ...]:
        return recipient_zones(order_zone, e164, self.company_zone)

    def first_allowed(
        self, at: dt.datetime, e164: str, order_zone: str | None = None
    ) -> dt.datetime:
        """`at` when a text may reach `e164` then, else the first minute after it that may."""
        return next_allowed(at, self.zones(e164, order_zone), self.hours)


def zone(name: str) -> ZoneInfo:
    """The time zone called `name`; ValueError naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone like America/New_York") from None


def phone_zones(e164: str) -> tuple[ZoneInfo, ...]:
    """The zones the numbering plan gives a number; () when it gives none it can name."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = []
    for name in phone_timezone.time_zones_for_number(number):
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):  # "Etc/Unknown"
            continue
    return tuple(zones)


def recipient_zones(
    order_zone: str | None, e164: str, company_zone: ZoneInfo
) -> tuple[ZoneInfo, ...]:
    if order_zone:
        return (zone(order_zone),)
    return phone_zones(e164) or (company_zone,)


def is_allowed(at: dt.datetime, zones: Sequence[ZoneInfo], hours: QuietHours) -> bool:
    return all(hours.allowed_from <= at.astimezone(z).time() < hours.allowed_until for z in zones)


def next_allowed(at: dt.datetime, zones: Sequence[ZoneInfo], hours: QuietHours) -> dt.datetime:
    """`at` if it is within the allowed hours in every zone, else the first minute after it
    that is. Raises ValueError when the zones' allowed hours never overlap."""
    if at.tzinfo is None:
        raise ValueError("quiet hours need an aware datetime")
    if not zones or is_allowed(at, zones, hours):
        return at
    # The answer is the moment some zone's day opens, on a day near `at`.
    candidates = []
    for z in zones:
        local_day = at.astimezone(z).date()
        for offset in range(-1, 4):
            day = local_day + dt.timedelta(days=offset)
            opening = dt.datetime.combine(day, hours.allowed_from, tzinfo=z)
            # A local time skipped by DST does not exist; zoneinfo reads it with the offset in
            # force before the change, which lands just after the gap: still the first minute.
            candidates.append(_ceil_minute(opening.astimezone(dt.UTC)))
    for candidate in sorted(candidates):
        if candidate >= at and is_allowed(candidate, zones, hours):
            return candidate.astimezone(at.tzinfo)
    raise ValueError("the allowed hours of the recipient's time zones never overlap")


def _ceil_minute(at: dt.datetime) -> dt.datetime:
    if at.second or at.microsecond:
        return at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return at


def parse_clock(text: str, key: str) -> dt.time:
    """ "08:00" -> 08:00; ValueError naming the key otherwise."""
    try:
        hours, minutes = text.strip().split(":")
        return dt.time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"{key} {text!r} is not a time like 08:00") from None
