"""The sender worker: claims due outbox rows, sends them through the pool, records each outcome.

Three kinds of task share one queue: a claimer that leases batches of due rows, one sender per
pooled connection, and a recorder that writes outcomes in batches. Database calls run in a thread
so the connections keep working while SQLite or PostgreSQL commits. Nothing lives only in memory
longer than a lease: a worker that dies leaves rows whose lease runs out and are claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.domain.channels import Channel, OutgoingText
from gateway.domain.delivery import (
    AttemptOutcome,
    Decision,
    OutcomeKind,
    RetryPolicy,
    State,
    decide,
    postpone,
)
from gateway.domain.email_out import build_email
from gateway.domain.health import Health
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.quiet import QuietPolicy
from gateway.domain.routing import (
    COUNTS_AGAINST_LIMIT,
    Choice,
    History,
    Route,
    history_after,
    is_route_failure,
)
from gateway.domain.smsgate import our_id
from gateway.services.bell import Bell
from gateway.services.routes import Lane, RouteBook
from gateway.store.db import failure_words, utcnow
from gateway.store.routes import give_back_quota, take_quota
from gateway.store.sending import (
    AttemptRecord,
    Claimed,
    Postponement,
    claim_due,
    count_due,
    record_attempts,
    release,
)
from gateway.store.sending import postpone as postpone_rows
from gateway.transport.imap import ImapError, SentFolder

log = logging.getLogger("gateway.sender")
T = TypeVar("T")

# A row is not started this close to the end of its lease (another worker may take it then):
# this long, or a quarter of a short lease.
LEASE_MARGIN = dt.timedelta(seconds=5)
RECOVERED_NOTE = "; taken over from a dead worker's lease: its attempt may have been delivered"
DATABASE_BACKOFF_CAP = 30.0  # seconds between tries while the database refuses every write
RECORD_EVERY = 0.05  # seconds: how long an outcome may wait to be written with others
COUNT_EVERY = dt.timedelta(seconds=1)  # how often the routes' counts are read again
COPY_BACKLOG = 10_000  # Sent-folder copies waiting at most; past that, copies are skipped
COPY_DRAIN_SECONDS = 30.0  # at shutdown, how long waiting copies may still take


@dataclasses.dataclass(slots=True)
class _Grant:
    """Sends of a route's daily limit the database reserved for this worker."""

    reservation: int
    left: int


@dataclasses.dataclass
class SenderStats:
    claimed: int = 0
    attempted: int = 0
    released: int = 0
    copied: int = 0  # copies in the Sent folder
    copies_failed: int = 0
    # Texts taken over from a dead worker's expired lease: each may reach its phone twice.
    recovered: int = 0
    by_outcome: dict[str, int] = dataclasses.field(default_factory=dict)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(24):06x}"


