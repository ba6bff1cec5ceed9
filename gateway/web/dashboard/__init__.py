"""The dispatchers' dashboard: server-rendered pages (Jinja2, autoescaped), htmx for the parts
that change, server-sent events for what happens elsewhere. Thin: the work is the services'.

One router per section; `pages.Pages` is what they share (rendering, the signed-in user).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from sqlalchemy import Engine

from gateway.services.runtime import Runtime
from gateway.web.dashboard.conversations import conversations_router
from gateway.web.dashboard.events import events_router
from gateway.web.dashboard.failures import failures_router
from gateway.web.dashboard.pages import (
    HERE,
    Pages,
    forbidden_handler,
    handle_not_signed_in,
    make_templates,
)
from gateway.web.dashboard.records import records_router
from gateway.web.dashboard.settings import settings_router
from gateway.web.dashboard.signin import signin_router

SECTIONS = (
    signin_router,
    conversations_router,
    failures_router,
    records_router,
    settings_router,
    events_router,
)


def dashboard(runtime: Runtime, engine: Callable[[], Engine]) -> APIRouter:
    pages = Pages(runtime, engine)
    router = APIRouter(include_in_schema=False)
    for section in SECTIONS:
        router.include_router(section(pages))
    return router


__all__ = ["HERE", "dashboard", "forbidden_handler", "handle_not_signed_in", "make_templates"]
