"""The dashboard over HTTP on a real database: sign-in, sessions, CSRF, roles, throttling,
security headers, escaping of what strangers wrote, settings with their audit log, the pages
and their actions, and the event stream's catch-up."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from gateway.config import load_settings
from gateway.domain.delivery import State
from gateway.services.inbound import Ingest
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import access, views
from gateway.store.db import utcnow
from gateway.store.tables import contacts, inbound, messages, quarantine
from gateway.transport.mailsource import Batch, Fetched
from gateway.web.app import create_app
from tests.conftest import make_runtime
from tests.servers import microsoft_365_server

PASSWORD = "correct horse battery"
XSS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "<svg onload=alert(3)><circle/></svg>",
    '<a href="javascript:alert(4)">tap</a>',
]


@pytest.fixture
def runtime(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    now = utcnow()
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, now)
    access.add_user(runtime.engine, "ada", "admin", PASSWORD, now)
    return runtime


def client_for(runtime, name: str | None = None) -> TestClient:
    client = TestClient(create_app(runtime), follow_redirects=False)
    if name is not None:
        assert sign_in(client, name).status_code == 303
    return client


def sign_in(client: TestClient, name: str, password: str = PASSWORD):
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/login", data={"login_token": token, "name": name, "password": password, "next": "/"}
    )


def csrf_of(client: TestClient, path: str = "/conversations") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def text_to(runtime, phone="+12025550143", text="Driver on the way", order="W-1") -> int:
    result = enqueue(
        runtime, SendRequest(to=phone, carrier="verizon", text=text, order_ref=order), utcnow()
    )
    return result.ids[0]


def reply_in(runtime, message_id: int, text: str) -> None:
    """A phone's reply to text `message_id`, read as the inbound worker reads the mailbox."""
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message_id)).one()
    raw = (
        (
            f"From: {row.to_address}\r\nTo: dispatch@example.com\r\nSubject: Re:\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@vtext.com>\r\nIn-Reply-To: {row.message_id}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        + text.encode()
        + b"\r\n"
    )
    batch = Batch(mailbox="test", uidvalidity=None, items=(Fetched(None, raw, len(raw)),))
    Ingest(runtime, runtime.engine).store(batch, utcnow())


# --- signing in -----------------------------------------------------------------------------


def test_pages_need_a_session(runtime):
    client = client_for(runtime)
    for path in ("/conversations", "/failures", "/orders", "/contacts", "/carriers", "/settings"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert client.get("/events").status_code in (303, 401)
    assert client.get("/healthz").status_code == 200  # open, as the contract says


def test_sign_in_sets_a_guarded_cookie_and_sign_out_ends_the_session(runtime):
    client = client_for(runtime)
    answer = sign_in(client, "dana")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "gw_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert client.get("/conversations").status_code == 200
    stolen = client.cookies.get("gw_session")
    client.post("/logout", data={"csrf": csrf_of(client)})
    other = client_for(runtime)
    other.cookies.set("gw_session", stolen)
    assert other.get("/conversations").status_code == 303  # the old cookie no longer works


def test_secure_cookie_behind_tls(runtime):
    client = TestClient(
        create_app(runtime), base_url="https://dispatch.example", follow_redirects=False
    )
    assert "Secure" in sign_in(client, "dana").headers["set-cookie"]


def test_a_wrong_password_is_refused_and_guessing_is_throttled(runtime):
    client = client_for(runtime)
    assert sign_in(client, "dana", "wrong password!").status_code == 401
    assert sign_in(client, "nobody", "wrong password!").status_code == 401
    for _ in range(access.FAILURES_PER_NAME - 1):
        sign_in(client, "dana", "wrong password!")
    refused = sign_in(client, "dana", PASSWORD)  # even the right one, for a while
    assert refused.status_code == 429 and "try again in" in refused.text
    assert "gw_session" not in refused.headers.get("set-cookie", "")


def test_sign_in_form_without_its_token_is_refused(runtime):
    client = client_for(runtime)
    answer = client.post("/login", data={"name": "dana", "password": PASSWORD})
    assert answer.status_code == 400 and "gw_session" not in answer.headers.get("set-cookie", "")


def test_next_only_leads_to_this_site(runtime):
    client = client_for(runtime)
    form = client.get("/login?next=//evil.example/x")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    answer = client.post(
        "/login",
        data={"login_token": token, "name": "dana", "password": PASSWORD,
              "next": "https://evil.example/"},
    )  # fmt: skip
    assert answer.headers["location"] == "/"


def test_security_headers(runtime):
    page = client_for(runtime, "dana").get("/conversations")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"


# --- CSRF and roles -------------------------------------------------------------------------


def test_every_form_post_needs_the_csrf_token(runtime):
    message = text_to(runtime)
    client = client_for(runtime, "dana")
    with runtime.engine.connect() as conn:
        conversation = views.message(conn, message)["conversation_id"]
    path = f"/conversations/{conversation}/send"
    refused = client.post(path, data={"text": "forged"})
    assert refused.status_code == 403
    wrong = client.post(path, data={"text": "forged", "csrf": "guess"})
    assert wrong.status_code == 403
    assert count_texts(runtime) == 1
    good = client.post(path, data={"text": "Gate code is 4411", "csrf": csrf_of(client)})
    assert good.status_code == 200 and "Gate code is 4411" in good.text
    header = client.post(path, data={"text": "by htmx"}, headers={"X-CSRF-Token": csrf_of(client)})
    assert header.status_code == 200
    assert count_texts(runtime) == 3


def count_texts(runtime) -> int:
    with runtime.engine.connect() as conn:
        return len(conn.execute(select(messages.c.id)).all())


def test_dispatchers_cannot_change_settings_or_users(runtime):
    client = client_for(runtime, "dana")
    assert client.get("/settings").status_code == 403
    csrf = csrf_of(client)
    refused = client.post("/settings/smtp", data={"csrf": csrf, "smtp.port": "2525"})
    assert refused.status_code == 403
    added = client.post(
        "/users", data={"csrf": csrf, "name": "eve", "password": PASSWORD, "role": "admin"}
    )
    assert added.status_code == 403
    with runtime.engine.connect() as conn:
        assert [u["name"] for u in access.list_users(conn)] == ["ada", "dana"]


def test_an_admin_adds_and_disables_a_user(runtime):
    admin = client_for(runtime, "ada")
    csrf = csrf_of(admin, "/settings")
    admin.post("/users", data={"csrf": csrf, "name": "sam", "password": PASSWORD,
                               "role": "dispatcher"})  # fmt: skip
    sam = client_for(runtime, "sam")
    assert sam.get("/conversations").status_code == 200
    with runtime.engine.connect() as conn:
        sam_id = next(u["id"] for u in access.list_users(conn) if u["name"] == "sam")
    admin.post(f"/users/{sam_id}", data={"csrf": csrf, "role": "dispatcher", "disabled": "on"})
    assert sam.get("/conversations").status_code == 303  # signed out at once


# --- escaping -------------------------------------------------------------------------------


def test_what_strangers_wrote_renders_as_text(runtime):
    message = text_to(runtime)
    for payload in XSS:
        reply_in(runtime, message, payload)
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(reason="<b>bold</b>"))
    client = client_for(runtime, "dana")
    with runtime.engine.connect() as conn:
        conversation = views.message(conn, message)["conversation_id"]
    for path in (f"/conversations/{conversation}", "/conversations", "/failures"):
        page = client.get(path).text
        for tag in (
            "<script>alert",
            "<img src=x",
            "<svg onload",
            '<a href="javascript:',
            "<b>bold",
        ):
            assert tag not in page, (path, tag)
    page = client.get(f"/conversations/{conversation}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;a href=&#34;javascript:alert(4)&#34;&gt;tap&lt;/a&gt;" in page


def test_a_delay_warning_in_a_thread_is_labelled_so_and_leaves_the_text(runtime):
    from tests.test_inbound import bounce_for

    message = text_to(runtime)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message)).one()
    original = f"Message-ID: {row.message_id}\r\nTo: {row.to_address}\r\n\r\nDriver\r\n"
    raw = bounce_for(original.encode(), row.to_address, "4.4.7", "Connection timed out",
                     action="delayed")  # fmt: skip
    batch = Batch(mailbox="test", uidvalidity=None, items=(Fetched(None, raw, len(raw)),))
    Ingest(runtime, runtime.engine).store(batch, utcnow())
    with runtime.engine.connect() as conn:
        conversation = views.message(conn, message)["conversation_id"]
        state = views.message(conn, message)["state"]
    page = client_for(runtime, "dana").get(f"/conversations/{conversation}").text
    assert re.search(r'class="in bounce"[^>]*>\s*<p class="text">[^<]*</p>\s*'
                     r'<p class="meta">delay warning ·', page), page  # fmt: skip
    assert state == "queued"  # as it was


