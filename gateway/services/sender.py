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

from sqlalchemy import Engine

from gateway.domain.delivery import AttemptOutcome, OutcomeKind, RetryPolicy, decide
from gateway.domain.email_out import Mailbox, OutboundEmail, build_email
from gateway.store.db import utcnow
from gateway.store.outbox import (
    AttemptRecord,
    Claimed,
    claim_due,
    count_due,
    record_attempts,
    release,
)
from gateway.transport.smtp import SmtpPool

log = logging.getLogger("gateway.sender")

# A row is not started this close to the end of its lease (another worker may take it then):
# this long, or a quarter of a short lease.
LEASE_MARGIN = dt.timedelta(seconds=5)
RECORD_EVERY = 0.05  # seconds: how long an outcome may wait to be written with others


@dataclasses.dataclass
class SenderStats:
    claimed: int = 0
    attempted: int = 0
    released: int = 0
    by_outcome: dict[str, int] = dataclasses.field(default_factory=dict)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(24):06x}"


class Sender:
    def __init__(
        self,
        engine: Engine,
        pool: SmtpPool,
        sender: Mailbox,
        policy: RetryPolicy,
        *,
        route: str = "own",
        batch_size: int = 200,
        lease: dt.timedelta = dt.timedelta(seconds=120),
        idle_poll: float = 1.0,
        clock: Callable[[], dt.datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        worker: str | None = None,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.sender = sender
        self.policy = policy
        self.route = route
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
        self._in_flight = 0

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> SenderStats:
        """Send until `stop` is set (then finish what is in flight and give back the rest), or
        with `until_idle` until nothing is due."""
        workers = [
            asyncio.create_task(self._send_loop(), name=f"send-{n}")
            for n in range(self.pool.server.connections)
        ]
        recorder = asyncio.create_task(self._record_loop(), name="record")
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
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await self._flush()
            if unsent:
                self.stats.released += await asyncio.to_thread(
                    release, self.engine, self.worker, unsent, self.clock()
                )
            await self.pool.close()
        return self.stats

    async def _claim_loop(self, stop: asyncio.Event, until_idle: bool) -> None:
        low_water = max(self.pool.server.connections * 2, self.batch_size // 2)
        while not stop.is_set():
            if self._queue.qsize() >= low_water:
                await _wait(stop, 0.005)
                continue
            rows = await asyncio.to_thread(
                claim_due, self.engine, self.worker, self.clock(), self.lease, self.batch_size
            )
            self.stats.claimed += len(rows)
            for row in rows:
                self._queue.put_nowait(row)
            if rows:
                continue
            if not self._queue.empty() or self._in_flight:
                await _wait(stop, 0.01)
                continue
            if until_idle:
                # Outcomes not yet written may still make rows due; write them, then ask once
                # more before calling it idle.
                await self._flush()
                if await asyncio.to_thread(count_due, self.engine, self.clock()) == 0:
                    return
                continue
            await _wait(stop, self.idle_poll)

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
        started = self.clock()
        if started >= row.lease_until - self.lease_margin:
            return  # our lease is (nearly) gone; whoever claims it next sends it
        try:
            data = build_email(
                OutboundEmail(
                    sender=self.sender,
                    to=row.to_address,
                    message_id=row.message_id,
                    date=started,
                    body=row.body,
                )
            )
        except ValueError as exc:
            outcome = AttemptOutcome(
                kind=OutcomeKind.PERMANENT, reply=f"cannot build the email: {exc}", phase="build"
            )
        else:
            outcome = await self.pool.send(self.sender.address, row.to_address, data)
        finished = self.clock()
        number = row.attempts + 1
        decision = decide(outcome, number, row.first_due_at, finished, self.policy, self.jitter())
        self._results.append(
            AttemptRecord(
                message=row.id,
                number=number,
                worker=self.worker,
                route=self.route,
                outcome=outcome,
                decision=decision,
                started_at=started,
                finished_at=finished,
            )
        )
        self.stats.attempted += 1
        kind = outcome.kind.value
        self.stats.by_outcome[kind] = self.stats.by_outcome.get(kind, 0) + 1
        log.debug("message %s: %s %s", row.id, kind, outcome.reply)

    async def _record_loop(self) -> None:
        while True:
            await asyncio.sleep(RECORD_EVERY)
            await self._flush()

    async def _flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await asyncio.to_thread(record_attempts, self.engine, batch)
        except Exception:
            # Keep them for the next flush; if the database stays away, the leases run out and
            # the rows are sent again: a duplicate, never a loss.
            log.exception("recording %d outcomes failed; will retry", len(batch))
            self._results[:0] = batch
            await asyncio.sleep(1)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
