"""First contact with a mailbox that already holds mail: a database that has never read it starts
at its end (old STOP, START and HELP are not answered again), and `gateway inbox import` reads
the older mail on request: stored, classified and threaded, sending nothing and calling no
webhook, while an old STOP still opts its contact out. Against a real Dovecot over TLS."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, select

from gateway.services.outbound import SendRequest, enqueue
from gateway.store.db import utcnow
from gateway.store.inbox import read_position
from gateway.store.tables import contacts, inbound, messages
from gateway.store.tables import webhook_deliveries as deliveries
from tests.conftest import gateway_folder, run_gateway
from tests.test_imap_inbound import count, drain, folder_in, reply, runtime_for


def keyword_mail(n: int, word: str, phone: str = "2065550143", when: str | None = None) -> bytes:
    date = when or "Mon, 30 Nov 2026 10:00:00 +0000"
    return (f"From: {phone}@vtext.com\r\nTo: dispatch@example.com\r\nSubject: \r\n"
            f"Date: {date}\r\nMessage-ID: <old{n}.{utcnow().timestamp()}@vtext.com>\r\n\r\n"
            f"{word}\r\n").encode()  # fmt: skip


def outbox_count(runtime) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(messages)).scalar()


async def test_a_first_look_starts_at_the_end_and_answers_nothing_old(
    sqlite_url, smtp_server, dovecot
):
    folder = folder_in(dovecot)
    for n, word in enumerate(("STOP", "START", "HELP")):  # last year's keywords
        dovecot.append(keyword_mail(n, word), folder)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, first_look=True)
    stats = await drain(runtime)
    assert (stats.stored, stats.answers) == (0, 0) and outbox_count(runtime) == 0
    # The position is kept at once, so mail that arrives while no gateway runs is read later.
    source = runtime.mail_source(runtime.engine)
    position = read_position(runtime.engine, source.mailbox)
    assert position.uidvalidity is not None and position.last_uid == 3
    dovecot.append(reply(9, body="new and read"), folder)
    assert (await drain(runtime)).stored == 1 and count(runtime) == 1


async def test_a_uidvalidity_change_still_reads_the_folder_again(
    sqlite_url, smtp_server, own_dovecot
):
    runtime = runtime_for(sqlite_url, smtp_server, own_dovecot, "INBOX", first_look=True)
    own_dovecot.append(reply(1))
    assert (await drain(runtime)).stored == 0  # a first look: already there
    own_dovecot.append(reply(2))
    assert (await drain(runtime)).stored == 1
    own_dovecot.renumber()
    assert (await drain(runtime)).stored == 1  # all read again; the one stored is not twice


def test_inbox_import_reads_old_mail_and_sends_nothing(tmp_path, smtp_server, dovecot):
    folder = folder_in(dovecot)
    config = f"""
[imap]
enabled = true
host = "127.0.0.1"
port = {dovecot.port}
security = "tls"
ca_file = "{dovecot.ca_file}"
username = "{dovecot.user}"
password = "{dovecot.password}"
folder = "{folder}"
[webhooks]
urls = ["http://127.0.0.1:9/hooks"]
secret = "s3cret"
"""
    work = gateway_folder(tmp_path, smtp_server.port, extra=config)
    from gateway.config import load_settings
    from gateway.services.runtime import Runtime

    runtime = Runtime(load_settings(work / "gateway.toml"))
    text = enqueue(runtime, SendRequest("+12065550143", "verizon", text="Order A-1 is out"),
                   utcnow() - dt.timedelta(days=7)).ids[0]  # fmt: skip
    with runtime.engine.begin() as conn:
        conn.execute(messages.update().values(state="sent",
                                              sent_at=dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)))  # fmt: skip
    dovecot.append(keyword_mail(1, "Leave it with the neighbour"), folder)
    dovecot.append(keyword_mail(2, "STOP", when="Mon, 30 Nov 2026 11:00:00 +0000"), folder)
    dovecot.append(keyword_mail(3, "HELP", phone="2065550144"), folder)
    dovecot.append(keyword_mail(4, "an old one", when="Mon, 2 Nov 2026 11:00:00 +0000"), folder,
                   arrived=dt.datetime(2026, 11, 2, 11, tzinfo=dt.UTC).timestamp())  # fmt: skip
    first = run_gateway("run", "--until-idle", cwd=work)
    assert first.returncode == 0, first.stderr
    assert "inbound 0 stored" in first.stderr  # the first look leaves old mail alone
    imported = run_gateway("inbox", "import", "--since", "2026-11-15", cwd=work)
    assert imported.returncode == 0, imported.stderr
    assert "inbound 3 stored" in imported.stderr and "nothing was sent" in imported.stderr
    rows = json.loads(run_gateway("inbox", "list", "--format", "json", cwd=work).stdout)
    assert len(rows) == 3
    threaded = next(row for row in rows if row["text"] == "Leave it with the neighbour")
    assert threaded["matched_message_id"] == text and threaded["match_rule"] == "phone"
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar() == 1  # no answers
        opted = conn.execute(select(contacts.c.opted_out)
                             .where(contacts.c.phone == "+12065550143")).scalar()  # fmt: skip
        assert opted is True  # the old STOP still counts
        assert all(conn.execute(select(inbound.c.imported)).scalars())
    run_gateway("run", "--until-idle", cwd=work)  # webhooks are collected here
    with runtime.engine.connect() as conn:
        events = [
            json.loads(p)["event"] for p in conn.execute(select(deliveries.c.payload)).scalars()
        ]
    assert "reply" not in events and "bounce" not in events
    again = run_gateway("inbox", "import", cwd=work)  # everything, this time: once each
    assert "inbound 1 stored" in again.stderr and "3 already stored" in again.stderr
    bad = run_gateway("inbox", "import", "--since", "last week", cwd=work)
    assert bad.returncode == 1 and "not a date" in bad.stderr and "Traceback" not in bad.stderr
