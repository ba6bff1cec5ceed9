"""What may reach a handler, decided before the body is read: a request body larger than
`[web] max_body_bytes` is refused with 413 as soon as it is known to be (from Content-Length,
or while a chunked body streams in, never read past the limit), and an API call without valid
credentials (or a webhook call without its signature) is refused with 401 before its body is
parsed (a stranger learns nothing from 422s, and cannot make the server parse megabytes).

A plain ASGI middleware: Starlette's request helpers read the whole body before a handler could
object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.store import access

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

API = "/api/v1"
# The batch endpoint takes up to 1,000 texts in one body: it may be this many times larger.
BATCH_FACTOR = 10
# The SMS channels' webhooks and the header their signature comes in: a call without it is
# refused before its body is read.
HOOK_SIGNATURES = {
    "/hooks/smsgate": "x-signature",
    "/hooks/twilio/status": "x-twilio-signature",
    "/hooks/twilio/incoming": "x-twilio-signature",
}


class RequestGuard:
    def __init__(self, app: App, max_body_bytes: int, engine: Callable[[], Any]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.max_body_bytes * (BATCH_FACTOR if path == f"{API}/messages/batch" else 1)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, "too_large", _too_large(limit))
            return
        signed_by = HOOK_SIGNATURES.get(path)
        if signed_by is not None and not headers.get(signed_by, "").strip():
            await _refuse(send, 401, "unauthorized", f"the call is not signed ({signed_by})")
            return
        if path.startswith(f"{API}/"):
            authorization = headers.get("authorization", "")
            checked, holder = await self._holder(authorization)
            if checked and holder is None:
                words = ("the bearer token is not valid" if authorization.strip() else
                         "send a bearer token (gateway tokens create NAME)")  # fmt: skip
                await _refuse(send, 401, "unauthorized", words, {"WWW-Authenticate": "Bearer"})
                return
            if holder is not None:  # not checked (the database is away): the handler says 503
                scope.setdefault("state", {})["token_holder"] = holder
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer now and tell the app the client is gone: nothing more is read.
                    refused = True
                    if not started:
                        await _refuse(send, 413, "too_large", _too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's own answer to a body it never got whole
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)

    async def _holder(self, authorization: str) -> tuple[bool, access.TokenHolder | None]:
        """(whether the credentials could be checked, who they belong to)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return True, None

        def look_up() -> access.TokenHolder | None:
            with self.engine().connect() as conn:
                return access.token_holder(conn, token.strip())

        try:
            return True, await asyncio.to_thread(look_up)
        except Exception:  # the database is away: the handler's own check answers 503
            return False, None


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit:,} bytes ([web] max_body_bytes)"


async def _refuse(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]  # fmt: skip
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
