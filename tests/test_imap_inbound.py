"""The inbound worker against a real Dovecot: IDLE, restarts, silence, UIDVALIDITY changes,
duplicates, oversized and malformed mail, and nothing marked read."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from gateway.services.inbound import Ingest, Receiver
from gateway.store.db import utcnow
from gateway.store.inbox import read_position, save_position
from gateway.store.tables import inbound, quarantine
from gateway.transport.imap import ImapError
from gateway.transport.mailsource import HEAD_BYTES
from tests.conftest import make_runtime
from tests.servers import loopback

_folders = itertools.count(1)


def reply(n: int, body: str | None = None, message_id: str | None = None) -> bytes:
    lines = [
        "From: 2065550143@vtext.com",
        "To: dispatch@example.com",
        "Subject: ",
        f"Message-ID: {message_id or f'<r{n}.{time.monotonic_ns()}@vtext.com>'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + (body or f"reply {n}") + "\r\n").encode()


def runtime_for(url, smtp_server, server, folder, *, first_look=False, **imap):
    """A runtime reading `folder`. Unless `first_look`, its database has read the folder before,
    up to what it holds now (a first look leaves what is there unread)."""
    settings = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": server.port,
        "security": "tls",
        "ca_file": str(server.ca_file),
        "username": server.user,
        "password": server.password,
        "folder": folder,
        "timeout_seconds": 3,
        **imap,
    }
    inbound_settings = imap.pop("inbound", {})
    settings.pop("inbound", None)
    runtime = make_runtime(url, smtp_server.port, imap=settings, inbound=inbound_settings)
    if not first_look:
        read_up_to_now(runtime, server, folder)
    return runtime


def read_up_to_now(runtime, server, folder) -> None:
    """Record the folder's present end as read, as a database that has watched it would."""
    client = server.client()
    try:
        client.select(folder, readonly=True)
        validity = int(client.response("UIDVALIDITY")[1][0])
        uidnext = int(client.response("UIDNEXT")[1][0])
    finally:
        client.logout()
    source = runtime.mail_source(runtime.engine)
    with runtime.engine.begin() as conn:
        save_position(conn, source.mailbox, validity, uidnext - 1, utcnow())


def folder_in(server) -> str:
    name = f"t{next(_folders)}"
    server.create(name)
    return name


def count(runtime, table=inbound) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


