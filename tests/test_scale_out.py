"""Several `gateway run` processes on one PostgreSQL database: each text sent once, none lost
when one is killed with SIGKILL mid-batch (a duplicate only for a text the server accepted and
the dead process had not recorded), and one mailbox read by one process at a time, taken over
when its reader dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from gateway.store.tables import inbound, messages
from gateway.transport.mailsource import deliver_to_maildir
from tests.conftest import gateway_folder

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def start(folder: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args], cwd=folder, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(check, what: str, seconds: float = 90.0):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)
    return found


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def states(runtime: Runtime) -> dict[str, int]:
    with runtime.engine.connect() as conn:
        return dict(
            conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)).all()
        )


def leased_by(runtime: Runtime, pid: int) -> list[str]:
    with runtime.engine.connect() as conn:
        return list(
            conn.execute(
                select(messages.c.to_address).where(
                    messages.c.state == "sending", messages.c.lease_owner.like(f"%:{pid}:%")
                )
            ).scalars()
        )


def test_three_processes_send_each_text_once_and_survive_a_kill(
    tmp_path, postgres_url, smtp_server
):
    count = 3000
    gateway_folder(tmp_path, smtp_server.port, db_url=postgres_url, extra=(
        "connections = 2\n[sender]\nbatch_size = 50\nlease_seconds = 3\nidle_poll_seconds = 0.1\n"
    ))  # fmt: skip
    runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
    now = utcnow()
    for n in range(count):
        enqueue(runtime, SendRequest(f"+1202555{n:04d}", "verizon", text=f"Order {n} is out"), now)
    # A real server takes a moment per message; 10 ms keeps each leased batch of 50 in flight
    # for about a quarter second, long enough to be seen (at 2 ms the test could look only
    # between batches and time out with the backlog gone).
    smtp_server.faults.data_delay = 0.01
    processes = [start(tmp_path, "run") for _ in range(3)]
    try:
        victim = processes[0]
        # Kill one in the middle of a batch: when it holds leased rows and mail is flowing.
        in_flight = wait_for(
            lambda: len(smtp_server.received) > 600 and leased_by(runtime, victim.pid),
            "the first process to hold a batch",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        at_kill = set(leased_by(runtime, victim.pid)) | set(in_flight)
        wait_for(lambda: states(runtime) == {"sent": count}, "every text sent", 120)
    finally:
        stop_all(processes)
    delivered = [r.rcpt_tos[0] for r in smtp_server.received]
    expected = {f"202555{n:04d}@vtext.com" for n in range(count)}
    assert set(delivered) == expected  # none lost
    seen: set[str] = set()
    duplicates = [a for a in delivered if a in seen or seen.add(a)]
    # A text went twice only if the killed process had it leased: the server said 250 and the
    # process died before recording it. Reported, as the issue asks.
    print(f"\n3 processes, {count} texts, one killed: {len(duplicates)} duplicate(s), "
          f"{len(at_kill)} texts leased by the killed process")  # fmt: skip
    assert set(duplicates) <= at_kill
    assert len(duplicates) <= len(at_kill)
    runtime.engine.dispose()


def status(folder: Path) -> str | None:
    done = subprocess.run([sys.executable, "-m", "gateway", "status", "--format", "json"],
                          cwd=folder, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("GATEWAY_")})  # fmt: skip
    return done.stdout if done.returncode == 0 else None


def reply(phone: str, n: int) -> bytes:
    return (
        f"From: {phone}@vtext.com\r\nTo: dispatch@example.com\r\nSubject: \r\n"
        f"Message-ID: <{uuid.uuid4().hex}@vtext.com>\r\n\r\nReply {n}\r\n"
    ).encode()


def test_one_mailbox_is_read_by_one_process_and_taken_over_when_it_dies(
    tmp_path, postgres_url, smtp_server
):
    maildir = tmp_path / "Maildir"
    gateway_folder(tmp_path, smtp_server.port, db_url=postgres_url, extra=(
        f'[inbound]\nmaildir = "{maildir}"\nmailbox_lease_seconds = 3\n'
        "[sender]\nidle_poll_seconds = 0.1\n"
    ))  # fmt: skip
    runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    processes = [start(tmp_path, "run") for _ in range(2)]

    def stored() -> int:
        with runtime.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(inbound)).scalar()

    def holder() -> str | None:
        with runtime.engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT holder FROM mailboxes WHERE held_until > now()"
            ).scalar()

    try:
        first = wait_for(holder, "a process to take the mailbox", 30)
        for n in range(30):
            deliver_to_maildir(maildir, reply("2025550143", n), f"{time.time():.6f}.{n}.a")
        wait_for(lambda: stored() == 30, "the first 30 replies stored")
        # `gateway status` shows both processes alive, and which one reads the mailbox.
        shown = json.loads(wait_for(lambda: (r := status(tmp_path)) and
                                    len(json.loads(r)["processes"]) == 2 and r,
                                    "both processes in gateway status", 30))  # fmt: skip
        holders = [p["process"] for p in shown["processes"] if p["mailboxes"]]
        assert holders == [first] and shown["queue_depth"] == 0
        [reader] = [p for p in processes if f":{p.pid}:" in first]
        reader.send_signal(signal.SIGKILL)
        reader.wait(10)
        for n in range(30, 60):
            deliver_to_maildir(maildir, reply("2025550144", n), f"{time.time():.6f}.{n}.b")
        # The lease is 3 s and the stand-by looks every second: 60 s is ample.
        wait_for(lambda: stored() == 60, "the other process to take over and read the rest", 60)
        second = holder()
    finally:
        stop_all(processes)
    assert second is not None and second != first
    with runtime.engine.connect() as conn:
        texts = conn.execute(select(inbound.c.text)).scalars().all()
    assert sorted(texts) == sorted(f"Reply {n}" for n in range(60))  # each stored once
    runtime.engine.dispose()


def test_the_daily_limit_holds_across_processes(tmp_path, postgres_url, smtp_server, relay_server):
    """Two processes share the own server's daily limit through the database: together they
    never send more than it allows; the rest goes by the relay."""
    gateway_folder(tmp_path, smtp_server.port, db_url=postgres_url, extra=(
        "daily_limit = 10\nconnections = 2\n"
        f'[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {relay_server.port}\n'
        'security = "none"\nfrom_address = "Relay <relay@example.net>"\n'
        "[sender]\nbatch_size = 5\nidle_poll_seconds = 0.05\n"
    ))  # fmt: skip
    runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
    now = utcnow()
    for n in range(60):
        enqueue(runtime, SendRequest(f"+1202555{n:04d}", "verizon", text=f"Order {n}"), now)
    smtp_server.faults.data_delay = 0.01
    processes = [start(tmp_path, "run") for _ in range(2)]
    try:
        wait_for(lambda: states(runtime) == {"sent": 60}, "every text sent", 60)
    finally:
        stop_all(processes)
    with runtime.engine.connect() as conn:
        routes = dict(conn.execute(
            select(messages.c.route, func.count()).group_by(messages.c.route)).all())  # fmt: skip
    assert routes == {"own": 10, "relay": 50}
    assert len(smtp_server.received) == 10 and len(relay_server.received) == 50
    runtime.engine.dispose()