class Sender:
    def __init__(
        self,
        engine: Engine,
        routes: RouteBook,
        policy: RetryPolicy,
        *,
        batch_size: int = 200,
        lease: dt.timedelta = dt.timedelta(seconds=120),
        idle_poll: float = 1.0,
        clock: Callable[[], dt.datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        worker: str | None = None,
        sent_folder: SentFolder | None = None,
        quiet: QuietPolicy | None = None,
        bell: Bell | None = None,
    ) -> None:
        self.engine = engine
        # Rung when texts are stored (by any process): idle, the sender looks at once rather
        # than at its next poll.
        self.bell = bell
        self.quiet = quiet
        self.sent_folder = sent_folder
        self._copies: asyncio.Queue[tuple[bytes, dt.datetime]] = asyncio.Queue(COPY_BACKLOG)
        self.routes = routes
        self.policy = policy
        self.batch_size = batch_size
        self.lease = lease
        self.lease_margin = min(LEASE_MARGIN, lease / 4)
        self.idle_poll = idle_poll
        self.clock = clock
        self.jitter = jitter
        self.worker = worker or worker_name()
        self.stats = SenderStats()
        self._queue: asyncio.Queue[Claimed] = asyncio.Queue()
        self._results: list[AttemptRecord] = []
        self._postponed: list[Postponement] = []
        self._in_flight = 0
        self._flush_lock = asyncio.Lock()
        self._counted_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        pools = [lane.pool for lane in routes.lanes.values() if lane.pool is not None]
        self._pools = pools
        self._clients = [lane.client for lane in routes.lanes.values() if lane.client is not None]
        # Daily-limit grants held by this worker, by route.
        self._allowance: dict[Route, _Grant] = {}
        self._allowance_lock = asyncio.Lock()
        self._database_failures = 0  # in a row: how long to wait before the next try
        self._database_health = Health()  # how the database answers: a refusal is said once
        self._copying = Health()  # how copies to the Sent folder fare: a failure is said once
        self._connections = (
            sum(pool.server.connections for pool in pools)
            + sum(client.connections for client in self._clients)
        ) or 1

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> SenderStats:
        """Send until `stop` is set (then finish what is in flight and give back the rest), or
        with `until_idle` until nothing is due."""
        await asyncio.to_thread(self.routes.load, self.engine, self.clock())
        if self.bell is not None:
            self.bell.start()
        workers = [
            asyncio.create_task(self._send_loop(), name=f"send-{n}")
            for n in range(self._connections)
        ]
        recorder = asyncio.create_task(self._record_loop(), name="record")
        copier = asyncio.create_task(self._copy_loop(), name="copy") if self.sent_folder else None
        try:
            await self._claim_loop(stop, until_idle)
        finally:
            # Rows still queued were never tried: give them back rather than hold them to the
            # end of their lease.
            unsent = []
            while not self._queue.empty():
                unsent.append(self._queue.get_nowait().id)
                self._queue.task_done()
            await self._queue.join()  # what is in flight finishes
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Stopped between flushes, never in one: a write cancelled in flight would lose
            # its batch (taken out of the lists, and not put back if it failed).
            async with self._flush_lock:
                recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await self._flush()
            await self._give_back()
            if unsent:
                self.stats.released += await asyncio.to_thread(
                    release, self.engine, self.worker, unsent, self.clock()
                )
            for pool in self._pools:
                await pool.close()
            for client in self._clients:
                await client.close()
            if self.bell is not None:
                await self.bell.close()
            if copier is not None and self.sent_folder is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._copies.join(), COPY_DRAIN_SECONDS)
                copier.cancel()
                await asyncio.gather(copier, return_exceptions=True)
                await self.sent_folder.close()
        return self.stats

    async def _claim_loop(self, stop: asyncio.Event, until_idle: bool) -> None:
        low_water = max(self._connections * 2, self.batch_size // 2)
        while not stop.is_set():
            if self._queue.qsize() >= low_water:
                await _wait(stop, 0.005)
                continue
            rows = await self._database(
                stop, "claiming texts", claim_due,
                self.engine, self.worker, self.clock(), self.lease, self.batch_size,
            )  # fmt: skip
            if rows is None:
                continue  # the database refused; _database waited before giving it back
            self.stats.claimed += len(rows)
            recovered = sum(1 for row in rows if row.recovered)
            if recovered:
                self.stats.recovered += recovered
                log.warning(
                    "took over %d texts whose worker died holding them: any the server had "
                    "already accepted goes out twice, with the same Message-ID",
                    recovered,
                )
            for row in rows:
                self._queue.put_nowait(row)
            if rows:
                continue
            if not self._queue.empty() or self._in_flight:
                await _wait(stop, 0.01)
                continue
            await self._give_back()  # idle: what this worker reserved is free for others
            if until_idle:
                # Outcomes not yet written may still make rows due; write them, then ask once
                # more before calling it idle.
                written = await self._flush()
                due = await self._database(
                    stop, "counting due texts", count_due, self.engine, self.clock(), writes=False
                )
                if due == 0 and written:
                    return  # idle, and every outcome written (a full disk may refuse them)
                continue
            if self.bell is not None:
                await self.bell.wait(stop, self.idle_poll)
            else:
                await _wait(stop, self.idle_poll)

    async def _database(self, stop: asyncio.Event, what: str, work: Callable[..., T],
                        *args: Any, writes: bool = True) -> T | None:  # fmt: skip
        """`work(*args)` in a thread; None, after a growing wait, when the database refuses
        (locked past its busy timeout, its disk full, or away): the loop goes on, and resumes
        by itself when the database does. Only a write that works says it is back (a full disk
        still answers reads)."""
        try:
            result = await asyncio.to_thread(work, *args)
        except (OperationalError, InterfaceError) as exc:
            self._database_failures += 1
            wait = min(DATABASE_BACKOFF_CAP, 0.5 * 2 ** (self._database_failures - 1))
            self._database_said(exc, what, f"trying again in {wait:.1f} s")
            await _wait(stop, wait)
            return None
        if writes:
            self._database_works()
        self._database_failures = 0
        return result

    def _database_works(self) -> None:
        """A write went through: say so once if the database had been failing."""
        if self._database_health.working(self.clock()):
            log.warning("the database answers again")

    def _database_said(self, exc: Exception, what: str, then: str) -> None:
        """Log a failed database step once, in the database's words (and when the words
        change); the tries after it, with the traceback, only in the debug log."""
        reason = failure_words(exc)
        news = self._database_health.failing(reason, self.clock())
        log.log(
            logging.WARNING if news else logging.DEBUG, "%s failed (%s); %s", what, reason, then
        )
        log.debug("%s failed", what, exc_info=exc)

    async def _send_loop(self) -> None:
        while True:
            row = await self._queue.get()
            self._in_flight += 1
            try:
                await self._send_one(row)
            except Exception:  # a bug must not stop the worker; the lease brings the row back
                log.exception("sending message %s failed unexpectedly", row.id)
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _send_one(self, row: Claimed) -> None:
        if self.clock() >= row.lease_until - self.lease_margin:
            return  # our lease is (nearly) gone; whoever claims it next sends it
        if self.quiet is not None and row.quiet:
            now = self.clock()
            until = self.quiet.first_allowed(now, row.to_phone, row.order_zone)
            if until > now:
                held = Decision(State.QUEUED, until, "held for quiet hours")
                self._postponed.append(Postponement(row.id, self.worker, held, now))
                self._count("quiet_hours")
                return
        history = row.history
        number = row.attempts
        # At most two attempts per claim: when the route fails (connection, TLS, sign-in), the
        # other route tries at once, as the user would want, rather than after a backoff. The
        # second attempt's decision is final whatever the routes look like then: a claim never
        # ends with a text left in `sending`.
        for tries_left in (1, 0):
            now = self.clock()
            choice, reservation = await self._choose(history, row, now)
            if choice.route is None:
                decision = postpone(
                    choice.reason, row.first_due_at, now, self.routes.wait_until(now), self.policy
                )
                self._postponed.append(Postponement(row.id, self.worker, decision, now))
                self._count("no_route")
                return
            number += 1
            outcome = await self._attempt(self.routes.lanes[choice.route], row, now)
            finished = self.clock()
            self.routes.observe(choice.route, outcome, finished)
            jitter = self.jitter()
            decision = decide(outcome, number, row.first_due_at, finished, self.policy, jitter)
            moving = False
            if decision.state is State.DEFERRED and is_route_failure(outcome.kind, outcome.phase):
                history = history_after(history, choice.route, outcome.kind, outcome.phase)
                again = self._route_for(history, row, finished).route
                moving = tries_left > 0 and again not in (None, choice.route)
            self._results.append(
                AttemptRecord(
                    message=row.id,
                    number=number,
                    worker=self.worker,
                    route=choice.route.value,
                    route_reason=choice.reason + (RECOVERED_NOTE if row.recovered else ""),
                    outcome=outcome,
                    decision=decision,
                    started_at=now,
                    finished_at=finished,
                    final=not moving,
                    reservation=reservation,
                )
            )
            self.stats.attempted += 1
            self._count(outcome.kind.value)
            log.debug("message %s via %s: %s %s", row.id, choice.route, outcome.kind, outcome.reply)
            if not moving:
                return

    async def _choose(
        self, history: History, row: Claimed, now: dt.datetime
    ) -> tuple[Choice, int | None]:
        """The route for this attempt, and the daily-limit reservation it uses (None when the
        route has no limit). A limited route sends only what the database granted this worker:
        every process's sends count, so together they never pass the limit. Grants come in
        blocks (one database trip per block), smaller as the limit nears."""
        for _ in range(len(self.routes.lanes) + 1):
            choice = self._route_for(history, row, now)
            if choice.route is None:
                return choice, None
            limit = self.routes.lanes[choice.route].daily_limit
            if limit is None:
                return choice, None
            held = self._allowance.get(choice.route)
            if held is None or held.left <= 0:
                room = limit - self.routes.sent_24h(choice.route)
                # A tenth of what is left at a time, so workers share the last sends of the
                # day; with room to spare, blocks of up to ten batches keep the trips rare
                # (each holds the route's row lock while it counts the day's attempts).
                want = max(1, min(10 * self.batch_size, room // 10))
                async with self._allowance_lock:
                    held = self._allowance.get(choice.route)
                    if held is None or held.left <= 0:
                        reservation, granted = await asyncio.to_thread(
                            take_quota, self.engine, choice.route.value, limit, want,
                            self.worker, now, now + self.lease,
                        )  # fmt: skip
                        held = None if reservation is None else _Grant(reservation, granted)
                        if held is None:
                            self._allowance.pop(choice.route, None)
                        else:
                            self._allowance[choice.route] = held
            if held is not None and held.left > 0:
                held.left -= 1
                return choice, held.reservation
            self.routes.at_limit(choice.route)
        return Choice(None, "every route is at its daily limit"), None

    def _route_for(self, history: History, row: Claimed, now: dt.datetime) -> Choice:
        def region() -> str | None:
            try:
                return parse_phone(row.to_phone, "US").region
            except PhoneError:
                return None

        return self.routes.choose(history, now, row.to_address, Channel(row.channel), region)

    async def _give_back(self) -> None:
        """Reserved sends not made are handed back, for other workers to use."""
        ids = [held.reservation for held in self._allowance.values()]
        self._allowance.clear()
        if ids:
            await self._flush()  # the used ones are counted down first
            try:
                await asyncio.to_thread(give_back_quota, self.engine, ids)
            except (OperationalError, InterfaceError) as exc:  # they expire with the lease
                log.warning("handing back reserved sends failed (%s); they expire", exc.orig)

    async def _attempt(self, lane: Lane, row: Claimed, now: dt.datetime) -> AttemptOutcome:
        if lane.client is not None:
            stale_at = row.first_due_at + self.policy.lifetime
            text = OutgoingText(
                ref=our_id(row.message_id),
                phone=row.to_phone,
                body=row.body,
                ttl_seconds=max(0, int((stale_at - now).total_seconds())),
            )
            self.routes.reserve(lane.route, now)
            return await lane.client.send(text)
        try:
            data = build_email(lane.email(row.to_address, row.message_id, row.body, now))
        except ValueError as exc:
            return AttemptOutcome(
                OutcomeKind.PERMANENT, f"cannot build the email: {exc}", None, "build"
            )
        assert lane.pool is not None  # routing only chooses enabled routes
        self.routes.reserve(lane.route, now)
        envelope = lane.envelope_for(row.message_id)
        outcome = await lane.pool.send(envelope, [row.to_address, *lane.copies], data)
        if self.sent_folder is not None and outcome.kind is OutcomeKind.ACCEPTED:
            try:
                self._copies.put_nowait((data, now))
            except asyncio.QueueFull:
                self.stats.copies_failed += 1
                log.warning("Sent-folder copies are behind; message %s gets none", row.id)
        return outcome

    async def _copy_loop(self) -> None:
        """Copies to the Sent folder, one at a time. A copy is a record, not the delivery: its
        failure is counted and logged and never changes the text's state."""
        assert self.sent_folder is not None
        while True:
            data, when = await self._copies.get()
            try:
                await self.sent_folder.append(data, when)
                self.stats.copied += 1
            except Exception as exc:
                self.stats.copies_failed += 1
                # Said once while copies keep failing the same way (the server away), not for
                # each text; a fault of ours says its kind.
                error = str(exc) if isinstance(exc, ImapError) else f"{type(exc).__name__}: {exc}"
                if self._copying.failing(error, self.clock()):
                    log.warning("copy to the Sent folder failed: %s", error)
                log.debug("copy to the Sent folder failed", exc_info=exc)
            else:
                if self._copying.working(self.clock()):
                    log.warning("copies to the Sent folder work again")
            finally:
                self._copies.task_done()

    def _count(self, kind: str) -> None:
        self.stats.by_outcome[kind] = self.stats.by_outcome.get(kind, 0) + 1

    async def _write(
        self,
        write: Callable[[Engine, list[Any]], None],
        items: list[Any],
        pending: list[Any],
        what: str,
    ) -> bool:
        """Write `items`; on failure put them back at the front of `pending` for the next flush."""
        try:
            await asyncio.to_thread(write, self.engine, items)
        except Exception as exc:
            self._database_said(exc, f"writing {len(items)} {what}", "trying again in 1 s")
            pending[:0] = items
            await asyncio.sleep(1)
            return False
        self._database_works()
        return True

    async def _record_loop(self) -> None:
        while True:
            await asyncio.sleep(RECORD_EVERY)
            await self._flush()

    async def _flush(self) -> bool:
        """Write what waits to be written; True when nothing is left unwritten. Under the lock,
        so no write is in flight when it says so (a batch being written is in neither list)."""
        async with self._flush_lock:
            await self._write_outcomes()
            return not (self._results or self._postponed)

    async def _write_outcomes(self) -> None:
        # Each list is put back only if its own write failed: written rows must not be written
        # twice. If the database stays away, the leases run out and the rows are sent again:
        # a duplicate, never a loss.
        now = self.clock()
        batch, self._results = self._results, []
        if batch:
            if not await self._write(record_attempts, batch, self._results, "outcomes"):
                return
            self.routes.wrote(
                [Route(r.route) for r in batch if r.outcome.kind in COUNTS_AGAINST_LIMIT]
            )
        postponed, self._postponed = self._postponed, []
        if postponed and not await self._write(postpone_rows, postponed, self._postponed, "waits"):
            return
        try:
            if self.routes.dirty:
                await asyncio.to_thread(self.routes.save, self.engine, now)
            if now - self._counted_at >= COUNT_EVERY:
                # Other workers send and fail too: take the routes' 24-hour counts and breakers
                # from the database.
                self._counted_at = now
                await asyncio.to_thread(self.routes.refresh, self.engine, now)
        except Exception as exc:  # route state is shared best effort; written again next time
            self._database_said(exc, "sharing route state", "shared again at the next flush")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
