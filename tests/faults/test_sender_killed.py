"""A `gateway run` process killed with SIGKILL at each phase of handing a text over: nothing
is lost, and a duplicate happens only where it cannot be avoided (the server said 250 and the
process died before writing so down), where it is counted.

The test SMTP server stops at the phase until the process is dead. For the last phase the test
holds the database's write lock while the server says 250, so the process is killed with the
250 in hand and its commit waiting: the window the architecture names, made certain."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from tests.conftest import gateway_folder, run_gateway

pytestmark = pytest.mark.slow

PHASES = [
    # (what the server has seen when the process dies, Faults.hold_at, duplicates expected)
    ("MAIL sent, not answered", "mail", 0),
    ("RCPT sent, not answered", "rcpt", 0),
    ("the final dot sent, no reply yet", "data", 0),
    ("250 received, not yet committed", "accepted", 1),
]


def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run"],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )


def row(runtime: Runtime, message: int):
    with runtime.engine.connect() as conn:
        return conn.execute(select(messages).where(messages.c.id == message)).one()


def lease_out(runtime: Runtime, message: int) -> None:
    """Until the dead process's lease on the text has run out."""
    deadline = time.monotonic() + 60
    while (until := row(runtime, message).lease_until) is not None and (
        until.replace(tzinfo=dt.UTC) if until.tzinfo is None else until
    ) > utcnow():
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)


@pytest.mark.parametrize(("phase", "hold_at", "duplicates"), PHASES, ids=[p[1] for p in PHASES])
def test_killed_at_each_phase_nothing_is_lost(tmp_path, smtp_server, phase, hold_at, duplicates):
    gateway_folder(
        tmp_path, smtp_server.port,
        extra="[sender]\nlease_seconds = 1\nidle_poll_seconds = 0.05\n",
    )  # fmt: skip
    runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
    text = "Your driver is 10 minutes away"
    (message,) = enqueue(runtime, SendRequest("+12025550143", "verizon", text=text), utcnow()).ids
    message_id = row(runtime, message).message_id
    faults = smtp_server.faults
    faults.hold_at = hold_at
    worker = start(tmp_path)
    lock = None
    try:
        assert faults.reached.wait(30), f"the sender never reached: {phase}"
        if hold_at == "accepted":
            # Take the write lock, let the 250 go, give the sender time to read it and reach
            # its commit: it waits on the lock with the text accepted and not written down.
            lock = sqlite3.connect(tmp_path / "gw.db", timeout=30, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            faults.release.set()
            time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
        faults.release.set()
        if lock is not None:
            lock.rollback()
            lock.close()
    faults.hold_at = None
    assert row(runtime, message).state == "sending"  # leased by the dead process, not sent
    lease_out(runtime, message)

    again = run_gateway("run", "--until-idle", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    done = row(runtime, message)
    assert done.state == "sent" and done.message_id == message_id
    taken = [r for r in smtp_server.received if message_id.encode() in r.content]
    assert len(taken) == 1 + duplicates, phase  # nothing lost; duplicates only after a 250
    # The one that may have gone twice is counted where an operator looks: the run's summary
    # and the text's attempt (a duplicate carries the same Message-ID, so a reply to either is
    # threaded to the one text).
    assert "1 taken over from a dead worker (each may have gone twice)" in again.stderr
    with runtime.engine.connect() as conn:
        (reason,) = conn.execute(
            select(attempts.c.route_reason).where(attempts.c.message_id == message)
        ).scalars()
    assert "taken over from a dead worker's lease" in reason
    runtime.engine.dispose()
