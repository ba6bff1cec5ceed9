"""The inbound worker end to end on a Maildir: real database, real SMTP server for the texts
being answered, replies in the shapes carriers send, bounces, keywords, bad mail."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.domain.delivery import State
from gateway.services.inbound import Ingest, Receiver, manual_thread
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.inbox import gateway_counts, list_quarantine
from gateway.store.tables import contacts, inbound, messages, orders, quarantine
from gateway.transport.mailsource import deliver_to_maildir
from tests.conftest import REPO, gateway_folder, make_runtime, run_gateway

REPLIES = REPO / "tests" / "data" / "corpus" / "replies"
BOUNCES = REPO / "tests" / "data" / "corpus" / "bounces" / "mail"
PHONE = "+12068675309"  # the number in the replies corpus


@pytest.fixture
def maildir(tmp_path) -> Path:
    return tmp_path / "Maildir"


def runtime_for(db_url, smtp_server, maildir, **inbound):
    return make_runtime(db_url, smtp_server.port, inbound={"maildir": str(maildir), **inbound})


async def send(runtime, to=PHONE, carrier="verizon", text="Your order is out", order=None):
    ids = enqueue(runtime, SendRequest(to, carrier, text=text, order_ref=order), utcnow()).ids
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    await sender.run(asyncio.Event(), until_idle=True)
    return ids[0]


async def receive(runtime, maildir):
    receiver = Receiver(Ingest(runtime, runtime.engine), runtime.mail_source(runtime.engine))
    return await receiver.run(asyncio.Event(), until_idle=True)


def deliver(maildir, raw: bytes, name: str) -> None:
    deliver_to_maildir(maildir, raw, f"{name}.host")


def reply(sender: str, body: str, **headers: str) -> bytes:
    lines = [f"From: {sender}", "To: Dispatch <dispatch@example.com>", "Subject: "]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n" + body + "\n").encode()


def rows(runtime, table=inbound):
    with runtime.engine.connect() as conn:
        return conn.execute(select(table).order_by(table.c.id)).all()


def message(runtime, message_id):
    with runtime.engine.connect() as conn:
        return conn.execute(select(messages).where(messages.c.id == message_id)).one()


def contact(runtime, phone=PHONE):
    with runtime.engine.connect() as conn:
        return conn.execute(select(contacts).where(contacts.c.phone == phone)).one()


# --- threading ------------------------------------------------------------------------------


async def test_reply_by_phone_threads_to_the_text_its_order_and_learns_the_carrier(
    db_url, smtp_server, maildir
):
    runtime = runtime_for(db_url, smtp_server, maildir)
    sent = await send(runtime, carrier="att", order="A-100")  # AT&T: retired, so suppressed
    assert message(runtime, sent).state == "suppressed"
    sent = await send(runtime, carrier="verizon", order="A-100")
    deliver(maildir, (REPLIES / "att-6.eml").read_bytes(), "1")  # from @mobile.mycingular.com
    stats = await receive(runtime, maildir)
    assert stats.stored == 1
    (row,) = rows(runtime)
    assert (row.kind, row.phone, row.match_rule) == ("reply", PHONE, "phone")
    assert row.text == "I hate people that send text messages about skateboarding."
    assert row.matched_message_id == sent and row.confidence == pytest.approx(0.8)
    sent_row = message(runtime, sent)
    assert sent_row.state == State.REPLIED.value
    assert (row.conversation_id, row.order_id) == (sent_row.conversation_id, sent_row.order_id)
    with runtime.engine.connect() as conn:
        assert (
            conn.execute(select(orders.c.ref).where(orders.c.id == row.order_id)).scalar()
            == "A-100"
        )
    learned = contact(runtime)
    assert (learned.carrier, learned.carrier_source) == ("att", "reply")
    assert b"skateboarding" in row.raw  # the original is kept beside the text


@pytest.mark.parametrize(
    "name", ["verizon-1.eml", "verizon-3.eml", "att-2.eml", "att-4.eml", "cricket-1.eml"]
)
async def test_replies_in_real_carrier_shapes_are_threaded_by_phone(
    sqlite_url, smtp_server, maildir, name
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime)
    deliver(maildir, (REPLIES / name).read_bytes(), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    expected = json.loads((REPLIES / "expected.json").read_text())[name]
    assert (row.kind, row.match_rule, row.matched_message_id) == ("reply", "phone", sent)
    assert " ".join(row.text.split()) == expected["text"]


async def test_reply_naming_our_message_id_wins_over_the_phone(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    first = await send(runtime, text="first")
    await send(runtime, text="second")  # the latest to the phone
    first_id = message(runtime, first).message_id
    deliver(maildir, reply("2068675309@vtext.com", "ok", In_Reply_To=first_id), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    assert (row.match_rule, row.matched_message_id, row.confidence) == ("in_reply_to", first, 1.0)


async def test_plus_address_token_threads_a_reply_from_any_address(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir, plus_addressing=True)
    sent = await send(runtime)
    token = message(runtime, sent).message_id.strip("<>").split("@")[0]
    (mail,) = smtp_server.received
    assert mail.mail_from == f"dispatch+{token}@example.com"  # bounces name the text too
    assert f"From: Dispatch <dispatch+{token}@example.com>".encode() in mail.content
    raw = reply("someone@mail.example.org", "see you", To=f"dispatch+{token}@example.com")
    deliver(maildir, raw.replace(b"To: Dispatch <dispatch@example.com>\n", b""), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    assert (row.kind, row.match_rule, row.matched_message_id) == ("reply", "plus_token", sent)
    assert message(runtime, sent).state == "replied"


async def test_unmatched_reply_starts_a_conversation_for_the_contact(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    deliver(maildir, reply("2065550143@vtext.com", "Who is this?"), "1")
    deliver(maildir, reply("2065550143@vtext.com", "Hello?"), "2")
    await receive(runtime, maildir)
    first, second = rows(runtime)
    assert first.match_rule == "none" and first.matched_message_id is None
    assert first.conversation_id is not None and first.conversation_id == second.conversation_id
    assert first.contact_id == contact(runtime, "+12065550143").id


async def test_reply_outside_the_window_is_not_matched(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir, reply_window_hours=1)
    message = await send(runtime)
    two_hours_ago = utcnow() - dt.timedelta(hours=2)
    with runtime.engine.begin() as conn:  # the text went out two hours ago
        conn.execute(messages.update().where(messages.c.id == message)
                     .values(sent_at=two_hours_ago, created_at=two_hours_ago))  # fmt: skip
    deliver(maildir, reply("2068675309@vtext.com", "late"), "1")
    await receive(runtime, maildir)
    assert rows(runtime)[0].match_rule == "none"


async def test_own_copy_and_other_mail_are_never_threaded(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    await send(runtime)
    (ours,) = smtp_server.received
    deliver(maildir, ours.content, "1")  # our own text, seen in the mailbox (a Bcc, a Sent copy)
    deliver(maildir, reply("news@shop.example", "Sale!"), "2")
    await receive(runtime, maildir)
    own, other = rows(runtime)
    assert (own.kind, own.match_rule) == ("own_copy", "none")
    assert (other.kind, other.match_rule) == ("other", "none")


async def test_a_dispatcher_can_rethread_by_hand(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime)
    deliver(maildir, reply("news@shop.example", "about my order"), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    manual_thread(runtime.engine, row.id, sent, utcnow())
    (row,) = rows(runtime)
    assert (row.match_rule, row.matched_message_id, row.confidence) == ("manual", sent, 1.0)
    assert row.conversation_id == message(runtime, sent).conversation_id
    with pytest.raises(LookupError):
        manual_thread(runtime.engine, row.id, 999_999, utcnow())


# --- bounces --------------------------------------------------------------------------------


def bounce_for(
    original: bytes, address: str, status="5.1.1", words="User unknown", action="failed"
) -> bytes:
    return (
        f"""From: Mail Delivery System <MAILER-DAEMON@mx.vtext.com>
