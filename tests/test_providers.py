"""Email-to-SMS providers end to end: a contact whose carrier closed its gateway is texted
through the provider (a real SMTP server takes the mail), and the provider's reply and delivery
reports, delivered into a Maildir, thread back to that text, its conversation and its order."""

from __future__ import annotations

import json

import pytest

from gateway.domain.delivery import State
from gateway.services.carrier_report import health_rows
from gateway.services.outbound import SendRequest, enqueue
from gateway.store.db import utcnow
from tests.conftest import gateway_folder, make_runtime, run_gateway
from tests.test_inbound import contact, deliver, message, receive, rows, send

PHONE = "+14155550100"
PROVIDER_ADDRESS = "14155550100@sms.provider.example"
GENERIC = {"provider": "generic"}


@pytest.fixture
def maildir(tmp_path):
    return tmp_path / "Maildir"


def runtime_for(db_url, smtp_server, maildir, gateways=GENERIC):
    return make_runtime(
        db_url, smtp_server.port, inbound={"maildir": str(maildir)}, gateways=gateways
    )


def provider_mail(sender: str, subject: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: dispatch@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((sender, subject, body)))}@provider.example>\r\n\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n"
    ).encode()


def report(status: str, reason: str = "", to: str = PHONE) -> bytes:
    body = f"To: {to}\nStatus: {status}\n" + (f"Reason: {reason}\n" if reason else "")
    return provider_mail("Reports <reports@provider.example>", "Delivery report", body)


async def test_a_closed_carriers_contact_is_texted_through_the_provider_and_answers_back(
    db_url, smtp_server, maildir
):
    """The issue's "done when": through the provider, the report marks it delivered, and the
    reply lands in the same conversation and order."""
    runtime = runtime_for(db_url, smtp_server, maildir)
    sent = await send(runtime, to=PHONE, carrier="att", text="Your order is out", order="A-7")
    row = message(runtime, sent)
    assert (row.state, row.to_address, row.gateway) == (
        "sent", PROVIDER_ADDRESS, "sms.provider.example"
    )  # fmt: skip
    assert row.carrier == "att"  # still the contact's carrier; only the gateway changed
    assert "AT&T closed its email-to-SMS gateway on 2025-06-17" in row.gateway_reason
    assert "sent through Example provider (generic)" in row.gateway_reason
    (taken,) = smtp_server.received
    assert taken.rcpt_tos == [PROVIDER_ADDRESS]
    assert b"Your order is out" in taken.content

    deliver(maildir, report("Delivered"), "1")
    await receive(runtime, maildir)
    assert message(runtime, sent).state == State.DELIVERED.value
    (stored,) = rows(runtime)
    assert (stored.kind, stored.matched_message_id, stored.phone) == (
        "delivery_report", sent, PHONE
    )  # fmt: skip

    deliver(maildir, provider_mail(PROVIDER_ADDRESS, "", "Thanks, I'll be in"), "2")
    await receive(runtime, maildir)
    answer = rows(runtime)[-1]
    assert (answer.kind, answer.text, answer.match_rule) == ("reply", "Thanks, I'll be in", "phone")
    assert answer.matched_message_id == sent
    assert (answer.conversation_id, answer.order_id) == (row.conversation_id, row.order_id)
    assert message(runtime, sent).state == State.REPLIED.value
    assert contact(runtime, PHONE).carrier == "att"  # a provider reply teaches no carrier
    (health,) = health_rows(runtime, runtime.engine, utcnow())  # the one gateway mailed
    assert (health["gateway"], health["carrier"], health["kind"]) == (
        "sms.provider.example", "generic", "provider"
    )  # fmt: skip
    assert (health["sent_7d"], health["replied_7d"]) == (1, 1)  # `carriers health` counts it


async def test_a_providers_failure_report_bounces_the_text_and_leaves_the_carrier_alone(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime, to=PHONE, carrier="att")
    deliver(maildir, report("Failed", "Number unreachable"), "1")
    await receive(runtime, maildir)
    bounced = message(runtime, sent)
    assert bounced.state == State.BOUNCED.value
    assert bounced.reason == "bounced: generic reported failed: Number unreachable"
    person = contact(runtime, PHONE)
    assert person.carrier_doubt is None and not person.opted_out


async def test_a_providers_opt_out_report_marks_the_contact(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime, to=PHONE, carrier="att")
    deliver(maildir, report("Opted out", "Recipient is on the provider's opt-out list"), "1")
    await receive(runtime, maildir)
    assert message(runtime, sent).state == State.BOUNCED.value
    assert contact(runtime, PHONE).opted_out
    later = enqueue(runtime, SendRequest(PHONE, "att", text="Another"), utcnow())
    assert later.state is State.SUPPRESSED and "opted out" in later.reason


