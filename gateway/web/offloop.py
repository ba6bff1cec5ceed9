"""Dashboard pages off the event loop. A page reads the database (and a form signs a user in
with argon2): done on the server's own loop, one slow query, one hash or one writer holding
SQLite's lock would stall every request and every live event stream of the process.

A route of this class reads the request body on the loop (where the connection is), then runs
the whole handler, with FastAPI's own request handling around it, on a worker thread with an
event loop of its own; the body is found read already. The event stream, which lives for as
long as the browser stays, keeps a plain route (its reads go to a thread one by one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from anyio import to_thread
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OffLoopRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def off_the_loop(request: Request) -> Response:
            await request.body()  # read here; the handler's form parsing finds it cached
            return await to_thread.run_sync(asyncio.run, handle(request))

        return off_the_loop