To: dispatch@example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.vtext.com

Final-Recipient: rfc822; {address}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} {words}

--B
Content-Type: message/rfc822

""".encode()
        + original
        + b"\n--B--\n"
    )


async def test_bounce_moves_the_text_to_bounced_and_doubts_the_carrier(
    db_url, smtp_server, maildir
):
    runtime = runtime_for(db_url, smtp_server, maildir)
    sent = await send(runtime)
    (ours,) = smtp_server.received
    deliver(maildir, bounce_for(ours.content, "2068675309@vtext.com"), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    assert (row.kind, row.match_rule, row.matched_message_id) == ("bounce", "original", sent)
    assert json.loads(row.details)["recipients"][0]["status"] == "5.1.1"
    bounced = message(runtime, sent)
    assert bounced.state == "bounced" and bounced.reason.startswith("bounced: userunknown (5.1.1")
    assert "vtext.com" in contact(runtime).carrier_doubt
    counts = gateway_counts(runtime.engine, utcnow().replace(year=2000))
    assert counts["vtext.com"] == {"sent": 1, "bounced": 1, "replied": 0}


async def test_soft_bounce_without_original_matches_by_address_and_leaves_the_carrier(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime)
    deliver(maildir, bounce_for(b"", "2068675309@vtext.com", "5.2.2", "Mailbox full"), "1")
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    assert (row.match_rule, row.matched_message_id) == ("recipient", sent)
    assert message(runtime, sent).state == "bounced"
    assert contact(runtime).carrier_doubt is None  # a full mailbox says nothing about the address


async def test_a_delay_warning_is_stored_and_changes_nothing_until_the_final_report(
    sqlite_url, smtp_server, maildir
):
    """RFC 3464's "Action: delayed": the reporter is still trying, so the text is not bounced,
    its carrier not doubted and its gateway not charged a bounce; the final report does that."""
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    sent = await send(runtime)
    (ours,) = smtp_server.received
    words = "User unknown in local recipient table"
    deliver(maildir, bounce_for(ours.content, "2068675309@vtext.com", "4.1.1", words,
                                action="delayed"), "1")  # fmt: skip
    await receive(runtime, maildir)
    (row,) = rows(runtime)
    assert (row.kind, row.matched_message_id) == ("bounce", sent)
    assert json.loads(row.details)["recipients"][0]["final"] is False
    assert message(runtime, sent).state == "sent"
    assert contact(runtime).carrier_doubt is None
    since = utcnow().replace(year=2000)
    assert gateway_counts(runtime.engine, since)["vtext.com"]["bounced"] == 0
    deliver(maildir, bounce_for(ours.content, "2068675309@vtext.com"), "2")
    await receive(runtime, maildir)
    assert message(runtime, sent).state == "bounced"
    assert "vtext.com" in contact(runtime).carrier_doubt
    assert gateway_counts(runtime.engine, since)["vtext.com"]["bounced"] == 1


# --- keywords -------------------------------------------------------------------------------


async def test_stop_opts_out_suppresses_waiting_texts_and_confirms_once(
    db_url, smtp_server, maildir
):
    runtime = runtime_for(db_url, smtp_server, maildir)
    await send(runtime)
    waiting = enqueue(runtime, SendRequest(PHONE, "verizon", text="later"), utcnow()).ids[0]
    deliver(maildir, reply("2068675309@vtext.com", "  Stop. "), "1")
    stats = await receive(runtime, maildir)
    assert stats.answers == 1 and contact(runtime).opted_out
    assert (message(runtime, waiting).state, message(runtime, waiting).reason) == (
        "suppressed", "opted_out",
    )  # fmt: skip
    with runtime.engine.connect() as conn:
        answer = conn.execute(select(messages).where(messages.c.body.like("You are unsub%"))).one()
    assert answer.state == "queued" and answer.to_phone == PHONE
    after = enqueue(runtime, SendRequest(PHONE, "verizon", text="new order"), utcnow())
    assert (after.state, after.reason is not None) == (State.SUPPRESSED, True)
    assert rows(runtime)[0].keyword == "stop" and rows(runtime)[0].text == "Stop."

    deliver(maildir, reply("2068675309@vtext.com", "START"), "2")
    await receive(runtime, maildir)
    assert not contact(runtime).opted_out
    assert enqueue(runtime, SendRequest(PHONE, "verizon", text="x"), utcnow()).state is State.QUEUED


async def test_help_is_answered_with_the_configured_text(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir, help_text="Call 555-0100 for help.")
    deliver(maildir, reply("2068675309@vtext.com", "HELP"), "1")
    await receive(runtime, maildir)
    with runtime.engine.connect() as conn:
        bodies = conn.execute(select(messages.c.body)).scalars().all()
    assert bodies == ["Call 555-0100 for help."]
    assert not contact(runtime).opted_out


# --- idempotency and bad mail ---------------------------------------------------------------


async def test_the_same_message_twice_is_stored_once(sqlite_url, smtp_server, maildir):
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    raw = reply("2068675309@vtext.com", "hi", Message_ID="<m1@vtext.com>")
    deliver(maildir, raw, "1")
    deliver(maildir, raw, "2")
    no_id = reply("2068675309@vtext.com", "no id here")
    deliver(maildir, no_id, "3")
    deliver(maildir, no_id, "4")
    stats = await receive(runtime, maildir)
    assert (stats.stored, stats.duplicates) == (2, 2)
    assert sorted((maildir / "cur").iterdir()) and not list((maildir / "new").iterdir())


async def test_malformed_and_oversized_mail_is_quarantined_and_the_next_is_stored(
    sqlite_url, smtp_server, maildir
):
    runtime = runtime_for(sqlite_url, smtp_server, maildir, max_bytes=100_000)
    deliver(maildir, b"\x00\x01\x02 this is no message", "1")
    deliver(maildir, reply("2068675309@vtext.com", "x" * 200_000), "2")
    deliver(maildir, reply("2068675309@vtext.com", "still here"), "3")
    stats = await receive(runtime, maildir)
    assert (stats.quarantined, stats.stored) == (2, 1)
    assert rows(runtime)[0].text == "still here"
    errors = [row["error"] for row in reversed(list_quarantine(runtime.engine))]
    assert "not a readable message" in errors[0] and "inbound.max_bytes" in errors[1]
    kept = rows(runtime, quarantine)[1]
    assert kept.size > 200_000 and len(kept.raw) == 65_536


# --- the command line -----------------------------------------------------------------------


@pytest.mark.slow
def test_run_until_idle_reads_the_mailbox_and_sends_the_stop_confirmation(tmp_path, smtp_server):
    maildir = tmp_path / "Maildir"
    gateway_folder(tmp_path, smtp_server.port,
                   f'from_address = "Dispatch <dispatch@example.com>"\n[inbound]\nmaildir = "{maildir}"\n')  # fmt: skip
    deliver(maildir, reply("2068675309@vtext.com", "stop"), "1")
    result = run_gateway("run", "--until-idle", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "inbound 1 stored (reply 1)" in result.stderr
    (confirmation,) = smtp_server.received
    assert confirmation.rcpt_tos == ["2068675309@vtext.com"]
    assert b"You are unsubscribed" in confirmation.content

    listed = run_gateway("inbox", "list", "--format", "json", cwd=tmp_path)
    (row,) = json.loads(listed.stdout)
    assert {"id", "kind", "phone", "text", "matched_message_id", "order_ref", "match_rule",
            "confidence"} <= set(row)  # fmt: skip
    assert (row["kind"], row["phone"], row["text"]) == ("reply", PHONE, "stop")
    health = run_gateway("carriers", "health", "--format", "json", cwd=tmp_path)
    (gateway,) = json.loads(health.stdout)
    assert (gateway["gateway"], gateway["sent_7d"], gateway["replied_7d"]) == ("vtext.com", 1, 1)


async def test_nul_characters_from_a_stranger_are_stored(db_url, smtp_server, maildir):
    runtime = runtime_for(db_url, smtp_server, maildir)
    deliver(maildir, reply("2068675309@vtext.com", "on my\x00 way", Subject="a\x00b"), "1")
    assert (await receive(runtime, maildir)).stored == 1
    assert rows(runtime)[0].text == "on my way"


async def test_a_message_that_breaks_storing_is_quarantined_and_the_rest_stored(
    sqlite_url, smtp_server, maildir, monkeypatch
):
    """A bug meeting hostile input fails the batch; each message is then stored on its own."""
    import gateway.services.inbound as module

    real = module._details

    def fragile(mail):
        if "poison" in mail.text:
            raise ValueError("cannot describe this one")
        return real(mail)

    monkeypatch.setattr(module, "_details", fragile)
    runtime = runtime_for(sqlite_url, smtp_server, maildir)
    for n, body in enumerate(["first", "poison", "third"]):
        deliver(maildir, reply("2068675309@vtext.com", body), str(n))
    stats = await receive(runtime, maildir)
    assert (stats.stored, stats.quarantined) == (2, 1)
    assert [row.text for row in rows(runtime)] == ["first", "third"]
    assert "storing failed: ValueError" in rows(runtime, quarantine)[0].error