# --- conversations --------------------------------------------------------------------------


def test_the_list_shows_last_message_unread_and_filters(runtime):
    first = text_to(runtime, "+12025550143", "Your order is confirmed", "W-1")
    text_to(runtime, "+12025550144", "Driver text", "W-2")
    reply_in(runtime, first, "Can you come after 5?")
    client = client_for(runtime, "dana")
    page = client.get("/conversations").text
    assert "Can you come after 5?" in page and 'title="unread replies">1<' in page
    assert "W-2" in page
    unanswered = client.get("/conversations?show=unanswered").text
    assert "Can you come after 5?" in unanswered and "W-2" not in unanswered
    by_order = client.get("/conversations?order=W-2").text
    assert "W-2" in by_order and "Can you come after 5?" not in by_order
    with runtime.engine.connect() as conn:
        conversation = views.message(conn, first)["conversation_id"]
    client.get(f"/conversations/{conversation}")  # opening it reads it
    assert 'title="unread replies"' not in client.get("/conversations").text
    assert "Can you come after 5?" not in client.get("/conversations?show=unread").text


def test_the_counter_counts_segments_and_warns_of_quiet_hours(runtime, monkeypatch):
    client = client_for(runtime, "dana")
    csrf = csrf_of(client)
    answer = client.post("/compose/count", data={"csrf": csrf, "text": "x" * 161,
                                                  "to": "+12025550143"})  # fmt: skip
    assert "161 characters" in answer.text and "2 segments" in answer.text
    runtime.settings.policy.allowed_from, runtime.settings.policy.allowed_until = "00:00", "00:01"
    late = client.post("/compose/count", data={"csrf": csrf, "text": "hi", "to": "+12025550143"})
    assert "outside 00:00" in late.text


