"""`gateway demo`: the product end to end on embedded defaults, no account and no network.

A local SMTP server stands in for the carrier gateways; the database is a SQLite file in the
demo folder; sample contacts on real carrier entries show each path a text can take.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from gateway.config import load_settings
from gateway.domain.delivery import State
from gateway.services.carrier_sim import CarrierSimulator
from gateway.services.orders import OrderInput, Orders
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.db import upgrade, utcnow
from gateway.store.outbox import list_messages


@dataclass(frozen=True)
class DemoText:
    who: str
    request: SendRequest | None  # None: a rule made it from an order event
    expect: State
    expect_reason: str | None = None


# The demo order's time zone: the first of these where it is daytime now, so its texts are
# not held by quiet hours (a real order has the delivery address's zone).
DAYTIME_ZONES = (
    "America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu",
    "America/Sao_Paulo", "Europe/London", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo",
    "Australia/Sydney",
)  # fmt: skip
# What each status event of the demo order should leave in the outbox, by rule.
ORDER_WALK = (
    ("confirmed", {
        "confirmed": (State.SENT, None),
        # Timed to the window; the order is delivered first, which makes it obsolete.
        "window_reminder": (State.CANCELLED, "superseded"),
    }),
    ("driver_assigned", {"driver_assigned": (State.SENT, None)}),
    ("out_for_delivery", {"out_for_delivery": (State.SENT, None)}),
    # The fourth automated text within the hour: held by max_per_contact_hour (3).
    ("delivered", {"delivered": (State.QUEUED, None)}),
)  # fmt: skip


def _texts() -> list[DemoText]:
    def order(ref: str, customer: str, **more: str) -> dict[str, str]:
        return {"customer_name": customer, "order_ref": ref, **more}

    return [
        DemoText("Ana (Verizon)", SendRequest(
            "+1 202 555 0143", "verizon", template="order_confirmed",
            variables=order("A-1001", "Ana", window="14:00-16:00"), order_ref="A-1001"),
            State.SENT),
        DemoText("Ana (Verizon)", SendRequest(
            "+1 202 555 0143", template="out_for_delivery",
            variables=order("A-1001", "Ana", driver_name="Sam", eta="14:40"), order_ref="A-1001"),
            State.SENT),
        DemoText("Ben (US Cellular)", SendRequest(
            "(312) 555-0199", "US Cellular", template="driver_assigned",
            variables=order("A-1002", "Ben", driver_name="Rosa"), order_ref="A-1002"),
            State.SENT),
        DemoText("Chloé (Telus, Canada)", SendRequest(
            "+1 604 555 0123", "telus", template="delayed",
            variables=order("A-1003", "Chloé", eta="17:15", reason="snow on Highway 1"),
            order_ref="A-1003"),
            State.SENT),
        DemoText("Sam, driver (Boost)", SendRequest(
            "+1 646 555 0188", "boost", template="free_text", variables={"text": (
                "Sam, three changes to your afternoon route: A-1001 moves to 14:40 because the "
                "customer asked for later; A-1004 is cancelled; and please collect the two "
                "returns waiting at the Elm Street depot before 17:00. Thanks!")}),
            State.SENT),
        DemoText("Dan (AT&T)", SendRequest(
            "+1 415 555 0100", "att", template="order_confirmed",
            variables=order("A-1005", "Dan"), order_ref="A-1005"),
            State.SUPPRESSED, "carrier_retired"),
        DemoText("Eve (carrier not known)", SendRequest(
            "+1 718 555 0177", template="order_confirmed",
            variables=order("A-1006", "Eve"), order_ref="A-1006"),
            State.SUPPRESSED, "carrier_unknown"),
    ]  # fmt: skip


def run_demo(folder: str, exit_after: float | None, out: Console) -> int:
    """Run the demo; returns the exit code (0 when every text ended as expected)."""
    started = time.monotonic()
    base = Path(folder)
    if base.exists():
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
            (base / name).unlink(missing_ok=True)
    base.mkdir(parents=True, exist_ok=True)

    carriers = CarrierSimulator()
    port = carriers.start()
    try:
        settings = load_settings(
            None,
            database={"url": f"sqlite:///{base / 'gateway.db'}"},
            smtp={
                "host": "127.0.0.1", "port": port, "security": "none", "username": None,
                "password": None, "password_env": None, "password_file": None,
                "from_address": "Dispatch <dispatch@demo.example>",
            },
        )  # fmt: skip
        runtime = Runtime(settings)
        upgrade(runtime.engine)
        # So that `gateway --config demo/gateway.toml outbox list` shows what the demo did.
        (base / "gateway.toml").write_text(
            f'[database]\nurl = "sqlite:///{(base / "gateway.db").resolve()}"\n', encoding="utf-8"
        )
        out.print(f"[bold]gateway demo[/bold]: carrier simulator on 127.0.0.1:{port}, "
                  f"database {base / 'gateway.db'}")  # fmt: skip

        plan = _texts()
        expected: dict[int, DemoText] = {}
        for item in plan:
            assert item.request is not None
            result = enqueue(runtime, item.request, utcnow())
            for message in result.ids:
                expected[message] = item
            note = f" ({result.reason})" if result.reason else ""
            out.print(f"  queued for {item.who}: {', '.join(map(str, result.ids))} "
                      f"{result.state.value}{note}", markup=False)  # fmt: skip

        async def send_all() -> None:
            sender = Sender(
                runtime.engine,
                runtime.route_book(),
                runtime.retry_policy,
                batch_size=50,
                **runtime.quiet(),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(sender.run(stop, until_idle=True))
            timeout = (
                None if exit_after is None else max(1.0, exit_after - (time.monotonic() - started))
            )
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                stop.set()
                await task

        asyncio.run(send_all())
        expected.update(_walk_order(runtime, send_all, out))
        return _report(runtime, carriers, expected, out)
    finally:
        carriers.stop()


def _walk_order(
    runtime: Runtime, send_all: Callable[[], Coroutine[Any, Any, None]], out: Console
) -> dict[int, DemoText]:
    """An order through its statuses, as the order system would report them; the rules decide
    the texts, which are sent between events as a running gateway would."""
    now = utcnow()
    zone_name = next(
        name for name in DAYTIME_ZONES if 9 <= now.astimezone(ZoneInfo(name)).hour < 18
    )
    local = now.astimezone(ZoneInfo(zone_name)).replace(second=0, microsecond=0, tzinfo=None)
    orders = Orders(runtime)
    orders.upsert(
        OrderInput(
            ref="W-2001", customer="+1 202 555 0161", carrier="verizon", customer_name="Fay",
            driver="+1 646 555 0188", driver_carrier="boost", driver_name="Sam",
            window_start=local + dt.timedelta(hours=3), window_end=local + dt.timedelta(hours=5),
            timezone=zone_name,
        ),
        now,
    )  # fmt: skip
    out.print(f"order W-2001 for Fay (delivery address in {zone_name}), through its statuses:")
    expected: dict[int, DemoText] = {}
    for status, outcomes in ORDER_WALK:
        result = orders.record_status("W-2001", status, utcnow(), eta="in 20 minutes")
        for text in result.texts:
            state, reason = outcomes[text["rule"]]
            expected[text["id"]] = DemoText(f"Fay: {text['rule']}", None, state, reason)
        made = ", ".join(f"{t['rule']} {t['state']}" for t in result.texts) or "no text"
        out.print(f"  {status}: {made}", markup=False)
        asyncio.run(send_all())
    return expected


def _report(
    runtime: Runtime, carriers: CarrierSimulator, expected: dict[int, DemoText], out: Console
) -> int:
    rows = {row["id"]: row for row in list_messages(runtime.engine, limit=1000)}
    table = Table(title="What each phone received", title_justify="left")
    for column in ("message", "to", "gateway address", "state", "text / reason"):
        table.add_column(column)
    wrong = []
    for message, item in sorted(expected.items()):
        row = rows[message]
        received = [r for r in carriers.inbox.get((row["to_address"] or "").lower(), [])
                    if r.message_id == row["message_id"]]  # fmt: skip
        if received:
            shown = received[0].text
        elif row["state"] == State.QUEUED.value:
            shown = f"waits until {row['due_at']:%H:%M} UTC (the per-contact cap or quiet hours)"
        else:
            shown = row["reason"] or row["gateway_reason"] or ""
        table.add_row(str(message), f"{item.who}\n{row['to']}", row["to_address"] or "-",
                      row["state"], shown)  # fmt: skip
        ok = row["state"] == item.expect.value and (
            bool(received) if item.expect is State.SENT else row["reason"] == item.expect_reason
        )
        if not ok:
            wrong.append(f"message {message} to {item.who}: {row['state']} ({row['reason']}), "
                         f"expected {item.expect.value}")  # fmt: skip
    out.print(table)
    counts = {state: sum(1 for r in rows.values() if r["state"] == state.value) for state in State}
    shown = ", ".join(f"{state.value} {n}" for state, n in counts.items() if n)
    out.print(f"{shown}, at {dt.datetime.now():%H:%M:%S}")
    for line in wrong:
        out.print(f"[red]unexpected:[/red] {line}")
    if not wrong:
        config = runtime.settings.database.url.removeprefix("sqlite:///")
        out.print(
            "every text ended as expected. See the outbox with:\n"
            f"  gateway --config {Path(config).parent / 'gateway.toml'} outbox list"
        )
    return 1 if wrong else 0
