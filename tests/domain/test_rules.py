"""Order rules: reading rules.yaml, planning texts from events, supersession, throttles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.domain.rules import (
    Event,
    OrderFacts,
    RuleError,
    check_rules,
    load_rules,
    plan,
    superseded,
    throttled,
)
from gateway.domain.templates import TemplateBook

REPO = Path(__file__).resolve().parents[2]
SHIPPED = load_rules((REPO / "rules.yaml").read_text())
TEMPLATES = TemplateBook(
    {p.name[: -len(".txt.j2")]: p.read_text() for p in (REPO / "templates").glob("*.txt.j2")}
)
T0 = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)
ORDER = OrderFacts(
    ref="A-1",
    customer_phone="+12125550143",
    customer_name="Ana",
    driver_phone="+12125550199",
    driver_name="Sam",
    window_start=T0 + dt.timedelta(hours=3),
    window_end=T0 + dt.timedelta(hours=5),
    timezone="America/New_York",
)


def test_shipped_rules_fit_the_shipped_templates():
    assert check_rules(SHIPPED, TEMPLATES) == []
    assert {rule.on for rule in SHIPPED} >= {"confirmed", "delivered", "out_for_delivery"}


def test_confirmation_now_and_a_reminder_before_the_window():
    made = plan(SHIPPED, ORDER, Event("confirmed", T0))
    by_rule = {text.rule: text for text in made.texts}
    assert by_rule["confirmed"].due_at == T0 and by_rule["confirmed"].phone == "+12125550143"
    reminder = by_rule["window_reminder"]
    assert reminder.due_at == ORDER.window_start - dt.timedelta(minutes=30)
    assert reminder.fresh_until == ORDER.window_start  # 30 fresh minutes from its time
    assert reminder.variables["window_start"] == "13:00"  # New York time
    assert TEMPLATES.render("order_confirmed", by_rule["confirmed"].variables).startswith("Hi Ana")


def test_rules_without_their_facts_are_skipped_with_a_reason():
    bare = OrderFacts("A-2", "+12125550143", None, None, None, None, None, None)
    made = plan(SHIPPED, bare, Event("confirmed", T0))
    assert [t.rule for t in made.texts] == ["confirmed"]
    assert [(s.rule, s.why) for s in made.skipped] == [
        ("window_reminder", "the order has no window_start")
    ]
    assert made.texts[0].variables["customer_name"] == "there"
    cancelled = plan(SHIPPED, bare, Event("cancelled", T0))
    assert [(s.rule, s.why) for s in cancelled.skipped] == [
        ("cancelled", "the order has no driver")
    ]


def test_supersession_defaults():
    rules = {rule.name: rule for rule in SHIPPED}
    assert superseded(rules, "out_for_delivery", "delivered")
    assert superseded(rules, "confirmed", "driver_assigned")
    assert not superseded(rules, "window_reminder", "driver_assigned")  # a reminder still holds
    assert superseded(rules, "window_reminder", "cancelled")
    assert not superseded(rules, "gone_rule", "delivered")


def test_throttle_spreads_texts_over_the_hour():
    assert throttled([], T0, 2) == T0
    assert throttled([T0 - dt.timedelta(minutes=10)], T0, 2) == T0
    two = [T0 - dt.timedelta(minutes=50), T0 - dt.timedelta(minutes=10)]
    assert throttled(two, T0, 2) == T0 + dt.timedelta(minutes=10)
    assert throttled(two, T0, None) == T0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rules: [{name: a, on_status: shipped, send: x}]", "not a status"),
        ("rules: [{name: a, on_status: confirmed}]", "`send` must name a template"),
        ("rules: [{name: a, on_status: confirmed, send: x, to: boss}]", "customer, driver"),
        ("rules: [{name: a, on_status: confirmed, send: x, at: {lunch: 5}}]", "window_start"),
        ("rules: [{name: a, on_status: confirmed, send: x, colour: red}]", "unknown key 'colour'"),
        ("rules: [{name: a, on_status: confirmed, send: x}, {name: a, on_status: delivered, send: y}]",
         "given twice"),
        ("rules: [{name: a, on: confirmed, send: x}]", "write `on_status:`"),
        ("nope", "expected a `rules:` list"),
        # PyYAML reads a list in a list by calling itself: thousands deep ran it out of stack.
        ("rules: " + "[" * 5000, "nested more than 50 levels deep"),
        ("rules:\n" + "".join("  " * depth + "- \n" for depth in range(1, 200)),
         "nested more than 50 levels deep"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_naming_the_rule(text, words):
    with pytest.raises(RuleError, match=words):
        load_rules(text)


def test_a_template_needing_what_no_event_provides_names_the_rule():
    book = TemplateBook({"odd": "Your parcel {{ parcel_colour }} is here"})
    rules = load_rules("rules: [{name: colourful, on_status: delivered, send: odd}]")
    (problem,) = check_rules(rules, book)
    assert "rule 'colourful'" in problem and "parcel_colour" in problem
    assert check_rules(
        load_rules("rules: [{name: m, on_status: delivered, send: gone}]"), book
    ) == ["rule 'm': no template 'gone'"]
