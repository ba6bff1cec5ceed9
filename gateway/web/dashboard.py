"""The dispatchers' dashboard: server-rendered pages (Jinja2, autoescaped), htmx for the parts
that change, server-sent events for what happens elsewhere. Thin: the work is the services'.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.config import ConfigError
from gateway.domain.delivery import State
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.quiet import is_allowed, recipient_zones, zone
from gateway.domain.routing import Route
from gateway.domain.sms import LongText, fit, measure, normalise
from gateway.domain.templates import TemplateError
from gateway.services import live_settings
from gateway.services.carrier_report import at_risk, carrier_rows, health_rows
from gateway.services.doctor import check_imap, check_smtp
from gateway.services.doctor_channels import check_smsgate, check_twilio
from gateway.services.health import overview
from gateway.services.inbound import Ingest, manual_thread
from gateway.services.oauth2 import (
    GoogleSignIn,
    StoredSignIn,
    TokenError,
    device_sign_in,
    load_sign_in,
    save_sign_in,
)
from gateway.services.orders import OrderError, Orders
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import access, overrides, views
from gateway.store.db import utcnow, write_if_free
from gateway.store.outbox import cancel_waiting, upsert_contact
from gateway.web import security
from gateway.web.ids import RowId
from gateway.web.live import Wakeup
from gateway.web.offloop import OffLoopRoute
from gateway.web.security import Forbidden, NotSignedIn

HERE = Path(__file__).parent
MAX_FORM = 64 * 1024
LIVE_POLL_SECONDS = 0.5  # how often the event stream looks for news
LIVE_POLL_LISTENING_SECONDS = 3.0  # and on PostgreSQL, where NOTIFY wakes it (a safety net)
LIVE_PING_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream
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
    return templates


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form as {name: last value}; a body larger than MAX_FORM is refused."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Forbidden("the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def dashboard(runtime: Runtime, engine: Callable[[], Engine]) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)
    live = APIRouter(include_in_schema=False)  # the event stream stays on the loop
    templates = make_templates()
    orders_service = Orders(runtime)

    alert: dict[str, Any] = {"at": -ALERT_SECONDS, "text": None}

    def gateway_alert() -> str | None:
        """Contacts whose texts will not go (their carrier closed or closes within 60 days, and
        no provider takes them), said on every page; counted once a minute."""
        if time.monotonic() - alert["at"] >= ALERT_SECONDS:
            risks = [r for r in at_risk(runtime, engine(), utcnow().date()) if r.provider is None]
            count = sum(r.contacts for r in risks)
            names = ", ".join(r.carrier.name for r in risks)
            alert["text"] = (
                f"{count} contact{'s' if count != 1 else ''} on carriers whose email-to-SMS "
                f"gateway is closed or closes within 60 days ({names}), and no email-to-SMS "
                "provider is configured to reach them ([gateways] provider)."
                if risks
                else None
            )
            alert["at"] = time.monotonic()
        return alert["text"]  # type: ignore[no-any-return]

    def health_alerts() -> list[str]:
        """What is down (the mailbox reader, every route), said on every page while it lasts."""
        now = utcnow()
        try:
            with engine().connect() as conn:
                return overview(conn, runtime.settings, now).problems(now)
        except (OperationalError, InterfaceError):
            return ["the database cannot be reached"]

    def page(request: Request, name: str, user: access.SignedIn | None, **context: Any) -> Response:
        live = getattr(request.state, "live_after", None)
        response: Response = templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "csrf": user.csrf if user else "",
                "live_after": f"{live[0]}.{live[1]}" if live else "",
                "gateway_alert": gateway_alert() if user else None,
                "health_alerts": health_alerts() if user else [],
                **context,
            },
        )
        return response

    def user_of(request: Request) -> access.SignedIn:
        user = security.current_user(request, engine)
        # Where the event logs stand before the page reads anything: the page's event stream
        # starts here, so a change between rendering and connecting is not missed.
        with engine().connect() as conn:
            request.state.live_after = views.positions(conn)
        return user

    async def posted(request: Request) -> tuple[access.SignedIn, dict[str, str]]:
        """The signed-in user and the form, after the CSRF check every POST passes."""
        user = user_of(request)
        form = await read_form(request)
        security.check_csrf(request, user, form.get("csrf"))
        return user, form

    # --- signing in -------------------------------------------------------------------------

    @router.get("/login")
    async def login_page(request: Request, next: str = "/") -> Response:
        token = security.new_token()
        response = page(request, "login.html", None, login_token=token, next=_local(next))
        security.set_cookie(response, request, security.LOGIN_COOKIE, token, 3600)
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        security.check_origin(request)  # a sign-in planted from another site is refused too
        form = await read_form(request)
        target = _local(form.get("next", "/"))
        if not security.same(form.get("login_token"), request.cookies.get(security.LOGIN_COOKIE)):
            error = "the sign-in form expired; try again"
            return _login_again(request, page, error, target, 400)
        name, password = form.get("name", "").strip(), form.get("password", "")
        try:
            found = access.sign_in(
                engine(), name, password, security.client_address(request), utcnow()
            )
        except access.Throttled as exc:
            return _login_again(request, page, str(exc), target, 429)
        if found is None:
            return _login_again(request, page, "wrong name or password", target, 401)
        token, _ = found
        response = RedirectResponse(target, 303)
        security.set_cookie(
            response,
            request,
            security.SESSION_COOKIE,
            token,
            int(access.SESSION_MAX.total_seconds()),
        )
        response.delete_cookie(security.LOGIN_COOKIE, path="/")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await posted(request)
        access.sign_out(engine(), request.cookies.get(security.SESSION_COOKIE, ""))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(security.SESSION_COOKIE, path="/")
        return response

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @router.get("/")
    async def home(request: Request) -> Response:
        user_of(request)
        return RedirectResponse("/conversations", 303)

    # --- conversations ----------------------------------------------------------------------

    def conversation_context(
        show: str, order: str | None, before: str | None = None
    ) -> dict[str, Any]:
        show = show if show in views.FILTERS else "all"
        cursor = _cursor(before)
        with engine().connect() as conn:
            rows = views.conversation_page(conn, show, order or None, 50, cursor)
        more = None
        if len(rows) == 50:
            last = rows[-1]
            more = f"{last['last_message_at'].isoformat()}_{last['id']}"
        return {
            "rows": rows,
            "show": show,
            "order": order or "",
            "filters": views.FILTERS,
            "more": more,
        }

    def thread_context(conversation_id: int, mark: bool = True) -> dict[str, Any]:
        with engine().connect() as conn:
            found = views.conversation(conn, conversation_id)
        if found is not None and mark:  # bookkeeping: never waits behind another writer
            write_if_free(engine(), lambda conn: views.mark_read(conn, conversation_id))
        if found is None:
            raise LookupError(f"there is no conversation {conversation_id}")
        # free_text is the dispatcher's own typing: not a template to pick here.
        names = [name for name in runtime.templates.names() if name != "free_text"]
        return {"thread": found, "template_names": names}

    @router.get("/conversations")
    async def conversations_page(
        request: Request, show: str = "all", order: str | None = None, before: str | None = None
    ) -> Response:
        user = user_of(request)
        return page(
            request,
            "conversations.html",
            user,
            nav="conversations",
            **conversation_context(show, order, before),
        )

    @router.get("/conversations/list")
    async def conversation_list(
        request: Request, show: str = "all", order: str | None = None, before: str | None = None
    ) -> Response:
        user = user_of(request)
        return page(
            request, "_conversation_list.html", user, **conversation_context(show, order, before)
        )

    @router.get("/conversations/{conversation_id}")
    async def conversation_page(
        request: Request, conversation_id: RowId, show: str = "all", order: str | None = None
    ) -> Response:
        user = user_of(request)
        try:
            thread = thread_context(conversation_id)
        except LookupError as exc:
            return _not_found(request, page, user, str(exc))
        return page(
            request,
            "conversations.html",
            user,
            nav="conversations",
            **conversation_context(show, order),
            **thread,
        )

    @router.get("/conversations/{conversation_id}/thread")
    async def thread_fragment(request: Request, conversation_id: RowId) -> Response:
        user = user_of(request)
        try:
            return page(request, "_thread.html", user, **thread_context(conversation_id))
        except LookupError as exc:
            return HTMLResponse(f"<p class=error>{_escape(str(exc))}</p>", 404)

    @router.post("/conversations/{conversation_id}/send")
    async def send_in_thread(request: Request, conversation_id: RowId) -> Response:
        user, form = await posted(request)
        with engine().connect() as conn:
            head = views.conversation(conn, conversation_id)
        if head is None:
            return HTMLResponse("<p class=error>there is no such conversation</p>", 404)
        error = _send(form, head["phone"], head["carrier"], head["order_ref"])
        context = thread_context(conversation_id)
        if error:
            context["error"], context["draft"] = error, form.get("text", "")
        return page(request, "_thread.html", user, **context)

    def _send(form: dict[str, str], phone: str, carrier: str | None, order: str | None) -> str:
        """Queue the dispatcher's text; '' when queued, else what is wrong."""
        try:
            result = enqueue(
                runtime,
                SendRequest(
                    to=phone,
                    carrier=carrier,
                    text=form.get("text", ""),
                    order_ref=order,
                    respect_quiet_hours=form.get("respect_quiet_hours") == "on",
                ),
                utcnow(),
                conn=None,
            )
        except EnqueueError as exc:
            return str(exc)
        if result.state is State.SUPPRESSED:
            return f"not sent: {result.reason}"
        return ""

    @router.post("/compose/count")
    async def count(request: Request) -> Response:
        user, form = await posted(request)
        text = normalise(form.get("text", ""))
        shape = measure(text)
        notes = []
        conversation = form.get("conversation")
        phone, order_zone, carrier_id = form.get("to", ""), None, form.get("carrier") or None
        if conversation and conversation.isdigit():
            with engine().connect() as conn:
                head = views.conversation(conn, int(conversation))
            if head is not None:
                phone, carrier_id = head["phone"], head["carrier"]
                order_zone = head.get("order_timezone")
        carrier = runtime.carriers.find(carrier_id) if carrier_id else None
        if carrier is not None and text:
            parts = len(fit(text, carrier.max_length, LongText(runtime.settings.policy.long_text)))
            if parts > 1:
                notes.append(
                    f"{carrier.name} takes {carrier.max_length} characters: sent as {parts} texts"
                )
        policy = runtime.settings.policy
        if phone and policy.quiet_hours:
            try:
                e164 = parse_phone(phone, runtime.settings.carriers.default_region).e164
                zones = recipient_zones(order_zone, e164, zone(policy.timezone))
                now = utcnow()
                if not is_allowed(now, zones, policy.hours()):
                    local = now.astimezone(zones[0]).strftime("%H:%M")
                    notes.append(
                        f"It is {local} for this contact, outside {policy.allowed_from}–"
                        f"{policy.allowed_until}: the text goes now unless you tick "
                        "“hold to allowed hours”."
                    )
            except (PhoneError, ValueError):
                pass
        return page(request, "_counter.html", user, text=text, shape=shape, notes=notes)

    @router.get("/conversations/{conversation_id}/template")
    async def fill_template(
        request: Request, conversation_id: RowId, template: str = ""
    ) -> Response:
        user = user_of(request)
        with engine().connect() as conn:
            head = views.conversation(conn, conversation_id)
        draft, error = "", None
        if head is not None and template:
            values: dict[str, Any] = {}
            if head["order_ref"]:
                try:
                    values, _ = orders_service.preview_context(head["order_ref"], utcnow())
                except OrderError as exc:
                    error = str(exc)
            values.setdefault("name", head["name"] or "")
            try:
                draft = runtime.templates.render(template, values)
            except TemplateError as exc:
                error = _template_refusal(template, exc, head["order_ref"])
        return page(request, "_draft.html", user, draft=draft, error=error)

    @router.get("/compose")
    async def compose_page(request: Request) -> Response:
        user = user_of(request)
        return page(
            request,
            "compose.html",
            user,
            nav="conversations",
            form={},
            carriers=list(runtime.carriers),
        )

    @router.post("/compose")
    async def compose(request: Request) -> Response:
        user, form = await posted(request)
        error = _send(
            form, form.get("to", ""), form.get("carrier") or None, form.get("order") or None
        )
        if error:
            return page(
                request,
                "compose.html",
                user,
                nav="conversations",
                form=form,
                error=error,
                carriers=list(runtime.carriers),
            )
        phone = parse_phone(form["to"], runtime.settings.carriers.default_region).e164
        with engine().connect() as conn:
            found = views.latest_conversation(conn, phone, form.get("order") or None)
        return RedirectResponse(f"/conversations/{found}" if found else "/conversations", 303)

    # --- failures ---------------------------------------------------------------------------

    @router.get("/failures")
    async def failures_page(
        request: Request, done: str | None = None, show: str = "open"
    ) -> Response:
        user = user_of(request)
        resolved = show == "resolved"
        with engine().connect() as conn:
            found = views.failures(conn, resolved=resolved)
        return page(
            request,
            "failures.html",
            user,
            nav="failures",
            done=done,
            resolved=resolved,
            carriers=list(runtime.carriers),
            **found,
        )

    @router.post("/messages/{message_id}/dismiss")
    async def dismiss(request: Request, message_id: RowId) -> Response:
        user, form = await posted(request)
        with engine().begin() as conn:
            if not views.dismiss(conn, message_id, user.name, utcnow()):
                return back(form, f"text {message_id} is not a failure")
            overrides.record(conn, user.name, "dismiss", {"message": message_id}, utcnow())
        return back(form, f"text {message_id} dismissed (kept under Resolved)")

    def back(form: dict[str, str], note: str) -> Response:
        """To the page the form was on (its `back` field), with a note of what happened."""
        target = _local(form.get("back") or "/failures").split("?", 1)[0]
        return RedirectResponse(f"{target}?done={quote(note)}", 303)

    @router.post("/messages/{message_id}/resend")
    async def resend(request: Request, message_id: RowId) -> Response:
        user, form = await posted(request)
        via = {"relay": Route.RELAY, "own": Route.OWN}.get(form.get("via", ""))
        with engine().connect() as conn:
            found = views.message(conn, message_id)
        if found is None:
            return back(form, f"there is no text {message_id}")
        if found["state"] in ("sent", "delivered", "replied"):
            return back(form, f"not re-sent: text {message_id} was {found['state']}; sending "
                              "it again would text the person twice")  # fmt: skip
        if found["state"] in ("queued", "sending", "deferred"):
            return back(form, f"not re-sent: text {message_id} is still on its way "
                              f"({found['state']}); cancel it first to send it anew")  # fmt: skip
        try:
            result = enqueue(
                runtime,
                SendRequest(
                    to=found["to"], text=found["text"], order_ref=found["order_ref"], via=via
                ),
                utcnow(),
            )
        except EnqueueError as exc:
            return back(form, f"not re-sent: {exc}")
        with engine().begin() as conn:
            views.mark_resent(conn, message_id, result.ids[0])
            overrides.record(
                conn,
                user.name,
                "resend",
                {"message": message_id, "new": result.ids, "via": form.get("via")},
                utcnow(),
            )
        if result.state is State.SUPPRESSED:
            return back(form, f"not re-sent: {result.reason}")
        how = f" by the {via.value} route" if via else ""
        return back(form, f"text {message_id} queued again{how} as {result.ids[0]}")

    @router.post("/contacts/{contact_id}/carrier")
    async def set_carrier(request: Request, contact_id: RowId) -> Response:
        user, form = await posted(request)
        carrier = runtime.carriers.find(form.get("carrier", ""))
        if carrier is None:
            return back(form, "choose a carrier from the list")
        with engine().begin() as conn:
            found = views.contact_detail(conn, contact_id)
            if found is None:
                return back(form, f"there is no contact {contact_id}")
            upsert_contact(conn, found["phone"], carrier.id, "dispatcher", utcnow())
            views.clear_doubt(conn, contact_id)
            overrides.record(
                conn, user.name, "carrier", {"contact": contact_id, "carrier": carrier.id}, utcnow()
            )
        return back(form, f"{found['phone']} is now on {carrier.name}; re-send its texts")

    @router.post("/inbound/{inbound_id}/thread")
    async def rethread(request: Request, inbound_id: RowId) -> Response:
        user, form = await posted(request)
        raw = form.get("message", "").strip()
        if not raw.isdigit():
            return back(form, "give the number of the text it answers")
        try:
            manual_thread(engine(), inbound_id, int(raw), utcnow())
        except LookupError as exc:
            return back(form, str(exc))
        with engine().begin() as conn:
            overrides.record(
                conn, user.name, "thread", {"inbound": inbound_id, "message": int(raw)}, utcnow()
            )
        return back(form, f"reply {inbound_id} is now in the thread of text {raw}")

    @router.post("/quarantine/{quarantined}/release")
    async def release(request: Request, quarantined: int) -> Response:
        user, form = await posted(request)
        try:
            await asyncio.to_thread(Ingest(runtime, engine()).release, quarantined, utcnow())
        except (LookupError, ValueError) as exc:
            return back(form, f"not released: {exc}")
        with engine().begin() as conn:
            overrides.record(conn, user.name, "release", {"quarantine": quarantined}, utcnow())
        return back(form, f"message {quarantined} was read again and stored")

    @router.post("/messages/{message_id}/cancel")
    async def cancel(request: Request, message_id: RowId) -> Response:
        user, form = await posted(request)
        done = cancel_waiting(engine(), [message_id], f"cancelled by {user.name}", utcnow())
        note = f"text {message_id} cancelled" if done else f"text {message_id} was not waiting"
        return back(form, note)

    # --- orders and contacts ----------------------------------------------------------------

    @router.get("/orders")
    async def orders_page(request: Request, ref: str | None = None) -> Response:
        user = user_of(request)
        with engine().connect() as conn:
            rows = views.order_list(conn, 200, ref or None)
        return page(request, "orders.html", user, nav="orders", rows=rows, ref=ref or "")

    @router.get("/orders/{ref}")
    async def order_page(request: Request, ref: str, done: str | None = None) -> Response:
        user = user_of(request)
        with engine().connect() as conn:
            found = views.order_detail(conn, ref)
        if found is None:
            return _not_found(request, page, user, f"there is no order {ref}")
        return page(request, "order.html", user, nav="orders", order=found, done=done)

    @router.get("/contacts")
    async def contacts_page(request: Request, q: str | None = None) -> Response:
        user = user_of(request)
        with engine().connect() as conn:
            rows = views.contact_list(conn, 200, q or None)
        return page(request, "contacts.html", user, nav="contacts", rows=rows, q=q or "")

    @router.get("/contacts/{contact_id}")
    async def contact_page(
        request: Request, contact_id: RowId, done: str | None = None
    ) -> Response:
        user = user_of(request)
        with engine().connect() as conn:
            found = views.contact_detail(conn, contact_id)
        if found is None:
            return _not_found(request, page, user, f"there is no contact {contact_id}")
        return page(
            request,
            "contact.html",
            user,
            nav="contacts",
            contact=found,
            done=done,
            carriers=list(runtime.carriers),
        )

    # --- carriers ---------------------------------------------------------------------------

    @router.get("/carriers")
    async def carriers_page(request: Request) -> Response:
        user = user_of(request)
        now = utcnow()
        health = {row["carrier"]: row for row in health_rows(runtime, engine(), now)}
        return page(
            request,
            "carriers.html",
            user,
            nav="carriers",
            rows=carrier_rows(runtime, now.date()),
            health=health,
        )

    # --- settings (admins) ------------------------------------------------------------------

    def settings_context(**more: Any) -> dict[str, Any]:
        settings = runtime.settings
        groups = [
            (group, title, [(f, live_settings.current_value(settings, f)) for f in fields])
            for group, (title, fields) in live_settings.GROUPS.items()
        ]
        with engine().connect() as conn:
            log = overrides.audit_log(conn, 50)
            users = access.list_users(conn)
        return {
            "groups": groups,
            "audit": log,
            "users": users,
            "roles": access.ROLES,
            "nav": "settings",
            "oauth2": oauth2_state(),
            **more,
        }

    # --- the mailbox's OAuth2 sign-in, for admins ---------------------------------------------
    # One sign-in at a time per process: it is short (minutes) and done by one admin.

    signing: dict[str, Any] = {}

    def oauth2_state() -> dict[str, Any]:
        settings = runtime.settings.oauth2
        state: dict[str, Any] = {"provider": settings.provider, "ready": settings.configured}
        if settings.configured:
            try:
                stored = load_sign_in(settings.token_file, f"gateway auth {settings.provider}")
                state["signed_in"] = stored.account or "the mailbox"
            except TokenError as exc:
                state["problem"] = str(exc)
        return {**state, **{k: v for k, v in signing.items() if k != "flow"}}

    @router.post("/settings/oauth2/start")
    async def oauth2_start(request: Request) -> Response:
        user, _ = await posted(request)
        security.require_admin(user)
        settings = runtime.settings.oauth2
        if not settings.configured:
            return HTMLResponse("<p class=error>set [oauth2] provider and client_id first</p>", 400)
        signing.clear()
        try:
            if settings.provider == "google":
                flow: Any = await asyncio.to_thread(GoogleSignIn, settings, GOOGLE_LOOPBACK_PORT)
            else:
                flow = await asyncio.to_thread(device_sign_in, settings)
        except (TokenError, ConfigError) as exc:
            signing.update(error=str(exc))
            return page(request, "_oauth2.html", user, oauth2=oauth2_state())
        signing.update(flow=flow, url=flow.url, code=getattr(flow, "code", None),
                       waiting=True, by=user.name)  # fmt: skip
        if settings.provider != "google":

            def finish() -> None:
                try:
                    store(flow.finish())
                except (TokenError, ConfigError, OSError) as exc:
                    signing.update(waiting=False, error=str(exc))

            threading.Thread(target=finish, daemon=True).start()
        return page(request, "_oauth2.html", user, oauth2=oauth2_state())

    def store(signed: StoredSignIn) -> None:
        settings = runtime.settings.oauth2
        save_sign_in(settings.token_file, signed)
        with engine().begin() as conn:
            overrides.record(conn, signing.get("by", "?"), "oauth2 sign-in",
                                   {"provider": signed.provider, "account": signed.account},
                                   utcnow())  # fmt: skip
        signing.update(waiting=False, done=signed.account or "the mailbox", error=None)

    @router.get("/settings/oauth2")
    async def oauth2_status(request: Request) -> Response:
        user = user_of(request)
        security.require_admin(user)
        return page(request, "_oauth2.html", user, oauth2=oauth2_state())

    @router.post("/settings/oauth2/finish")
    async def oauth2_finish(request: Request) -> Response:
        user, form = await posted(request)
        security.require_admin(user)
        flow = signing.get("flow")
        if not isinstance(flow, GoogleSignIn):
            return HTMLResponse("<p class=error>no Google sign-in is waiting</p>", 400)
        try:
            store(await asyncio.to_thread(flow.finish, form.get("answer", "")))
        except (TokenError, ConfigError, OSError) as exc:
            signing.update(error=str(exc))
        return page(request, "_oauth2.html", user, oauth2=oauth2_state())

    @router.get("/settings")
    async def settings_page(request: Request, done: str | None = None) -> Response:
        user = user_of(request)
        security.require_admin(user)
        runtime.refresh()
        return page(request, "settings.html", user, **settings_context(done=done))

    @router.post("/settings/{group}")
    async def save_settings(request: Request, group: str) -> Response:
        user, form = await posted(request)
        security.require_admin(user)
        try:
            values = live_settings.parse_form(group, form)
            changed = live_settings.save_changes(runtime, engine(), values, user.name, utcnow())
        except live_settings.SettingsError as exc:
            return page(
                request,
                "settings.html",
                user,
                **settings_context(error=str(exc), error_group=group),
            )
        note = f"saved: {', '.join(changed)}" if changed else "nothing changed"
        return RedirectResponse(f"/settings?done={quote(note)}#{group}", 303)

    @router.post("/settings/test/{target}")
    async def test_connection(request: Request, target: str) -> Response:
        user, _ = await posted(request)
        security.require_admin(user)
        settings = runtime.settings
        if target == "imap":
            steps = await check_imap(settings.imap, runtime.oauth2_token(settings.imap))
        elif target in ("smtp", "relay"):
            server = getattr(settings, target)
            steps = await check_smtp(server, target, None, runtime.oauth2_token(server))
        elif target in ("smsgate", "twilio") and getattr(settings, target).configured:
            check = check_smsgate if target == "smsgate" else check_twilio
            try:
                steps = await check(runtime, None)
            except ConfigError as exc:
                return HTMLResponse(f"<p class=error>{_escape(str(exc))}</p>", 400)
        else:
            return HTMLResponse("<p class=error>nothing to test by that name</p>", 404)
        return page(request, "_steps.html", user, steps=steps, target=target)

    @router.post("/users")
    async def add_user(request: Request) -> Response:
        user, form = await posted(request)
        security.require_admin(user)
        name, role = form.get("name", "").strip(), form.get("role", "dispatcher")
        try:
            with engine().begin() as conn:
                access.insert_user(conn, name, role, form.get("password", ""), utcnow())
                overrides.record(
                    conn, user.name, "user added", {"name": name, "role": role}, utcnow()
                )
        except access.AccessError as exc:
            return RedirectResponse(f"/settings?done={quote(str(exc))}#users", 303)
        return RedirectResponse(f"/settings?done={quote(f'user {name} added')}#users", 303)

    @router.post("/users/{user_id}")
    async def change_user(request: Request, user_id: RowId) -> Response:
        user, form = await posted(request)
        security.require_admin(user)
        if user_id == user.user_id:
            return RedirectResponse("/settings?done=you+cannot+change+your+own+account#users", 303)
        role = form.get("role") or None
        disabled = {"on": True, "off": False}.get(form.get("disabled", ""))
        try:
            with engine().begin() as conn:
                access.set_user(conn, user_id, role=role, disabled=disabled)
                overrides.record(
                    conn,
                    user.name,
                    "user changed",
                    {"user": user_id, "role": role, "disabled": disabled},
                    utcnow(),
                )
        except access.AccessError as exc:
            return RedirectResponse(f"/settings?done={quote(str(exc))}#users", 303)
        return RedirectResponse("/settings?done=user+changed#users", 303)

    # --- live updates -----------------------------------------------------------------------

    wakeups: list[Wakeup] = []  # made on the first stream, in the server's event loop

    @live.get("/events")
    async def events(request: Request, after: str | None = None) -> Response:
        await asyncio.to_thread(user_of, request)
        if not wakeups:
            wakeups.append(Wakeup(engine()))
        wakeups[0].start()
        start = _position(request.headers.get("last-event-id") or after)
        if start is None:

            def positions() -> tuple[int, int]:
                with engine().connect() as conn:
                    return views.positions(conn)

            start = await asyncio.to_thread(positions)
        return StreamingResponse(
            _stream(request, engine, start, wakeups[0]),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def close_live() -> None:
        """At shutdown: the LISTEN task this process started ends with it."""
        for wakeup in wakeups:
            await wakeup.close()

    router.include_router(live)
    router.on_shutdown.append(close_live)
    return router


async def _stream(
    request: Request, engine: Callable[[], Engine], start: tuple[int, int], wakeup: Wakeup
) -> AsyncIterator[str]:
    """Events after `start`: each batch's last event carries the position, so a browser that
    reconnects (EventSource sends Last-Event-ID) gets what it missed and nothing twice."""
    position = start
    yield f"retry: 2000\nid: {position[0]}.{position[1]}\nevent: hello\ndata: {{}}\n\n"
    quiet_since = asyncio.get_running_loop().time()
    while not await request.is_disconnected():

        def read(after: tuple[int, int] = position) -> Any:
            with engine().connect() as conn:
                return views.changes_since(conn, *after)

        found, new_position = await asyncio.to_thread(read)
        now = asyncio.get_running_loop().time()
        if found:
            for index, event in enumerate(found):
                last = index == len(found) - 1
                event_id = f"id: {new_position[0]}.{new_position[1]}\n" if last else ""
                yield f"{event_id}event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            quiet_since = now
        elif now - quiet_since > LIVE_PING_SECONDS:
            yield ": ping\n\n"
            quiet_since = now
        position = new_position
        await wakeup.wait(LIVE_POLL_LISTENING_SECONDS if wakeup.listening else LIVE_POLL_SECONDS)


def _position(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) < 19 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _cursor(text: str | None) -> tuple[dt.datetime, int] | None:
    if not text or "_" not in text:
        return None
    at, _, below = text.rpartition("_")
    try:
        return dt.datetime.fromisoformat(at), int(below)
    except ValueError:
        return None


def _local(target: str) -> str:
    """Only a path on this site: a crafted `next` must not send a user elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _template_refusal(template: str, exc: TemplateError, order_ref: str | None) -> str:
    """Why a template cannot fill the draft, in a dispatcher's words."""
    if exc.missing is None:
        return f"{exc}: type the text instead, or pick another template"
    where = f"order {order_ref}" if order_ref else "this conversation (it has no order)"
    return (
        f"“{template}” needs {exc.missing.replace('_', ' ')}, which {where} does not have: "
        "type the text instead, or pick another template"
    )


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def _login_again(
    request: Request, page: Callable[..., Response], error: str, target: str, status: int
) -> Response:
    token = security.new_token()
    response = page(request, "login.html", None, login_token=token, next=target, error=error)
    response.status_code = status
    security.set_cookie(response, request, security.LOGIN_COOKIE, token, 3600)
    return response


def _not_found(
    request: Request, page: Callable[..., Response], user: access.SignedIn, message: str
) -> Response:
    response = page(request, "message.html", user, title="Not found", message=message)
    response.status_code = 404
    return response


async def handle_not_signed_in(request: Request, _: Exception) -> Response:
    if request.headers.get("hx-request") or request.url.path == "/events":
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", 303)


# Google sends the browser back to a loopback address after the sign-in; the dashboard's admin
# is on another machine, so the page does not load there and the address is pasted back.
GOOGLE_LOOPBACK_PORT = 8026


def forbidden_handler(templates: Jinja2Templates) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, Forbidden) else "forbidden"
        if request.headers.get("hx-request"):
            return HTMLResponse(f"<p class=error>{_escape(message)}</p>", 403)
        return templates.TemplateResponse(
            request,
            "message.html",
            {"user": None, "csrf": "", "title": "Not allowed", "message": message},
            status_code=403,
        )

    return handle


__all__ = ["NotSignedIn", "dashboard", "forbidden_handler", "handle_not_signed_in"]
