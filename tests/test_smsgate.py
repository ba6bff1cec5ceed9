"""The company's Android phone as a channel (SMS Gate): texts posted to the simulated phone (every
request checked against the published specification), its signed webhooks answered by a real
`gateway serve`, replies threaded as mail replies are, and a channel that is down passing its
texts to the next one in the order."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import load_settings
from gateway.services.carrier_sim import free_port
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from gateway.store.tables import channel_events, contacts, inbound
from tests.conftest import gateway_folder, message_row, rows_in, send_due
from tests.servers import GatewayServe
from tests.smsgate_sim import SmsGatePhone

PHONE = "+12025550143"  # an AT&T customer: its gateway closed on 2025-06-17
VERIZON = "+12025550188"


@pytest.fixture
def phone():
    running = SmsGatePhone().start()
    yield running
    running.stop()


def folder_for(tmp_path: Path, phone: SmsGatePhone, smtp_port: int, order: str,
               url: str | None = None, public_url: str | None = None) -> Path:  # fmt: skip
    port = free_port()
    extra = (
        'from_address = "Dispatch <dispatch@example.com>"\n'
        f"[channels]\norder = {order}\n"
        f'[smsgate]\nurl = "{url or phone.url}"\nusername = "{phone.username}"\n'
        f'password = "{phone.password}"\nsigning_key = "{phone.signing_key}"\n'
        f'[web]\nport = {port}\npublic_url = "{public_url or f"http://127.0.0.1:{port}"}"\n'
        "[sender]\nidle_poll_seconds = 0.05\n"
    )
    return gateway_folder(tmp_path, smtp_port, extra)


def runtime_of(folder: Path) -> Runtime:
    return Runtime(load_settings(folder / "gateway.toml"))


@pytest.fixture
def served(tmp_path, phone, smtp_server):
    folder = folder_for(tmp_path, phone, smtp_server.port, '["email", "smsgate"]')
    serve = GatewayServe(folder)
    yield runtime_of(folder), serve
    serve.stop()


async def test_a_text_goes_by_the_phone_and_each_part_delivered_marks_it(served, phone):
    runtime, serve = served
    text = "Your parcel is on its way. " * 8  # two SMS parts, one text for the phone
    result = enqueue(runtime, SendRequest(PHONE, "att", text=text), utcnow())
    assert result.channel == "smsgate" and result.to_address is None
    await send_due(runtime)
    [message] = result.ids
    sent = message_row(runtime, message)
    assert (sent.state, sent.channel, sent.route) == ("sent", "smsgate", "smsgate")
    assert "AT&T" in sent.gateway_reason and "SMS Gate" in sent.gateway_reason
    [posted] = phone.posts
    assert posted["id"] == sent.channel_ref and posted["phoneNumbers"] == [PHONE]
    assert posted["textMessage"]["text"] == text.strip() and posted["withDeliveryReport"] is True
    assert 0 < posted["ttl"] <= 6 * 3600  # the text's lifetime
    assert sent.segments == 2
    # The phone reports each part; the text is delivered once both are.
    assert phone.call(serve.hook, phone.delivered(sent.channel_ref))[0] == 200
    assert message_row(runtime, message).state == "sent"
    assert phone.call(serve.hook, phone.delivered(sent.channel_ref))[0] == 200
    assert message_row(runtime, message).state == "delivered"


async def test_a_failure_the_phone_reports_fails_the_text_with_its_reason(served, phone):
    runtime, serve = served
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text="Driver is here"), utcnow()).ids
    await send_due(runtime)
    ref = message_row(runtime, message).channel_ref
    assert phone.call(serve.hook, phone.failed(ref, "RESULT_ERROR_GENERIC_FAILURE"))[0] == 200
    failed = message_row(runtime, message)
    assert failed.state == "failed" and "RESULT_ERROR_GENERIC_FAILURE" in failed.reason


async def test_a_lost_answer_is_posted_again_and_sent_once(served, phone):
    runtime, _ = served
    phone.faults.lose_answers = 1  # the phone takes the text; its 202 never arrives
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text="Gate code 4412"), utcnow()).ids
    await send_due(runtime)
    assert message_row(runtime, message).state == "sent"
    assert len(phone.posts) == 2 and len(phone.messages) == 1  # posted twice, 409, queued once
    assert "409" in message_row(runtime, message).last_reply


@pytest.mark.parametrize(("status", "state"), [(409, "sent"), (503, "deferred"), (400, "failed")])
async def test_the_phones_answers(served, phone, status, state):
    runtime, _ = served
    phone.faults.answer_status = [status]
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text="Running late"), utcnow()).ids
    await send_due(runtime)
    done = message_row(runtime, message)
    assert done.state == state, done.reason
    assert str(status) in done.last_reply


async def test_a_reply_is_threaded_and_stop_is_kept_and_answered_by_the_phone(served, phone):
    runtime, serve = served
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text="Out for delivery"), utcnow()).ids
    await send_due(runtime)
    status, answer = phone.call(serve.hook, phone.received(PHONE, "Leave it with the neighbour"))
    assert status == 200 and answer["result"] == "stored"
    with runtime.engine.connect() as conn:
        [reply] = conn.execute(select(inbound)).all()
    assert reply.kind == "reply" and reply.matched_message_id == message
    assert reply.conversation_id == message_row(runtime, message).conversation_id
    assert message_row(runtime, message).state == "replied"

    assert phone.call(serve.hook, phone.received(PHONE, "STOP"))[0] == 200
    with runtime.engine.connect() as conn:
        assert conn.execute(select(contacts.c.opted_out)).scalar_one() is True
    await send_due(runtime)  # the confirmation goes by the phone, like any text to the number
    [_, answer] = phone.posts
    assert answer["phoneNumbers"] == [PHONE]
    assert answer["textMessage"]["text"] == runtime.settings.inbound.stop_text


async def test_a_bad_or_old_signature_is_refused_and_nothing_is_stored(served, phone):
    runtime, serve = served
    body = phone.received(PHONE, "hello")
    stamp = int(time.time())
    refused = [
        phone.call(serve.hook, body, signature=phone.sign(body, str(stamp), key="wrong")),
        phone.call(
            serve.hook, body, timestamp=stamp - 600, signature=phone.sign(body, str(stamp - 600))
        ),
        phone.call(serve.hook, body, signature=""),
        phone.call(serve.hook, body + b" ", signature=phone.sign(body, str(stamp))),
    ]
    assert [status for status, _ in refused] == [401, 401, 401, 401]
    assert all(answer["error"] == "unauthorized" for _, answer in refused)
    assert rows_in(runtime, channel_events) == 0 and rows_in(runtime, inbound) == 0


async def test_the_same_event_twice_is_stored_once(served, phone):
    runtime, serve = served
    body = phone.received(PHONE, "Is the driver close?")
    first, again = phone.call(serve.hook, body), phone.call(serve.hook, body)
    assert first == (200, {"ok": True, "result": "stored"})
    assert again == (200, {"ok": True, "result": "duplicate"})
    assert rows_in(runtime, channel_events) == 1 and rows_in(runtime, inbound) == 1


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"id": "x"}', b'{"id": "x", "event": "sms:received", "payload":'
     b' {"messageId": 5, "phoneNumber": "+12025550143"}}',
     b'{"id": "x", "event": "sms:received", "payload": {"messageId": "m", "phoneNumber": "nope"}}'],
)  # fmt: skip
async def test_malformed_bodies_get_a_4xx_and_change_nothing(served, phone, body):
    runtime, serve = served
    status, answer = phone.call(serve.hook, body)
    assert 400 <= status < 500 and set(answer) == {"error", "message"}
    assert rows_in(runtime, channel_events) == 0 and rows_in(runtime, inbound) == 0


async def test_a_phone_that_is_down_passes_new_texts_to_email(tmp_path, phone, smtp_server):
    folder = folder_for(
        tmp_path,
        phone,
        smtp_server.port,
        '["smsgate", "email"]',
        url=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip  (nothing listens)
    runtime = runtime_of(folder)
    [to_verizon] = enqueue(runtime, SendRequest(VERIZON, "verizon", text="Hi"), utcnow()).ids
    [to_att] = enqueue(runtime, SendRequest(PHONE, "att", text="Hi"), utcnow()).ids
    assert (
        message_row(runtime, to_verizon).channel == "smsgate"
    )  # the first in the order reaches both
    await send_due(runtime)
    moved = message_row(runtime, to_verizon)
    # Never handed to the phone (no connection): email carries it at once.
    assert (moved.state, moved.channel, moved.route) == ("sent", "email", "own")
    assert len(smtp_server.received) == 1
    assert b"2025550188@vtext.com" in smtp_server.received[0].rcpt_tos[0].encode()
    # Email cannot reach AT&T's closed gateway: that text waits for the phone.
    waiting = message_row(runtime, to_att)
    assert waiting.state == "deferred" and waiting.channel == "smsgate"


async def test_an_ambiguous_text_never_changes_channel(tmp_path, phone, smtp_server):
    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate", "email"]')
    runtime = runtime_of(folder)
    phone.faults.silent = True  # the phone takes the text and never answers: it may be there
    [message] = enqueue(runtime, SendRequest(VERIZON, "verizon", text="Hi"), utcnow()).ids
    await send_due(runtime)
    held = message_row(runtime, message)
    assert held.state == "deferred" and "ambiguous" in (held.reason or "")
    assert held.channel == "smsgate" and not smtp_server.received


def test_outbox_list_and_the_api_show_the_channel(tmp_path, phone, smtp_server):
    from tests.conftest import run_gateway

    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate", "email"]')
    runtime = runtime_of(folder)
    enqueue(runtime, SendRequest(PHONE, "att", text="Hi"), utcnow())
    listed = run_gateway("outbox", "list", "--format", "json", cwd=folder)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["channel"] == "smsgate"
    from fastapi.testclient import TestClient

    from gateway.store.access import create_token
    from gateway.web.app import create_app

    api = TestClient(create_app(runtime))
    api.headers["Authorization"] = f"Bearer {create_token(runtime.engine, 'orders', utcnow())}"
    posted = api.post("/api/v1/messages", json={"to": PHONE, "carrier": "att", "text": "Hello"})
    assert posted.status_code == 201, posted.text
    assert posted.json()["channel"] == "smsgate" and posted.json()["to_address"] is None
    shown = api.get(f"/api/v1/messages/{posted.json()['id']}").json()
    assert shown["channel"] == "smsgate"


async def test_a_phone_that_stays_down_shows_in_gateway_status(tmp_path, phone, smtp_server):
    from tests.conftest import run_gateway

    dead = f"http://127.0.0.1:{free_port()}"
    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate"]', url=dead)
    runtime = runtime_of(folder)
    for n in range(3):  # three texts, three refused connections: the breaker opens
        enqueue(runtime, SendRequest(PHONE, "att", text=f"Hi {n}"), utcnow())
    await send_due(runtime)
    shown = run_gateway("status", "--format", "json", cwd=folder)
    routes = {r["name"]: r for r in json.loads(shown.stdout)["routes"]}
    assert routes["smsgate"]["ok"] is False
    assert dead in routes["smsgate"]["error"]


def test_webhooks_are_registered_on_the_phone_and_removed(served, phone):
    from tests.conftest import run_gateway

    runtime, serve = served
    folder = Path(runtime.settings.source_file).parent
    done = run_gateway("channels", "webhooks", "--register", "--format", "json", cwd=folder)
    assert done.returncode == 0, done.stderr
    hooks = {h["event"]: h for h in phone.webhooks.values()}
    assert set(hooks) == {"sms:received", "sms:sent", "sms:delivered", "sms:failed"}
    assert {h["url"] for h in hooks.values()} == {serve.hook}
    assert all(row["ours"] for row in json.loads(done.stdout))
    # The phone calls the address it was given.
    status, _ = phone.call(hooks["sms:received"]["url"], phone.received(PHONE, "Thanks!"))
    assert status == 200 and rows_in(runtime, inbound) == 1
    phone.webhooks["someone-else"] = {"id": "someone-else", "url": "https://x.example/h",
                                      "event": "sms:sent"}  # fmt: skip
    removed = run_gateway("channels", "webhooks", "--remove", "--format", "json", cwd=folder)
    assert removed.returncode == 0, removed.stderr
    assert list(phone.webhooks) == ["someone-else"]  # only ours are removed
    listed = run_gateway("channels", "list", "--format", "json", cwd=folder)
    rows = {row["channel"]: row for row in json.loads(listed.stdout)}
    assert rows["smsgate"]["position"] == 2 and rows["smsgate"]["state"] == "ok"
    assert rows["smsgate"]["where"] == phone.url and rows["email"]["position"] == 1


def test_a_plain_http_public_url_is_refused_for_the_phone(tmp_path, phone, smtp_server):
    from tests.conftest import run_gateway

    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate"]',
                        public_url="http://gateway.example.com")  # fmt: skip
    done = run_gateway("channels", "webhooks", "--register", cwd=folder)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "https" in done.stderr and "public_url" in done.stderr
    assert not phone.webhooks


def test_gateway_address_names_the_channel_and_why(tmp_path, phone, smtp_server):
    from tests.conftest import run_gateway

    folder = folder_for(tmp_path, phone, smtp_server.port, '["email", "smsgate"]')
    shown = run_gateway("address", PHONE, "--carrier", "att", "--format", "json", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["channel"] == "smsgate" and found["address"] is None
    assert "AT&T" in found["why"] and "SMS Gate" in found["why"]
    by_mail = run_gateway("address", VERIZON, "--carrier", "verizon", "--format", "json",
                          cwd=folder)  # fmt: skip
    assert json.loads(by_mail.stdout)["channel"] == "email"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('[channels]\norder = ["smsgate"]\n', "channels.order names smsgate, but [smsgate]"),
        ('[channels]\norder = ["email", "email"]\n', "name each channel once"),
        ('[smsgate]\nurl = "ftp://phone"\nusername = "sms"\n', "must be an http(s) URL"),
        ('[smsgate]\nurl = "http://10.0.0.5:8080"\n', "give the username the app shows"),
        ('[smsgate]\nurl = "http://10.0.0.5:8080"\nusername = "s"\ncountries = ["USA"]\n',
         "not a two-letter country code"),
    ],
)  # fmt: skip
def test_channel_settings_that_cannot_work_are_refused(tmp_path, extra, words):
    from tests.conftest import run_gateway

    gateway_folder(tmp_path, extra=extra, migrate=False)
    done = run_gateway("config", "check", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert words in done.stderr, done.stderr


async def test_a_report_faster_than_the_senders_own_write_is_kept(served, phone):
    """The phone answers 202 and reports the delivery within the same moment: the report may
    arrive while the text is still `sending`, and the sender's write after it keeps it."""
    import datetime as dt

    from gateway.domain.delivery import AttemptOutcome, Decision, OutcomeKind, State
    from gateway.store.sending import AttemptRecord, claim_due, record_attempts

    runtime, serve = served
    [message] = enqueue(runtime, SendRequest(PHONE, "att", text="At the door"), utcnow()).ids
    now = utcnow()
    [claimed] = claim_due(runtime.engine, "w1", now, dt.timedelta(minutes=2), 10)
    ref = message_row(runtime, message).channel_ref
    phone.messages[ref] = {"phoneNumbers": [PHONE]}  # what the phone holds for the text
    assert phone.call(serve.hook, phone.delivered(ref))[0] == 200
    assert message_row(runtime, message).state == "delivered"
    accepted = AttemptOutcome(OutcomeKind.ACCEPTED, "202 queued on the phone", 202)
    record_attempts(runtime.engine, [AttemptRecord(
        claimed.id, 1, "w1", "smsgate", "smsgate", accepted, Decision(State.SENT, None, None),
        now, utcnow())])  # fmt: skip
    done = message_row(runtime, message)
    assert done.state == "delivered" and done.attempts == 1 and done.lease_owner is None


