"""Own server first, hosted relay when needed: two real aiosmtpd servers, "own" and "relay"."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy

import pytest
from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from tests.conftest import make_runtime, run_gateway
from tests.servers import SmtpTestServer, eventually, password_checker


def runtime_for(db_url, own_port, relay_port, *, own=None, relay=None) -> Runtime:
    return make_runtime(
        db_url,
        own_port,
        relay={
            "enabled": True,
            "host": "127.0.0.1",
            "port": relay_port,
            "security": "none",
            "from_address": "Example Co via Relay <notify@relay.example>",
            "bcc": "archive@example.com",
            **(relay or {}),
        },
        **(own or {}),
    )


def fill(runtime, n):
    return [
        enqueue(
            runtime, SendRequest(f"+1202555{i:04d}", "verizon", text=f"text {i}"), utcnow()
        ).ids[0]
        for i in range(n)
    ]


async def drain(runtime, clock=None):
    options = {"clock": clock} if clock else {}
    sender = Sender(
        runtime.engine,
        runtime.route_book(),
        runtime.retry_policy,
        batch_size=20,
        idle_poll=0.05,
        **options,
    )
    return await sender.run(asyncio.Event(), until_idle=True)


def rows(runtime):
    with runtime.engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(messages).order_by(messages.c.id))}


def history(runtime, message):
    with runtime.engine.connect() as conn:
        return conn.execute(
            select(attempts).where(attempts.c.message_id == message).order_by(attempts.c.id)
        ).all()


async def test_own_server_first_when_it_works(sqlite_url, smtp_server, relay_server):
    runtime = runtime_for(sqlite_url, smtp_server.port, relay_server.port)
    fill(runtime, 3)
    await drain(runtime)
    assert {r.route for r in rows(runtime).values()} == {"own"}
    assert len(smtp_server.received) == 3 and not relay_server.received


async def test_535_moves_the_text_to_the_relay_at_once_and_says_why(db_url, relay_server):
    own = SmtpTestServer(
        authenticator=password_checker("dispatch", "right"), auth_require_tls=False
    )
    own.start()
    try:
        runtime = runtime_for(
            db_url, own.port, relay_server.port, own={"username": "dispatch", "password": "wrong"}
        )
        [message] = fill(runtime, 1)
        await drain(runtime)
    finally:
        own.stop()
    row = rows(runtime)[message]
    assert row.state == "sent" and row.route == "relay" and row.attempts == 2
    first, second = history(runtime, message)
    assert (first.route, first.outcome, first.smtp_code) == ("own", "auth", 535)
    assert (
        second.route == "relay"
        and "own server failed this message's last attempt (auth)" in second.route_reason
    )
    assert len(relay_server.received) == 1


async def test_relay_mail_comes_home_and_keeps_its_message_id(sqlite_url, relay_server):
    from gateway.services.carrier_sim import free_port

    runtime = runtime_for(sqlite_url, free_port(), relay_server.port, own={"enabled": False})
    [message] = fill(runtime, 1)
    await drain(runtime)
    row = rows(runtime)[message]
    [received] = relay_server.received
    parsed = email.message_from_bytes(received.content, policy=email.policy.default)
    assert parsed["From"] == "Example Co via Relay <notify@relay.example>"
    assert parsed["Reply-To"] == "Dispatch <dispatch@example.com>"
    assert parsed["Message-ID"] == row.message_id
    assert parsed["Bcc"] is None  # the archive copy is an envelope recipient only
    assert received.rcpt_tos == ["2025550000@vtext.com", "archive@example.com"]
    assert received.mail_from == "notify@relay.example"
    assert "is disabled" in history(runtime, message)[0].route_reason


async def test_daily_limit_3_sends_the_fourth_by_relay(db_url, smtp_server, relay_server):
    runtime = runtime_for(db_url, smtp_server.port, relay_server.port, own={"daily_limit": 3})
    fill(runtime, 5)
    await drain(runtime)
    routes = [r.route for r in rows(runtime).values()]
    assert routes.count("own") == 3 and routes.count("relay") == 2
    assert len(smtp_server.received) == 3 and len(relay_server.received) == 2
    # The limit is a rolling 24 h read from the database: a new worker sees it too.
    fill(runtime, 1)
    await drain(runtime)
    assert len(smtp_server.received) == 3 and len(relay_server.received) == 3


async def test_own_down_relay_takes_over_then_traffic_returns_after_the_cooldown(
    sqlite_url, relay_server, caplog
):
    """And the log says it once each way: the route failing, in the server's words (not for
    each text it could not take), and working again."""
    from gateway.services.carrier_sim import free_port

    own_port = free_port()  # nothing listens yet: the own server is down
    runtime = runtime_for(sqlite_url, own_port, relay_server.port)
    fill(runtime, 4)
    clock = [utcnow()]
    await drain(runtime, clock=lambda: clock[0])
    assert {r.route for r in rows(runtime).values()} == {"relay"}
    own = SmtpTestServer(port=own_port)
    own.start()
    try:
        fill(runtime, 2)
        clock[0] = max(clock[0], utcnow())
        await drain(runtime, clock=lambda: clock[0])
        assert not own.received  # the breaker is open: still the relay
        fill(runtime, 2)
        clock[0] = max(clock[0], utcnow()) + dt.timedelta(seconds=61)  # past the cool-down
        await drain(runtime, clock=lambda: clock[0])
        assert len(own.received) == 2
    finally:
        own.stop()
    from gateway.store.routes import load_breakers

    assert load_breakers(runtime.engine)["own"].state.value == "closed"
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.services.routes"]
    assert len(said) == 2 and said[1] == "route own works again", said
    assert said[0].startswith("route own fails (") and "Connect call failed" in said[0], said


async def test_a_breaker_one_worker_opens_holds_in_a_worker_already_running(db_url, relay_server):
    """Breakers are shared through the database: a worker that started with the own route
    closed stops trying it within a refresh (1 s) of another worker opening its breaker."""
    from gateway.domain.delivery import AttemptOutcome, OutcomeKind
    from gateway.domain.routing import BreakerState, Route
    from gateway.services.carrier_sim import free_port

    runtime = runtime_for(db_url, free_port(), relay_server.port)  # nothing listens on own
    stop = asyncio.Event()
    running = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy,
                     batch_size=20, idle_poll=0.05)  # fmt: skip
    task = asyncio.create_task(running.run(stop))
    try:
        await eventually(lambda: running.routes.counted, "the sender read the routes' state")
        assert running.routes.status(Route.OWN, utcnow()).breaker is BreakerState.CLOSED
        other = runtime.route_book()  # another process's sender
        other.load(runtime.engine, utcnow())
        refused = AttemptOutcome(OutcomeKind.NETWORK, "connection refused", phase="connect")
        for _ in range(3):
            other.observe(Route.OWN, refused, utcnow())
        other.save(runtime.engine, utcnow())
        await eventually(
            lambda: running.routes.status(Route.OWN, utcnow()).breaker is BreakerState.OPEN,
            "the running sender saw the breaker the other opened",
        )
        ids = fill(runtime, 3)
        for _ in range(200):
            if all(rows(runtime)[i].state == "sent" for i in ids):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    tried = [a.route for i in ids for a in history(runtime, i)]
    assert tried == ["relay"] * 3  # never the own server, whose breaker the other opened
    assert len(relay_server.received) == 3


async def test_both_down_all_wait_none_lost_then_all_sent(sqlite_url):
    from gateway.services.carrier_sim import free_port

    own_port, relay_port = free_port(), free_port()
    runtime = runtime_for(sqlite_url, own_port, relay_port)
    ids = fill(runtime, 6)
    clock = [utcnow()]
    await drain(runtime, clock=lambda: clock[0])
    stored = rows(runtime)
    assert {r.state for r in stored.values()} == {"deferred"}
    assert all(r.due_at > clock[0] for r in stored.values())
    relay = SmtpTestServer(port=relay_port)
    relay.start()
    try:
        clock[0] += dt.timedelta(minutes=31)  # past every backoff and cool-down
        await drain(runtime, clock=lambda: clock[0])
    finally:
        relay.stop()
    assert {r.state for r in rows(runtime).values()} == {"sent"}
    assert sorted(r.rcpt_tos[0] for r in relay.received) == sorted(
        rows(runtime)[i].to_address for i in ids
    )


async def test_ambiguous_send_is_never_moved_to_the_relay(sqlite_url, smtp_server, relay_server):
    runtime = runtime_for(sqlite_url, smtp_server.port, relay_server.port)
    [message] = fill(runtime, 1)
    smtp_server.faults.drop_after = "data"
    clock = [utcnow()]
    await drain(runtime, clock=lambda: clock[0])
    smtp_server.faults.drop_after = None
    smtp_server.faults.rcpt_reply = None
    clock[0] += dt.timedelta(minutes=11)
    await drain(runtime, clock=lambda: clock[0])
    assert [a.route for a in history(runtime, message)] == ["own", "own"]
    assert not relay_server.received


@pytest.mark.parametrize(
    ("fault", "reply", "state"),
    [
        ("rcpt_reply", "450 4.2.1 mailbox busy", "deferred"),
        ("data_reply", "552 5.3.4 too big", "failed"),
    ],
)
async def test_message_level_answers_stay_on_the_own_server(
    sqlite_url, smtp_server, relay_server, fault, reply, state
):
    runtime = runtime_for(sqlite_url, smtp_server.port, relay_server.port)
    [message] = fill(runtime, 1)
    setattr(smtp_server.faults, fault, reply)
    await drain(runtime)
    assert rows(runtime)[message].state == state and not relay_server.received


async def test_421_at_the_greeting_moves_to_the_relay(sqlite_url, relay_server):
    own = SmtpTestServer(refuse_greeting=True)
    own.start()
    try:
        runtime = runtime_for(sqlite_url, own.port, relay_server.port)
        [message] = fill(runtime, 1)
        await drain(runtime)
    finally:
        own.stop()
    assert rows(runtime)[message].route == "relay"
    assert history(runtime, message)[0].smtp_code == 421


async def test_repeated_4xx_on_the_own_server_moves_to_the_relay(
    sqlite_url, smtp_server, relay_server
):
    runtime = runtime_for(sqlite_url, smtp_server.port, relay_server.port)
    [message] = fill(runtime, 1)
    smtp_server.faults.rcpt_reply = "451 4.7.1 greylisted"
    clock = [utcnow()]
    for _ in range(2):
        await drain(runtime, clock=lambda: clock[0])
        clock[0] += dt.timedelta(minutes=31)
    await drain(runtime, clock=lambda: clock[0])
    assert [a.route for a in history(runtime, message)] == ["own", "own", "relay"]
    assert rows(runtime)[message].state == "sent"


def test_attempt_rows_count(sqlite_url):
    runtime = runtime_for(sqlite_url, 1, 2)
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempts)).scalar() == 0


def test_routes_command_shows_the_live_state(tmp_path, relay_server):
    import json

    own = SmtpTestServer(
        authenticator=password_checker("dispatch", "right"), auth_require_tls=False
    )
    own.start()
    try:
        (tmp_path / "gateway.toml").write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {own.port}\nsecurity = "none"\nusername = "dispatch"\n'
            'password = "wrong"\ndaily_limit = 50\nfrom_address = "Dispatch <dispatch@example.com>"\n'
            f'[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {relay_server.port}\nsecurity = "none"\n'
            'from_address = "Relay <notify@relay.example>"\npreset = "workspace"\n'
        )

        def gateway(*args):
            return run_gateway(*args, cwd=tmp_path)

        assert gateway("db", "upgrade").returncode == 0
        for i in range(3):
            assert (
                gateway(
                    "send", "--to", f"+1202555{i:04d}", "--carrier", "verizon", "--text", "hi"
                ).returncode
                == 0
            )
        result = gateway("run", "--until-idle")
        assert result.returncode == 0, result.stderr
        listed = gateway("routes", "--format", "json")
    finally:
        own.stop()
    assert listed.returncode == 0, listed.stderr
    by_name = {row["name"]: row for row in json.loads(listed.stdout)}
    assert by_name["own"]["breaker"] == "open" and by_name["own"]["daily_limit"] == 50
    assert "535" in by_name["own"]["last_error"] and "app password" in by_name["own"]["last_error"]
    assert "OAuth2" in by_name["own"]["last_error"] and by_name["own"]["sent_today"] == 0
    assert by_name["relay"]["enabled"] and by_name["relay"]["sent_today"] == 3
    assert by_name["relay"]["daily_limit"] == 2000  # the workspace preset
    assert by_name["relay"]["breaker"] == "closed"


async def test_per_minute_rate_moves_the_excess_to_the_relay(sqlite_url, smtp_server, relay_server):
    runtime = runtime_for(sqlite_url, smtp_server.port, relay_server.port, own={"per_minute": 2})
    fill(runtime, 5)
    clock = [utcnow()]  # time stands still: the bucket does not refill
    await drain(runtime, clock=lambda: clock[0])
    routes = [r.route for r in rows(runtime).values()]
    assert routes.count("own") == 2 and routes.count("relay") == 3
    assert "per-minute rate" in history(runtime, max(rows(runtime)))[0].route_reason


def test_presets_give_limits_that_explicit_values_override():
    settings = load_settings(
        None, smtp={"preset": "microsoft365"}, relay={"preset": "gmail", "daily_limit": 100}
    )
    assert settings.smtp.limits() == (10000, 30)
    assert settings.relay.limits() == (100, None)


def test_both_routes_refusing_leaves_every_text_deferred_never_sending(tmp_path):
    """Issue 20, point 1: with both routes refusing connections, each claim ends with a final
    decision for every text it tried (two texts: each tried on both routes, and the own server
    looked usable again after the relay failed), then one route comes back and both go."""
    from gateway.services.carrier_sim import free_port
    from tests.conftest import gateway_folder

    own_port, relay_port = free_port(), free_port()
    folder = gateway_folder(tmp_path, own_port, extra=f"""
