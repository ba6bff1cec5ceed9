"""The company mailbox over IMAP as a mail source: new UIDs fetched in bounded chunks with
BODY.PEEK (nothing is marked read), then IDLE until the server announces more (or polling
where it has no IDLE).

What real servers and aioimaplib do, and what this does about it:
- a large `UID FETCH 1:*` answer overflows aioimaplib's recursive reader: UIDs are listed by
  UID SEARCH (one line) and fetched `chunk` at a time;
- a server may drop an IDLE after 30 minutes and NAT boxes drop quiet connections sooner: IDLE
  is ended and begun again every `renew_seconds` (at most 10 minutes), and a server that does not
  answer that DONE within the timeout is taken for dead;
- aioimaplib leaves a command waiting forever when the connection drops: every command races
  the connection-lost signal and a timeout;
- BYE, a refused connection, a restart, a refused sign-in, anything else: reconnect with a
  capped backoff, starting again from the UID committed in the database. The reader never ends
  on its own; each change of state is logged once (the error in the server's words when it
  begins, a line when it works again) and kept in `health` for /readyz, `gateway status`,
  /metrics and the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aioimaplib

from gateway.domain.health import Health, backoff
from gateway.transport.imap import ImapError, ImapServer, failure_words, sign_in
from gateway.transport.mailsource import HEAD_BYTES, Batch, Fetched, wait

log = logging.getLogger(__name__)
T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)", re.IGNORECASE)
_UIDNEXT = re.compile(rb"UIDNEXT (\d+)", re.IGNORECASE)
_EXISTS = re.compile(rb"^(\d+) EXISTS", re.IGNORECASE)
_FETCH_START = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_UID = re.compile(rb"UID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)", re.IGNORECASE)


class ConnectionLost(Exception):
    pass


# (uidvalidity, last uid) committed for a mailbox: asked at every (re)connection.
WhereWasI = Callable[[str], Awaitable[tuple[int | None, int]]]


class ImapSource:
    def __init__(
        self,
        server: ImapServer,
        folder: str,
        where_was_i: WhereWasI,
        *,
        idle: bool = True,
        poll_seconds: float = 30.0,
        renew_seconds: float = 540.0,
        chunk: int = 100,
        max_bytes: int = 10_000_000,
        max_backoff: float = 60.0,
    ) -> None:
        self.server = server
        self.folder = folder
        self.where_was_i = where_was_i
        self.idle = idle
        self.poll_seconds = poll_seconds
        self.renew_seconds = min(renew_seconds, 600.0)
        self.chunk = chunk
        self.max_bytes = max_bytes
        self.max_backoff = max_backoff
        self.mailbox = f"imap://{server.username}@{server.host}:{server.port}/{folder}"
        self.uidvalidity: int | None = None
        self.uidnext: int | None = None  # the UID the next message will get, from SELECT
        self.exists = 0  # messages in the folder, from SELECT
        self.connects = 0  # for tests and `status`: how many times a connection was opened
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        # When the reader last knew it had everything (wall clock), and whether it is in IDLE
        # now, when the server tells of new mail the moment it comes: the mailbox lag.
        self.caught_up_at: float | None = None
        self.idling = False
        self.health = Health()

    # --- the source ---------------------------------------------------------------------------

    async def batches(self, stop: asyncio.Event, *, drain: bool) -> AsyncIterator[Batch]:
        failures = 0
        while not stop.is_set():
            try:
                await self._open()
                last, first_look = await self._start_position()
                failures = 0
                if self.health.working(_now()):
                    log.warning("%s: reading again", self._where())  # the recovery, once
                if first_look:
                    # Committed at once (an empty batch carries the position), so mail that
                    # arrives while the gateway is down later is still read.
                    yield Batch(self.mailbox, self.uidvalidity, (), last)
                while not stop.is_set():
                    uids = await self._new_uids(last)
                    for start in range(0, len(uids), self.chunk):
                        chunk = uids[start : start + self.chunk]
                        items = await self._fetch(chunk)
                        yield Batch(self.mailbox, self.uidvalidity, tuple(items), chunk[-1])
                        last = chunk[-1]
                        if stop.is_set():
                            return
                    if uids:
                        continue
                    self.caught_up_at = time.time()
                    if drain:
                        return
                    await self._wait_for_news(stop)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                await self.close()
                error = _describe(exc, self.server.timeout)
                if not isinstance(exc, ImapError):  # its words name the mailbox already
                    error = f"{self._where()}: {error}"
                if drain:
                    self.health.failing(error, _now())
                    raise ImapError(error) from None
                failures += 1
                delay = backoff(failures, cap=self.max_backoff)
                if self.health.failing(error, _now()):
                    # Once, with the server's words; a traceback only for what is not the
                    # server's doing (a fault of the gateway's own must be seen to be mended).
                    expected = isinstance(exc, _EXPECTED)
                    log.error("%s; trying again, waiting up to %.0f s between tries", error,
                              self.max_backoff, exc_info=None if expected else exc)  # fmt: skip
                else:
                    log.debug("still failing: %s; next try in %.0f s", error, delay)
                await wait(stop, delay)

    async def history(self, since: dt.date | None = None) -> AsyncIterator[Batch]:
        """The mail the reader has not read and will not read: what the folder held before the
        database first looked at it (or, after a UIDVALIDITY change, all of it), optionally
        only from `since` on, in chunks. Batches carry no position: the reader's is not moved.
        ImapError when the mailbox cannot be read."""
        try:
            await self._open()
            stored_validity, last = await self.where_was_i(self.mailbox)
            # Never read (a first look leaves all there is), or renumbered (the reader reads
            # it all again anyway): everything up to now; else what came before the reader.
            up_to = last if stored_validity == self.uidvalidity else (self.uidnext or 1) - 1
            if up_to <= 0:
                return
            criteria = [f"UID 1:{up_to}"] + ([f"SINCE {since:%d-%b-%Y}"] if since else [])
            uids = [uid for uid in await self._search(*criteria) if uid <= up_to]
            for start in range(0, len(uids), self.chunk):
                chunk = uids[start : start + self.chunk]
                yield Batch(self.mailbox, self.uidvalidity, tuple(await self._fetch(chunk)))
        except ImapError:
            raise
        except (ConnectionLost, OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise ImapError(f"{self._where()}: {_describe(exc, self.server.timeout)}") from None
        finally:
            await self.close()

    async def done(self, batch: Batch) -> None:
        return None  # the position is committed with the batch

    def lag(self, now: float) -> float | None:
        """Seconds the gateway's view of the mailbox may be behind (0 while in IDLE, when the
        server reports new mail at once); None before the first complete look."""
        if self.caught_up_at is None:
            return None
        return 0.0 if self.idling else max(0.0, now - self.caught_up_at)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                if client.has_pending_idle():
                    client.idle_done()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 2)
            with contextlib.suppress(Exception):
                client.protocol.transport.close()

    # --- connection ---------------------------------------------------------------------------

    async def _open(self) -> None:
        await self.close()
        self._lost = asyncio.Event()
        lost = self._lost

        def on_lost(_exc: Exception | None) -> None:
            lost.set()

        client = await asyncio.wait_for(sign_in(self.server, on_lost), self.server.timeout * 2)
        self._client = client
        self.connects += 1
        response = await self._call(client.select(self.folder))
        if response.result != "OK":
            raise ImapError(
                f"{self._where()}: cannot open folder {self.folder!r} "
                f"({_words(response.lines)}); check imap.folder"
            )
        self.uidvalidity = _number(_UIDVALIDITY, response.lines)
        self.uidnext = _number(_UIDNEXT, response.lines)
        self.exists = _number(_EXISTS, response.lines) or 0

    async def _start_position(self) -> tuple[int, bool]:
        """The UID after which to read, and whether this is the database's first look at the
        mailbox. A first look starts at the mailbox's end: what a company's mailbox already
        holds is old, and acting on it (answering a STOP of last year) would be wrong;
        `gateway inbox import` reads it on request."""
        stored_validity, last = await self.where_was_i(self.mailbox)
        if stored_validity is None and last == 0:
            start = (self.uidnext or 1) - 1
            if self.uidnext is None and self.exists:  # a server that does not say UIDNEXT
                start = max(await self._new_uids(0), default=0)
            if self.exists:
                log.warning(
                    "%s: first look; the %d message(s) already there are left as they are and "
                    "only new mail is read (`gateway inbox import` reads older mail)",
                    self._where(), self.exists,
                )  # fmt: skip
            return start, True
        if stored_validity is not None and stored_validity != self.uidvalidity:
            # The server renumbered the folder: read it all again; Message-IDs and digests keep
            # what is already stored from being stored twice.
            log.warning(
                "%s: UIDVALIDITY changed from %s to %s; reading the folder again",
                self._where(),
                stored_validity,
                self.uidvalidity,
            )
            return 0, False
        return last, False

    async def _call(self, command: Awaitable[T], seconds: float | None = None) -> T:
        """Run an IMAP command, unless the connection drops or the server goes quiet first."""
        task = asyncio.ensure_future(command)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost},
                timeout=seconds or self.server.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if lost in done:
            raise ConnectionLost("the server closed the connection")
        raise TimeoutError(f"no answer within {seconds or self.server.timeout:.0f} s")

    def _where(self) -> str:
        return f"mailbox {self.server.username}@{self.server.host}:{self.server.port}/{self.folder}"

    # --- reading ------------------------------------------------------------------------------

    async def _new_uids(self, last: int) -> list[int]:
        # "n:*" always includes the highest UID, even when it is below n.
        return [uid for uid in await self._search(f"UID {last + 1}:*") if uid > last]

    async def _search(self, *criteria: str) -> list[int]:
        assert self._client is not None
        response = await self._call(self._client.uid_search(*criteria, charset=None))
        if response.result != "OK":
            raise ImapError(f"{self._where()}: UID SEARCH refused: {_words(response.lines)}")
        uids: list[int] = []
        for line in response.lines:
            # aioimaplib hands the untagged answer on with or without its "SEARCH" word.
            words = bytes(line).split()
            if words and words[0].upper() == b"SEARCH":
                words = words[1:]
            if words and all(word.isdigit() for word in words):
                uids += [int(word) for word in words]
        return sorted(set(uids))

    async def _fetch(self, uids: list[int]) -> list[Fetched]:
        assert self._client is not None
        sizes = {
            uid: size
            for uid, size, _ in await self._fetch_items(uids, "(UID RFC822.SIZE)")
            if size is not None
        }
        small = [uid for uid in uids if sizes.get(uid, 0) <= self.max_bytes]
        large = [uid for uid in uids if sizes.get(uid, 0) > self.max_bytes]
        bodies: dict[int, bytes] = {}
        if small:
            for uid, _, data in await self._fetch_items(small, "(UID BODY.PEEK[])"):
                bodies[uid] = data or b""
        if large:  # only the head of what is too large: enough to say what it was
            for uid, _, data in await self._fetch_items(
                large, f"(UID BODY.PEEK[]<0.{HEAD_BYTES}>)"
            ):
                bodies[uid] = data or b""
        # A message expunged between SEARCH and FETCH is simply gone.
        return [
            Fetched(uid=uid, raw=bodies[uid], size=sizes.get(uid, len(bodies[uid])))
            for uid in uids
            if uid in bodies
        ]

    async def _fetch_items(
        self, uids: list[int], parts: str
    ) -> list[tuple[int, int | None, bytes | None]]:
        assert self._client is not None
        uid_set = ",".join(str(uid) for uid in uids)
        timeout = self.server.timeout + len(uids) * 0.5
        response = await self._call(self._client.uid("fetch", uid_set, parts), timeout)
        if response.result != "OK":
            raise ImapError(f"{self._where()}: UID FETCH refused: {_words(response.lines)}")
        return parse_fetch(response.lines)

    async def _wait_for_news(self, stop: asyncio.Event) -> None:
        """Until the server says something changed, `stop` is set, or it is time to look again."""
        client = self._client
        assert client is not None
        if not (self.idle and client.has_capability("IDLE")):
            await wait(stop, self.poll_seconds)
            await self._call(client.noop())  # also proves the server is there
            return
        idle = await self._call(client.idle_start(timeout=self.renew_seconds))
        push = asyncio.ensure_future(client.wait_server_push(timeout=self.renew_seconds + 5))
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        self.idling = True
        try:
            done, _ = await asyncio.wait({push, stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.idling = False
            for task in (push, stopped, lost):
                task.cancel()
        if lost in done:
            raise ConnectionLost("the server closed the connection during IDLE")
        said: list[Any] = []
        if push in done and not push.cancelled() and push.exception() is None:
            said = push.result()
        client.idle_done()
        # The server must answer DONE: one that stays silent is dead, whatever TCP thinks.
        await self._call(idle)
        if any(isinstance(line, bytes) and line.upper().startswith(b"BYE") for line in said):
            raise ConnectionLost("the server said BYE")


def parse_fetch(lines: list[Any]) -> list[tuple[int, int | None, bytes | None]]:
    """(uid, RFC822.SIZE, literal data) of each message in a FETCH answer. A UID may come before
    or after the literal, and unsolicited FETCH lines (flag changes) may be mixed in."""
    found: list[tuple[int, int | None, bytes | None]] = []
    uid: int | None = None
    size: int | None = None
    data: bytes | None = None

    def flush() -> None:
        if uid is not None:
            found.append((uid, size, data))

    for line in lines:
        if isinstance(line, bytearray):
            data = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            flush()
            uid, size, data = None, None, None
        uid_match = _UID.search(line)
        if uid_match:
            uid = int(uid_match.group(1))
        size_match = _SIZE.search(line)
        if size_match:
            size = int(size_match.group(1))
    flush()
    return found


def _number(pattern: re.Pattern[bytes], lines: list[Any]) -> int | None:
    for line in lines:
        if isinstance(line, bytes | bytearray) and (found := pattern.search(bytes(line))):
            return int(found.group(1))
    return None


def _words(lines: list[Any]) -> str:
    return b" ".join(bytes(line) for line in lines if isinstance(line, bytes | bytearray))[
        :300
    ].decode("utf-8", "replace")


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ImapError):
        return f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
    return failure_words(exc, timeout)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Failures that are the server's or the network's doing: logged without a traceback.
_EXPECTED = (ConnectionLost, OSError, TimeoutError, aioimaplib.AioImapException, ImapError)