def test_where_the_phone_cannot_call_in_its_news_is_read_from_it(tmp_path, phone, smtp_server):
    from tests.conftest import run_gateway

    folder = folder_for(tmp_path, phone, smtp_server.port, '["email", "smsgate"]')
    config = (folder / "gateway.toml").read_text()  # [smsgate] ends where [web] begins
    (folder / "gateway.toml").write_text(config.replace("[web]", "poll_seconds = 30\n[web]", 1))
    runtime = runtime_of(folder)
    ids = []
    for words in ("Out for delivery", "Arriving now"):  # one after the other
        ids += enqueue(runtime, SendRequest(PHONE, "att", text=words), utcnow()).ids
        done = run_gateway("run", "--until-idle", cwd=folder)
        assert done.returncode == 0, done.stderr
    first, second = ids
    refs = [message_row(runtime, m).channel_ref for m in (first, second)]
    phone.states[refs[0]] = "Delivered"
    phone.states[refs[1]] = "Failed"
    phone.inbox_text(PHONE, "Ring twice please")
    for _ in range(2):  # a second look finds nothing new
        done = run_gateway("run", "--until-idle", cwd=folder)
        assert done.returncode == 0, done.stderr
    assert message_row(runtime, first).state == "delivered"
    failed = message_row(runtime, second)
    assert failed.state == "failed" and "RESULT_ERROR_NO_SERVICE" in failed.reason
    with runtime.engine.connect() as conn:
        [reply] = conn.execute(select(inbound)).all()
    assert reply.text == "Ring twice please" and reply.matched_message_id == second


