"""Webhooks to a real HTTP receiver: state changes and replies, signed, retried, logged."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import create_engine

from gateway.config import ConfigError, load_settings
from gateway.services.inbound import Ingest, Receiver
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.sender import Sender
from gateway.services.webhooks import Webhooks, delivery_log
from gateway.store.db import utcnow
from gateway.transport.mailsource import deliver_to_maildir
from tests.conftest import gateway_folder, make_runtime, run_gateway

SECRET = "webhook-secret-for-tests"


class HookReceiver:
    """An order system's endpoint: records each call, answers with the next planned status."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.answers = list(answers or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                self.send_response(outer.answers.pop(0) if outer.answers else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.calls]


@pytest.fixture
def hook():
    receiver = HookReceiver()
    yield receiver
    receiver.server.shutdown()


def runtime_with(db_url, smtp_server, url, **more):
    runtime = make_runtime(db_url, smtp_server.port)
    runtime.settings.webhooks.urls = [url]
    runtime.settings.webhooks.secret = SECRET
    for key, value in more.items():
        setattr(runtime.settings.webhooks, key, value)
    return runtime


async def send(runtime, text="Your order is out"):
    made = enqueue(runtime, SendRequest("+12025550143", "verizon", text=text), utcnow())
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    await sender.run(asyncio.Event(), until_idle=True)
    return made.ids[0]