def test_a_broken_text_changes_nothing(runtime):
    message = text_to(runtime)
    client = client_for(runtime, "dana")
    with runtime.engine.connect() as conn:
        conversation = views.message(conn, message)["conversation_id"]
    answer = client.post(f"/conversations/{conversation}/send",
                         data={"csrf": csrf_of(client), "text": "   "})  # fmt: skip
    assert answer.status_code == 200 and "empty" in answer.text
    assert count_texts(runtime) == 1
    compose = client.post("/compose", data={"csrf": csrf_of(client), "to": "12", "text": "hi"})
    assert compose.status_code == 200 and 'class="error"' in compose.text
    assert count_texts(runtime) == 1


def test_compose_to_a_new_number_opens_its_conversation(runtime):
    client = client_for(runtime, "dana")
    answer = client.post("/compose", data={"csrf": csrf_of(client), "to": "(202) 555-0147",
                                           "carrier": "verizon", "text": "Hello"})  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"].startswith("/conversations/")
    assert "Hello" in client.get(answer.headers["location"]).text


# --- failures -------------------------------------------------------------------------------


def test_resend_by_relay_pins_the_route(runtime):
    message = text_to(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(state=State.FAILED.value, reason="refused"))
    client = client_for(runtime, "dana")
    page = client.get("/failures").text
    assert "Re-send by relay" in page and "refused" in page
    answer = client.post(f"/messages/{message}/resend",
                         data={"csrf": csrf_of(client), "via": "relay", "back": "/failures"})  # fmt: skip
    assert answer.status_code == 303 and "relay" in answer.headers["location"]
    with runtime.engine.connect() as conn:
        new = conn.execute(select(messages).where(messages.c.id != message)).one()
    assert (new.pinned_route, new.state, new.body) == ("relay", "queued", "Driver on the way")