def doctor(folder: Path, *args: str) -> dict[str, dict]:
    from tests.conftest import run_gateway

    done = run_gateway("doctor", "--format", "json", *args, cwd=folder)
    assert "Traceback" not in done.stderr, done.stderr
    checks = json.loads(done.stdout)["checks"]
    return {f"{c['section']}: {c['check']}": c for c in checks}


def test_doctor_checks_the_phone_and_says_what_to_fix(served, phone):
    runtime, _ = served
    folder = Path(runtime.settings.source_file).parent
    found = doctor(folder)
    assert found["smsgate: reachable"]["ok"] and "pass" in found["smsgate: reachable"]["detail"]
    assert found["smsgate: signed in"]["ok"]
    assert not found["smsgate: webhooks"]["ok"]
    assert "gateway channels webhooks --register" in found["smsgate: webhooks"]["hint"]
    from tests.conftest import run_gateway

    assert run_gateway("channels", "webhooks", "--register", cwd=folder).returncode == 0
    found = doctor(folder, "--send-to", VERIZON)
    assert all(check["ok"] for name, check in found.items() if name.startswith("smsgate")), found
    assert found["smsgate: public_url"]["detail"].endswith("answers")
    assert phone.posts[-1]["phoneNumbers"] == [VERIZON]  # the test text went by the phone
    phone.password = "changed-on-the-phone"
    found = doctor(folder)
    assert not found["smsgate: signed in"]["ok"]
    assert "username and the password" in found["smsgate: signed in"]["hint"]


