"""The dashboard's event stream (server-sent events): what happens elsewhere, as it happens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Engine

from gateway.store import views
from gateway.web.dashboard.pages import Pages
from gateway.web.live import Closing, Wakeup

LIVE_POLL_SECONDS = 0.5  # how often the event stream looks for news
LIVE_POLL_LISTENING_SECONDS = 3.0  # and on PostgreSQL, where NOTIFY wakes it (a safety net)
LIVE_PING_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream


def events_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False)  # the stream stays on the event loop
    engine = pages.engine
    wakeups: list[Wakeup] = []  # made on the first stream, in the server's event loop

    @router.get("/events")
    async def events(request: Request, after: str | None = None) -> Response:
        await asyncio.to_thread(pages.user_of, request)
        if not wakeups:
            wakeups.append(Wakeup(engine()))
        wakeups[0].start()
        # Begun by the server when it starts to shut down (gateway.web.server).
        closing: Closing = request.app.state.closing
        closing.watch(wakeups[0])
        start = _position(request.headers.get("last-event-id") or after)
        if start is None:

            def positions() -> views.Position:
                with engine().connect() as conn:
                    return views.positions(conn)

            start = await asyncio.to_thread(positions)
        return StreamingResponse(
            _stream(request, engine, start, wakeups[0], closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def close_live() -> None:
        """At shutdown: the LISTEN task this process started ends with it."""
        for wakeup in wakeups:
            await wakeup.close()

    router.on_shutdown.append(close_live)
    return router


async def _stream(
    request: Request,
    engine: Callable[[], Engine],
    start: tuple[int, int, int | None],
    wakeup: Wakeup,
    closing: Closing,
) -> AsyncIterator[str]:
    """Events after `start`: each batch's last event carries the position, so a browser that
    reconnects (EventSource sends Last-Event-ID) gets what it missed and nothing twice. Ends
    when the browser goes or the server begins to shut down (the browser reconnects to the
    next one)."""
    position = start
    first = ".".join(str(part) for part in position if part is not None)
    yield f"retry: 2000\nid: {first}\nevent: hello\ndata: {{}}\n\n"
    quiet_since = asyncio.get_running_loop().time()
    while not closing.begun and not await request.is_disconnected():

        def read(after: tuple[int, int, int | None] = position) -> Any:
            with engine().connect() as conn:
                return views.changes_since(conn, *after)

        found, new_position = await asyncio.to_thread(read)
        now = asyncio.get_running_loop().time()
        if found:
            for index, event in enumerate(found):
                last = index == len(found) - 1
                at = ".".join(str(part) for part in new_position)
                event_id = f"id: {at}\n" if last else ""
                yield f"{event_id}event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            quiet_since = now
        elif now - quiet_since > LIVE_PING_SECONDS:
            yield ": ping\n\n"
            quiet_since = now
        position = new_position
        await wakeup.wait(LIVE_POLL_LISTENING_SECONDS if wakeup.listening else LIVE_POLL_SECONDS)


def _position(text: str | None) -> tuple[int, int, int | None] | None:
    """A stream position as pages and Last-Event-ID give it: "inbound.attempt.audit"; a page
    from before the audit part was kept gives two parts (the stream then starts it from now)."""
    if not text:
        return None
    parts = text.split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) < 19 for p in parts):
        return None
    numbers = [int(part) for part in parts]
    return numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None
