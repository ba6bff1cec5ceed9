"""Settings, for admins: the live settings groups, the mailbox's OAuth2 sign-in, testing a
connection, and the dashboard's users."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.config import ConfigError
from gateway.domain.email_out import check_field
from gateway.domain.templates import TemplateBook, TemplateError
from gateway.services import live_settings
from gateway.services.doctor import check_imap, check_smtp
from gateway.services.doctor_channels import check_smsgate, check_twilio
from gateway.services.oauth2 import (
    GoogleSignIn,
    StoredSignIn,
    TokenError,
    device_sign_in,
    load_sign_in,
    save_sign_in,
)
from gateway.store import access, overrides, quick_replies
from gateway.store.db import utcnow
from gateway.web import security
from gateway.web.dashboard.pages import Pages, error_fragment
from gateway.web.ids import RowId
from gateway.web.offloop import OffLoopRoute

# Google sends the browser back to a loopback address after the sign-in; the dashboard's admin
# is on another machine, so the page does not load there and the address is pasted back.
GOOGLE_LOOPBACK_PORT = 8026


def settings_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)
    runtime, engine, page = pages.runtime, pages.engine, pages.page

    def settings_context(**more: Any) -> dict[str, Any]:
        settings = runtime.settings
        groups = [
            (group, title, [(f, live_settings.current_value(settings, f)) for f in fields])
            for group, (title, fields) in live_settings.GROUPS.items()
        ]
        with engine().connect() as conn:
            log = overrides.audit_log(conn, 50)
            users = access.list_users(conn)
            quick = quick_replies.all_replies(conn)
        return {
            "groups": groups,
            "audit": log,
            "users": users,
            "roles": access.ROLES,
            "nav": "settings",
            "oauth2": oauth2_state(),
            "quick_replies": quick,
            **more,
        }

    async def admin_form(request: Request) -> tuple[access.SignedIn, dict[str, str]]:
        user, form = await pages.posted(request)
        security.require_admin(user)
        return user, form

    # --- the mailbox's OAuth2 sign-in -------------------------------------------------------
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

    def store(signed: StoredSignIn) -> None:
        save_sign_in(runtime.settings.oauth2.token_file, signed)
        with engine().begin() as conn:
            overrides.record(conn, signing.get("by", "?"), "oauth2 sign-in",
                             {"provider": signed.provider, "account": signed.account},
                             utcnow())  # fmt: skip
        signing.update(waiting=False, done=signed.account or "the mailbox", error=None)

    @router.post("/settings/oauth2/start")
    async def oauth2_start(request: Request) -> Response:
        user, _ = await admin_form(request)
        settings = runtime.settings.oauth2
        if not settings.configured:
            return error_fragment("set [oauth2] provider and client_id first", 400)
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

    @router.get("/settings/oauth2")
    async def oauth2_status(request: Request) -> Response:
        user = pages.user_of(request)
        security.require_admin(user)
        return page(request, "_oauth2.html", user, oauth2=oauth2_state())

    @router.post("/settings/oauth2/finish")
    async def oauth2_finish(request: Request) -> Response:
        user, form = await admin_form(request)
        flow = signing.get("flow")
        if not isinstance(flow, GoogleSignIn):
            return error_fragment("no Google sign-in is waiting", 400)
        try:
            store(await asyncio.to_thread(flow.finish, form.get("answer", "")))
        except (TokenError, ConfigError, OSError) as exc:
            signing.update(error=str(exc))
        return page(request, "_oauth2.html", user, oauth2=oauth2_state())

    # --- the settings groups ----------------------------------------------------------------

    @router.get("/settings")
    async def settings_page(request: Request, done: str | None = None) -> Response:
        user = pages.user_of(request)
        security.require_admin(user)
        runtime.refresh()
        return page(request, "settings.html", user, **settings_context(done=done))

    @router.post("/settings/{group}")
    async def save_settings(request: Request, group: str) -> Response:
        user, form = await admin_form(request)
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
        user, _ = await admin_form(request)
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
                return error_fragment(str(exc), 400)
        else:
            return error_fragment("nothing to test by that name", 404)
        return page(request, "_steps.html", user, steps=steps, target=target)

    # --- quick replies ----------------------------------------------------------------------

    @router.post("/quick-replies")
    async def add_quick_reply(request: Request) -> Response:
        user, form = await admin_form(request)
        name, text = form.get("name", "").strip(), form.get("text", "").strip()
        try:
            check_field("name", name, 60)
            if not text or len(text) > 1000:
                raise ValueError("the text must be 1 to 1000 characters")
            TemplateBook({name: text}).info(name)  # its syntax, before anyone picks it
            with engine().begin() as conn:
                quick_replies.add(conn, name, text, user.name, utcnow())
                overrides.record(conn, user.name, "quick reply added", {"name": name}, utcnow())
        except (ValueError, TemplateError) as exc:
            return page(request, "settings.html", user,
                        **settings_context(quick_error=str(exc)))  # fmt: skip
        return RedirectResponse(
            f"/settings?done={quote(f'quick reply {name} added')}#quick-replies", 303
        )

    @router.post("/quick-replies/{reply_id}/delete")
    async def remove_quick_reply(request: Request, reply_id: RowId) -> Response:
        user, _ = await admin_form(request)
        with engine().begin() as conn:
            found = quick_replies.find(conn, reply_id)
            if found is not None:
                quick_replies.remove(conn, reply_id)
                overrides.record(conn, user.name, "quick reply removed", {"name": found["name"]},
                                 utcnow())  # fmt: skip
        note = f"quick reply {found['name']} removed" if found else "there is no such quick reply"
        return RedirectResponse(f"/settings?done={quote(note)}#quick-replies", 303)

    # --- users ------------------------------------------------------------------------------

    def to_users(note: str) -> Response:
        return RedirectResponse(f"/settings?done={quote(note)}#users", 303)

    @router.post("/users")
    async def add_user(request: Request) -> Response:
        user, form = await admin_form(request)
        name, role = form.get("name", "").strip(), form.get("role", "dispatcher")
        try:
            with engine().begin() as conn:
                access.insert_user(conn, name, role, form.get("password", ""), utcnow())
                overrides.record(
                    conn, user.name, "user added", {"name": name, "role": role}, utcnow()
                )
        except access.AccessError as exc:
            return to_users(str(exc))
        return to_users(f"user {name} added")

    @router.post("/users/{user_id}")
    async def change_user(request: Request, user_id: RowId) -> Response:
        user, form = await admin_form(request)
        if user_id == user.user_id:
            return to_users("you cannot change your own account")
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
            return to_users(str(exc))
        return to_users("user changed")

    return router
