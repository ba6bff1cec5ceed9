"""The dashboard's guards: who is signed in, CSRF tokens on every form, roles, and the headers
that keep a browser from running anything the gateway did not serve itself."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from gateway.store import access
from gateway.store.db import utcnow, write_if_free

SESSION_COOKIE = "gw_session"
LOGIN_COOKIE = "gw_login"  # guards the sign-in form itself (no session exists yet)

# Only what the gateway serves may run or load: no inline script or style, no other origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# FastAPI's own API pages load their viewer from a CDN; they show no data of ours.
_OPEN_DOCS = ("/docs", "/redoc")


class NotSignedIn(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def client_address(request: Request) -> str:
    return (request.client.host if request.client else "unknown")[:64]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
        path="/",
    )


def check_csrf(request: Request, user: access.SignedIn, form_token: str | None) -> None:
    """Every state-changing request carries the session's token, in the form or (htmx) a
    header; a page of another site cannot read it, so it cannot forge the request. And it comes
    from a page of this dashboard: the browser's Origin (or, without one, its Referer) names
    this site, or the configured base_url's."""
    check_origin(request)
    given = form_token or request.headers.get("x-csrf-token")
    if not same(given, user.csrf):
        raise Forbidden("the form is out of date or was not sent by this dashboard; reload it")


def check_origin(request: Request) -> None:
    """Forbidden when the request says it comes from a page of another site. A browser sends
    Origin with every POST it can; Referer stands in where it does not. Neither (a privacy
    setting, a script): the CSRF token alone decides."""
    said = request.headers.get("origin") or request.headers.get("referer")
    if not said:
        return
    came = urlsplit(said)
    origin = f"{came.scheme}://{came.netloc}".lower()
    ours = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    base = getattr(request.app.state, "base_url", None)
    if base:
        own = urlsplit(base)
        ours.add(f"{own.scheme}://{own.netloc}".lower())
    if origin not in ours:
        raise Forbidden("this form was sent from another site; use the dashboard's own page")


def require_admin(user: access.SignedIn) -> None:
    if not user.is_admin:
        raise Forbidden("only an admin can do this")


def current_user(request: Request, engine_of: Callable[[], object]) -> access.SignedIn:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise NotSignedIn()
    engine: Any = engine_of()
    now = utcnow()
    with engine.connect() as conn:  # a read: it never waits for a writer
        found = access.session_user(conn, token, now)
    if found is None:
        raise NotSignedIn()
    if found.stale_seen is not None:
        seen = found.stale_seen
        write_if_free(engine, lambda conn: access.note_session_seen(conn, seen, now))
    return found


async def security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    headers = response.headers
    if not request.url.path.startswith(_OPEN_DOCS):
        headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if is_https(request):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
