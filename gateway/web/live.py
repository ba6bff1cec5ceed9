"""Wakes the dashboard's event streams when another process stored something (PostgreSQL
LISTEN/NOTIFY). One listening connection per web process; the streams still look on their own
every few seconds, so a lost connection costs latency, never an event. And tells them when the
web server begins to shut down (`Closing`), so that they end then."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import Engine

from gateway.services.bell import listen
from gateway.store.live import CHANNEL


class Wakeup:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False  # a LISTEN connection is open now

    @property
    def available(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def start(self) -> None:
        """Begin listening (once per process), from inside the running event loop."""
        if self.available and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, seconds: float) -> None:
        """Until the next notification, or `seconds`."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def wake(self) -> None:
        """Wake every stream waiting now."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def _listen(self) -> None:
        await listen(self.engine, CHANNEL, self.wake, "live updates", self._listening)

    def _listening(self, now: bool) -> None:
        self.listening = now


class Closing:
    """Whether the web server has begun to shut down, told to the event streams: an open stream
    never ends by itself, so without it each would hold the shutdown until the server's grace
    time is up, then be cancelled (and uvicorn logs that as an error)."""

    def __init__(self) -> None:
        self.begun = False
        self._wakeups: list[Wakeup] = []

    def watch(self, wakeup: Wakeup) -> None:
        """Wake the streams `wakeup` holds when shutdown begins."""
        if wakeup not in self._wakeups:
            self._wakeups.append(wakeup)

    def begin(self) -> None:
        self.begun = True
        for wakeup in self._wakeups:
            wakeup.wake()
