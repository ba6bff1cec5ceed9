"""The HTTP API on a real database: tokens, idempotency (replay, other body, in flight),
orders and events, errors as JSON, health and metrics."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from gateway.config import load_settings
from gateway.services.runtime import Runtime
from gateway.store import heartbeats
from gateway.store.access import begin_request, body_digest, create_token, token_holder
from gateway.store.db import utcnow
from gateway.store.tables import messages
from gateway.web.api import create_app
from tests.conftest import gateway_folder, make_runtime, run_gateway

MESSAGE = {"to": "+12025550143", "carrier": "verizon", "text": "Your order is out"}


@pytest.fixture
def api(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    token = create_token(runtime.engine, "order-system", utcnow())
    client = TestClient(create_app(runtime))
    client.headers["Authorization"] = f"Bearer {token}"
    client.runtime = runtime
    client.token = token
    return client


def count(runtime) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(messages)).scalar()


def test_post_a_message_and_read_it(api):
    made = api.post("/api/v1/messages", json=MESSAGE)
    assert made.status_code == 201
    body = made.json()
    assert (body["state"], body["to_address"]) == ("queued", "2025550143@vtext.com")
    assert body["message_id"].startswith("<") and set(body) >= {
        "id",
        "state",
        "message_id",
        "to_address",
    }
    shown = api.get(f"/api/v1/messages/{body['id']}").json()
    assert (shown["to"], shown["state"], shown["text"]) == (
        "+12025550143",
        "queued",
        MESSAGE["text"],
    )


def test_the_same_key_and_body_gives_the_first_answer(api):
    headers = {"Idempotency-Key": "order-7-out"}
    first = api.post("/api/v1/messages", json=MESSAGE, headers=headers)
    again = api.post("/api/v1/messages", json=MESSAGE, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert count(api.runtime) == 1


def test_a_batch_answers_each_message_in_order_and_stores_those_that_pass(api):
    batch = {
        "messages": [
            MESSAGE,
            {"to": "not a number", "carrier": "verizon", "text": "x"},
            {**MESSAGE, "text": "second for the same number", "order_ref": "A-9"},
            {"to": "+13125550199", "carrier": "uscellular", "text": "word " * 80},
        ]
    }
    made = api.post("/api/v1/messages/batch", json=batch)
    assert made.status_code == 200
    body = made.json()
    assert (body["accepted"], body["refused"]) == (3, 1)
    first, bad, second, long = body["results"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert bad["error"] == "invalid_message" and "not a phone number" in bad["message"]
    assert (first["state"], first["to_address"]) == ("queued", "2025550143@vtext.com")
    assert len(long["parts"]) == 3 and long["id"] == long["parts"][0]
    shown = api.get(f"/api/v1/messages/{second['id']}").json()
    assert (shown["text"], shown["order_ref"]) == ("second for the same number", "A-9")
    assert count(api.runtime) == 5  # three texts, one of them in three parts


def test_a_batch_is_idempotent_and_bounded(api):
    batch = {"messages": [MESSAGE, {**MESSAGE, "text": "two"}]}
    headers = {"Idempotency-Key": "morning-run"}
    first = api.post("/api/v1/messages/batch", json=batch, headers=headers)
    again = api.post("/api/v1/messages/batch", json=batch, headers=headers)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert count(api.runtime) == 2
    for too in ({"messages": []}, {"messages": [MESSAGE] * 1001}):
        refused = api.post("/api/v1/messages/batch", json=too)
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_request"
    assert count(api.runtime) == 2


def test_the_same_key_with_another_body_is_refused(api):
    headers = {"Idempotency-Key": "k-1"}
    assert api.post("/api/v1/messages", json=MESSAGE, headers=headers).status_code == 201
    other = api.post("/api/v1/messages", json={**MESSAGE, "text": "other"}, headers=headers)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert count(api.runtime) == 1


def test_a_key_still_in_flight_answers_409(api):
    with api.runtime.engine.connect() as conn:
        holder = token_holder(conn, api.token)
    # Another request with this key is running (its row is there, not finished).
    digest = body_digest({"endpoint": "POST /messages", "body": {**MESSAGE, "template": None,
                          "variables": {}, "order_ref": None, "send_at": None,
                          "respect_quiet_hours": False}})  # fmt: skip
    assert begin_request(api.runtime.engine, holder.id, "busy", "POST /messages", digest,
                         utcnow()) is None  # fmt: skip
    busy = api.post("/api/v1/messages", json=MESSAGE, headers={"Idempotency-Key": "busy"})
    assert busy.status_code == 409 and busy.json()["error"] == "in_flight"
    assert count(api.runtime) == 0


def test_a_failed_request_frees_its_key(api):
    headers = {"Idempotency-Key": "k-2"}
    bad = api.post("/api/v1/messages", json={**MESSAGE, "to": "12"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_message"
    assert api.post("/api/v1/messages", json=MESSAGE, headers=headers).status_code == 201


@pytest.mark.parametrize(
    ("headers", "words"),
    [({}, "send a bearer token"), ({"Authorization": "Bearer gw_nope"}, "not valid")],
)
def test_tokens_are_required(api, headers, words):
    del api.headers["Authorization"]
    answer = api.get("/api/v1/carriers", headers=headers)
    assert answer.status_code == 401 and words in answer.json()["message"]
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_bad_input_is_json_with_a_code(api):
    answer = api.post("/api/v1/messages", json={"to": "+12025550143", "colour": "red"})
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_request"
    assert "colour" in answer.json()["message"]
    missing = api.get("/api/v1/messages/999999")
    assert missing.status_code == 404 and missing.json() == {
        "error": "not_found", "message": "there is no message 999999",
    }  # fmt: skip


def test_orders_and_events_through_the_api(api):
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(microsecond=0)
    order = {"ref": "A-1", "customer": "+12125550143", "carrier": "verizon",
             "customer_name": "Ana", "window_start": start.isoformat(),
             "window_end": (start + dt.timedelta(hours=2)).isoformat()}  # fmt: skip
    assert api.post("/api/v1/orders", json=order).status_code == 201
    headers = {"Idempotency-Key": "evt-1"}
    event = api.post("/api/v1/orders/A-1/events", json={"status": "confirmed"}, headers=headers)
    assert event.status_code == 201
    assert [t["rule"] for t in event.json()["texts"]] == ["confirmed", "window_reminder"]
    again = api.post("/api/v1/orders/A-1/events", json={"status": "confirmed"}, headers=headers)
    assert again.status_code == 200 and again.json()["event_id"] == event.json()["event_id"]
    assert api.post("/api/v1/orders/B-9/events", json={"status": "confirmed"}).status_code == 404
    wrong = api.post("/api/v1/orders/A-1/events", json={"status": "lost"})
    # The document lists the statuses, so the request is refused as not fitting it.
    assert wrong.status_code == 422 and wrong.json()["error"] == "invalid_request"
    assert "status" in wrong.json()["message"] and "out_for_delivery" in wrong.json()["message"]
    conversations = api.get("/api/v1/conversations").json()["conversations"]
    assert conversations[0]["order_ref"] == "A-1"
    thread = api.get(f"/api/v1/conversations/{conversations[0]['id']}").json()
    assert [m["direction"] for m in thread["messages"]] == ["out", "out"]


def test_health_readiness_and_metrics_are_open(api):
    del api.headers["Authorization"]
    assert api.get("/healthz").json() == {"ok": True}
    # Not ready until a `gateway run` is heard from; then ready, with its mailbox lag.
    waiting = api.get("/readyz")
    assert waiting.status_code == 503 and waiting.json()["workers"] == 0
    heartbeats.beat(api.runtime.engine, "host:1:abc", utcnow(), 0.0)
    ready = api.get("/readyz").json()
    assert ready["ok"] is True and ready["workers"] == 1 and ready["mailbox_lag_seconds"] == 0.0
    api.headers["Authorization"] = f"Bearer {api.token}"
    api.post("/api/v1/messages", json=MESSAGE)
    del api.headers["Authorization"]
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    lines = [line for line in metrics.text.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("gateway_") for line in lines)
    assert 'gateway_messages{state="queued"} 1' in lines and "gateway_queue_depth 1" in lines
    assert "gateway_workers_alive 1" in lines and "gateway_imap_lag_seconds 0.0" in lines
    heartbeats.beat(api.runtime.engine, "host:1:abc", utcnow() - dt.timedelta(minutes=5), 9.0)
    assert "gateway_workers_alive 0" in api.get("/metrics").text  # silent for minutes: dead
    assert api.get("/openapi.json").json()["info"]["title"] == "gateway"


def test_a_locked_database_answers_503_and_writes_nothing(sqlite_url, smtp_server, tmp_path):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    token = create_token(runtime.engine, "t", utcnow())
    # An API whose database waits at most 0.2 s for a lock, while another writer holds it.
    impatient = Runtime(load_settings(None, database={"url": sqlite_url}))
    impatient.__dict__["engine"] = create_engine(sqlite_url, connect_args={"timeout": 0.2})
    client = TestClient(create_app(impatient), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {token}"
    holder = sqlite3.connect(str(tmp_path / "gateway.db"), timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        answer = client.post("/api/v1/messages", json=MESSAGE)
    finally:
        holder.rollback()
        holder.close()
    assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
    assert answer.headers["Retry-After"] == "5"
    assert count(runtime) == 0


def test_tokens_create_prints_the_token_once(tmp_path):
    gateway_folder(tmp_path)
    made = run_gateway("tokens", "create", "erp", "--format", "json", cwd=tmp_path)
    data = json.loads(made.stdout)
    assert data["name"] == "erp" and data["token"].startswith("gw_")
    again = run_gateway("tokens", "create", "erp", cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_serve_answers_on_the_configured_port(tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    from gateway.services.carrier_sim import free_port

    port = free_port()
    gateway_folder(tmp_path, extra=f"[web]\nport = {port}\n")
    server = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp_path,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert json.loads(r.read()) == {"ok": True}
                    break
            except OSError:
                assert time.monotonic() < deadline, "gateway serve did not answer"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)


def test_users_add_keeps_an_argon2_hash(tmp_path):
    import subprocess
    import sys

    from argon2 import PasswordHasher

    from gateway.store.tables import users

    gateway_folder(tmp_path)

    def add(*args: str, password: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", "users", "add", *args,
                               "--password-stdin"], cwd=tmp_path, input=password + "\n",
                              capture_output=True, text=True)  # fmt: skip

    assert add("ana", "--role", "admin", password="correct horse battery").returncode == 0
    assert "at least 10" in add("bo", password="short").stderr
    assert "not one of" in add("cy", "--role", "owner", password="long enough pw").stderr
    assert "exists already" in add("ana", password="another long one").stderr
    runtime = Runtime(load_settings(None, database={"url": f"sqlite:///{tmp_path / 'gw.db'}"}))
    with runtime.engine.connect() as conn:
        (row,) = conn.execute(select(users)).all()
    assert row.role == "admin" and row.password_hash.startswith("$argon2")
    assert PasswordHasher().verify(row.password_hash, "correct horse battery")


@pytest.mark.parametrize("number", [2**31 - 1, 2**31, 2**63, 10**30, 0, -1])
def test_ids_outside_the_databases_range_are_404(api, number):
    """Issue 20, point 4: an id past 2^63 reached the driver, which raised (a 500)."""
    for path in (f"/api/v1/messages/{number}", f"/api/v1/conversations/{number}"):
        answer = api.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"] == "not_found"
    stranger = TestClient(create_app(api.runtime))
    assert stranger.get(f"/api/v1/messages/{number}").status_code == 401  # who asks comes first


def test_send_at_more_than_max_schedule_days_ahead_is_422(api):
    far = {**MESSAGE, "send_at": "9999-12-31T00:00:00Z"}
    answer = api.post("/api/v1/messages", json=far)
    assert answer.status_code == 422 and "max_schedule_days" in answer.json()["message"]
    naive = {**MESSAGE, "send_at": "2026-12-24T09:00:00"}
    answer = api.post("/api/v1/messages", json=naive)
    assert answer.status_code == 422 and "time zone" in answer.json()["message"]
    assert count(api.runtime) == 0


def test_a_missing_template_variable_says_how_to_give_it_here(api):
    answer = api.post("/api/v1/messages", json={"to": "+12025550143", "carrier": "verizon",
                                                "template": "delayed"})  # fmt: skip
    assert answer.status_code == 422
    message = answer.json()["message"]
    assert "variable 'customer_name' is missing (give it in variables)" in message
    assert "--var" not in message


def test_a_name_sent_with_a_text_names_the_contact(api):
    """(A body sent before `name` existed digests as it did then: the in-flight test above
    computes its digest without `name`, as earlier versions stored it.)"""
    answer = api.post("/api/v1/messages", json={**MESSAGE, "name": "Ana"})
    assert answer.status_code == 201
    [row] = api.get("/api/v1/conversations").json()["conversations"]
    assert row["name"] == "Ana"
    bad = api.post("/api/v1/messages", json={**MESSAGE, "name": "Ana\nBcc: x"})
    assert bad.status_code == 422 and "name" in bad.json()["message"]
