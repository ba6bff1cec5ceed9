"""The HTTP API (`/api/v1`) the order system talks to, and the health and metrics endpoints.

Thin: requests are checked by pydantic, the work is done by the services, errors are JSON
`{"error": CODE, "message": TEXT}`. A database that is locked or away answers 503, and each
request writes in one transaction, so nothing is left half-written.
"""

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.config import ConfigError
from gateway.domain.delivery import State
from gateway.domain.routing import BreakerState
from gateway.services.bell import ring
from gateway.services.carrier_report import carrier_rows
from gateway.services.health import overview
from gateway.services.orders import OrderError, OrderInput, Orders
from gateway.services.outbound import (
    Enqueued,
    EnqueueError,
    SendRequest,
    enqueue,
    enqueue_many,
)
from gateway.services.runtime import Runtime
from gateway.store import access, heartbeats, views
from gateway.store.db import DatabaseError, utcnow
from gateway.store.routes import load_breakers
from gateway.web.guard import RequestGuard
from gateway.web.ids import RowId, names_no_row

API = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Every error of the API."""

    error: str
    message: str


_ERROR_MEANS = {
    400: "the body is not JSON (malformed, not UTF-8, or nested too deeply)",
    401: "no bearer token, or not a valid one",
    404: "there is no such item",
    409: "a request with this Idempotency-Key is still running",
    413: "the body is larger than [web] max_body_bytes",
    422: "the request is not one this endpoint takes (the message says why)",
    503: "the database is busy or unreachable; nothing was written",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an endpoint can give, for its OpenAPI description."""
    return {code: {"model": ErrorOut, "description": _ERROR_MEANS[code]} for code in codes}