def test_doctor_says_when_the_phone_cannot_be_reached(tmp_path, phone, smtp_server):
    dead = f"http://127.0.0.1:{free_port()}"
    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate"]', url=dead)
    found = doctor(folder)
    assert not found["smsgate: reachable"]["ok"]
    assert dead in found["smsgate: reachable"]["hint"]
    assert "smsgate: signed in" not in found  # later steps would only repeat it


def test_an_admin_sets_up_the_phone_in_the_dashboard(tmp_path, phone, smtp_server):
    from gateway.store import access
    from tests.test_dashboard import PASSWORD, client_for, csrf_of

    folder = gateway_folder(tmp_path, smtp_server.port)
    runtime = runtime_of(folder)
    access.add_user(runtime.engine, "ana", "admin", PASSWORD, utcnow())
    admin = client_for(runtime, "ana")
    csrf = csrf_of(admin, "/settings")
    # The order cannot name the phone before the phone is set up: refused, nothing saved.
    refused = admin.post("/settings/channels", data={"csrf": csrf,
                         "channels.order": "email, smsgate"})  # fmt: skip
    assert refused.status_code == 200 and "[smsgate] is not configured" in refused.text
    assert runtime.settings.channels.order == ["email"]
    saved = admin.post("/settings/smsgate", data={
        "csrf": csrf, "smsgate.url": phone.url, "smsgate.username": phone.username,
        "smsgate.password": phone.password, "smsgate.signing_key": phone.signing_key,
        "smsgate.countries": "us, ca"})  # fmt: skip
    assert saved.status_code == 303, saved.text
    saved = admin.post("/settings/channels", data={"csrf": csrf,
                       "channels.order": "email, smsgate"})  # fmt: skip
    assert saved.status_code == 303, saved.text
    assert runtime.settings.channels.order == ["email", "smsgate"]
    assert runtime.settings.smsgate.countries == ["US", "CA"]
    page = admin.get("/settings").text
    assert phone.password not in page and phone.signing_key not in page
    tested = admin.post("/settings/test/smsgate", headers={"X-CSRF-Token": csrf})
    assert tested.status_code == 200, tested.text
    assert '<span class="mark">✓</span> reachable' in tested.text
    assert '<span class="mark">✓</span> signed in' in tested.text
    assert "set web.public_url" in tested.text  # what is left to do, said
    # Texts now take the phone where email cannot reach.
    assert enqueue(runtime, SendRequest(PHONE, "att", text="Hi"), utcnow()).channel == "smsgate"


