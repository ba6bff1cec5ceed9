"""Which texts an order's life causes: rules read from `rules.yaml`, and the plans they make.

A rule says: on status S (or at an offset from the delivery window once S is reached), send
template T to the customer and/or the driver. Planning is pure: an event and the order's facts
in, the texts to enqueue (recipient, template, variables, when, fresh until) out. The shell
applies quiet hours and throttles, and writes the texts in the event's transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import yaml

from gateway.domain import bounded_yaml
from gateway.domain.templates import TemplateBook, TemplateError

STATUSES = (
    "confirmed",
    "driver_assigned",
    "out_for_delivery",
    "delivered",
    "delayed",
    "attempt_failed",
    "cancelled",
)
TERMINAL = frozenset({"delivered", "cancelled"})
RECIPIENTS = ("customer", "driver")
ANCHORS = ("event", "window_start", "window_end")
# What an order event can give a template. A template needing anything else fails validation.
PROVIDED = (
    "order_ref", "status", "customer_name", "driver_name", "eta", "window", "window_start",
    "window_end", "reason",
)  # fmt: skip
# What a recurring rule's text to a driver can use: the driver's day.
SUMMARY_PROVIDED = ("driver_name", "order_count", "order_refs", "first_window")


class RuleError(ValueError):
    """rules.yaml is wrong, or a rule does not fit its template; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    on: str | None  # the status that sets it off; None for a recurring rule
    template: str
    to: tuple[str, ...]  # "customer", "driver"
    anchor: str = "event"  # when: the event, or the window's start or end...
    offset: dt.timedelta = dt.timedelta(0)  # ...plus this (negative: before)
    fresh_for: dt.timedelta | None = None  # not sent when this long past its anchor
    superseded_by: frozenset[str] | None = None  # None: the default (see `supersedes`)
    every: str | None = None  # a recurring rule: crontab "minute hour day month weekday"

    def supersedes_on(self, status: str) -> bool:
        """Whether a later event with `status` makes this rule's waiting text obsolete: by
        default any later status does for a text sent on the event (its news is old), and
        only the end of the order does for one timed to the window (a reminder still holds)."""
        if self.superseded_by is not None:
            return status in self.superseded_by
        if self.anchor == "event":
            return True
        return status in TERMINAL


@dataclass(frozen=True, slots=True)
class OrderFacts:
    ref: str
    customer_phone: str | None
    customer_name: str | None
    driver_phone: str | None
    driver_name: str | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    timezone: str | None


@dataclass(frozen=True, slots=True)
class Event:
    status: str
    at: dt.datetime
    eta: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedText:
    rule: str
    to: str  # "customer" or "driver"
    phone: str
    template: str
    variables: Mapping[str, str]
    due_at: dt.datetime
    fresh_until: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Skipped:
    rule: str
    why: str


@dataclass(frozen=True, slots=True)
class Plan:
    texts: tuple[PlannedText, ...] = ()
    skipped: tuple[Skipped, ...] = field(default=())


def plan(rules: Iterable[Rule], order: OrderFacts, event: Event, zone_label: str = "") -> Plan:
    """The texts `event` causes for `order`."""
    texts: list[PlannedText] = []
    skipped: list[Skipped] = []
    for rule in rules:
        if rule.every is not None or rule.on != event.status:
            continue
        anchor = _anchor_time(rule, order, event)
        if anchor is None:
            skipped.append(Skipped(rule.name, f"the order has no {rule.anchor}"))
            continue
        due = max(anchor + rule.offset, event.at)
        fresh_until = anchor + rule.offset + rule.fresh_for if rule.fresh_for else None
        for to in rule.to:
            phone = order.customer_phone if to == "customer" else order.driver_phone
            if phone is None:
                skipped.append(Skipped(rule.name, f"the order has no {to}"))
                continue
            texts.append(
                PlannedText(
                    rule=rule.name,
                    to=to,
                    phone=phone,
                    template=rule.template,
                    variables=variables(order, event, zone_label),
                    due_at=due,
                    fresh_until=fresh_until,
                )
            )
    return Plan(tuple(texts), tuple(skipped))


