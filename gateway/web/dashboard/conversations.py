"""Conversations: the list, a thread, sending in it, the character counter, templates as
drafts, and a new text to anyone."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from gateway.config import Settings
from gateway.domain.delivery import State
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.sms import LongText, fit, measure, normalise
from gateway.domain.templates import TemplateBook, TemplateError
from gateway.services.orders import OrderError, Orders
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.store import overrides, quick_replies, search, threads, views
from gateway.store.access import SignedIn
from gateway.store.db import utcnow, write_if_free
from gateway.web.dashboard.pages import Pages, error_fragment
from gateway.web.ids import RowId
from gateway.web.offloop import OffLoopRoute

PAGE_SIZE = 50  # conversations per page of the list


def conversations_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)
    runtime, engine, page = pages.runtime, pages.engine, pages.page
    orders = Orders(runtime)

    def list_context(
        user: SignedIn, show: str, order: str | None, before: str | None = None
    ) -> dict[str, Any]:
        show = show if show in views.FILTERS else views.FILTERS[0]
        with engine().connect() as conn:
            rows = views.conversation_page(
                conn, show, order or None, PAGE_SIZE, _cursor(before), user.user_id
            )
        more = None
        if len(rows) == PAGE_SIZE:
            last = rows[-1]
            more = f"{last['last_message_at'].isoformat()}_{last['id']}"
        return {
            "rows": rows,
            "show": show,
            "order": order or "",
            "filters": views.FILTERS,
            "more": more,
        }

    def thread_context(user: SignedIn, conversation_id: int) -> dict[str, Any]:
        with engine().connect() as conn:
            found = views.conversation(conn, conversation_id)
            team = views.active_users(conn)
            quick = quick_replies.all_replies(conn)
        if found is None:
            raise LookupError(f"there is no conversation {conversation_id}")
        # Read by this user only; bookkeeping that never waits behind another writer.
        write_if_free(engine(), lambda conn: threads.mark_read(conn, conversation_id, user.user_id))
        # free_text is the dispatcher's own typing: not a template to pick here.
        names = [name for name in runtime.templates.names() if name != "free_text"]
        return {"thread": found, "template_names": names, "team": team, "quick_replies": quick}

    def send(form: dict[str, str], phone: str, carrier: str | None, order: str | None) -> str:
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

    @router.get("/conversations")
    async def conversations_page(
        request: Request, show: str = "open", order: str | None = None, before: str | None = None
    ) -> Response:
        user = pages.user_of(request)
        return page(
            request,
            "conversations.html",
            user,
            nav="conversations",
            **list_context(user, show, order, before),
        )

    @router.get("/search")
    async def search_page(request: Request, q: str = "") -> Response:
        """Conversations by a name, a number as typed, an order, or words of a text or reply;
        each hit opens its thread at what matched."""
        user = pages.user_of(request)
        with engine().connect() as conn:
            hits = search.search(conn, q)
        return page(request, "search.html", user, nav="conversations", q=q, hits=hits)

    @router.get("/conversations/unread")
    async def unread(request: Request) -> Response:
        """The signed-in user's count of conversations with unread replies (the tab title)."""
        user = pages.user_of(request)
        with engine().connect() as conn:
            count = views.unread_conversations(conn, user.user_id)
        return JSONResponse({"count": count}, headers={"Cache-Control": "no-store"})

    @router.get("/conversations/list")
    async def conversation_list(
        request: Request, show: str = "open", order: str | None = None, before: str | None = None
    ) -> Response:
        user = pages.user_of(request)
        return page(
            request, "_conversation_list.html", user, **list_context(user, show, order, before)
        )

    @router.get("/conversations/{conversation_id}")
    async def conversation_page(
        request: Request, conversation_id: RowId, show: str = "open", order: str | None = None
    ) -> Response:
        user = pages.user_of(request)
        try:
            thread = thread_context(user, conversation_id)
        except LookupError as exc:
            return pages.not_found(request, user, str(exc))
        return page(
            request,
            "conversations.html",
            user,
            nav="conversations",
            **list_context(user, show, order),
            **thread,
        )

    @router.get("/conversations/{conversation_id}/thread")
    async def thread_fragment(request: Request, conversation_id: RowId) -> Response:
        user = pages.user_of(request)
        try:
            return page(request, "_thread.html", user, **thread_context(user, conversation_id))
        except LookupError as exc:
            return error_fragment(str(exc), 404)

    @router.post("/conversations/{conversation_id}/send")
    async def send_in_thread(request: Request, conversation_id: RowId) -> Response:
        user, form = await pages.posted(request)
        with engine().connect() as conn:
            head = views.conversation(conn, conversation_id)
        if head is None:
            return error_fragment("there is no such conversation", 404)
        error = send(form, head["phone"], head["carrier"], head["order_ref"])
        context = thread_context(user, conversation_id)
        if error:
            context["error"], context["draft"] = error, form.get("text", "")
        return page(request, "_thread.html", user, **context)

    @router.post("/conversations/{conversation_id}/assign")
    async def assign(request: Request, conversation_id: RowId) -> Response:
        """Leave the conversation to a dispatcher (the form's `to`: a user id, or empty for
        everyone)."""
        user, form = await pages.posted(request)
        raw = form.get("to", "").strip()
        if raw and not raw.isdigit():
            return error_fragment("choose someone from the list", 422)
        to = int(raw) if raw else None
        with engine().begin() as conn:
            if not threads.assign(conn, conversation_id, to):
                return error_fragment("there is no such conversation or user", 404)
            name = next((u["name"] for u in views.active_users(conn) if u["id"] == to), None)
            overrides.record(conn, user.name, "assign",
                             {"conversation": conversation_id, "to": name}, utcnow())  # fmt: skip
        return page(request, "_thread.html", user, **thread_context(user, conversation_id))

    @router.post("/conversations/{conversation_id}/{action}")
    async def done_or_reopen(request: Request, conversation_id: RowId, action: str) -> Response:
        """Mark the conversation done (a newer reply reopens it), or reopen it."""
        user, _ = await pages.posted(request)
        change = {"done": threads.mark_done, "reopen": threads.reopen}.get(action)
        if change is None:
            return error_fragment("nothing to do by that name", 404)
        with engine().begin() as conn:
            if not change(conn, conversation_id):
                return error_fragment("there is no such conversation", 404)
            overrides.record(conn, user.name, action, {"conversation": conversation_id},
                             utcnow())  # fmt: skip
        return page(request, "_thread.html", user, **thread_context(user, conversation_id))

    @router.post("/compose/count")
    async def count(request: Request) -> Response:
        user, form = await pages.posted(request)
        text = normalise(form.get("text", ""))
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
        if phone:
            note = _quiet_note(runtime.settings, phone, order_zone, utcnow())
            if note:
                notes.append(note)
        return page(request, "_counter.html", user, text=text, shape=measure(text), notes=notes)

    def contact_values(head: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """What a template or quick reply in this thread fills from: the contact (name,
        first_name, phone) and the thread's latest order."""
        values: dict[str, Any] = {}
        error = None
        if head["order_ref"]:
            try:
                values, _ = orders.preview_context(head["order_ref"], utcnow())
            except OrderError as exc:
                error = str(exc)
        name = head["name"] or ""
        values.update(name=name, first_name=name.split(" ")[0], phone=head["phone"])
        values.setdefault("customer_name", name)
        return values, error

    def fill(
        request: Request, user: SignedIn, conversation_id: int, book: TemplateBook, chosen: str
    ) -> Response:
        """The draft `chosen` of `book` makes in this thread; where it needs a value the thread
        does not have, a field asks for it (what was typed so far comes back as var_NAME)."""
        with engine().connect() as conn:
            head = views.conversation(conn, conversation_id)
        draft, error, ask = "", None, None
        given = {
            key[4:]: value
            for key, value in request.query_params.items()
            if key.startswith("var_") and value.strip()
        }
        if head is not None and chosen:
            values, error = contact_values(head)
            values.update(given)
            try:
                draft = book.render(chosen, values)
            except TemplateError as exc:
                if exc.missing is not None and not error:
                    ask = {"missing": exc.missing, "given": given}
                else:
                    error = error or _template_refusal(chosen, exc, head["order_ref"])
        picked = {k: v for k, v in request.query_params.items() if k in ("template", "reply")}
        return page(request, "_draft.html", user, draft=draft, error=error, ask=ask,
                    asked_for=request.url.path, picked=picked)  # fmt: skip

    @router.get("/conversations/{conversation_id}/template")
    async def fill_template(
        request: Request, conversation_id: RowId, template: str = ""
    ) -> Response:
        user = pages.user_of(request)
        return fill(request, user, conversation_id, runtime.templates, template)

    @router.get("/conversations/{conversation_id}/quick")
    async def fill_quick_reply(
        request: Request, conversation_id: RowId, reply: str = ""
    ) -> Response:
        user = pages.user_of(request)
        found = None
        if reply.isdigit():
            with engine().connect() as conn:
                found = quick_replies.find(conn, int(reply))
        if found is None:
            return page(request, "_draft.html", user, draft="", error=None)
        book = TemplateBook({found["name"]: found["text"]})
        return fill(request, user, conversation_id, book, found["name"])

    @router.get("/compose")
    async def compose_page(request: Request) -> Response:
        user = pages.user_of(request)
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
        user, form = await pages.posted(request)
        error = send(
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
            found = views.contact_conversation(conn, phone)
        return RedirectResponse(f"/conversations/{found}" if found else "/conversations", 303)

    return router


def _quiet_note(settings: Settings, phone: str, order_zone: str | None, now: dt.datetime) -> str:
    """What the counter says when the contact's clock is outside the allowed hours now."""
    policy = settings.policy
    quiet = policy.quiet()
    if quiet is None:
        return ""
    try:
        e164 = parse_phone(phone, settings.carriers.default_region).e164
        if quiet.first_allowed(now, e164, order_zone) == now:
            return ""
        local = now.astimezone(quiet.zones(e164, order_zone)[0]).strftime("%H:%M")
    except (PhoneError, ValueError):
        return ""
    return (
        f"It is {local} for this contact, outside {policy.allowed_from}–{policy.allowed_until}: "
        "the text goes now unless you tick “hold to allowed hours”."
    )


def _cursor(text: str | None) -> tuple[dt.datetime, int] | None:
    if not text or "_" not in text:
        return None
    at, _, below = text.rpartition("_")
    try:
        return dt.datetime.fromisoformat(at), int(below)
    except ValueError:
        return None


def _template_refusal(template: str, exc: TemplateError, order_ref: str | None) -> str:
    """Why a template cannot fill the draft, in a dispatcher's words."""
    if exc.missing is None:
        return f"{exc}: type the text instead, or pick another template"
    where = f"order {order_ref}" if order_ref else "this conversation (it has no order)"
    return (
        f"“{template}” needs {exc.missing.replace('_', ' ')}, which {where} does not have: "
        "type the text instead, or pick another template"
    )
