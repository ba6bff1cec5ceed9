"""Orders and their events on a real database: texts queued with their event, once; quiet
hours on the recipient's clock; superseded and stale texts; the per-contact cap; CSV import."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from sqlalchemy import select

from gateway.services.orders import OrderError, OrderInput, Orders
from gateway.store.sending import claim_due
from gateway.store.tables import messages
from gateway.store.tables import order_events as events
from tests.conftest import gateway_folder, make_runtime, run_gateway

NY_MORNING = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)  # 10:00 in New York
NY_NIGHT = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.UTC)  # 22:00 in New York
CUSTOMER = "+12125550143"  # a New York number
DRIVER = "+12125550199"


@pytest.fixture
def orders(db_url, smtp_server):
    return Orders(make_runtime(db_url, smtp_server.port))


def order(orders, ref="A-1", **fields):
    values = {"customer": CUSTOMER, "carrier": "verizon", "customer_name": "Ana", **fields}
    return orders.upsert(OrderInput(ref=ref, **values), NY_MORNING)


def texts(orders):
    with orders.runtime.engine.connect() as conn:
        return conn.execute(select(messages).order_by(messages.c.id)).all()


def test_an_event_queues_its_text_once(orders):
    order(orders)
    first = orders.record_status("A-1", "confirmed", NY_MORNING, key="evt-1")
    again = orders.record_status("A-1", "confirmed", NY_MORNING, key="evt-1")
    assert again.existing and again.event_id == first.event_id
    (text,) = texts(orders)
    assert (text.rule, text.state, text.automated, text.respect_quiet_hours) == (
        "confirmed", "queued", True, True,
    )  # fmt: skip
    assert text.body.startswith("Hi Ana, your order A-1 is confirmed")
    assert text.due_at == NY_MORNING and text.event_id == first.event_id
    assert [t["id"] for t in again.texts] == [text.id]


def test_a_night_event_is_held_to_the_recipients_morning(orders):
    order(orders)
    orders.record_status("A-1", "confirmed", NY_NIGHT)
    (text,) = texts(orders)
    assert text.state == "queued"
    assert text.due_at == dt.datetime(2026, 11, 25, 13, 0, tzinfo=dt.UTC)  # 08:00 New York


def test_the_orders_time_zone_wins_over_the_numbers(orders):
    order(orders, timezone="Europe/Paris")  # 03:00 UTC is 04:00 in Paris
    orders.record_status("A-1", "confirmed", NY_NIGHT)
    (text,) = texts(orders)
    assert text.due_at == dt.datetime(2026, 11, 25, 7, 0, tzinfo=dt.UTC)  # 08:00 Paris


def test_a_later_event_supersedes_a_waiting_text(orders):
    order(orders, driver=DRIVER, driver_carrier="verizon", driver_name="Sam")
    orders.record_status("A-1", "driver_assigned", NY_NIGHT)  # held to the morning
    result = orders.record_status("A-1", "attempt_failed", NY_NIGHT, reason="gate locked")
    assert result.superseded == 1
    first, second = texts(orders)
    assert (first.rule, first.state, first.reason) == ("driver_assigned", "cancelled", "superseded")
    assert (second.rule, second.state) == ("attempt_failed", "queued")
    assert "(gate locked)" in second.body


def test_a_text_held_past_its_freshness_is_never_sent(orders):
    order(orders, driver=DRIVER, driver_carrier="verizon", driver_name="Sam")
    orders.record_status("A-1", "out_for_delivery", NY_NIGHT, eta="22:30")  # fresh 180 minutes
    (text,) = texts(orders)
    assert (text.state, text.reason) == ("cancelled", "stale")


def test_waiting_texts_go_stale_at_claim_time(orders):
    order(orders, driver=DRIVER, driver_carrier="verizon", driver_name="Sam")
    orders.record_status("A-1", "out_for_delivery", NY_MORNING, eta="10:30")
    later = NY_MORNING + dt.timedelta(hours=4)
    assert claim_due(orders.runtime.engine, "w", later, dt.timedelta(minutes=1), 10) == []
    (text,) = texts(orders)
    assert (text.state, text.reason) == ("cancelled", "stale")


def test_the_per_contact_cap_spreads_automated_texts(db_url, smtp_server):
    orders = Orders(make_runtime(db_url, smtp_server.port))
    orders.runtime.settings.policy.max_per_contact_hour = 1
    order(orders, ref="A-1")
    order(orders, ref="A-2")  # the same customer, another order
    orders.record_status("A-1", "confirmed", NY_MORNING)
    orders.record_status("A-2", "confirmed", NY_MORNING)
    first, second = texts(orders)
    assert first.due_at == NY_MORNING and second.due_at == NY_MORNING + dt.timedelta(hours=1)


def test_a_reminder_before_the_window(orders):
    start = dt.datetime(2026, 11, 24, 14, 0)
    order(orders, window_start=start, window_end=start + dt.timedelta(hours=2),
          timezone="America/New_York")  # fmt: skip
    orders.record_status("A-1", "confirmed", NY_MORNING)
    confirmed, reminder = texts(orders)
    assert confirmed.rule == "confirmed"
    assert reminder.rule == "window_reminder"
    assert reminder.due_at == dt.datetime(2026, 11, 24, 18, 30, tzinfo=dt.UTC)  # 13:30 New York
    assert "between 14:00 and 16:00" in reminder.body


def test_an_event_whose_text_cannot_be_made_stores_nothing(orders):
    order(orders)
    with pytest.raises(OrderError, match=r"rule .out_for_delivery.*driver_name.*assign a driver"):
        orders.record_status("A-1", "out_for_delivery", NY_MORNING)  # no driver, no eta
    assert texts(orders) == []
    with orders.runtime.engine.connect() as conn:
        assert conn.execute(select(events)).all() == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"customer": "12"}, "customer"),
        ({"carrier": "acme"}, "unknown carrier"),
        ({"timezone": "Mars/Base"}, "not a time zone"),
        ({"window_start": dt.datetime(2026, 11, 24, 14)}, "needs a time zone"),
        ({"ref": "A\n2"}, "line break"),
    ],
)
def test_bad_orders_are_refused(orders, kwargs, words):
    values = {"ref": "A-1", "customer": CUSTOMER, **kwargs}
    with pytest.raises(OrderError, match=words):
        orders.upsert(OrderInput(**values), NY_MORNING)


def test_unknown_order_and_status_are_refused(orders):
    with pytest.raises(OrderError, match="no order"):
        orders.record_status("nope", "confirmed", NY_MORNING)
    order(orders)
    with pytest.raises(OrderError, match="not an order status"):
        orders.record_status("A-1", "lost", NY_MORNING)


def test_csv_import_keeps_good_rows_and_names_bad_lines(tmp_path, smtp_server):
    gateway_folder(tmp_path, smtp_server.port)
    (tmp_path / "orders.csv").write_text(
        "ref,customer,carrier,customer_name,window_start,window_end,timezone\n"
        "B-1,+12125550143,verizon,Ana,2026-11-24T14:00,2026-11-24T16:00,America/New_York\n"
        "B-2,12,verizon,Bo,,,\n"
        "B-3,+12125550144,acme,Cy,,,\n"
        "B-4,+12125550145,verizon,Di,2026-11-24 14:00+01:00,tomorrow,\n"
        "B-5,+12125550146,,Ed,,,\n"
    )
    result = run_gateway("orders", "import", "orders.csv", cwd=tmp_path)
    assert result.returncode == 1
    assert "orders.csv:3: customer:" in result.stderr
    assert "orders.csv:4: customer: unknown carrier 'acme'" in result.stderr
    assert "orders.csv:5: window_end 'tomorrow'" in result.stderr
    assert "imported 2 of 5 rows" in result.stderr
    status = run_gateway("orders", "status", "B-1", "confirmed", "--key", "k1", "--format", "json",
                         cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    made = json.loads(status.stdout)
    assert [t["rule"] for t in made["texts"]] == ["confirmed", "window_reminder"]


def test_a_rule_that_does_not_fit_its_template_stops_run_and_fails_templates_check(
    tmp_path, smtp_server
):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "odd.txt.j2").write_text("Your parcel {{ parcel_colour }} is here")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {name: colourful, on_status: delivered, send: odd}\n"
    )
    gateway_folder(tmp_path, smtp_server.port, '[templates]\nfolder = "tpl"\n')
    checked = run_gateway("templates", "check", "--format", "json", cwd=tmp_path)
    assert checked.returncode == 1
    (row,) = json.loads(checked.stdout)
    assert row["name"] == "odd" and "rule 'colourful'" in row["problem"]
    ran = run_gateway("run", "--until-idle", cwd=tmp_path)
    assert (
        ran.returncode == 1 and "rule 'colourful'" in ran.stderr and "parcel_colour" in ran.stderr
    )


def test_preview_a_template_for_a_real_order(tmp_path, smtp_server):
    # Always quiet but for a minute.
    gateway_folder(
        tmp_path, smtp_server.port, '[policy]\nallowed_from = "00:00"\nallowed_until = "00:01"\n'
    )
    made = run_gateway("orders", "upsert", "--ref", "P-1", "--customer", CUSTOMER, "--carrier",
                       "verizon", "--customer-name", "Ana", "--driver", DRIVER, "--driver-name",
                       "Sam", "--timezone", "America/New_York", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    shown = run_gateway("templates", "preview", "out_for_delivery", "--order", "P-1", "--var",
                        "eta=14:30", "--format", "json", cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["text"] == "Hi Ana, your order P-1 is out for delivery with Sam. ETA 14:30."
    assert data["segments"] == 1
    send_at = dt.datetime.fromisoformat(data["send_at"]).astimezone(
        dt.timezone(dt.timedelta(hours=-5))
    )
    assert send_at.strftime("%H:%M") == "00:00"  # the next allowed minute in New York (EST)
    missing = run_gateway("templates", "preview", "delivered", "--order", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "no order 'nope'" in missing.stderr


def test_a_dispatcher_sees_and_cancels_a_scheduled_text(tmp_path, smtp_server):
    gateway_folder(tmp_path, smtp_server.port)
    # Noon tomorrow in New York: the reminder half an hour before falls inside the allowed hours
    # whatever the time of day the test runs (at night it would be held, then go stale).
    new_york = dt.timezone(dt.timedelta(hours=-5))
    tomorrow = dt.datetime.now(new_york).date() + dt.timedelta(days=1)
    start = dt.datetime.combine(tomorrow, dt.time(12, 0), new_york).astimezone(dt.UTC)
    run_gateway("orders", "upsert", "--ref", "S-1", "--customer", CUSTOMER, "--carrier", "verizon",
                "--timezone", "America/New_York", "--window-start", start.isoformat(),
                "--window-end", (start + dt.timedelta(hours=2)).isoformat(), cwd=tmp_path)  # fmt: skip
    run_gateway("orders", "status", "S-1", "confirmed", cwd=tmp_path)
    listed = json.loads(run_gateway("outbox", "list", "--format", "json", cwd=tmp_path).stdout)
    reminder_due = start - dt.timedelta(minutes=30)
    (reminder,) = [
        r
        for r in listed
        if r["state"] == "queued" and dt.datetime.fromisoformat(r["due_at"]) == reminder_due
    ]
    cancelled = run_gateway("outbox", "cancel", str(reminder["id"]), "--reason", "customer called",
                            cwd=tmp_path)  # fmt: skip
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [str(reminder["id"])]
    listed = json.loads(run_gateway("outbox", "list", "--format", "json", cwd=tmp_path).stdout)
    row = next(r for r in listed if r["id"] == reminder["id"])
    assert (row["state"], row["reason"]) == ("cancelled", "customer called")
    again = run_gateway("outbox", "cancel", str(reminder["id"]), cwd=tmp_path)
    assert again.returncode == 1 and "not cancelled" in again.stderr


async def test_the_sender_holds_a_quiet_text_that_comes_due_at_night(db_url, smtp_server):
    """A retry or a late claim can fall in quiet hours: the sender checks again before sending."""
    from gateway.services.outbound import SendRequest, enqueue
    from gateway.services.sender import Sender

    runtime = make_runtime(db_url, smtp_server.port)
    (made,) = enqueue(runtime, SendRequest(CUSTOMER, "verizon", text="hi", respect_quiet_hours=True),
                      NY_MORNING).ids  # fmt: skip
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05,
                    clock=lambda: NY_NIGHT, quiet=runtime.quiet())  # fmt: skip
    await sender.run(asyncio.Event(), until_idle=True)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == made)).one()
    assert smtp_server.received == []
    assert (row.state, row.reason) == ("queued", "held for quiet hours")
    assert row.due_at == dt.datetime(2026, 11, 25, 13, 0, tzinfo=dt.UTC)  # 08:00 New York