def _anchor_time(rule: Rule, order: OrderFacts, event: Event) -> dt.datetime | None:
    if rule.anchor == "window_start":
        return order.window_start
    if rule.anchor == "window_end":
        return order.window_end
    return event.at


def variables(order: OrderFacts, event: Event, zone_label: str = "") -> dict[str, str]:
    """What a template may use from an order event (absent facts are left out, so templates
    test them with `is defined`)."""
    found: dict[str, str | None] = {
        "order_ref": order.ref,
        "status": event.status,
        # A greeting needs a name; "there" reads right where none is known ("Hi there").
        "customer_name": order.customer_name or "there",
        "driver_name": order.driver_name or ("your driver" if order.driver_phone else None),
        "eta": event.eta,
        "reason": event.reason,
    }
    if order.window_start and order.window_end:
        start, end = _local(order.window_start, order), _local(order.window_end, order)
        found["window_start"] = f"{start:%H:%M}"
        found["window_end"] = f"{end:%H:%M}"
        day = (
            "" if start.date() == event.at.astimezone(start.tzinfo).date() else f"{start:%a %b %d} "
        )
        found["window"] = f"{day}{start:%H:%M}-{end:%H:%M}" + (
            f" {zone_label}" if zone_label else ""
        )
    return {k: v for k, v in found.items() if v is not None}


def _local(at: dt.datetime, order: OrderFacts) -> dt.datetime:
    if order.timezone:
        return at.astimezone(ZoneInfo(order.timezone))
    return at


@dataclass(frozen=True, slots=True)
class DriverDay:
    """A driver's orders with a window on one day, for a recurring summary."""

    phone: str
    name: str | None
    refs: tuple[str, ...]
    first_window: dt.datetime | None


def summary_variables(day: DriverDay, zone_name: str | None) -> dict[str, str]:
    found = {
        "driver_name": day.name or "there",
        "order_count": str(len(day.refs)),
        "order_refs": ", ".join(day.refs),
    }
    if day.first_window is not None:
        first = day.first_window
        if zone_name:
            first = first.astimezone(ZoneInfo(zone_name))
        found["first_window"] = f"{first:%H:%M}"
    return found


def superseded(rules: Mapping[str, Rule], waiting_rule: str, new_status: str) -> bool:
    """Whether a waiting text made by `waiting_rule` is obsolete once `new_status` arrives."""
    rule = rules.get(waiting_rule)
    return rule is not None and rule.supersedes_on(new_status)


def throttled(others: Sequence[dt.datetime], at: dt.datetime, limit: int | None) -> dt.datetime:
    """The earliest time from `at` when a contact who got (or will get) automated texts at
    `others` can take one more with fewer than `limit` in the hour before it."""
    if not limit:
        return at
    times = sorted(others)
    candidate = at
    while True:
        recent = [t for t in times if candidate - dt.timedelta(hours=1) < t <= candidate]
        if len(recent) < limit:
            return candidate
        # Wait until enough of them are an hour old.
        candidate = recent[len(recent) - limit] + dt.timedelta(hours=1)


# --- reading rules.yaml -----------------------------------------------------------------------

_KEYS = {"name", "on_status", "every", "send", "to", "at", "fresh_minutes", "superseded_by"}


