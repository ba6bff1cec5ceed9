"""What `gateway run` runs, composed in one place: the sender, the mailbox lease and reader, the
phone poller, the scheduler, the webhooks to the order system, the heartbeat, the settings
watcher and (inside the sender) the Sent copier. The command line and the demo both run this.

Long runs are made of generations: the sender, reader, poller and heartbeat are made from the
settings in force, and made again when an admin saves a change in the dashboard. The scheduler
and webhooks outlive generations (their settings are read as they run).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ConfigError
from gateway.domain.health import Health
from gateway.services.bell import Bell
from gateway.services.heartbeat import MailboxView, pulse
from gateway.services.inbound import Ingest, MailboxLease, Receiver, keep_reading
from gateway.services.orders import Orders
from gateway.services.phone_poll import PhonePoller
from gateway.services.runtime import Runtime
from gateway.services.scheduler import Scheduler
from gateway.services.sender import Sender, SenderStats, worker_name
from gateway.services.webhooks import Webhooks
from gateway.store import heartbeats
from gateway.store.db import failure_words, utcnow
from gateway.transport.imap import ImapError

log = logging.getLogger(__name__)

SETTINGS_CHECK_SECONDS = 2.0  # how soon a change saved in the dashboard reaches the workers
PROGRESS_EVERY = 10.0  # seconds between status lines while the sender has work

Say = Callable[[str], None]


class WorkerError(Exception):
    """The settings give the worker nothing to do, or a rule does not fit; says what to fix."""


@dataclass
class RunResult:
    stats: SenderStats
    sent_folder: bool  # whether Sent copies were made (and so worth a word)
    problems: list[str] = field(default_factory=list)  # a run that must exit non-zero

    def describe(self) -> str:
        stats = self.stats
        copies = f"; Sent copies {stats.copied}" if self.sent_folder else ""
        if stats.copies_failed:
            copies += f" ({stats.copies_failed} failed)"
        return f"{describe_stats(stats)}; released {stats.released}{copies}"


class _Generation:
    """The sender, the mailbox reader and the phone poller as the current settings make them."""

    def __init__(self, runtime: Runtime, worker: str) -> None:
        settings = runtime.settings
        engine = runtime.engine
        self.runtime, self.worker = runtime, worker
        self.sent_folder = runtime.sent_folder()
        source = runtime.mail_source(engine)
        self.receiver = Receiver(Ingest(runtime, engine), source) if source is not None else None
        self.sender = Sender(
            engine,
            runtime.route_book(),
            runtime.retry_policy,
            batch_size=settings.sender.batch_size,
            lease=dt.timedelta(seconds=settings.sender.lease_seconds),
            idle_poll=settings.sender.idle_poll_seconds,
            sent_folder=self.sent_folder,
            worker=worker,
            bell=Bell(engine),
            quiet=runtime.quiet(),
        )
        # The phone's news read from it, where it cannot call gateway serve.
        self.phone = (
            PhonePoller(runtime, engine, runtime.smsgate_client())
            if settings.smsgate.poll_seconds and "smsgate" in settings.channels.order
            else None
        )

    def mailbox_view(self) -> MailboxView | None:
        receiver = self.receiver
        if receiver is None:
            return None
        source = receiver.source
        return lambda: (source.lag(time.time()), source.health)

    def lease(self) -> MailboxLease | None:
        if self.receiver is None:
            return None
        seconds = self.runtime.settings.inbound.mailbox_lease_seconds
        return MailboxLease(self.receiver, self.runtime.engine, self.worker, seconds)


class Worker:
    """`gateway run`: `run(stop)` until `stop` is set (a long run), or until nothing is due
    (`until_idle`, one pass of everything and then the sender until idle)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        until_idle: bool = False,
        say: Say = log.info,
        name: str | None = None,
    ) -> None:
        settings = runtime.settings
        if not settings.smtp.enabled and not settings.relay.enabled:
            raise WorkerError("both smtp.enabled and relay.enabled are false: nothing can be sent")
        self.runtime = runtime
        self.engine = runtime.migrated_engine()
        self.rules = Orders(runtime).rules  # refuses to start on a rule that does not fit
        self.webhooks = Webhooks(runtime, self.engine) if settings.webhooks.urls else None
        self.until_idle, self.say = until_idle, say
        self.name = name or worker_name()

    async def run(self, stop: asyncio.Event) -> RunResult:
        if self.until_idle:
            return await self._once(stop)
        return await self._long(stop)

    async def _once(self, stop: asyncio.Event) -> RunResult:
        problems: list[str] = []
        generation = _Generation(self.runtime, self.name)
        webhooks = self.webhooks
        if webhooks is not None:  # a first run starts reporting from here
            await asyncio.to_thread(webhooks.collect, utcnow())
        # Read the mailbox (and the phone) first, so keyword answers they queue go out in this run.
        lease = generation.lease()
        if lease is not None:
            try:
                inbound = await lease.run(stop, until_idle=True)
            except ImapError as exc:
                problems.append(f"inbound: {exc}")
            else:
                self.say(f"done: {inbound.describe()}")
        if generation.phone is not None:
            await generation.phone.once()
        progress = asyncio.create_task(self._progress(generation.sender.stats))
        try:
            stats = await generation.sender.run(stop, until_idle=True)
        finally:
            progress.cancel()
        if webhooks is not None:
            # What this run changed is reported before it exits (one try each).
            await asyncio.to_thread(webhooks.collect, utcnow())
            await webhooks.deliver(utcnow())
        return RunResult(stats, generation.sent_folder is not None, problems)

    async def _long(self, stop: asyncio.Event) -> RunResult:
        runtime, engine = self.runtime, self.engine
        hooks = asyncio.create_task(self.webhooks.run(stop)) if self.webhooks else None
        scheduler = Scheduler(
            runtime,
            engine,
            self.rules,
            misfire_grace_seconds=runtime.settings.rules.misfire_grace_seconds,
        )
        scheduler.start()
        try:
            while True:
                generation = _Generation(runtime, self.name)
                stats = await self._generation(generation, stop)
                if stop.is_set():
                    return RunResult(stats, generation.sent_folder is not None)
                self.say("settings changed in the dashboard: workers restarted with them")
        finally:
            await asyncio.to_thread(heartbeats.gone, engine, self.name)
            scheduler.shutdown()
            if hooks is not None:
                stop.set()
                await hooks

    async def _generation(self, generation: _Generation, stop: asyncio.Event) -> SenderStats:
        """Run one generation until stop, or until the saved settings change."""
        ending = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(self._watch_settings(stop, ending))]
        lease = generation.lease()
        if lease is not None:
            tasks.append(asyncio.create_task(keep_reading(lease, ending)))
        if generation.phone is not None:
            every = self.runtime.settings.smsgate.poll_seconds or 60.0
            tasks.append(asyncio.create_task(generation.phone.run(ending, every)))
        view = generation.mailbox_view()
        tasks.append(asyncio.create_task(pulse(self.engine, self.name, view, ending)))
        progress = asyncio.create_task(self._progress(generation.sender.stats))
        try:
            return await generation.sender.run(ending)
        finally:
            progress.cancel()
            ending.set()
            for task in tasks:
                await task

    async def _watch_settings(self, stop: asyncio.Event, ending: asyncio.Event) -> None:
        """Set `ending` at stop, or once the saved settings change (the workers are then made
        again from them). A change that does not fit is reported and the running settings kept."""
        reading = Health()  # whether the saved settings can be read: a failure is said once
        while not ending.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SETTINGS_CHECK_SECONDS)
            if stop.is_set():
                ending.set()
                return
            if ending.is_set():
                return
            try:
                changed = await asyncio.to_thread(self.runtime.refresh)
            except ConfigError as exc:
                self.say(f"{exc}\nkeeping the settings in use")
                continue
            except Exception as exc:  # the database away for a moment: look again later
                error = failure_words(exc)
                if reading.failing(error, utcnow()):
                    log.warning("reading the saved settings failed: %s", error)
                continue
            if reading.working(utcnow()):
                log.warning("the saved settings are read again")
            if changed:
                ending.set()
                return

    async def _progress(self, stats: SenderStats) -> None:
        """A line every PROGRESS_EVERY seconds while there is work, none while idle."""
        seen = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if stats.attempted != seen:
                rate = (stats.attempted - seen) / PROGRESS_EVERY
                seen = stats.attempted
                self.say(f"{describe_stats(stats)} ({rate:,.0f}/s)")


def describe_stats(stats: SenderStats) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_outcome.items())) or "none"
    recovered = (
        f"; {stats.recovered} taken over from a dead worker (each may have gone twice)"
        if stats.recovered
        else ""
    )
    return f"attempts {stats.attempted}: {outcomes}{recovered}"