def test_correct_the_carrier_clears_the_doubt(runtime):
    message = text_to(runtime)
    with runtime.engine.begin() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message)).one()
        conn.execute(
            contacts.update()
            .where(contacts.c.id == row.contact_id)
            .values(carrier_doubt="bounced as unknown")
        )
    client = client_for(runtime, "dana")
    client.post(f"/contacts/{row.contact_id}/carrier",
                data={"csrf": csrf_of(client), "carrier": "tmobile", "back": "/failures"})  # fmt: skip
    with runtime.engine.connect() as conn:
        contact = views.contact_detail(conn, row.contact_id)
    assert (contact["carrier"], contact["carrier_source"], contact["carrier_doubt"]) == (
        "tmobile", "dispatcher", None)  # fmt: skip


def test_release_reads_a_quarantined_message_again(runtime):
    raw = (b"From: 2025550143@vtext.com\r\nTo: dispatch@example.com\r\nSubject: \r\n"
           b"Message-ID: <q1@vtext.com>\r\n\r\nRunning late\r\n")  # fmt: skip
    with runtime.engine.begin() as conn:
        held = conn.execute(insert(quarantine).values(
            mailbox="test", error="storing failed: a bug since mended", size=len(raw), raw=raw,
            stored_at=utcnow())).inserted_primary_key[0]  # fmt: skip
    client = client_for(runtime, "dana")
    answer = client.post(f"/quarantine/{held}/release", data={"csrf": csrf_of(client)})
    assert "stored" in answer.headers["location"]
    with runtime.engine.connect() as conn:
        assert conn.execute(select(quarantine)).all() == []
        assert conn.execute(select(inbound.c.text)).scalar() == "Running late"


def test_cancel_a_waiting_text_from_its_order(runtime):
    future = utcnow() + dt.timedelta(hours=3)
    result = enqueue(runtime, SendRequest(to="+12025550143", carrier="verizon", text="Later",
                                          order_ref="W-9", send_at=future), utcnow())  # fmt: skip
    client = client_for(runtime, "dana")
    page = client.get("/orders/W-9").text
    assert "Later" in page and "Cancel" in page
    client.post(f"/messages/{result.ids[0]}/cancel",
                data={"csrf": csrf_of(client), "back": "/orders/W-9"})  # fmt: skip
    with runtime.engine.connect() as conn:
        assert views.message(conn, result.ids[0])["state"] == "cancelled"


def test_contacts_and_carriers_pages(runtime):
    text_to(runtime)
    client = client_for(runtime, "dana")
    assert "+12025550143" in client.get("/contacts").text
    carriers = client.get("/carriers").text
    assert "Verizon" in carriers and "retired" in carriers
    assert "Email-to-SMS providers" in carriers and "{e164}@sms.textapp.net" in carriers


def test_every_page_warns_of_contacts_no_gateway_reaches(db_url, smtp_server):
    """Contacts on a closed carrier with no provider: said at the top of every page, with the
    count; once a provider takes them, the warning goes."""
    runtime = make_runtime(db_url, smtp_server.port)
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, utcnow())
    for phone in ("+14155550100", "+14155550101"):
        enqueue(runtime, SendRequest(phone, "att", text="hi"), utcnow())
    page = client_for(runtime, "dana").get("/conversations").text
    assert 'role="alert"' in page and "2 contacts on carriers whose email-to-SMS" in page
    failures = client_for(runtime, "dana").get("/failures").text  # why, in words
    assert "AT&amp;T closed its email-to-SMS gateway on 2025-06-17; configure" in failures
    assert "(AT&amp;T)" in page and "[gateways] provider" in page
    covered = make_runtime(db_url, smtp_server.port, gateways={"provider": "generic"})
    page = client_for(covered, "dana").get("/failures").text
    assert 'role="alert"' not in page
    carriers = client_for(covered, "dana").get("/carriers").text
    assert "default" in carriers  # where the settings use the generic provider


