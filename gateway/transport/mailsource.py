"""What every mail source hands the inbound worker: batches of raw messages with their place in
the mailbox. IMAP and Maildir sources produce them; neither touches the database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.domain.health import Health

HEAD_BYTES = 65_536  # what is kept of a message too large to read


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int | None  # IMAP UID; None in a Maildir
    raw: bytes  # the whole message, or its first HEAD_BYTES when it is larger than allowed
    size: int  # the message's full size
    name: str | None = None  # the Maildir file name


@dataclass(frozen=True, slots=True)
class Batch:
    mailbox: str  # e.g. "imap://dispatch@mail.example.com/INBOX" or "maildir:/var/mail/x"
    uidvalidity: int | None
    items: tuple[Fetched, ...]
    # Where reading stands once this batch is stored: committed in the same transaction.
    last_uid: int | None = None


class MailSource(Protocol):
    mailbox: str
    health: Health  # whether reading works, for /readyz, `gateway status` and the dashboard

    def batches(self, stop: asyncio.Event, *, drain: bool) -> AsyncIterator[Batch]:
        """New mail, a batch at a time, until `stop` is set (or, with `drain`, until nothing
        new is left)."""
        ...

    async def done(self, batch: Batch) -> None:
        """The batch is stored: the source may move on from it."""
        ...

    async def close(self) -> None: ...

    def lag(self, now: float) -> float | None:
        """Seconds the gateway's view of the mailbox may be behind (None: not looked yet)."""
        ...


async def wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class MaildirSource:
    """A Maildir: new messages are read from new/ and moved to cur/ once stored (unread: the
    gateway is not a person and marks nothing seen)."""

    def __init__(
        self, path: Path, *, max_bytes: int, poll_seconds: float = 1.0, chunk: int = 100
    ) -> None:
        self.path = path
        self.mailbox = f"maildir:{path.resolve()}"
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self.chunk = chunk
        for sub in ("new", "cur", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self.caught_up_at: float | None = None
        self.health = Health()

    def lag(self, now: float) -> float | None:
        return None if self.caught_up_at is None else max(0.0, now - self.caught_up_at)

    async def batches(self, stop: asyncio.Event, *, drain: bool) -> AsyncIterator[Batch]:
        while not stop.is_set():
            names = await asyncio.to_thread(self._new_names)
            if names:
                items = await asyncio.to_thread(self._read, names)
                if items:
                    yield Batch(self.mailbox, None, tuple(items))
                    continue
            self.caught_up_at = time.time()
            self.health.working(dt.datetime.now(dt.UTC))
            if drain:
                return
            await wait(stop, self.poll_seconds)

    def _new_names(self) -> list[str]:
        try:
            names = [n for n in os.listdir(self.path / "new") if not n.startswith(".")]
        except FileNotFoundError:
            return []
        # Maildir names begin with the delivery time, so name order is arrival order.
        return sorted(names)[: self.chunk]

    def _read(self, names: list[str]) -> list[Fetched]:
        items = []
        for name in names:
            path = self.path / "new" / name
            try:
                with path.open("rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    raw = handle.read(HEAD_BYTES if size > self.max_bytes else size)
            except FileNotFoundError:
                continue  # another reader took it
            items.append(Fetched(uid=None, raw=raw, size=size, name=name))
        return items

    async def done(self, batch: Batch) -> None:
        await asyncio.to_thread(self._move, batch)

    def _move(self, batch: Batch) -> None:
        for item in batch.items:
            if item.name is None:
                continue
            target = item.name if ":2," in item.name else item.name + ":2,"
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path / "new" / item.name, self.path / "cur" / target)

    async def close(self) -> None:
        return None


def deliver_to_maildir(path: Path, raw: bytes, name: str) -> Path:
    """Put a message in a Maildir the way a delivery agent does (tmp/, then rename to new/)."""
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    temporary = path / "tmp" / name
    temporary.write_bytes(raw)
    final = path / "new" / name
    os.replace(temporary, final)
    return final
