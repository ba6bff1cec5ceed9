"""The worker's pulse: a row every few seconds saying this process is alive, with how far
behind its view of the mailbox may be; /readyz and /metrics read it from any process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import Engine

from gateway.store import heartbeats
from gateway.store.db import utcnow

log = logging.getLogger(__name__)


async def pulse(
    engine: Engine,
    name: str,
    mailbox_lag: Callable[[], float | None] | None,
    ending: asyncio.Event,
) -> None:
    """Beat until `ending` is set. `mailbox_lag` is None when this process reads no mailbox."""
    while not ending.is_set():
        lag = mailbox_lag() if mailbox_lag is not None else None
        try:
            await asyncio.to_thread(heartbeats.beat, engine, name, utcnow(), lag)
        except Exception as exc:  # the database away for a moment: the next beat tries again
            log.warning("heartbeat not written: %s", exc)
        # Until the mailbox has been looked at once, beat again soon to report it.
        soon = lag is None and mailbox_lag is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ending.wait(), 1.0 if soon else heartbeats.BEAT_SECONDS)