# --- settings -------------------------------------------------------------------------------


def test_a_saved_setting_applies_at_once_and_is_audited(runtime):
    runtime.settings.smtp.password = None
    admin = client_for(runtime, "ada")
    csrf = csrf_of(admin, "/settings")
    form = {"csrf": csrf, "smtp.enabled": "on", "smtp.host": "127.0.0.1", "smtp.port": "2526",
            "smtp.security": "none", "smtp.username": "dispatch", "smtp.auth": "password",
            "smtp.password": "s3cret-pass",
            "smtp.from_address": "Dispatch <dispatch@example.com>", "smtp.preset": "custom",
            "smtp.daily_limit": "", "smtp.per_minute": ""}  # fmt: skip
    answer = admin.post("/settings/smtp", data=form)
    assert answer.status_code == 303 and "smtp.port" in answer.headers["location"]
    assert runtime.settings.smtp.port == 2526
    page = admin.get("/settings").text
    assert "s3cret-pass" not in page and "set: leave empty to keep" in page
    assert "(changed)" in page and "2526" in page  # the audit entry, without the secret
    # Another process (a new runtime on the same database) takes it up too.
    other = make_runtime(str(runtime.engine.url.render_as_string(hide_password=False)), 9)
    other.migrated_engine()  # what every command does first
    assert other.settings.smtp.port == 2526 and other.settings.smtp.username == "dispatch"


def test_a_setting_that_does_not_fit_is_refused_and_nothing_changes(runtime):
    admin = client_for(runtime, "ada")
    csrf = csrf_of(admin, "/settings")
    port = runtime.settings.smtp.port
    answer = admin.post("/settings/quiet", data={
        "csrf": csrf, "policy.quiet_hours": "on", "policy.allowed_from": "22:00",
        "policy.allowed_until": "08:00", "policy.timezone": "UTC"})  # fmt: skip
    assert answer.status_code == 200 and "allowed_from" in answer.text
    bad = admin.post("/settings/smtp", data={"csrf": csrf, "smtp.port": "587\r\nX: y"})
    assert "one line" in bad.text
    assert runtime.settings.policy.allowed_from == "08:00" and runtime.settings.smtp.port == port
    with runtime.engine.connect() as conn:
        from gateway.store import overrides

        assert overrides.read(conn) == {} and overrides.audit_log(conn) == []


def test_test_connection_shows_each_step(runtime, smtp_server):
    admin = client_for(runtime, "ada")
    csrf = csrf_of(admin, "/settings")
    good = admin.post("/settings/test/smtp", data={"csrf": csrf})
    assert good.status_code == 200 and "✓" in good.text and "✗" not in good.text
    assert "TCP connect" in good.text and "EHLO" in good.text
    runtime.settings.imap.host, runtime.settings.imap.port = "127.0.0.1", 1
    refused = admin.post("/settings/test/imap", data={"csrf": csrf})
    assert "✗" in refused.text and "refused the connection" in refused.text


def test_test_connection_marks_a_warning_apart(sqlite_url):
    # A password sign-in to Microsoft 365 passes, with a warning that it is about to stop.
    server = microsoft_365_server("dispatch", "right")
    server.start()
    try:
        runtime = make_runtime(sqlite_url, server.port, username="dispatch", password="right")
        access.add_user(runtime.engine, "ada", "admin", PASSWORD, utcnow())
        admin = client_for(runtime, "ada")
        tested = admin.post("/settings/test/smtp", data={"csrf": csrf_of(admin, "/settings")})
    finally:
        server.stop()
    assert tested.status_code == 200 and "✗" not in tested.text
    [warned] = re.findall(r'<li class="warn">.*?</li>', tested.text, re.S)
    assert "AUTH as dispatch" in warned and '<span class="mark">!</span>' in warned
    assert "end of December 2026" in warned


# --- live updates ---------------------------------------------------------------------------


