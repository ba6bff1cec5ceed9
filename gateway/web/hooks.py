"""Webhooks the SMS channels call: open to the service that signs them and to no one else. A call
without its signature header is refused before its body is read (gateway/web/guard.py); one
whose signature does not match gets 401 and changes nothing."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from gateway.config import ConfigError
from gateway.domain.smsgate import EventError, parse_event, signature_problem
from gateway.domain.twilio import signature_problem as twilio_signature_problem
from gateway.services.channel_events import (
    EventRefused,
    apply_smsgate,
    apply_twilio_incoming,
    apply_twilio_status,
)
from gateway.services.runtime import Runtime
from gateway.store.db import DatabaseError, utcnow

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _applied(apply: Callable[[], str]) -> str | Response:
    """What applying the event said, off the event loop (the database reached inside it too);
    or the answer for an event that cannot be (422), a database that is not answering or not
    yet migrated (503: the service calls again)."""
    try:
        return await asyncio.to_thread(apply)
    except EventRefused as exc:
        return _error(422, "bad_event", str(exc))
    except DBAPIError:
        return _error(503, "database_unavailable", "the database is not answering")
    except DatabaseError as exc:  # not migrated: `gateway db upgrade`
        return _error(503, "database_unavailable", str(exc))


def hooks(runtime: Runtime, engine: Callable[[], Engine]) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.post("/hooks/smsgate")
    async def smsgate(request: Request) -> Response:
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
        result = await _applied(lambda: apply_smsgate(runtime, engine(), event, body, utcnow()))
        if isinstance(result, Response):
            return result
        return JSONResponse({"ok": True, "result": result})

    async def twilio_call(request: Request) -> tuple[dict[str, str], bytes] | Response:
        """The call's form, once its signature is checked; else the answer to give."""
        twilio, public = runtime.settings.twilio, runtime.settings.web.public_url
        if not twilio.configured or public is None:
            return _error(404, "not_found", "[twilio] is not configured")
        try:
            token = twilio.resolve_auth_token()
        except ConfigError as exc:
            return _error(503, "not_configured", str(exc))
        body = await request.body()
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                max_num_fields=200,
            )  # fmt: skip
        except (UnicodeDecodeError, ValueError):
            return _error(400, "bad_event", "the body is not a form")
        # Signed over the address Twilio was given: ours as configured, not as a proxy says.
        query = request.url.query
        url = public + request.url.path + (f"?{query}" if query else "")
        problem = twilio_signature_problem(
            token, url, pairs, request.headers.get("x-twilio-signature")
        )
        if problem is not None:
            return _error(401, "unauthorized", problem)
        return dict(pairs), body

    @router.post("/hooks/twilio/status")
    async def twilio_status(request: Request, ref: str = "") -> Response:
        checked = await twilio_call(request)
        if isinstance(checked, Response):
            return checked
        params, _ = checked
        refused = await _applied(lambda: apply_twilio_status(engine(), ref[:64], params, utcnow()))
        if isinstance(refused, Response):
            return refused
        return Response(status_code=204)

    @router.post("/hooks/twilio/incoming")
    async def twilio_incoming(request: Request) -> Response:
        checked = await twilio_call(request)
        if isinstance(checked, Response):
            return checked
        params, body = checked
        refused = await _applied(
            lambda: apply_twilio_incoming(runtime, engine(), params, body, utcnow())
        )
        if isinstance(refused, Response):
            return refused
        # An empty TwiML answer: Twilio sends nothing back (a dispatcher answers, or Twilio
        # itself for STOP, START and HELP).
        return Response(EMPTY_TWIML, media_type="text/xml")

    return router