async def until(condition, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


class Running:
    """The receiver running in the background, as `gateway run` runs it."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.source = runtime.mail_source(runtime.engine)
        self.receiver = Receiver(Ingest(runtime, runtime.engine), self.source)
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.receiver.run(self.stop))
        return self

    async def idling(self, seconds: float = 10) -> None:
        def idle() -> bool:
            client = self.source._client
            return client is not None and client.has_pending_idle()

        await until(idle, seconds, "the worker is in IDLE")

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def drain(runtime):
    source = runtime.mail_source(runtime.engine)
    return await Receiver(Ingest(runtime, runtime.engine), source).run(
        asyncio.Event(), until_idle=True
    )


async def test_idle_delivers_a_new_reply_in_about_a_second(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    # An hour between looks and ten minutes between IDLE renewals: only the server's word in
    # IDLE can bring the reply within the wait.
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, poll_seconds=3600,
                          idle_renew_seconds=600)  # fmt: skip
    async with Running(runtime) as running:
        await running.idling()
        # In IDLE the server tells of new mail at once: no lag to report.
        await until(lambda: running.source.lag(time.time()) == 0.0, 30, "lag 0 while in IDLE")
        await asyncio.to_thread(dovecot.append, reply(1), folder)
        await until(lambda: count(runtime) == 1, 60, "the reply is stored")
    assert running.source.connects == 1


async def test_without_idle_the_folder_is_polled(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, idle=False, poll_seconds=0.2)
    began = time.time()
    async with Running(runtime) as running:
        await until(lambda: running.source.lag(time.time()) is not None, 30, "a first look")
        await asyncio.to_thread(dovecot.append, reply(1), folder)
        await until(lambda: count(runtime) == 1, 60, "the reply is stored by polling")
        # Polling: the view is as old as the last complete look, which was in this test.
        lag = running.source.lag(time.time())
        assert lag is not None and 0 <= lag <= time.time() - began
    assert running.source.lag(time.time() + 60) >= 60


async def test_idle_is_renewed_and_the_connection_kept(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, idle_renew_seconds=1)
    async with Running(runtime) as running:
        await running.idling()
        await asyncio.sleep(2.5)  # two renewals
        await asyncio.to_thread(dovecot.append, reply(1), folder)
        await until(lambda: count(runtime) == 1, 5, "the reply is stored after renewals")
    assert running.source.connects == 1


async def test_server_stopped_and_started_under_the_worker(sqlite_url, smtp_server, own_dovecot):
    runtime = runtime_for(sqlite_url, smtp_server, own_dovecot, "INBOX")
    async with Running(runtime) as running:
        await running.idling()
        await asyncio.to_thread(own_dovecot.append, reply(1))
        await until(lambda: count(runtime) == 1, 5, "the first reply is stored")
        await asyncio.to_thread(own_dovecot.restart)  # BYE, then a refused connection
        await asyncio.to_thread(own_dovecot.append, reply(2))
        await until(lambda: count(runtime) == 2, 20, "the reply after the restart is stored")
    assert running.source.connects >= 2


async def test_a_silent_server_is_left_for_a_new_connection(sqlite_url, smtp_server, dovecot):
    """The server stops answering without closing anything (a dead NAT mapping): the renewal
    of IDLE gets no answer, so the worker connects again."""
    folder = folder_in(dovecot)
    async with FreezingProxy(dovecot.port) as proxy:
        runtime = runtime_for(
            sqlite_url, smtp_server, dovecot, folder, port=proxy.port, idle_renew_seconds=1
        )
        async with Running(runtime) as running:
            await running.idling()
            proxy.freeze()  # the open connection goes silent; new ones work
            await asyncio.to_thread(dovecot.append, reply(1), folder)
            await until(lambda: count(runtime) == 1, 20, "the reply is stored after silence")
        assert running.source.connects >= 2


async def test_uidvalidity_change_rereads_without_duplicates(sqlite_url, smtp_server, own_dovecot):
    runtime = runtime_for(sqlite_url, smtp_server, own_dovecot, "INBOX")
    for n in (1, 2):
        own_dovecot.append(reply(n, message_id=f"<same{n}@vtext.com>"))
    assert (await drain(runtime)).stored == 2
    before = read_position(runtime.engine, runtime.mail_source(runtime.engine).mailbox)
    await asyncio.to_thread(own_dovecot.renumber)
    own_dovecot.append(reply(3))
    stats = await drain(runtime)
    after = read_position(runtime.engine, runtime.mail_source(runtime.engine).mailbox)
    assert after.uidvalidity != before.uidvalidity
    assert (stats.stored, stats.duplicates, count(runtime)) == (1, 2, 3)


async def test_the_same_message_delivered_twice_is_stored_once(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder)
    raw = reply(1, message_id="<twice@vtext.com>")
    dovecot.append(raw, folder)
    dovecot.append(raw, folder)
    stats = await drain(runtime)
    assert (stats.stored, stats.duplicates) == (1, 1)
    assert (await drain(runtime)).stored == 0  # and a second pass reads nothing again


async def test_large_and_malformed_mail_is_quarantined_and_the_next_stored(
    sqlite_url, smtp_server, dovecot
):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder)
    big = reply(1, body=("x" * 76 + "\r\n") * (20_000_000 // 78))
    await asyncio.to_thread(dovecot.append, big, folder)
    dovecot.append(b"\x00\x01\x02 garbage, not a message\r\n", folder)
    dovecot.append(reply(3, body="still here"), folder)
    stats = await drain(runtime)
    assert (stats.quarantined, stats.stored) == (2, 1)
    with runtime.engine.connect() as conn:
        held = conn.execute(select(quarantine).order_by(quarantine.c.uid)).all()
        stored = conn.execute(select(inbound.c.text)).scalar()
    assert held[0].size > 20_000_000 - 100_000 and len(held[0].raw) == HEAD_BYTES
    assert "max_bytes" in held[0].error and "not a readable message" in held[1].error
    assert stored == "still here"
    assert (await drain(runtime)).quarantined == 0  # never read again


async def test_many_messages_in_chunks_and_nothing_marked_read(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, inbound={"fetch_chunk": 40})
    client = dovecot.client()
    try:
        for n in range(130):
            client.append(folder, None, None, reply(n))
    finally:
        client.logout()
    assert (await drain(runtime)).stored == 130
    flags = dovecot.flags(folder)
    assert len(flags) == 130 and not any(b"\\Seen" in line for line in flags)


async def test_wrong_password_says_what_to_check(sqlite_url, smtp_server, dovecot):
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, "INBOX", password="wrong")
    with pytest.raises(ImapError, match=r"AUTHENTICATIONFAILED.*app password"):
        await drain(runtime)


@contextlib.asynccontextmanager
async def mute_server() -> AsyncIterator[int]:
    """A port that takes connections and never says a word (a wedged server, a firewall that
    swallows the traffic)."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    async with loopback(mute) as port:
        yield port


async def test_a_server_that_never_greets_says_how_long_it_was_given(
    sqlite_url, smtp_server, dovecot
):
    """The error says no answer came and names the setting, not a bare TimeoutError."""
    async with mute_server() as port:
        runtime = runtime_for(sqlite_url, smtp_server, dovecot, "INBOX", first_look=True,
                              port=port, timeout_seconds=1)  # fmt: skip
        with pytest.raises(ImapError) as refused:
            await drain(runtime)
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert "no answer in time (imap.timeout_seconds = 1)" in str(refused.value)


class FreezingProxy:
    """A TCP relay to the server whose open connections can be made silent: bytes are taken
    and never passed on, nothing is closed. Connections made after that work normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen: set[int] = set()
        self.generation = 0

    async def __aenter__(self) -> FreezingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self.frozen.add(self.generation)
        self.generation += 1

    async def _serve(self, reader, writer) -> None:
        generation = self.generation
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source, sink) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if generation in self.frozen:
                        continue
                    sink.write(data)
                    await sink.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