def test_the_event_stream_catches_up_from_the_last_event_id(runtime):
    message = text_to(runtime)
    with runtime.engine.connect() as conn:
        start = views.positions(conn)
        conversation = views.message(conn, message)["conversation_id"]
    reply_in(runtime, message, "first")
    reply_in(runtime, message, "second")
    with runtime.engine.connect() as conn:
        events, position = views.changes_since(conn, *start)
    assert [e["type"] for e in events] == ["reply", "reply"]
    assert {e["conversation_id"] for e in events} == {conversation}
    with runtime.engine.connect() as conn:
        assert views.changes_since(conn, *position)[0] == []


def test_event_stream_replays_from_the_last_event_id_and_serve_still_stops(tmp_path):
    """A real `gateway serve`: a reconnecting stream gets what it missed; and an open stream,
    which never ends by itself, ends cleanly when SIGTERM stops the server, instead of holding
    it for its grace time and being cancelled then (an error in the log at every restart)."""
    import subprocess
    import sys
    import time

    import httpx2

    from gateway.services.carrier_sim import free_port
    from gateway.store.db import make_engine
    from tests.conftest import gateway_folder

    port = free_port()
    gateway_folder(tmp_path, extra=f"[web]\nport = {port}\n")
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    access.add_user(engine, "dana", "dispatcher", PASSWORD, utcnow())
    server = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=tmp_path,
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx2.get(f"{base}/healthz", timeout=1)
                break
            except httpx2.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        client = httpx2.Client(base_url=base, timeout=10)
        token = re.search(r'name="login_token" value="([^"]+)"', client.get("/login").text)
        client.post("/login", data={"login_token": token.group(1), "name": "dana",
                                    "password": PASSWORD, "next": "/"})  # fmt: skip
        # A browser that reconnects sends the id of the last event it saw: what came after is
        # replayed at once, nothing before it.
        runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
        message = text_to(runtime)
        with runtime.engine.connect() as conn:
            seen = views.positions(conn)
        reply_in(runtime, message, "missed while away")
        with client.stream("GET", "/events",
                           headers={"Last-Event-ID": ".".join(map(str, seen))}) as stream:  # fmt: skip
            lines = stream.iter_lines()
            got = [next(lines) for _ in range(9)]
        # The hello carries the position asked for; the missed reply follows with the new one.
        assert got[:3] == ["retry: 2000", f"id: {seen[0]}.{seen[1]}.{seen[2]}", "event: hello"]
        assert got[5:7] == [f"id: {seen[0] + 1}.{seen[1]}.{seen[2]}", "event: reply"]
        assert json.loads(got[7].removeprefix("data: "))["type"] == "reply"
        runtime.engine.dispose()
        with client.stream("GET", "/events") as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            server.terminate()
            # The stream ends whole (a stream cut off mid-way raises here), and the server
            # stops (a hang is a TimeoutExpired).
            list(lines)
            assert server.wait(30) in (0, -15)  # uvicorn re-raises SIGTERM once it is done
        log = server.stderr.read()
        assert "graceful shutdown exceeded" not in log and "Traceback" not in log, log
    finally:
        if server.poll() is None:
            server.kill()
        engine.dispose()


@pytest.mark.postgres
async def test_notify_wakes_the_event_streams_when_any_process_stores(postgres_url, smtp_server):
    """On PostgreSQL a stored reply or attempt wakes every web process's streams at commit:
    the waits here would otherwise last ten minutes."""
    import asyncio

    from gateway.services.sender import Sender
    from gateway.web.live import Wakeup

    runtime = make_runtime(postgres_url, smtp_server.port)
    wakeup = Wakeup(runtime.engine)
    wakeup.start()
    try:
        for _ in range(100):
            if wakeup.listening:
                break
            await asyncio.sleep(0.05)
        assert wakeup.listening
        message = await asyncio.to_thread(text_to, runtime)
        sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy,
                        batch_size=20, idle_poll=0.05)  # fmt: skip
        for store in (
            lambda: sender.run(asyncio.Event(), until_idle=True),  # a delivery attempt
            lambda: asyncio.to_thread(reply_in, runtime, message, "on my way"),  # a reply
        ):
            waiting = asyncio.create_task(wakeup.wait(600))
            await asyncio.sleep(0)  # the wait has begun
            await store()
            await asyncio.wait_for(waiting, 60)
    finally:
        await wakeup.close()
        runtime.engine.dispose()