async def test_the_order_system_hears_of_the_phones_reports_and_replies(served, phone):
    from gateway.services.webhooks import Webhooks
    from tests.test_webhooks import HookReceiver

    runtime, serve = served
    receiver = HookReceiver()
    try:
        runtime.settings.webhooks.urls = [receiver.url]
        runtime.settings.webhooks.secret = "order-system-secret"
        hooks = Webhooks(runtime, runtime.engine)
        hooks.collect(utcnow())  # a first run reports from here on
        [message] = enqueue(runtime, SendRequest(PHONE, "att", text="On the way"), utcnow()).ids
        await send_due(runtime)
        hooks.collect(utcnow())  # the hand-over: "sent"
        ref = message_row(runtime, message).channel_ref
        for report in (phone.delivered(ref), phone.received(PHONE, "Great, thanks")):
            assert phone.call(serve.hook, report)[0] == 200
            hooks.collect(utcnow())
            await hooks.deliver(utcnow())
        events = receiver.events()
        states = [e["state"] for e in events if e["event"] == "state" and e["id"] == message]
        assert states == ["sent", "delivered"]  # the phone's report, after the hand-over
        [reply] = [e for e in events if e["event"] == "reply"]
        assert reply["text"] == "Great, thanks" and reply["message_id"] == message
    finally:
        receiver.server.shutdown()