async def test_stop_over_a_provider_opts_out_and_is_answered_through_it(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    await send(runtime, to=PHONE, carrier="tmobile")
    deliver(maildir, provider_mail(PROVIDER_ADDRESS, "", "STOP"), "1")
    stats = await receive(runtime, maildir)
    assert stats.answers == 1 and contact(runtime, PHONE).opted_out
    await send(runtime, to=PHONE, carrier="tmobile", text="ignored: opted out")
    told = [r for r in smtp_server.received if b"unsubscribed" in r.content]
    assert [r.rcpt_tos for r in told] == [[PROVIDER_ADDRESS]]


async def test_a_textapp_reply_threads_to_a_uk_number(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(
        sqlite_url, smtp_server, maildir, {"providers_by_country": {"gb": "textapp"}}
    )
    uk = "+447400123456"
    sent = await send(runtime, to=uk, carrier=None, text="Your parcel arrives at 14:40")
    assert message(runtime, sent).to_address == "+447400123456@sms.textapp.net"
    body = (
        "Sender: +447400123456\nDate: 01/12/2026\nApplication Ref: 7731902\nTime: 14:02\n"
        "Body: Leave it with number 12\nOriginal message: Your parcel arrives at 14:40"
    )
    deliver(maildir, provider_mail(f"{uk}@sms.textapp.net", "New SMS reply message", body), "1")
    await receive(runtime, maildir)
    (answer,) = rows(runtime)
    assert (answer.kind, answer.phone, answer.text) == ("reply", uk, "Leave it with number 12")
    assert answer.matched_message_id == sent
    # Without a provider for the US, a US contact with no carrier is still refused.
    refused = enqueue(runtime, SendRequest("+12025550143", None, text="x"), utcnow())
    assert refused.state is State.SUPPRESSED and "provider" in refused.reason


async def test_an_ending_carrier_moves_to_the_provider_before_its_date(
    sqlite_url, smtp_server, maildir
):
    # Verizon is listed as closing on 2027-03-31; with 200 days' notice it is left today.
    runtime = runtime_for(
        sqlite_url, smtp_server, maildir, {"provider": "generic", "leave_ending_days": 200}
    )
    moved = enqueue(runtime, SendRequest("+12025550143", "verizon", text="x"), utcnow())
    assert moved.to_address == "12025550143@sms.provider.example"
    runtime = runtime_for(sqlite_url, smtp_server, maildir)  # 30 days: not yet
    kept = enqueue(runtime, SendRequest("+12025550144", "verizon", text="x"), utcnow())
    assert kept.to_address == "2025550144@vtext.com" and "texts move to" in kept.warning


@pytest.mark.slow
def test_the_command_line_shows_providers_and_the_address_used(tmp_path):
    gateway_folder(tmp_path, migrate=False)
    refused = run_gateway("address", PHONE, "--carrier", "att", cwd=tmp_path)
    assert refused.returncode == 1
    assert "configure an email-to-SMS provider ([gateways] provider)" in refused.stderr
    with (tmp_path / "gateway.toml").open("a") as config:
        config.write('[gateways]\nprovider = "generic"\n')
    done = run_gateway("address", PHONE, "--carrier", "att", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["address"] == PROVIDER_ADDRESS and shown["kind"] == "provider"
    assert shown["gateway"] == "generic" and shown["carrier"] == "att"
    assert "AT&T closed" in shown["why"]
    plain = run_gateway("address", PHONE, "--carrier", "att", cwd=tmp_path)
    assert plain.stdout.strip() == PROVIDER_ADDRESS and "why: AT&T closed" in plain.stderr

    listed = json.loads(run_gateway("carriers", "list", "--format", "json", cwd=tmp_path).stdout)
    by_id = {row["id"]: row for row in listed}
    assert by_id["verizon"]["kind"] == "carrier" and by_id["verizon"]["address"] is None
    generic = by_id["generic"]
    assert (generic["kind"], generic["address"], generic["configured"]) == (
        "provider", "{e164_digits}@sms.provider.example", ["default"]
    )  # fmt: skip
    assert by_id["textapp"]["configured"] == [] and by_id["textapp"]["authorise_sender"]

    with (tmp_path / "gateway.toml").open("a") as config:
        config.write('providers_by_country = {CA = "nosuch"}\n')
    bad = run_gateway("address", PHONE, cwd=tmp_path)
    assert bad.returncode == 1 and "gateways.providers_by_country.CA" in bad.stderr
