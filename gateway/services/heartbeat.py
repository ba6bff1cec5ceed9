"""The worker's pulse: a row every few seconds saying this process is alive, how far behind its
view of the mailbox may be, and how its mailbox reader fares; /readyz, /metrics, `gateway
status` and the dashboard read it from any process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import Engine

from gateway.domain.health import Health
from gateway.store import heartbeats
from gateway.store.db import failure_words, utcnow

log = logging.getLogger(__name__)


# The mailbox as this process sees it: (lag in seconds, the reader's health).
MailboxView = Callable[[], tuple[float | None, Health | None]]


async def pulse(
    engine: Engine,
    name: str,
    mailbox: MailboxView | None,
    ending: asyncio.Event,
) -> None:
    """Beat until `ending` is set. `mailbox` is None when this process reads no mailbox."""
    beating = Health()  # whether the beats are written: a failure is said once, not each beat
    while not ending.is_set():
        lag, health = mailbox() if mailbox is not None else (None, None)
        try:
            await asyncio.to_thread(heartbeats.beat, engine, name, utcnow(), lag, health)
        except Exception as exc:  # the database away for a moment: the next beat tries again
            error = failure_words(exc)
            if beating.failing(error, utcnow()):
                log.warning("heartbeat not written: %s", error)
        else:
            if beating.working(utcnow()):
                log.warning("heartbeats are written again")
        # Until the mailbox has been looked at once, beat again soon to report it.
        soon = lag is None and mailbox is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ending.wait(), 1.0 if soon else heartbeats.BEAT_SECONDS)
