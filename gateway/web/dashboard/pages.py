"""What every section of the dashboard shares: the page renderer (with the alerts every page
carries), the signed-in user and the CSRF-checked form, and the answers for a page not found, a
user not signed in and a request not allowed."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.services.carrier_report import at_risk
from gateway.services.health import overview
from gateway.services.runtime import Runtime
from gateway.store import access, views
from gateway.store.db import utcnow
from gateway.store.search import MARK_END, MARK_START
from gateway.web import security
from gateway.web.security import Forbidden

HERE = Path(__file__).resolve().parent.parent  # gateway/web: its templates and static files
MAX_FORM = 64 * 1024
ALERT_SECONDS = 60.0  # how long the count of unreachable contacts is reused


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
    return str(value)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["when"] = _when
    templates.env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    templates.env.globals["person"] = person
    templates.env.filters["marked"] = marked
    return templates


def person(name: str | None, phone: str | None) -> str:
    """Who a number is, as the dashboard names them: "Ana · +12025550143", or the number."""
    if name and phone:
        return f"{name} · {phone}"
    return name or phone or ""


def marked(snippet: str) -> Markup:
    """A search hit's words, escaped, with what matched highlighted."""
    escaped = str(escape(snippet))
    opened = escaped.count(MARK_START)
    shown = escaped.replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")
    return Markup(shown + "</mark>" * max(0, opened - escaped.count(MARK_END)))


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form as {name: last value}; a body larger than MAX_FORM is refused."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Forbidden("the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def local(target: str) -> str:
    """Only a path on this site: a crafted `next` must not send a user elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def error_fragment(message: str, status: int) -> HTMLResponse:
    """A one-line error for htmx to put where the fragment would have gone."""
    return HTMLResponse(f"<p class=error>{escape(message)}</p>", status)


def back(form: dict[str, str], note: str) -> Response:
    """To the page the form was on (its `back` field), with a note of what happened."""
    target = local(form.get("back") or "/failures").split("?", 1)[0]
    return RedirectResponse(f"{target}?done={quote(note)}", 303)


class Pages:
    def __init__(self, runtime: Runtime, engine: Callable[[], Engine]) -> None:
        self.runtime, self.engine = runtime, engine
        self.templates = make_templates()
        self._alert_at = -ALERT_SECONDS
        self._alert: str | None = None

    def gateway_alert(self) -> str | None:
        """Contacts whose texts will not go (their carrier closed or closes within 60 days, and
        no provider takes them), said on every page; counted once a minute."""
        if time.monotonic() - self._alert_at >= ALERT_SECONDS:
            today = utcnow().date()
            risks = [r for r in at_risk(self.runtime, self.engine(), today) if r.provider is None]
            count = sum(r.contacts for r in risks)
            names = ", ".join(r.carrier.name for r in risks)
            self._alert = (
                f"{count} contact{'s' if count != 1 else ''} on carriers whose email-to-SMS "
                f"gateway is closed or closes within 60 days ({names}), and no email-to-SMS "
                "provider is configured to reach them ([gateways] provider)."
                if risks
                else None
            )
            self._alert_at = time.monotonic()
        return self._alert

    def health_alerts(self) -> list[str]:
        """What is down (the mailbox reader, every route), said on every page while it lasts."""
        now = utcnow()
        try:
            with self.engine().connect() as conn:
                return overview(conn, self.runtime.settings, now).problems(now)
        except (OperationalError, InterfaceError):
            return ["the database cannot be reached"]

    def page(
        self, request: Request, name: str, user: access.SignedIn | None, **context: Any
    ) -> Response:
        live = getattr(request.state, "live_after", None)
        response: Response = self.templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "csrf": user.csrf if user else "",
                "live_after": ".".join(str(part) for part in live) if live else "",
                "gateway_alert": self.gateway_alert() if user else None,
                "health_alerts": self.health_alerts() if user else [],
                **context,
            },
        )
        return response

    def user_of(self, request: Request) -> access.SignedIn:
        user = security.current_user(request, self.engine)
        # Where the event logs stand before the page reads anything: the page's event stream
        # starts here, so a change between rendering and connecting is not missed.
        with self.engine().connect() as conn:
            request.state.live_after = views.positions(conn)
        return user

    async def posted(self, request: Request) -> tuple[access.SignedIn, dict[str, str]]:
        """The signed-in user and the form, after the CSRF check every POST passes."""
        user = self.user_of(request)
        form = await read_form(request)
        security.check_csrf(request, user, form.get("csrf"))
        return user, form

    def not_found(self, request: Request, user: access.SignedIn, message: str) -> Response:
        response = self.page(request, "message.html", user, title="Not found", message=message)
        response.status_code = 404
        return response


async def handle_not_signed_in(request: Request, _: Exception) -> Response:
    if request.headers.get("hx-request") or request.url.path == "/events":
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", 303)


def forbidden_handler(templates: Jinja2Templates) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, Forbidden) else "forbidden"
        if request.headers.get("hx-request"):
            return error_fragment(message, 403)
        return templates.TemplateResponse(
            request,
            "message.html",
            {"user": None, "csrf": "", "title": "Not allowed", "message": message},
            status_code=403,
        )

    return handle