[relay]
enabled = true
host = "127.0.0.1"
port = {relay_port}
security = "none"
from_address = "Relay <relay@example.net>"
""")  # fmt: skip
    for n in range(2):
        sent = run_gateway("send", "--to", f"+1202555014{n}", "--carrier", "verizon", "--text",
                           f"text {n}", cwd=folder)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    done = run_gateway("run", "--until-idle", cwd=folder)
    assert done.returncode == 0, done.stderr
    runtime = Runtime(load_settings(folder / "gateway.toml"))
    stored = rows(runtime)
    assert {r.state for r in stored.values()} == {"deferred"}, [
        (r.state, r.attempts) for r in stored.values()
    ]
    assert all((r.attempts == 2 and r.lease_until is None) or r.lease_until <= utcnow()
               for r in stored.values())  # fmt: skip
    assert all(r.due_at > utcnow() for r in stored.values())
    listed = run_gateway("outbox", "list", "--state", "sending", "--format", "json", cwd=folder)
    assert listed.stdout.strip() == "[]"
    relay = SmtpTestServer(port=relay_port)
    relay.start()
    try:
        with runtime.engine.begin() as conn:  # their retry is due (time has passed)
            conn.execute(messages.update().values(due_at=utcnow() - dt.timedelta(seconds=1)))
        again = run_gateway("run", "--until-idle", cwd=folder)
        assert again.returncode == 0, again.stderr
    finally:
        relay.stop()
    assert {r.state for r in rows(runtime).values()} == {"sent"}
    assert len(relay.received) == 2


async def test_a_relay_that_refuses_carrier_gateways_never_gets_a_carrier_text(
    sqlite_url, relay_server
):
    """Issue 19, part 6: the own server is down; the relay does not deliver to carriers'
    gateways, so a text to a carrier waits (deferred, saying why) and one to an email-to-SMS
    provider goes by the relay."""
    from gateway.services.carrier_sim import free_port

    runtime = runtime_for(sqlite_url, free_port(), relay_server.port,
                          relay={"delivers_to_gateways": False})  # fmt: skip
    runtime.settings.gateways.provider = "generic"
    carrier_text = fill(runtime, 1)[0]
    provider_text = enqueue(runtime, SendRequest("+14155550100", "att", text="via provider"),
                            utcnow()).ids[0]  # fmt: skip
    await drain(runtime)
    stored = rows(runtime)
    assert stored[carrier_text].state == "deferred"
    assert {a.route for a in history(runtime, carrier_text)} == {"own"}  # never the relay
    assert stored[provider_text].state == "sent" and stored[provider_text].route == "relay"
    assert [r.rcpt_tos[0] for r in relay_server.received] == [stored[provider_text].to_address]


def test_relays_known_to_refuse_carrier_gateways():
    from gateway.config import RelaySettings

    assert RelaySettings(host="smtp.sendgrid.net").takes_gateway_mail is False
    assert RelaySettings(host="SMTP.SendGrid.net.").takes_gateway_mail is False
    assert RelaySettings(host="smtp.sendgrid.net", delivers_to_gateways=True).takes_gateway_mail
    assert RelaySettings(host="smtp.relay.example").takes_gateway_mail is True
