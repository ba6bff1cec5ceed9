"""What breaks mail in the wild, against the whole sender (claim, send, record): every reply class
at every phase, a dropped connection at every phase, a server that never answers after the
final dot, one that drips a byte a second, STARTTLS stripped by a man in the middle, and an
expired certificate. Each text ends in the state its outcome calls for, never `sent` by
mistake, never lost, and never handed over twice."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import pytest
from sqlalchemy import select

from gateway.services.outbound import SendRequest, enqueue
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from tests.conftest import make_runtime
from tests.servers import SmtpTestServer, loopback, server_tls_context


async def send_one(runtime, *, lease: float = 120.0):
    (message,) = enqueue(
        runtime, SendRequest("+12025550143", "verizon", text="Driver on the way"), utcnow()
    ).ids
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy,
                    idle_poll=0.05, lease=dt.timedelta(seconds=lease))  # fmt: skip
    await asyncio.wait_for(sender.run(asyncio.Event(), until_idle=True), 60)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message)).one()
        tried = conn.execute(select(attempts).where(attempts.c.message_id == message)).all()
    return row, tried


# --- every reply class at every phase --------------------------------------------------------

CLASSES = [
    # (reply, state, due again later?)
    ("421 4.3.2 service shutting down", "deferred", True),
    ("450 4.2.1 mailbox busy", "deferred", True),
    ("451 4.3.0 local error", "deferred", True),
    ("452 4.3.1 insufficient storage", "deferred", True),
    ("550 5.1.1 no such user", "failed", False),
    ("552 5.3.4 message too big", "failed", False),
    ("554 5.7.1 refused", "failed", False),
]


@pytest.mark.parametrize("phase", ["mail", "rcpt", "data"])
@pytest.mark.parametrize(("reply", "state", "later"), CLASSES, ids=[c[0][:3] for c in CLASSES])
async def test_every_reply_class_at_every_phase(sqlite_url, smtp_server, phase, reply, state,
                                                later):  # fmt: skip
    runtime = make_runtime(sqlite_url, smtp_server.port)
    setattr(smtp_server.faults, f"{phase}_reply", reply)
    row, tried = await send_one(runtime)
    assert row.state == state, (phase, reply, row.reason)
    assert reply in row.reason and row.last_reply == reply
    assert len(tried) == 1 and tried[0].smtp_code == int(reply[:3])
    assert not smtp_server.received  # refused: nothing was taken
    if later:
        assert row.due_at > utcnow() + dt.timedelta(seconds=10)  # a back-off, not a loop


async def test_a_refused_greeting_defers(sqlite_url):
    server = SmtpTestServer(refuse_greeting=True)
    server.start()
    try:
        row, _ = await send_one(make_runtime(sqlite_url, server.port))
    finally:
        server.stop()
    assert row.state == "deferred" and "421" in row.reason


@pytest.mark.parametrize(("drop", "ambiguous"), [("mail", False), ("rcpt", False), ("data", True)])
async def test_a_connection_dropped_at_every_phase(sqlite_url, smtp_server, drop, ambiguous):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    smtp_server.faults.drop_after = drop
    row, _ = await send_one(runtime)
    assert row.state == "deferred"
    if ambiguous:  # the text was handed over: not again before a long wait, same route
        assert "ambiguous" in row.reason
        assert row.due_at > utcnow() + dt.timedelta(minutes=9)
        assert len(smtp_server.received) == 1
    else:
        assert not smtp_server.received


# --- servers that go quiet ---------------------------------------------------------------------


async def test_a_server_that_never_answers_after_the_dot(sqlite_url, smtp_server):
    runtime = make_runtime(sqlite_url, smtp_server.port, message_deadline_seconds=2,
                           timeout_seconds=600)  # fmt: skip
    smtp_server.faults.hold_at = "data"  # takes the text, then says nothing (never released)
    try:
        # Each command may take ten minutes: only the message deadline ends it within the wait.
        row, _ = await asyncio.wait_for(send_one(runtime), 120)
    finally:
        smtp_server.faults.release.set()
    assert row.state == "deferred" and "deadline" in row.reason
    assert row.due_at > utcnow() + dt.timedelta(minutes=9)  # it may have arrived: wait long


@contextlib.asynccontextmanager
async def dripping_server():
    """Answers the greeting one byte every ten seconds, as a tarpit does (five minutes in all)."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            for byte in b"220 slow.example ESMTP tarpit\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(10.0)
        writer.close()

    async with loopback(drip) as port:
        yield port


async def test_a_server_that_drips_a_byte_a_second(sqlite_url):
    async with dripping_server() as port:
        runtime = make_runtime(sqlite_url, port, timeout_seconds=2, message_deadline_seconds=3)
        # Bounded by the timeouts, not by the server's patience (a TimeoutError here).
        row, tried = await asyncio.wait_for(send_one(runtime), 120)
    assert row.state == "deferred" and len(tried) == 1


# --- TLS that must not be trusted ------------------------------------------------------------


@contextlib.asynccontextmanager
async def stripping_proxy(target_port: int):
    """A man in the middle that deletes STARTTLS from the server's EHLO answer, as some
    middleboxes do to read the mail."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, strip: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while line := await reader.readline():
                if strip and b"STARTTLS" in line.upper():
                    continue
                writer.write(line)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(server_r, client_w, True), pipe(client_r, server_w, False))

    async with loopback(handle) as port:
        yield port


async def test_starttls_stripped_by_a_man_in_the_middle_is_refused(sqlite_url, server_cert,
                                                                   ca_file):  # fmt: skip
    server = SmtpTestServer(tls_context=server_tls_context(server_cert))
    server.start()
    try:
        async with stripping_proxy(server.port) as port:
            runtime = make_runtime(sqlite_url, port, security="starttls", ca_file=str(ca_file))
            row, tried = await send_one(runtime)
    finally:
        server.stop()
    assert row.state == "deferred" and "STARTTLS" in row.reason
    assert tried[0].outcome == "tls"  # a route failure, never a fall back to plain text
    assert not server.received


async def test_an_expired_certificate_is_refused(sqlite_url, ca, ca_file):
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue_cert("127.0.0.1", not_before=now - dt.timedelta(days=30),
                            not_after=now - dt.timedelta(days=1))  # fmt: skip
    server = SmtpTestServer(ssl_context=server_tls_context(expired))
    server.start()
    try:
        runtime = make_runtime(sqlite_url, server.port, security="tls", ca_file=str(ca_file))
        row, tried = await send_one(runtime)
    finally:
        server.stop()
    assert row.state == "deferred" and "expired" in row.reason.lower()
    assert tried[0].outcome == "tls" and not server.received
