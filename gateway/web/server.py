"""The web server: uvicorn's, telling the app's event streams when it begins to shut down, so
that an open dashboard neither holds a shutdown for the server's grace time nor is cancelled
at its end (which uvicorn logs as an error on every restart)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.web.live import Closing


class WebServer(uvicorn.Server):
    """`signals`: False where the caller stops the server itself (the demo, on its own Ctrl-C)."""

    def __init__(self, app: FastAPI, signals: bool = True, **config: Any) -> None:
        super().__init__(uvicorn.Config(app, **config))
        self.closing: Closing = app.state.closing
        self.signals = signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.signals:
            yield
            return
        with super().capture_signals():
            yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.closing.begin()
        await super().shutdown(sockets)