def _not_a_number(value: object) -> object:
    """A time is an ISO 8601 text, as the document says: a number (which pydantic would read as
    a Unix time) is refused, in a body or a query."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("give a date and time like 2026-12-06T12:00:00Z")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("give a date and time like 2026-12-06T12:00:00Z")
    return value


When = Annotated[dt.datetime | None, BeforeValidator(_not_a_number)]


class MessageIn(_Body):
    to: str = Field(min_length=1, max_length=40)
    carrier: str | None = Field(None, min_length=1, max_length=60)
    text: str | None = Field(None, min_length=1, max_length=5000)
    template: str | None = Field(None, min_length=1, max_length=100)
    variables: dict[str, str] = Field(default_factory=dict)
    order_ref: str | None = Field(None, min_length=1, max_length=100)
    send_at: When = None
    respect_quiet_hours: StrictBool = False
    name: str | None = Field(None, min_length=1, max_length=100)  # the contact's name


class BatchIn(_Body):
    messages: list[MessageIn] = Field(min_length=1, max_length=1000)


def _send_request(body: MessageIn) -> SendRequest:
    return SendRequest(
        to=body.to,
        carrier=body.carrier,
        text=body.text,
        template=body.template,
        variables=body.variables,
        order_ref=body.order_ref,
        send_at=body.send_at,
        respect_quiet_hours=body.respect_quiet_hours,
        name=body.name,
    )


# Fields added after idempotency keys were first stored: left out of a body's digest while
# unset, so a retry of a request made before they existed still matches its first try.
_LATER_FIELDS = frozenset({"name"})


def _as_first_keyed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _as_first_keyed(item)
            for key, item in value.items()
            if not (key in _LATER_FIELDS and item is None)
        }
    if isinstance(value, list):
        return [_as_first_keyed(item) for item in value]
    return value


def _refusal(exc: EnqueueError) -> str:
    """Why a message was refused, with how to give a missing template variable here."""
    return f"{exc} (give it in variables)" if exc.missing else str(exc)


def _enqueued(result: Enqueued) -> dict[str, Any]:
    return {
        "id": result.ids[0],
        "state": result.state.value,
        "message_id": result.message_ids[0],
        "to_address": result.to_address,
        "channel": result.channel,
        "parts": result.ids,
        "reason": result.reason if result.state is State.SUPPRESSED else None,
        "warning": result.warning,
    }


class OrderIn(_Body):
    ref: str = Field(min_length=1, max_length=100)
    customer: str | None = Field(None, min_length=1, max_length=40)
    carrier: str | None = Field(None, min_length=1, max_length=60)
    customer_name: str | None = Field(None, max_length=200)
    driver: str | None = Field(None, min_length=1, max_length=40)
    driver_carrier: str | None = Field(None, min_length=1, max_length=60)
    driver_name: str | None = Field(None, max_length=200)
    window_start: When = None
    window_end: When = None
    timezone: str | None = Field(None, min_length=1, max_length=64)


OrderStatus = Literal[
    "confirmed", "driver_assigned", "out_for_delivery", "delivered", "delayed",
    "attempt_failed", "cancelled",
]  # fmt: skip


class EventIn(_Body):
    status: OrderStatus
    eta: str | None = Field(None, max_length=100)
    reason: str | None = Field(None, max_length=500)
    occurred_at: When = None


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="gateway",
        version="1",
        description="Texts to drivers and customers through carrier email-to-SMS gateways.",
    )
    # Size and credentials are settled before any body is read (gateway/web/guard.py).
    app.add_middleware(
        RequestGuard, max_body_bytes=runtime.settings.web.max_body_bytes,
        engine=lambda: runtime.migrated_engine(),
    )  # fmt: skip
    bearer = HTTPBearer(auto_error=False)

    def engine() -> Any:
        try:
            return runtime.migrated_engine()
        except DatabaseError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    noted: dict[int, float] = {}  # token id -> when its use was last written (monotonic)

    def holder(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> access.TokenHolder:
        found = getattr(request.state, "token_holder", None)  # checked by the guard already
        if found is None:
            if credentials is None:
                raise ApiError(401, "unauthorized", "send a bearer token (gateway tokens create "
                                                    "NAME)")  # fmt: skip
            with engine().connect() as conn:
                found = access.token_holder(conn, credentials.credentials)
            if found is None:
                raise ApiError(401, "unauthorized", "the bearer token is not valid")
        note_use(found)
        return found

    def note_use(found: access.TokenHolder) -> None:
        """The token's last use, written at most once a minute, off the request's path: a
        database held by a writer delays the bookkeeping, never the answer."""
        now = time.monotonic()
        if now - noted.get(found.id, -120.0) < 60:
            return
        noted[found.id] = now

        def write() -> None:
            with contextlib.suppress(Exception):  # bookkeeping: the next use tries again
                access.note_token_use(engine(), found.id, utcnow())

        threading.Thread(target=write, daemon=True, name="token-use").start()

    Token = Annotated[access.TokenHolder, Depends(holder)]
    Key = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (no such route, a method not allowed, a body that does not
        parse) in the API's shape."""
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large"}  # fmt: skip
        message = str(exc.detail)
        if exc.status_code == 400:
            message = "the body is not JSON this API can read (too deeply nested, or malformed)"
        return JSONResponse({"error": codes.get(exc.status_code, "http_error"),
                             "message": message}, exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": exc.code, "message": exc.message}, exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if names_no_row(list(exc.errors())):
            if not request.url.path.startswith(API):  # a dashboard page
                return HTMLResponse("<p class=error>there is no such item</p>", 404)
            return JSONResponse({"error": "not_found", "message": "there is no such item"}, 404)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return JSONResponse(
            {"error": "invalid_request", "message": f"{where}: {first['msg']}".strip(": ")}, 422
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": "database_unavailable", "message": "the database is busy or unreachable; "
             "nothing was written, try again"}, 503, headers={"Retry-After": "5"},
        )  # fmt: skip

    def idempotent(
        token: access.TokenHolder,
        key: str | None,
        endpoint: str,
        body: Any,
        work: Callable[[Any], tuple[int, dict[str, Any]]],
    ) -> JSONResponse:
        """Run `work` once per key: the same key and body again answers as the first time.
        Every endpoint here is a plain function: FastAPI runs it in its thread pool, so a query
        that waits (a writer holding SQLite's lock) never holds up the event loop, and with it
        every other request and event stream."""
        if key is None:
            with engine().begin() as conn:
                status, payload = work(conn)
            ring(engine())  # texts it stored are sent now, not at a sender's next look
            return JSONResponse(payload, status)
        digest = access.body_digest({"endpoint": endpoint, "body": _as_first_keyed(body)})
        seen = access.begin_request(engine(), token.id, key, endpoint, digest, utcnow())
        if seen is not None:
            if seen.body_hash != digest:
                raise ApiError(422, "idempotency_key_reused",
                               "this Idempotency-Key was used with another request")  # fmt: skip
            if seen.status_code is None:
                raise ApiError(409, "in_flight", "a request with this Idempotency-Key is running")
            return JSONResponse(
                json.loads(seen.response or "{}"), seen.status_code,
                headers={"Idempotent-Replayed": "true"},
            )  # fmt: skip
        try:
            with engine().begin() as conn:
                status, payload = work(conn)
                access.finish_request(conn, token.id, key, status, _dumps(payload), utcnow())
        except BaseException:
            access.forget_request(engine(), token.id, key)
            raise
        ring(engine())
        return JSONResponse(payload, status)

    # --- messages ---------------------------------------------------------------------------

    @app.post(f"{API}/messages", status_code=201, tags=["messages"],
              responses=errors(400, 401, 409, 413, 422, 503))  # fmt: skip
    def post_message(body: MessageIn, token: Token, key: Key = None) -> Response:
        def work(conn: Any) -> tuple[int, dict[str, Any]]:
            try:
                result = enqueue(runtime, _send_request(body), utcnow(), conn=conn)
            except EnqueueError as exc:
                raise ApiError(422, "invalid_message", _refusal(exc)) from None
            return 201, _enqueued(result)

        return idempotent(token, key, "POST /messages", body.model_dump(mode="json"), work)

    @app.post(f"{API}/messages/batch", tags=["messages"],
              responses=errors(400, 401, 409, 413, 422, 503))  # fmt: skip
    def post_messages(body: BatchIn, token: Token, key: Key = None) -> Response:
        """Up to 1,000 texts in one request and one transaction. Each is checked on its own: the
        answer has a result per message, in order, either as `POST /messages` answers or an
        error with what to fix; the messages that pass are stored even when others do not."""

        def work(conn: Any) -> tuple[int, dict[str, Any]]:
            requests = [_send_request(message) for message in body.messages]
            results = []
            for index, result in enumerate(enqueue_many(runtime, requests, utcnow(), conn)):
                if isinstance(result, EnqueueError):
                    error = {"error": "invalid_message", "message": _refusal(result)}
                    results.append({"index": index, **error})
                else:
                    results.append({"index": index, **_enqueued(result)})
            refused = sum(1 for result in results if "error" in result)
            return 200, {"accepted": len(results) - refused, "refused": refused, "results": results}

        dumped = body.model_dump(mode="json")
        return idempotent(token, key, "POST /messages/batch", dumped, work)

    @app.get(f"{API}/messages/{{message_id}}", tags=["messages"],
             responses=errors(401, 404, 422, 503))  # fmt: skip
    def get_message(message_id: RowId, token: Token) -> Response:
        with engine().connect() as conn:
            found = views.message(conn, message_id)
        if found is None:
            raise ApiError(404, "not_found", f"there is no message {message_id}")
        return JSONResponse(_jsonable(found))

    # --- conversations ----------------------------------------------------------------------

    @app.get(f"{API}/conversations", tags=["conversations"], responses=errors(401, 422, 503))
    def get_conversations(
        token: Token, limit: Annotated[int, Query(ge=1, le=500)] = 50, before: When = None
    ) -> Response:
        with engine().connect() as conn:
            rows = views.conversation_list(conn, max(1, min(limit, 500)), before)
        return JSONResponse(_jsonable({"conversations": rows}))

    @app.get(f"{API}/conversations/{{conversation_id}}", tags=["conversations"],
             responses=errors(401, 404, 422, 503))  # fmt: skip
    def get_conversation(conversation_id: RowId, token: Token) -> Response:
        with engine().connect() as conn:
            found = views.conversation(conn, conversation_id)
        if found is None:
            raise ApiError(404, "not_found", f"there is no conversation {conversation_id}")
        return JSONResponse(_jsonable(found))

    # --- orders -----------------------------------------------------------------------------

    orders = Orders(runtime)

    @app.post(f"{API}/orders", status_code=201, tags=["orders"],
              responses=errors(400, 401, 409, 413, 422, 503))  # fmt: skip
    def post_order(body: OrderIn, token: Token, key: Key = None) -> Response:
        def work(conn: Any) -> tuple[int, dict[str, Any]]:
            try:
                order_id = orders.upsert(OrderInput(**body.model_dump()), utcnow(), conn=conn)
            except OrderError as exc:
                raise ApiError(422, "invalid_order", str(exc)) from None
            return 201, {"id": order_id, "ref": body.ref}

        return idempotent(token, key, "POST /orders", body.model_dump(mode="json"), work)

    @app.post(f"{API}/orders/{{ref}}/events", status_code=201, tags=["orders"],
              responses=errors(400, 401, 404, 409, 413, 422, 503))  # fmt: skip
    def post_event(ref: str, body: EventIn, token: Token, key: Key = None) -> Response:
        try:
            orders.rules  # noqa: B018  (a broken rules file is the operator's to fix: 503)
        except ConfigError as exc:
            raise ApiError(503, "rules_invalid", str(exc)) from None
        try:
            result = orders.record_status(
                ref, body.status, utcnow(), eta=body.eta, reason=body.reason,
                key=f"api:{token.id}:{key}" if key else None, occurred_at=body.occurred_at,
            )  # fmt: skip
        except OrderError as exc:
            code = "not_found" if "no order" in str(exc) else "invalid_event"
            raise ApiError(404 if code == "not_found" else 422, code, str(exc)) from None
        payload = {
            "event_id": result.event_id,
            "texts": result.texts,
            "skipped": result.skipped,
            "superseded": result.superseded,
        }
        return JSONResponse(_jsonable(payload), 200 if result.existing else 201)

    # --- carriers ---------------------------------------------------------------------------

    @app.get(f"{API}/carriers", tags=["carriers"], responses=errors(401, 503))
    def get_carriers(token: Token) -> Response:
        keys = ("id", "name", "kind", "countries", "sms", "mms", "address", "status",
                "ends_on", "retired_on", "source")  # fmt: skip
        rows = [{k: row[k] for k in keys} for row in carrier_rows(runtime, utcnow().date())]
        return JSONResponse(_jsonable({"carriers": rows}))

    # --- health and metrics (open) ----------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz", tags=["health"], responses={503: {
        "description": "not ready: what is down, in `problem` and the parts' objects",
        "content": {"application/json": {"schema": {"type": "object"}}}}})  # fmt: skip
    def readyz() -> Response:
        """Ready when the database answers, at least one `gateway run` is alive, its mailbox
        reader has not been failing for longer than `[imap] ready_grace_seconds`, and not every
        route has been failing that long."""
        now = utcnow()
        try:
            with engine().connect() as conn:
                conn.execute(text("SELECT 1"))
                seen = overview(conn, runtime.settings, now)
        except (OperationalError, InterfaceError, ApiError) as exc:
            message = exc.message if isinstance(exc, ApiError) else "the database is unreachable"
            return JSONResponse({"ok": False, "database": message, "workers": None}, 503)
        problems = seen.problems(now)
        if not seen.workers:
            problems.insert(0, "no `gateway run` process has been heard from in the last minute")
        sending = seen.sending
        body: dict[str, Any] = {
            "ok": not problems, "database": "ok", "workers": seen.workers,
            "mailbox_lag_seconds": seen.mailbox_lag_seconds,
            "mailbox": seen.mailbox.as_json() if seen.mailbox else None,
            "sending": sending.as_json() if sending else None,
            "routes": [{"name": name, **state.as_json()} for name, state in seen.routes.items()],
        }  # fmt: skip
        if problems:
            body["problem"] = "; ".join(problems)
        return JSONResponse(body, 503 if problems else 200)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, responses={200: {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})  # fmt: skip
    def metrics() -> Response:
        with engine().connect() as conn:
            found = views.counts(conn, utcnow())
            alive = heartbeats.workers(conn, utcnow())
            seen = overview(conn, runtime.settings, utcnow())
        breakers = load_breakers(engine())
        lines = [
            "# HELP gateway_messages Outbound texts by state.",
            "# TYPE gateway_messages gauge",
        ]
        for state in State:
            count = found["messages"].get(state.value, 0)
            lines.append(f'gateway_messages{{state="{state.value}"}} {count}')
        lines += ["# HELP gateway_inbound_messages Inbound mail by kind.",
                  "# TYPE gateway_inbound_messages gauge"]  # fmt: skip
        for kind, count in sorted(found["inbound"].items()):
            lines.append(f'gateway_inbound_messages{{kind="{kind}"}} {count}')
        lines += ["# HELP gateway_queue_depth Texts due now and not yet sent.",
                  "# TYPE gateway_queue_depth gauge", f"gateway_queue_depth {found['due']}",
                  "# HELP gateway_route_open 1 when the route's circuit breaker is open.",
                  "# TYPE gateway_route_open gauge"]  # fmt: skip
        for route, breaker in sorted(breakers.items()):
            value = 1 if breaker.state is BreakerState.OPEN else 0
            lines.append(f'gateway_route_open{{route="{route}"}} {value}')
        lines += [
            "# HELP gateway_workers_alive gateway run processes heard from lately.",
            "# TYPE gateway_workers_alive gauge",
            f"gateway_workers_alive {alive.alive}",
        ]
        if seen.mailbox is not None:
            lines += [
                "# HELP gateway_mailbox_up 1 while the mailbox reader works, 0 while it fails.",
                "# TYPE gateway_mailbox_up gauge",
                f"gateway_mailbox_up {int(seen.mailbox.ok)}",
            ]
        if seen.sending is not None:
            lines += [
                "# HELP gateway_sending_up 1 while some route can send, 0 while every one fails.",
                "# TYPE gateway_sending_up gauge",
                f"gateway_sending_up {int(seen.sending.ok)}",
            ]
        if alive.mailbox_lag_seconds is not None:
            lines += [
                "# HELP gateway_imap_lag_seconds How far behind the mailbox the gateway may be "
                "(0 while in IMAP IDLE).",
                "# TYPE gateway_imap_lag_seconds gauge",
                f"gateway_imap_lag_seconds {alive.mailbox_lag_seconds:.1f}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app


def _jsonable(value: Any) -> Any:
    return json.loads(_dumps(value))


def _dumps(value: Any) -> str:
    def default(item: object) -> str:
        if isinstance(item, dt.datetime | dt.date):
            return item.isoformat()
        return str(item)

    return json.dumps(value, default=default)