def load_rules(text: str, source: str = "rules.yaml") -> tuple[Rule, ...]:
    try:
        data = bounded_yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleError(f"{source}: expected a `rules:` list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(data["rules"], 1):
        rule = _rule(entry, f"{source}: rule {index}")
        if rule.name in seen:
            raise RuleError(f"{source}: rule {rule.name!r} is given twice")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(entry: object, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise RuleError(f"{where}: each rule is a mapping of keys")
    if True in entry:
        raise RuleError(f"{where}: write `on_status:`, not `on:` (YAML reads a bare on as true)")
    unknown = set(entry) - _KEYS
    if unknown:
        raise RuleError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_KEYS))})"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"{where}: needs a name")
    where = f"rule {name!r}"
    # Not "on": YAML reads a bare `on` as true.
    on = entry.get("on_status")
    every = entry.get("every")
    if (on is None) == (every is None):
        raise RuleError(f"{where}: give either on_status (an order status) or every (a crontab)")
    if every is not None:
        if not isinstance(every, str) or len(every.split()) != 5:
            raise RuleError(
                f'{where}: every {every!r} is not a crontab like "0 8 * * *" '
                "(minute hour day month weekday)"
            )
        if "at" in entry or "superseded_by" in entry:
            raise RuleError(f"{where}: a recurring rule takes no `at` or `superseded_by`")
        if entry.get("to") not in ("driver", ["driver"]):
            raise RuleError(f"{where}: a recurring rule texts each driver their day (to: driver)")
    elif on not in STATUSES:
        raise RuleError(f"{where}: on_status {on!r} is not a status ({', '.join(STATUSES)})")
    template = entry.get("send")
    if not isinstance(template, str) or not template:
        raise RuleError(f"{where}: `send` must name a template")
    to = entry.get("to", ["customer"])
    to = [to] if isinstance(to, str) else to
    if not isinstance(to, list) or not to or any(t not in RECIPIENTS for t in to):
        raise RuleError(f"{where}: `to` must be customer, driver or both")
    anchor, offset = "event", dt.timedelta(0)
    if "at" in entry:
        at = entry["at"]
        if not isinstance(at, dict) or len(at) != 1:
            raise RuleError(f"{where}: `at` is one of {{window_start: MINUTES}}, "
                            "{window_end: MINUTES} or {event: MINUTES}")  # fmt: skip
        ((anchor, minutes),) = at.items()
        if anchor not in ANCHORS or not isinstance(minutes, int) or isinstance(minutes, bool):
            raise RuleError(f"{where}: `at` must be window_start, window_end or event with "
                            "whole minutes (negative: before)")  # fmt: skip
        offset = dt.timedelta(minutes=minutes)
    fresh = entry.get("fresh_minutes")
    if fresh is not None and (not isinstance(fresh, int) or isinstance(fresh, bool) or fresh <= 0):
        raise RuleError(f"{where}: fresh_minutes must be a positive whole number")
    superseded_by = entry.get("superseded_by")
    if superseded_by is not None:
        if not isinstance(superseded_by, list) or any(s not in STATUSES for s in superseded_by):
            raise RuleError(f"{where}: superseded_by lists statuses ({', '.join(STATUSES)})")
        superseded_by = frozenset(superseded_by)
    return Rule(
        name=name,
        on=on,
        template=template,
        to=tuple(dict.fromkeys(to)),
        anchor=anchor,
        offset=offset,
        fresh_for=dt.timedelta(minutes=fresh) if fresh else None,
        superseded_by=superseded_by,
        every=every,
    )


def check_rules(rules: Iterable[Rule], templates: TemplateBook) -> list[str]:
    """Every problem of every rule against the templates: a missing template, a variable no
    order event provides. Empty when all is well."""
    return [problem for _, problem in rule_problems(rules, templates)]


def rule_problems(rules: Iterable[Rule], templates: TemplateBook) -> list[tuple[Rule, str]]:
    problems = []
    for rule in rules:
        provided = SUMMARY_PROVIDED if rule.every and rule.to == ("driver",) else PROVIDED
        sample = {name: f"<{name}>" for name in provided}
        if rule.template not in templates:
            problems.append((rule, f"rule {rule.name!r}: no template {rule.template!r}"))
            continue
        try:
            templates.render(rule.template, sample)
        except TemplateError as exc:
            names = ", ".join(provided)
            problems.append((rule, f"rule {rule.name!r}: {exc} (it is given: {names})"))
    return problems