async def test_a_state_change_is_posted_signed(db_url, smtp_server, hook):
    runtime = runtime_with(db_url, smtp_server, hook.url)
    hooks = Webhooks(runtime, runtime.engine)
    assert hooks.collect(utcnow()) == 0  # the first call starts from now
    sent = await send(runtime)
    later = utcnow() + dt.timedelta(seconds=2)
    assert hooks.collect(later) == 1
    assert await hooks.deliver(later) == 1
    ((headers, body),) = hook.calls
    event = json.loads(body)
    assert (event["event"], event["id"], event["state"], event["to"]) == (
        "state", sent, "sent", "+12025550143",
    )  # fmt: skip
    timestamp = headers["X-Gateway-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert headers["X-Gateway-Signature"] == "v1=" + expected.hexdigest()
    assert headers["X-Gateway-Event"] == "state"
    assert hooks.collect(later + dt.timedelta(seconds=5)) == 0  # nothing is reported twice


async def test_a_failed_call_is_retried_with_backoff_and_logged(sqlite_url, smtp_server):
    hook = HookReceiver(answers=[500])
    try:
        runtime = runtime_with(sqlite_url, smtp_server, hook.url)
        hooks = Webhooks(runtime, runtime.engine)
        hooks.collect(utcnow())
        await send(runtime)
        later = utcnow() + dt.timedelta(seconds=2)
        hooks.collect(later)
        assert await hooks.deliver(later) == 0
        (row,) = delivery_log(runtime.engine)
        assert (row["attempts"], row["last_status"], row["delivered_at"]) == (1, 500, None)
        assert await hooks.deliver(later + dt.timedelta(seconds=5)) == 0  # not due yet
        assert await hooks.deliver(later + dt.timedelta(seconds=20)) == 1
        (row,) = delivery_log(runtime.engine)
        assert row["attempts"] == 2 and row["delivered_at"] is not None
        assert len(hook.calls) == 2 and hook.calls[0][1] == hook.calls[1][1]
    finally:
        hook.server.shutdown()


async def test_an_unreachable_receiver_is_given_up_after_max_attempts(sqlite_url, smtp_server):
    runtime = runtime_with(sqlite_url, smtp_server, "http://127.0.0.1:9/nothing", max_attempts=2)
    hooks = Webhooks(runtime, runtime.engine)
    hooks.collect(utcnow())
    await send(runtime)
    at = utcnow() + dt.timedelta(seconds=2)
    hooks.collect(at)
    await hooks.deliver(at)
    await hooks.deliver(at + dt.timedelta(hours=2))
    (row,) = delivery_log(runtime.engine)
    assert row["gave_up"] and row["attempts"] == 2 and "cannot reach" in row["last_error"]


async def test_a_database_that_refuses_every_pass_is_said_once_without_a_traceback(
    tmp_path, smtp_server, hook, caplog
):
    """Passes run every second: the database locked past its busy timeout fails each one, and
    the log says so once (no traceback), then once that passes work again."""
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    runtime = runtime_with(url, smtp_server, hook.url)
    hooks = Webhooks(runtime, create_engine(url, connect_args={"timeout": 0.05}))
    hooks.collect(utcnow())
    await send(runtime)  # a state change to collect: the next pass must write
    caplog.set_level(logging.DEBUG, logger="gateway.services.webhooks")
    holder = sqlite3.connect(tmp_path / "gw.db", timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    stop = asyncio.Event()
    task = asyncio.create_task(hooks.run(stop, every=0.02))
    try:
        for _ in range(200):  # several passes fail (seen in the debug log)
            if sum("webhooks pass failed" in r.getMessage() for r in caplog.records) >= 6:
                break
            await asyncio.sleep(0.05)
    finally:
        holder.rollback()
        holder.close()
    for _ in range(200):
        if hook.calls:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert hook.calls  # delivered once the database answered
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(" (")[0] for r in said] == [
        "webhooks pass failed", "webhooks passes work again"]  # fmt: skip
    assert "database is locked" in said[0].getMessage()
    assert not any(r.exc_info for r in said)


async def test_a_reply_is_posted_with_its_text_and_message(sqlite_url, smtp_server, hook, tmp_path):
    runtime = runtime_with(sqlite_url, smtp_server, hook.url, events=["reply"])
    runtime.settings.inbound.maildir = str(tmp_path / "Maildir")
    hooks = Webhooks(runtime, runtime.engine)
    hooks.collect(utcnow())
    sent = await send(runtime)
    deliver_to_maildir(tmp_path / "Maildir",
                       b"From: 2025550143@vtext.com\nTo: dispatch@example.com\n\nBe there at 5\n",
                       "1.host")  # fmt: skip
    await Receiver(Ingest(runtime, runtime.engine), runtime.mail_source(runtime.engine)).run(
        asyncio.Event(), until_idle=True
    )
    later = utcnow() + dt.timedelta(seconds=2)
    hooks.collect(later)
    await hooks.deliver(later)
    (event,) = hook.events()  # state events are not asked for
    assert (event["event"], event["text"], event["message_id"], event["phone"]) == (
        "reply", "Be there at 5", sent, "+12025550143",
    )  # fmt: skip


async def test_a_delay_warning_is_no_bounce_event_and_the_final_report_is(
    sqlite_url, smtp_server, hook, tmp_path
):
    from tests.test_inbound import bounce_for

    runtime = runtime_with(sqlite_url, smtp_server, hook.url, events=["bounce"])
    runtime.settings.inbound.maildir = str(tmp_path / "Maildir")
    hooks = Webhooks(runtime, runtime.engine)
    hooks.collect(utcnow())
    sent = await send(runtime)
    (ours,) = smtp_server.received
    warning = bounce_for(ours.content, "2025550143@vtext.com", "4.4.7", "Connection timed out",
                         action="delayed")  # fmt: skip
    final = bounce_for(ours.content, "2025550143@vtext.com")
    for n, report in enumerate((warning, final)):
        deliver_to_maildir(tmp_path / "Maildir", report, f"{n}.host")
    await Receiver(Ingest(runtime, runtime.engine), runtime.mail_source(runtime.engine)).run(
        asyncio.Event(), until_idle=True
    )
    later = utcnow() + dt.timedelta(seconds=2)
    hooks.collect(later)
    await hooks.deliver(later)
    (event,) = hook.events()
    assert (event["event"], event["message_id"]) == ("bounce", sent)
    assert event["recipients"][0]["final"] is True and event["recipients"][0]["status"] == "5.1.1"


def test_webhook_settings_are_checked():
    with pytest.raises(ConfigError, match="http"):
        load_settings(None, webhooks={"urls": ["ftp://x"]})
    settings = load_settings(None, webhooks={"urls": ["https://erp.example.com/hooks"]})
    with pytest.raises(ConfigError, match="secret_env"):
        settings.webhooks.resolve_secret()


def test_run_until_idle_reports_what_it_sent(tmp_path, smtp_server, hook):
    gateway_folder(tmp_path, smtp_server.port,
                   f'[webhooks]\nurls = ["{hook.url}"]\nsecret_env = "HOOK_SECRET"\n')  # fmt: skip
    env = {"HOOK_SECRET": SECRET}
    assert run_gateway("run", "--until-idle", cwd=tmp_path, env=env).returncode == 0  # starts
    assert run_gateway("send", "--to", "+12025550143", "--carrier", "verizon", "--text", "hi",
                       cwd=tmp_path).returncode == 0  # fmt: skip
    ran = run_gateway("run", "--until-idle", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert [e["state"] for e in hook.events()] == ["sent"]
    logged = json.loads(run_gateway("webhooks", "log", "--format", "json", cwd=tmp_path).stdout)
    assert logged[0]["last_status"] == 200