async def test_the_phones_daily_limit_holds_the_rest(tmp_path, phone, smtp_server):
    folder = folder_for(tmp_path, phone, smtp_server.port, '["smsgate"]')
    config = (folder / "gateway.toml").read_text()  # [smsgate] ends where [web] begins
    (folder / "gateway.toml").write_text(config.replace("[web]", "daily_limit = 2\n[web]", 1))
    runtime = runtime_of(folder)
    ids = [enqueue(runtime, SendRequest(PHONE, "att", text=f"Text {n}"), utcnow()).ids[0]
           for n in range(3)]  # fmt: skip
    await send_due(runtime)
    states = [message_row(runtime, i).state for i in ids]
    assert sorted(states) == ["deferred", "sent", "sent"] and len(phone.posts) == 2
    [held] = [message_row(runtime, i) for i in ids if message_row(runtime, i).state == "deferred"]
    assert "daily limit" in held.reason


def test_a_reply_by_the_phone_shows_live_in_the_dashboard(served, phone):
    import re

    import httpx2

    from gateway.store import access
    from tests.test_dashboard import PASSWORD

    runtime, serve = served
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, utcnow())
    client = httpx2.Client(base_url=serve.url, timeout=30)
    form = client.get("/login").text
    token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
    signed = client.post("/login", data={"login_token": token, "name": "dana",
                                         "password": PASSWORD, "next": "/"})  # fmt: skip
    assert signed.status_code == 303
    with client.stream("GET", "/events") as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        assert phone.call(serve.hook, phone.received(PHONE, "Is it the blue van?"))[0] == 200
        seen = []
        for line in lines:  # the stream tells of it (a hang is the client's read time-out)
            seen.append(line)
            if line == "event: reply":
                break
    assert "event: reply" in seen
    assert "Is it the blue van?" in client.get("/conversations").text


