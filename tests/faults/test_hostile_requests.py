"""Requests from someone who should not get in: every route of the app, found by walking its
routing table (so a route added later is covered without anyone remembering to), refused
without a session or token; a forged or wrong token refused; a session id planted before
sign-in not adopted, nor an attacker's own live one."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.store import access
from gateway.store.db import utcnow
from gateway.web import security
from gateway.web.app import create_app
from tests.conftest import make_runtime
from tests.test_dashboard import PASSWORD, sign_in

# What the contract leaves open: health, metrics, the API's description, the sign-in page.
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect",
        "/redoc", "/login", "/favicon.ico"}  # fmt: skip


@pytest.fixture
def app(sqlite_url, smtp_server):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, utcnow())
    access.add_user(runtime.engine, "eve", "dispatcher", PASSWORD, utcnow())
    app = create_app(runtime)
    app.state.engine = runtime.engine
    return app


def all_routes(routes, prefix: str = "") -> list[tuple[str, APIRoute]]:
    """(the path it answers on, the endpoint) for every endpoint, also inside included
    routers (which FastAPI may wrap)."""
    found: list[tuple[str, APIRoute]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            found += all_routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif isinstance(route, APIRoute):
            found.append((prefix + route.path, route))
    return found


def closed_routes(app) -> list[tuple[str, str]]:
    found = []
    for full_path, route in all_routes(app.routes):
        if full_path in OPEN:
            continue
        path = re.sub(r"{[^}]+}", "1", full_path)
        found += [(method, path) for method in sorted(route.methods - {"HEAD", "OPTIONS"})]
    return found


def test_every_route_refuses_a_stranger(app):
    client = TestClient(app, follow_redirects=False, raise_server_exceptions=False)
    routes = closed_routes(app)
    assert len(routes) > 30  # the walk found the app's routes, not an empty table
    for method, path in routes:
        answer = client.request(method, path)
        if path.startswith("/api/"):
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.json()["error"]  # JSON, with a code
        else:
            assert answer.status_code in (303, 401, 403), (method, path, answer.status_code)
            if answer.status_code == 303:
                assert answer.headers["location"].startswith("/login"), (method, path)


@pytest.mark.parametrize("token", ["gw_forged", "", "Bearer", "gw_" + "a" * 5000, "gw_\r\nx"])
def test_a_forged_token_is_refused(app, token):
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/api/v1/conversations", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401


def test_a_session_id_planted_before_sign_in_is_not_adopted(app):
    planted = "planted-by-someone-else"
    victim = TestClient(app, follow_redirects=False)
    victim.cookies.set(security.SESSION_COOKIE, planted)
    signed_in = sign_in(victim, "dana")
    assert signed_in.status_code == 303
    given = signed_in.headers["set-cookie"]
    assert given.startswith(f"{security.SESSION_COOKIE}=") and planted not in given
    attacker = TestClient(app, follow_redirects=False)
    attacker.cookies.set(security.SESSION_COOKIE, planted)
    assert attacker.get("/conversations").status_code == 303  # the planted id opens nothing


def test_an_attackers_own_session_planted_in_a_browser_is_replaced_at_sign_in(app):
    # Fixation with a live id: the attacker signs in as themselves and plants that cookie; the
    # victim's sign-in must issue a new id, and the attacker's id must stay the attacker's.
    attacker = TestClient(app, follow_redirects=False)
    assert sign_in(attacker, "eve").status_code == 303
    live = attacker.cookies.get(security.SESSION_COOKIE)
    victim = TestClient(app, follow_redirects=False)
    victim.cookies.set(security.SESSION_COOKIE, live)
    signed_in = sign_in(victim, "dana")
    assert signed_in.status_code == 303
    issued = re.search(rf"{security.SESSION_COOKIE}=([^;]+)", signed_in.headers["set-cookie"])[1]
    assert issued != live
    with app.state.engine.connect() as conn:
        assert access.session_user(conn, live, utcnow()).name == "eve"
        assert access.session_user(conn, issued, utcnow()).name == "dana"
