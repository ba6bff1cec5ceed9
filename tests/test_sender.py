"""The sender worker end to end: real outbox database, real SMTP server, real processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.domain.delivery import State
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from gateway.store.views import attempts_of
from tests.conftest import make_runtime


def fill(runtime, n, carrier="verizon"):
    ids = []
    for i in range(n):
        ids += enqueue(
            runtime, SendRequest(f"+1202555{i % 10000:04d}", carrier, text=f"text {i}"), utcnow()
        ).ids
    return ids


def states(runtime):
    with runtime.engine.connect() as conn:
        return dict(
            conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)).all()
        )


async def drain(runtime, **kwargs):
    sender = Sender(
        runtime.engine,
        runtime.route_book(),
        runtime.retry_policy,
        batch_size=kwargs.pop("batch_size", 20),
        idle_poll=0.05,
        **kwargs,
    )
    return await sender.run(asyncio.Event(), until_idle=True)


async def test_drains_the_outbox_and_records_each_attempt(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port, connections=3)
    ids = fill(runtime, 60)
    stats = await drain(runtime)
    assert states(runtime) == {"sent": 60}
    assert stats.attempted == 60 and len(smtp_server.received) == 60
    row = runtime.engine.connect().execute(select(messages).where(messages.c.id == ids[0])).one()
    assert row.route == "own" and row.attempts == 1 and row.last_reply.startswith("250")
    assert row.sent_at is not None and row.lease_owner is None
    [attempt] = attempts_of(runtime.engine, ids[0])
    assert (
        attempt["outcome"] == "accepted" and attempt["number"] == 1 and attempt["smtp_code"] == 250
    )
    # The Message-ID given at enqueue is the one on the wire.
    assert row.message_id.encode() in b"".join(r.content for r in smtp_server.received)


@pytest.mark.parametrize(
    ("fault", "value", "state", "reason"),
    [
        (
            "rcpt_reply",
            "450 4.2.1 mailbox busy",
            "deferred",
            "temporarily refused: 450 4.2.1 mailbox busy",
        ),
        (
            "rcpt_reply",
            "550 5.1.1 no such phone",
            "failed",
            "refused by the server: 550 5.1.1 no such phone",
        ),
        ("data_reply", "552 5.3.4 too big", "failed", "refused by the server: 552 5.3.4 too big"),
        ("drop_after", "data", "deferred", "ambiguous"),
        ("drop_after", "rcpt", "deferred", "connection problem"),
    ],
)
async def test_outcome_to_state(sqlite_url, smtp_server, fault, value, state, reason):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    [message] = fill(runtime, 1)
    setattr(smtp_server.faults, fault, value)
    await drain(runtime)
    row = runtime.engine.connect().execute(select(messages).where(messages.c.id == message)).one()
    assert row.state == state and row.reason.startswith(reason)
    assert row.attempts == 1  # nothing is retried at once, least of all an ambiguous send
    if state == "deferred":
        assert row.due_at > utcnow() + dt.timedelta(seconds=10)
    if value == "data":
        assert row.due_at > utcnow() + dt.timedelta(seconds=500)
        assert len(smtp_server.received) == 1


async def test_auth_failure_defers_and_names_app_passwords(sqlite_url):
    from tests.servers import SmtpTestServer, password_checker

    server = SmtpTestServer(
        authenticator=password_checker("dispatch", "right"), auth_require_tls=False
    )
    server.start()
    try:
        runtime = make_runtime(sqlite_url, server.port, username="dispatch", password="wrong")
        [message] = fill(runtime, 1)
        await drain(runtime)
    finally:
        server.stop()
    row = runtime.engine.connect().execute(select(messages).where(messages.c.id == message)).one()
    assert row.state == "deferred" and "535" in row.reason and "app password" in row.reason


async def test_deferred_rows_are_sent_when_due_again(sqlite_url, smtp_server):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    [message] = fill(runtime, 1)
    smtp_server.faults.rcpt_reply = "451 4.7.1 greylisted"
    clock = [utcnow()]
    await drain(runtime, clock=lambda: clock[0], jitter=lambda: 0.0)
    assert states(runtime) == {"deferred": 1}
    smtp_server.faults.rcpt_reply = None
    clock[0] += dt.timedelta(seconds=16)  # base 30 s, half of it at jitter 0
    await drain(runtime, clock=lambda: clock[0])
    assert states(runtime) == {"sent": 1}
    assert [a["outcome"] for a in attempts_of(runtime.engine, message)] == ["temporary", "accepted"]
    assert [a["number"] for a in attempts_of(runtime.engine, message)] == [1, 2]


# --- real processes -----------------------------------------------------------------------------


def write_config(folder: Path, db_url: str, port: int, lease: float = 120) -> Path:
    config = folder / "gateway.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nconnections = 2\n'
        'from_address = "Dispatch <dispatch@example.com>"\n'
        f"[sender]\nbatch_size = 10\nlease_seconds = {lease}\nidle_poll_seconds = 0.1\n"
    )
    return config


def gateway(config: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_worker_killed_mid_batch_loses_nothing(sqlite_url, smtp_server, tmp_path):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    fill(runtime, 40)
    smtp_server.faults.data_delay = 0.2  # slow enough to kill it mid-batch
    config = write_config(tmp_path, sqlite_url, smtp_server.port, lease=2)
    first = gateway(config, "run")
    try:
        assert wait_for(
            lambda: len(smtp_server.received) >= 4 and states(runtime).get("sending", 0) > 0
        )
    finally:
        first.kill()
        first.wait()
    held = states(runtime).get("sending", 0)
    assert held > 0  # the killed worker left leased rows behind
    smtp_server.faults.data_delay = 0
    time.sleep(2.2)  # its lease runs out
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "run", "--until-idle"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert states(runtime) == {"sent": 40}
    delivered = [r.rcpt_tos[0] for r in smtp_server.received]
    assert set(delivered) == {f"202555{i:04d}@vtext.com" for i in range(40)}
    # A duplicate can only be a message the server took while the worker was killed.
    assert len(delivered) - 40 <= 2


@pytest.mark.slow
def test_sigterm_finishes_in_flight_releases_the_rest_and_exits_0(
    sqlite_url, smtp_server, tmp_path
):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    fill(runtime, 30)
    smtp_server.faults.data_delay = 0.3
    config = write_config(tmp_path, sqlite_url, smtp_server.port)
    worker = gateway(config, "run")
    assert wait_for(lambda: len(smtp_server.received) >= 2)
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=15)
    assert worker.returncode == 0, err
    counts = states(runtime)
    assert "sending" not in counts  # nothing left leased
    assert counts.get("sent", 0) == len(smtp_server.received)
    assert counts.get("sent", 0) + counts.get("queued", 0) == 30
    assert "done: attempts" in err and "released" in err
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempts)).scalar() == len(
            smtp_server.received
        )


@pytest.mark.slow
def test_run_refuses_an_unmigrated_database(tmp_path, smtp_server):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'new.db'}", smtp_server.port)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "run", "--until-idle"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "gateway db upgrade" in result.stderr


def test_state_enum_has_the_contract_states():
    assert {s.value for s in State} == {
        "queued",
        "sending",
        "sent",
        "delivered",
        "deferred",
        "failed",
        "bounced",
        "replied",
        "suppressed",
        "cancelled",
    }


def test_env_is_clean():
    assert not any(
        k.startswith("GATEWAY_") and not k.startswith("GATEWAY_TEST_") for k in os.environ
    )


@pytest.mark.slow
def test_a_text_stored_by_another_process_is_sent_now_not_at_the_next_poll(
    tmp_path, db_url, smtp_server
):
    """`gateway run` polls only every 60 s here: a text another process stores (`gateway
    send`) is sent well before that, because storing it rings the waiting sender (PostgreSQL
    NOTIFY; on SQLite a datagram to the sender's socket)."""
    import subprocess
    import sys

    from tests.conftest import gateway_folder, run_gateway

    extra = ('from_address = "Dispatch <dispatch@example.com>"\n'
             "[sender]\nidle_poll_seconds = 60\n")  # fmt: skip
    folder = gateway_folder(tmp_path, smtp_server.port, extra, db_url=db_url)
    worker = subprocess.Popen([sys.executable, "-m", "gateway", "run"], cwd=folder,
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for n in (1, 2):  # the second after the first was sent: the sender is waiting again
            sent = run_gateway("send", "--to", "+12025550143", "--carrier", "verizon",
                               "--text", f"Text {n}", cwd=folder)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            deadline = time.monotonic() + 30  # half the poll: only the bell can make it
            while len(smtp_server.received) < n:
                assert worker.poll() is None, "gateway run stopped"
                assert time.monotonic() < deadline, f"text {n} waited for the sender's poll"
                time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(30)
