"""Failures and what a dispatcher does about them: dismiss, re-send (by a chosen route), set a
contact's carrier, thread a reply by hand, release quarantined mail, cancel a waiting text."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.domain.delivery import State
from gateway.domain.routing import Route
from gateway.services.inbound import Ingest, manual_thread
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.store import overrides, views
from gateway.store.contacts import upsert_contact
from gateway.store.db import utcnow
from gateway.store.outbox import cancel_waiting
from gateway.web.dashboard.pages import Pages, back
from gateway.web.ids import RowId
from gateway.web.offloop import OffLoopRoute


def failures_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)
    runtime, engine = pages.runtime, pages.engine

    @router.get("/failures")
    async def failures_page(
        request: Request, done: str | None = None, show: str = "open"
    ) -> Response:
        user = pages.user_of(request)
        resolved = show == "resolved"
        with engine().connect() as conn:
            found = views.failures(conn, resolved=resolved)
        return pages.page(
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
        user, form = await pages.posted(request)
        with engine().begin() as conn:
            if not views.dismiss(conn, message_id, user.name, utcnow()):
                return back(form, f"text {message_id} is not a failure")
            overrides.record(conn, user.name, "dismiss", {"message": message_id}, utcnow())
        return back(form, f"text {message_id} dismissed (kept under Resolved)")

    @router.post("/messages/{message_id}/resend")
    async def resend(request: Request, message_id: RowId) -> Response:
        user, form = await pages.posted(request)
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
        user, form = await pages.posted(request)
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
        user, form = await pages.posted(request)
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
        user, form = await pages.posted(request)
        try:
            await asyncio.to_thread(Ingest(runtime, engine()).release, quarantined, utcnow())
        except (LookupError, ValueError) as exc:
            return back(form, f"not released: {exc}")
        with engine().begin() as conn:
            overrides.record(conn, user.name, "release", {"quarantine": quarantined}, utcnow())
        return back(form, f"message {quarantined} was read again and stored")

    @router.post("/messages/{message_id}/cancel")
    async def cancel(request: Request, message_id: RowId) -> Response:
        user, form = await pages.posted(request)
        done = cancel_waiting(engine(), [message_id], f"cancelled by {user.name}", utcnow())
        note = f"text {message_id} cancelled" if done else f"text {message_id} was not waiting"
        return back(form, note)

    return router
