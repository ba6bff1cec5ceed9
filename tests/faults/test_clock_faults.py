"""Time going wrong: the clocks jumping for daylight saving while a text waits out the quiet
hours, and the system clock moving back under a running sender. A text goes at the right local
hour, is never lost, never sent twice, and a daily limit is never passed."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from gateway.services.outbound import SendRequest, enqueue
from gateway.services.sender import Sender
from gateway.store.tables import messages
from tests.conftest import make_runtime

UTC = dt.UTC


async def drain(runtime, now: dt.datetime) -> None:
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05,
                    clock=lambda: now, quiet=runtime.quiet())  # fmt: skip
    await asyncio.wait_for(sender.run(asyncio.Event(), until_idle=True), 60)


def states(runtime) -> dict[int, tuple[str, dt.datetime]]:
    with runtime.engine.connect() as conn:
        return {
            r.id: (r.state, r.due_at.astimezone(UTC))
            for r in conn.execute(select(messages.c.id, messages.c.state, messages.c.due_at))
        }


@pytest.mark.parametrize(
    ("queued_at", "morning"),
    [
        # 01:30 EST, half an hour before the clocks jump to 03:00: 08:00 is then EDT (UTC-4).
        (dt.datetime(2027, 3, 14, 6, 30, tzinfo=UTC), dt.datetime(2027, 3, 14, 12, 0, tzinfo=UTC)),
        # 01:30 EDT, the first of two: after the clocks fall back 08:00 is EST (UTC-5).
        (dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC), dt.datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),
    ],
    ids=["spring forward", "fall back"],
)
async def test_a_dst_jump_during_quiet_hours(sqlite_url, smtp_server, queued_at, morning):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    request = SendRequest("+12125550143", "verizon", text="Your order is confirmed",
                          automated=True)  # fmt: skip
    (message,) = enqueue(runtime, request, queued_at).ids
    assert states(runtime)[message] == ("queued", morning)  # 08:00 on New York's clock that day
    await drain(runtime, morning - dt.timedelta(minutes=1))
    assert states(runtime)[message][0] == "queued" and not smtp_server.received
    await drain(runtime, morning + dt.timedelta(seconds=30))
    assert states(runtime)[message][0] == "sent" and len(smtp_server.received) == 1


async def test_the_system_clock_moving_back(sqlite_url, smtp_server, relay_server):
    runtime = make_runtime(sqlite_url, smtp_server.port, daily_limit=3, relay={
        "enabled": True, "host": "127.0.0.1", "port": relay_server.port, "security": "none",
        "from_address": "Relay <relay@relay.example>",
    })  # fmt: skip
    now = dt.datetime(2026, 12, 1, 15, 0, tzinfo=UTC)

    def text(n: int, at: dt.datetime) -> int:
        request = SendRequest(f"+1202555{n:04d}", "verizon", text=f"Order {n}")
        return enqueue(runtime, request, at).ids[0]

    first = [text(n, now) for n in range(3)]
    await drain(runtime, now)
    assert {states(runtime)[m][0] for m in first} == {"sent"} and len(smtp_server.received) == 3

    # The clock goes back an hour (an NTP step, a restored VM). Texts queued at the later time
    # wait for it rather than going early; none is lost.
    later = [text(n, now) for n in range(3, 5)]
    back = now - dt.timedelta(hours=1)
    await drain(runtime, back)
    assert {states(runtime)[m][0] for m in later} == {"queued"}
    # One queued on the moved-back clock is due on it: it goes, and the own server's three
    # sends of "the future" still count against its daily limit of 3, so the relay takes it.
    early = text(9, back)
    await drain(runtime, back)
    assert states(runtime)[early][0] == "sent"
    assert len(smtp_server.received) == 3 and len(relay_server.received) == 1

    await drain(runtime, now + dt.timedelta(seconds=1))  # the clock is right again
    assert {states(runtime)[m][0] for m in later} == {"sent"}
    assert len(smtp_server.received) == 3 and len(relay_server.received) == 3  # each once
