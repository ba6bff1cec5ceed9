"""Signing in and out of the dashboard."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from gateway.store import access
from gateway.store.db import utcnow
from gateway.web import security
from gateway.web.dashboard.pages import Pages, local, read_form
from gateway.web.offloop import OffLoopRoute


def signin_router(pages: Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=OffLoopRoute)

    def again(request: Request, error: str, target: str, status: int) -> Response:
        """The sign-in form anew (with a fresh form token), saying what went wrong."""
        token = security.new_token()
        response = pages.page(
            request, "login.html", None, login_token=token, next=target, error=error
        )
        response.status_code = status
        security.set_cookie(response, request, security.LOGIN_COOKIE, token, 3600)
        return response

    @router.get("/login")
    async def login_page(request: Request, next: str = "/") -> Response:
        token = security.new_token()
        response = pages.page(request, "login.html", None, login_token=token, next=local(next))
        security.set_cookie(response, request, security.LOGIN_COOKIE, token, 3600)
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        security.check_origin(request)  # a sign-in planted from another site is refused too
        form = await read_form(request)
        target = local(form.get("next", "/"))
        if not security.same(form.get("login_token"), request.cookies.get(security.LOGIN_COOKIE)):
            return again(request, "the sign-in form expired; try again", target, 400)
        name, password = form.get("name", "").strip(), form.get("password", "")
        try:
            found = access.sign_in(
                pages.engine(), name, password, security.client_address(request), utcnow()
            )
        except access.Throttled as exc:
            return again(request, str(exc), target, 429)
        if found is None:
            return again(request, "wrong name or password", target, 401)
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
        await pages.posted(request)
        access.sign_out(pages.engine(), request.cookies.get(security.SESSION_COOKIE, ""))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(security.SESSION_COOKIE, path="/")
        return response

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @router.get("/")
    async def home(request: Request) -> Response:
        pages.user_of(request)
        return RedirectResponse("/conversations", 303)

    return router