@pytest.mark.parametrize("number", [2**31, 2**63, 10**30, 0])
def test_dashboard_ids_outside_the_databases_range_are_404(runtime, number):
    """Issue 20, point 4, the dashboard's routes: pages, fragments and actions."""
    client = client_for(runtime, "ada")
    token = csrf_of(client)
    for path in (f"/conversations/{number}", f"/conversations/{number}/thread",
                 f"/conversations/{number}/template?template=delivered",
                 f"/contacts/{number}"):  # fmt: skip
        assert client.get(path).status_code == 404, path
    for path in (f"/conversations/{number}/send", f"/messages/{number}/resend",
                 f"/messages/{number}/cancel", f"/contacts/{number}/carrier",
                 f"/inbound/{number}/thread", f"/users/{number}"):  # fmt: skip
        assert client.post(path, data={"csrf": token}).status_code == 404, path


# --- issue 20, point 8: actions that should not be possible ------------------------------------


@pytest.mark.parametrize("state", ["sent", "delivered", "replied", "queued", "deferred"])
def test_a_text_that_went_or_is_on_its_way_is_not_re_sent(runtime, state):
    message = text_to(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(state=state))
    client = client_for(runtime, "dana")
    answer = client.post(f"/messages/{message}/resend",
                         data={"csrf": csrf_of(client), "back": "/failures"})  # fmt: skip
    assert answer.status_code == 303 and "not%20re-sent" in answer.headers["location"]
    with runtime.engine.connect() as conn:
        assert conn.execute(select(messages.c.id)).scalars().all() == [message]  # nothing new


def test_a_failure_re_sent_and_gone_or_dismissed_leaves_the_failures_page(runtime):
    first, second = text_to(runtime, text="First text"), text_to(runtime, text="Second text")
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(state=State.FAILED.value, reason="refused"))
    client = client_for(runtime, "dana")
    token = csrf_of(client)
    client.post(f"/messages/{first}/resend", data={"csrf": token, "back": "/failures"})
    with runtime.engine.connect() as conn:
        again = conn.execute(select(messages.c.id).where(messages.c.id > second)).scalar_one()
    page = client.get("/failures").text
    assert f'data-message="{first}"' in page and f"Re-sent as #{again} (queued)" in page
    with runtime.engine.begin() as conn:  # the re-sent text went
        conn.execute(messages.update().where(messages.c.id == again).values(state="sent"))
    answer = client.post(f"/messages/{second}/dismiss", data={"csrf": token, "back": "/failures"})
    assert answer.status_code == 303
    page = client.get("/failures").text
    assert f'data-message="{first}"' not in page and f'data-message="{second}"' not in page
    history = client.get("/failures?show=resolved").text
    assert f'data-message="{first}"' in history and f"Re-sent as #{again}, sent" in history
    assert f'data-message="{second}"' in history and "Dismissed by dana" in history
    refused = client.post(f"/messages/{again}/dismiss", data={"csrf": token, "back": "/failures"})
    assert "not%20a%20failure" in refused.headers["location"]


def test_send_at_too_far_ahead_is_refused(runtime):
    from gateway.services.outbound import EnqueueError

    far = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    with pytest.raises(EnqueueError, match="more than 60 days ahead"):
        enqueue(runtime, SendRequest(to="+12025550143", carrier="verizon", text="hi",
                                     send_at=far), utcnow())  # fmt: skip
    near = utcnow() + dt.timedelta(days=59)
    assert enqueue(runtime, SendRequest(to="+12025550143", carrier="verizon", text="hi",
                                        send_at=near), utcnow()).ids  # fmt: skip


# --- issue 20, point 6: who is on the other end --------------------------------------------------


