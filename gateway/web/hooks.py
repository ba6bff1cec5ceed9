"""Webhooks the SMS channels call: open to the service that signs them and to no one else. A call
without its signature header is refused before its body is read (gateway/web/guard.py); one
whose signature does not match gets 401 and changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from gateway.config import ConfigError
from gateway.domain.smsgate import EventError, parse_event, signature_problem
from gateway.services.channel_events import EventRefused, apply_smsgate
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def hooks(runtime: Runtime, engine: Callable[[], Engine]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post("/hooks/smsgate")
    async def smsgate(request: Request) -> JSONResponse:
        gate = runtime.settings.smsgate
        if not gate.configured:
            return _error(404, "not_found", "[smsgate] is not configured")
        try:
            key = gate.resolve_signing_key()
        except ConfigError as exc:
            return _error(503, "not_configured", str(exc))
        if not key:
            return _error(401, "unauthorized", "set [smsgate] signing_key_env: calls are refused "
                                               "until their signature can be checked")  # fmt: skip
        body = await request.body()
        headers = request.headers
        problem = signature_problem(
            key, body, headers.get("x-timestamp"), headers.get("x-signature"), time.time()
        )
        if problem is not None:
            return _error(401, "unauthorized", problem)
        try:
            event = parse_event(body)
        except EventError as exc:
            return _error(400, "bad_event", str(exc))
        try:
            result = await asyncio.to_thread(
                apply_smsgate, runtime, engine(), event, body, utcnow()
            )
        except EventRefused as exc:
            return _error(422, "bad_event", str(exc))
        except DBAPIError:  # the phone calls again later
            return _error(503, "database_unavailable", "the database is not answering")
        return JSONResponse({"ok": True, "result": result})

    return router
