"""Twilio as a channel: each create checked against Twilio's published Messages API, status
callbacks and incoming texts signed as Twilio signs them and answered by a real `gateway serve`,
error 21610 recorded as an opt-out, and STOP left to Twilio to answer."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import load_settings
from gateway.services.carrier_sim import free_port
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from gateway.store.tables import channel_events, contacts, inbound, messages
from tests.conftest import gateway_folder, message_row, rows_in, send_due
from tests.servers import GatewayServe
from tests.twilio_sim import FakeTwilio

PHONE = "+12025550143"  # an AT&T customer: email cannot reach it
OUR_NUMBER = "+15005550006"


@pytest.fixture
def fake():
    running = FakeTwilio().start()
    yield running
    running.stop()


def folder_for(tmp_path: Path, fake: FakeTwilio, smtp_port: int) -> Path:
    port = free_port()
    extra = (
        'from_address = "Dispatch <dispatch@example.com>"\n'
        '[channels]\norder = ["email", "twilio"]\n'
        f'[twilio]\naccount_sid = "{fake.account_sid}"\nauth_token = "{fake.auth_token}"\n'
        f'from = "{OUR_NUMBER}"\napi_url = "{fake.url}"\n'
        f'[web]\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n'
    )
    return gateway_folder(tmp_path, smtp_port, extra)


@pytest.fixture
def served(tmp_path, fake, smtp_server):
    folder = folder_for(tmp_path, fake, smtp_server.port)
    serve = GatewayServe(folder)
    yield Runtime(load_settings(folder / "gateway.toml")), serve
    serve.stop()


async def text(runtime: Runtime, body: str = "Your driver is 10 minutes away") -> int:
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text=body), utcnow()).ids
    await send_due(runtime)
    return message


async def test_a_text_is_created_with_a_status_callback_and_delivered(served, fake):
    runtime, serve = served
    message = await text(runtime)
    sent = message_row(runtime, message)
    assert (sent.state, sent.channel, sent.route) == ("sent", "twilio", "twilio")
    assert "Twilio" in sent.gateway_reason and "AT&T" in sent.gateway_reason
    [form] = fake.created
    assert form["To"] == PHONE and form["From"] == OUR_NUMBER
    assert form["Body"] == "Your driver is 10 minutes away"
    callback = urllib.parse.urlsplit(form["StatusCallback"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == serve.url + (
        "/hooks/twilio/status"
    )
    assert urllib.parse.parse_qs(callback.query) == {"ref": [sent.channel_ref]}
    assert 0 < int(form["ValidityPeriod"]) <= 6 * 3600
    [sid] = fake.forms
    assert sid in sent.last_reply
    assert fake.status(sid, "sent")[0] == 204 and message_row(runtime, message).state == "sent"
    assert (
        fake.status(sid, "delivered")[0] == 204
        and message_row(runtime, message).state == "delivered"
    )


async def test_undelivered_fails_the_text_with_the_codes_meaning(served, fake):
    runtime, _ = served
    message = await text(runtime)
    [sid] = fake.forms
    assert fake.status(sid, "undelivered", 30003)[0] == 204
    failed = message_row(runtime, message)
    assert failed.state == "failed" and "30003" in failed.reason and "unreachable" in failed.reason


async def test_21610_marks_the_contact_opted_out_and_holds_their_other_texts(served, fake):
    runtime, _ = served
    fake.faults.errors = [(400, 21610)]
    [first] = enqueue(runtime, SendRequest(PHONE, "att", text="One"), utcnow()).ids
    [later] = enqueue(
        runtime, SendRequest(PHONE, "att", text="Two", send_at=utcnow() + dt.timedelta(days=1)),
        utcnow(),
    ).ids  # fmt: skip
    await send_due(runtime)
    refused = message_row(runtime, first)
    assert refused.state == "failed" and "21610" in refused.last_reply
    assert "opted out" in refused.last_reply
    with runtime.engine.connect() as conn:
        assert conn.execute(select(contacts.c.opted_out)).scalar_one() is True
    assert (message_row(runtime, later).state, message_row(runtime, later).reason) == (
        "suppressed",
        "opted_out",
    )


async def test_a_reply_is_threaded_and_stop_is_recorded_but_not_answered(served, fake):
    runtime, serve = served
    message = await text(runtime)
    incoming = serve.url + "/hooks/twilio/incoming"
    status, body = fake.incoming(incoming, PHONE, OUR_NUMBER, "Please ring the bell")
    assert status == 200 and "<Response></Response>" in body
    with runtime.engine.connect() as conn:
        [reply] = conn.execute(select(inbound)).all()
    assert reply.kind == "reply" and reply.matched_message_id == message
    assert reply.conversation_id == message_row(runtime, message).conversation_id

    assert fake.incoming(incoming, PHONE, OUR_NUMBER, "STOP")[0] == 200
    with runtime.engine.connect() as conn:
        assert conn.execute(select(contacts.c.opted_out)).scalar_one() is True
    assert rows_in(runtime, messages) == 1  # Twilio answered STOP itself: no answer of ours
    assert fake.incoming(incoming, PHONE, OUR_NUMBER, "START")[0] == 200
    with runtime.engine.connect() as conn:
        assert conn.execute(select(contacts.c.opted_out)).scalar_one() is False
    assert rows_in(runtime, messages) == 1


async def test_a_wrong_signature_or_address_is_refused_and_nothing_is_stored(served, fake):
    runtime, serve = served
    incoming = serve.url + "/hooks/twilio/incoming"
    params = {"MessageSid": "SM" + "1" * 32, "From": PHONE, "To": OUR_NUMBER, "Body": "hi"}
    refused = [
        fake.call(incoming, params, signature=fake.sign(incoming, params, token="0" * 32)),
        # Signed for another address (what a proxy in front might report instead of ours).
        fake.call(incoming, params, signature=fake.sign("https://elsewhere.example/x", params)),
        fake.call(incoming, params, signature=""),
        fake.call(incoming, {**params, "Body": "changed"}, signature=fake.sign(incoming, params)),
    ]
    assert [status for status, _ in refused] == [401, 401, 401, 401]
    assert rows_in(runtime, channel_events) == 0 and rows_in(runtime, inbound) == 0


async def test_the_same_callback_twice_is_stored_once(served, fake):
    runtime, serve = served
    message = await text(runtime)
    [sid] = fake.forms
    assert fake.status(sid, "delivered")[0] == 204
    assert fake.status(sid, "delivered")[0] == 204
    assert (
        message_row(runtime, message).state == "delivered" and rows_in(runtime, channel_events) == 1
    )
    incoming = serve.url + "/hooks/twilio/incoming"
    params = {"MessageSid": "SM" + "2" * 32, "From": PHONE, "To": OUR_NUMBER, "Body": "ok"}
    assert fake.call(incoming, params)[0] == 200 and fake.call(incoming, params)[0] == 200
    assert rows_in(runtime, inbound) == 1


async def test_a_lost_answer_is_ambiguous_and_not_created_again(served, fake):
    runtime, _ = served
    fake.faults.lose_answers = 1
    message = await text(runtime)
    held = message_row(runtime, message)
    assert held.state == "deferred" and "ambiguous" in held.reason
    assert len(fake.created) == 1  # not created again at once: it may have gone


async def test_a_refused_sign_in_names_the_fix(tmp_path, fake, smtp_server):
    folder = folder_for(tmp_path, fake, smtp_server.port)
    fake.auth_token = "changed-in-the-console"
    runtime = Runtime(load_settings(folder / "gateway.toml"))
    message = await text(runtime)
    refused = message_row(runtime, message)
    assert refused.state == "deferred" and "auth token" in refused.last_reply


def test_doctor_checks_twilio_and_sends_a_test_text(served, fake):
    import json

    from tests.conftest import run_gateway

    runtime, _ = served
    folder = Path(runtime.settings.source_file).parent
    done = run_gateway("doctor", "--format", "json", "--send-to", PHONE, cwd=folder)
    checks = {f"{c['section']}: {c['check']}": c for c in json.loads(done.stdout)["checks"]}
    assert checks["twilio: signed in"]["ok"] and checks["twilio: public_url"]["ok"]
    assert checks[f"twilio: test text to {PHONE}"]["ok"]
    assert fake.created[-1]["To"] == PHONE
    fake.auth_token = "rotated-in-the-console"
    done = run_gateway("doctor", "--format", "json", cwd=folder)
    checks = {f"{c['section']}: {c['check']}": c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1 and not checks["twilio: signed in"]["ok"]
    assert "Auth Token" in checks["twilio: signed in"]["hint"]