def test_a_form_from_a_foreign_origin_is_refused(runtime):
    client = client_for(runtime, "dana")
    token = csrf_of(client)
    message = text_to(runtime)
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(state=State.FAILED.value))
    form = {"csrf": token, "back": "/failures"}
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"},
                    {"Origin": "null"}):  # fmt: skip
        refused = client.post(f"/messages/{message}/dismiss", data=form, headers=headers)
        assert refused.status_code == 403, headers
    with runtime.engine.connect() as conn:  # nothing changed
        assert conn.execute(select(messages.c.dismissed_at)).scalar() is None
    ours = client.post(f"/messages/{message}/dismiss", data=form,
                       headers={"Origin": "http://testserver"})  # fmt: skip
    assert ours.status_code == 303
    planted = client_for(runtime)
    page = planted.get("/login")
    login_token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    answer = planted.post("/login", headers={"Origin": "https://evil.example"}, data={
        "login_token": login_token, "name": "dana", "password": PASSWORD, "next": "/"})  # fmt: skip
    assert answer.status_code == 403 and "gw_session" not in answer.headers.get("set-cookie", "")


class Served:
    """`gateway serve` on a free port, for what only a real server does (proxy headers)."""

    def __init__(self, folder, extra: str = "") -> None:
        import subprocess
        import sys

        from gateway.services.carrier_sim import free_port
        from tests.conftest import gateway_folder

        self.port = free_port()
        gateway_folder(folder, extra=f"[web]\nport = {self.port}\n{extra}")
        now = utcnow()
        from gateway.store.db import make_engine

        engine = make_engine(f"sqlite:///{folder / 'gw.db'}")
        access.add_user(engine, "dana", "dispatcher", PASSWORD, now)
        engine.dispose()
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=folder,
                                        stdin=subprocess.DEVNULL)  # fmt: skip
        import httpx2

        self.client = httpx2.Client(base_url=f"http://127.0.0.1:{self.port}")
        import time

        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.get("/healthz")
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "gateway serve did not answer"
                time.sleep(0.2)

    def sign_in(self, name: str, password: str, headers: dict[str, str]) -> object:
        page = self.client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
        return self.client.post("/login", headers=headers, data={
            "login_token": token, "name": name, "password": password, "next": "/"})  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_headers_are_believed_only_from_trusted_proxies(tmp_path, trusted):
    """Twenty failed sign-ins from one client, each claiming another address, then the right
    password from yet another: by default the address is the connection's (locked out); with
    [web] trusted_proxies naming the client, its X-Forwarded-For is believed (not locked)."""
    server = Served(tmp_path, 'trusted_proxies = ["127.0.0.1"]\n' if trusted else "")
    try:
        for n in range(access.FAILURES_PER_ADDRESS):
            server.sign_in(f"guess{n}", "wrong password!", {"X-Forwarded-For": f"10.0.0.{n}"})
        answer = server.sign_in("dana", PASSWORD, {"X-Forwarded-For": "10.9.9.9",
                                                  "X-Forwarded-Proto": "https"})  # fmt: skip
        if trusted:
            assert answer.status_code == 303, answer.text
            assert "Secure" in answer.headers["set-cookie"]  # the proxy said https
        else:
            assert answer.status_code == 429, answer.text
    finally:
        server.stop()


def test_a_template_the_conversation_cannot_fill_asks_in_dashboard_words(runtime):
    message = text_to(runtime, order=None)
    with runtime.engine.connect() as conn:
        conversation = conn.execute(
            select(messages.c.conversation_id).where(messages.c.id == message)
        ).scalar_one()
    client = client_for(runtime, "dana")
    page = client.get(f"/conversations/{conversation}").text
    assert 'value="free_text"' not in page  # typing is not a template to pick
    for template in ("delayed", "out_for_delivery"):  # one question at a time, in the draft's box
        answer = client.get(f"/conversations/{conversation}/template", params={
            "template": template})  # fmt: skip
        assert answer.text.startswith('<div id="draft-box">') and answer.text.count("var_") >= 1
        assert "--var" not in answer.text and "does not have" in answer.text
        assert "This needs" in answer.text and answer.text.count("This needs") == 1
