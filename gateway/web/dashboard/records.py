"""Orders, contacts and carriers: the records behind the conversations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.services.carrier_report import carrier_rows, health_rows
from gateway.store import views
from gateway.store.db import utcnow
from gateway.web.dashboard.pages import Pages
from gateway.web.ids import RowId
from gateway.web.offloop import OffLoopRoute

LIST_SIZE = 200  # rows of the orders and contacts lists


def records_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)
    runtime, engine, page = pages.runtime, pages.engine, pages.page

    @router.get("/orders")
    async def orders_page(request: Request, ref: str | None = None) -> Response:
        user = pages.user_of(request)
        with engine().connect() as conn:
            rows = views.order_list(conn, LIST_SIZE, ref or None)
        return page(request, "orders.html", user, nav="orders", rows=rows, ref=ref or "")

    @router.get("/orders/{ref}")
    async def order_page(request: Request, ref: str, done: str | None = None) -> Response:
        user = pages.user_of(request)
        with engine().connect() as conn:
            found = views.order_detail(conn, ref)
        if found is None:
            return pages.not_found(request, user, f"there is no order {ref}")
        return page(request, "order.html", user, nav="orders", order=found, done=done)

    @router.get("/contacts")
    async def contacts_page(request: Request, q: str | None = None) -> Response:
        user = pages.user_of(request)
        with engine().connect() as conn:
            rows = views.contact_list(conn, LIST_SIZE, q or None)
        return page(request, "contacts.html", user, nav="contacts", rows=rows, q=q or "")

    @router.get("/contacts/{contact_id}")
    async def contact_page(
        request: Request, contact_id: RowId, done: str | None = None
    ) -> Response:
        user = pages.user_of(request)
        with engine().connect() as conn:
            found = views.contact_detail(conn, contact_id)
        if found is None:
            return pages.not_found(request, user, f"there is no contact {contact_id}")
        return page(
            request,
            "contact.html",
            user,
            nav="contacts",
            contact=found,
            done=done,
            carriers=list(runtime.carriers),
        )

    @router.get("/carriers")
    async def carriers_page(request: Request) -> Response:
        user = pages.user_of(request)
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

    return router
