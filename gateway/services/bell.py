"""A text stored is sent now, not at the sender's next look: whoever stores one rings, and every
waiting sender wakes.

On PostgreSQL the ring is a NOTIFY sent in the storing transaction (delivered at commit, never
for one rolled back) and each sender LISTENs. SQLite has no notifications, so each waiting
`gateway run` binds a Unix datagram socket in a folder of its own user's, named after the
database file, and a process that stored texts sends each socket there one byte after it
committed. A ring lost (no sender yet, a full buffer, a socket gone) costs at most a poll: the
senders still look on their own every `idle_poll_seconds`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from gateway.store.live import OUTBOX_CHANNEL as CHANNEL

log = logging.getLogger("gateway.sender")


def ring(engine: Engine) -> None:
    """After a commit that stored texts: on SQLite, wake every sender waiting on this file."""
    folder = _folder(engine)
    if folder is None or not folder.is_dir():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for path in folder.glob("*.s"):
            try:
                sender.sendto(b"!", str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone
            except OSError:
                pass  # a full buffer: that sender is being woken already


def _folder(engine: Engine) -> Path | None:
    """Where SQLite senders wait: short (a socket's path is at most 107 bytes), per user and per
    database file."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    key = hashlib.sha256(str(Path(str(url.database)).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"gateway-{os.getuid()}" / key


class Bell:
    """What a sender waits on between looks (start it inside the running event loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rung = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._path: Path | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.engine.dialect.name == "postgresql":
            self._task = loop.create_task(self._listen())
            return
        folder = _folder(self.engine)
        if folder is None:
            return
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = folder / f"{os.getpid()}-{id(self):x}.s"
            waiting = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            waiting.setblocking(False)
            waiting.bind(str(path))
        except OSError as exc:  # no socket: the sender polls, as it always could
            log.info("texts are picked up by polling only: %s", exc)
            return
        self._socket, self._path = waiting, path
        loop.add_reader(waiting.fileno(), self._heard)

    def _heard(self) -> None:
        assert self._socket is not None
        with contextlib.suppress(OSError):
            while self._socket.recv(64):
                pass
        self._rung.set()

    async def wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until rung, stopped, or `seconds` passed."""
        rung, stopped = asyncio.ensure_future(self._rung.wait()), asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({rung, stopped}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            rung.cancel()
            stopped.cancel()
        self._rung.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            if self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()

    async def _listen(self) -> None:
        await listen(self.engine, CHANNEL, self._rung.set, "waking on new texts")


async def listen(
    engine: Engine,
    channel: str,
    heard: Callable[[], None],
    what: str,
    listening: Callable[[bool], None] | None = None,
) -> None:
    """LISTEN on `channel` of PostgreSQL until cancelled, calling `heard` for each notification;
    a lost connection is opened again (with a growing wait), `listening` told either way. The
    listeners look on their own meanwhile: a lost connection costs latency, never a change."""
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 1.0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                delay = 1.0
                if listening is not None:
                    listening(True)
                async for _ in conn.notifies():
                    heard()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database away: the listeners poll meanwhile
            log.warning("%s: LISTEN failed (%s); again in %.0f s", what, exc, delay)
        if listening is not None:
            listening(False)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