async def test_two_texts_with_the_same_words_are_both_kept(served, phone):
    """The app derives a received text's messageId from its words: "OK" twice is two texts."""
    runtime, serve = served
    for _ in range(2):
        assert phone.call(serve.hook, phone.received(PHONE, "OK", message_id="ok-hash"))[0] == 200
    assert rows_in(runtime, inbound) == 2


def test_a_webhook_before_db_upgrade_answers_503_with_the_command(tmp_path, phone, smtp_server):
    """The phone calls again on a 5xx: a database not yet migrated is a 503 that says what to
    run, never a 500."""
    from fastapi.testclient import TestClient

    from gateway.web.app import create_app
    from tests.conftest import gateway_folder

    extra = (
        f'[channels]\norder = ["email", "smsgate"]\n[smsgate]\nurl = "{phone.url}"\n'
        f'username = "{phone.username}"\npassword = "{phone.password}"\n'
        f'signing_key = "{phone.signing_key}"\n'
    )
    folder = gateway_folder(tmp_path, smtp_server.port, extra, migrate=False)
    (folder / "gw.db").touch()  # there, but never migrated
    client = TestClient(create_app(runtime_of(folder)))
    body = phone.received(PHONE, "hello")
    stamp = str(int(time.time()))
    answer = client.post("/hooks/smsgate", content=body, headers={
        "Content-Type": "application/json", "X-Timestamp": stamp,
        "X-Signature": phone.sign(body, stamp)})  # fmt: skip
    assert answer.status_code == 503 and "gateway db upgrade" in answer.json()["message"]


async def test_a_phone_that_cannot_be_read_is_said_once_and_its_return_once(
    tmp_path, phone, smtp_server, caplog
):
    """Polling the phone every few seconds: a phone refusing the sign-in is one warning in its
    own words, however many looks fail, and its return one more; a fault of ours in between
    (the database away) is a line too, never a traceback at every look."""
    from sqlalchemy.exc import OperationalError

    from gateway.services.phone_poll import PhonePoller

    runtime = runtime_of(folder_for(tmp_path, phone, smtp_server.port, '["email", "smsgate"]'))
    right = phone.password
    phone.password = "changed-on-the-phone"
    poller = PhonePoller(runtime, runtime.engine, runtime.smsgate_client())
    for _ in range(3):
        await poller.once()
    phone.password = right
    await poller.once()
    real, refusals = poller._last_received, [3]

    def refusing():
        if refusals[0]:
            refusals[0] -= 1
            raise OperationalError("SELECT", {}, Exception("disk I/O error"))
        return real()

    poller._last_received = refusing
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop, every=0.01))
    for _ in range(400):
        if not refusals[0] and poller.reading.ok:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    words = [r.getMessage() for r in said]
    assert len(words) == 4, words
    assert words[0].startswith("reading the phone (SMS Gate) failed: 401"), words
    assert words[2] == "reading the phone failed (disk I/O error)", words
    assert words[1] == words[3] == "reading the phone (SMS Gate) works again", words
    assert not any(r.exc_info for r in said)
