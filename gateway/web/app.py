"""The web process: the HTTP API, the dashboard, and the headers every answer carries."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from gateway.services.runtime import Runtime
from gateway.web import security
from gateway.web.api import create_app as create_api
from gateway.web.dashboard import (
    HERE,
    dashboard,
    forbidden_handler,
    handle_not_signed_in,
    make_templates,
)
from gateway.web.hooks import hooks
from gateway.web.live import Closing

# Settings an admin saved in another process are taken up at most this long after.
REFRESH_SECONDS = 2.0


def create_app(runtime: Runtime) -> FastAPI:
    app = create_api(runtime)
    app.state.base_url = runtime.settings.web.base_url  # another origin forms may come from
    app.state.closing = Closing()  # begun by the server at shutdown (gateway.web.server)
    app.include_router(dashboard(runtime, runtime.migrated_engine))
    app.include_router(hooks(runtime, runtime.migrated_engine))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(security.NotSignedIn, handle_not_signed_in)
    app.add_exception_handler(security.Forbidden, forbidden_handler(make_templates()))
    app.middleware("http")(security.security_headers)
    checked = [0.0]

    @app.middleware("http")
    async def settings_refresh(request: Request, call_next: object) -> Response:
        now = time.monotonic()
        if now - checked[0] > REFRESH_SECONDS:
            checked[0] = now
            await asyncio.to_thread(runtime.refresh)  # a query: never on the event loop
        return await call_next(request)  # type: ignore[operator,no-any-return]

    return app
