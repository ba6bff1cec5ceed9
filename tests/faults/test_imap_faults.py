"""The mailbox at its worst, against a real Dovecot: a 50 MB literal read whole and one past
`max_bytes` kept as its head. (The server restarting mid-IDLE, going silent, a UIDVALIDITY
change, the same message delivered twice and unreadable mail are in tests/test_imap_inbound.)
No message is lost or stored twice, and the worker's memory stays bounded by what it keeps."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import tracemalloc

import pytest
from sqlalchemy import select

from gateway.store.tables import inbound, quarantine
from gateway.transport.mailsource import HEAD_BYTES
from tests.servers import server_tls_context
from tests.test_imap_inbound import count, drain, folder_in, reply, runtime_for

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")

pytestmark = pytest.mark.slow
FIFTY_MB = 50_000_000


def fifty_megabytes(n: int) -> bytes:
    # A reply with a 50 MB body: what a phone's MMS, forwarded and re-encoded, can grow to.
    return reply(n, body="On my way\r\n" + ("y" * 76 + "\r\n") * (FIFTY_MB // 78))


async def test_a_50_mb_literal_is_read_whole_and_stored_once(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, timeout_seconds=60,
                          inbound={"max_bytes": 64_000_000})  # fmt: skip
    await asyncio.to_thread(dovecot.append, fifty_megabytes(1), folder)
    dovecot.append(reply(2, body="and the next one"), folder)
    stats = await drain(runtime)
    assert (stats.stored, stats.quarantined) == (2, 0)
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(inbound.c.size, inbound.c.text).order_by(inbound.c.uid)).all()
    assert rows[0].size > FIFTY_MB and rows[0].text.startswith("On my way")
    assert len(rows[0].text) <= 2000  # what a person typed is kept short
    assert rows[1].text == "and the next one"
    assert (await drain(runtime)).stored == 0 and count(runtime) == 2  # never twice


async def test_a_50_mb_message_past_max_bytes_keeps_its_head(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder)  # max_bytes: the default
    await asyncio.to_thread(dovecot.append, fifty_megabytes(1), folder)
    dovecot.append(reply(2, body="after the big one"), folder)
    tracemalloc.start()
    try:
        stats = await drain(runtime)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (stats.stored, stats.quarantined) == (1, 1)
    with runtime.engine.connect() as conn:
        (held,) = conn.execute(select(quarantine)).all()
    assert held.size > FIFTY_MB and len(held.raw) == HEAD_BYTES  # 64 KB kept, not 50 MB
    assert peak < 20_000_000  # the worker never held the 50 MB message, only its head


class DoublingProxy:
    """A relay to the server that sends every untagged FETCH response twice, literal and all,
    as a buggy server or middlebox might: the same UID served twice in one answer. It speaks
    TLS on both sides (with the server's certificate), as the mailbox does."""

    async def __aenter__(self) -> DoublingProxy:
        self.doubled = 0
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=server_tls_context(self.cert)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __init__(self, target_port: int, cert, ca_file) -> None:
        self.target_port = target_port
        self.cert = cert
        self.upstream_tls = ssl.create_default_context(cafile=str(ca_file))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port, ssl=self.upstream_tls
        )

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while line := await up_reader.readline():
                    response = line
                    while found := _LITERAL.search(line):  # the literal, then what follows
                        response += await up_reader.readexactly(int(found.group(1)))
                        line = await up_reader.readline()
                        response += line
                    copies = 2 if re.match(rb"\* \d+ FETCH ", response) else 1
                    self.doubled += copies - 1
                    writer.write(response * copies)
                    await writer.drain()

        await asyncio.gather(upstream(), downstream())

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def test_the_same_uid_served_twice_is_stored_once(
    sqlite_url, smtp_server, dovecot, server_cert
):
    folder = folder_in(dovecot)
    async with DoublingProxy(dovecot.port, server_cert, dovecot.ca_file) as proxy:
        runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, port=proxy.port)
        for n in range(3):
            dovecot.append(reply(n, body=f"reply {n}"), folder)
        stats = await drain(runtime)
    assert proxy.doubled >= 3  # every message's FETCH came twice
    assert stats.stored == 3 and count(runtime) == 3, stats  # each once
    with runtime.engine.connect() as conn:
        texts = sorted(conn.execute(select(inbound.c.text)).scalars())
    assert texts == ["reply 0", "reply 1", "reply 2"]
