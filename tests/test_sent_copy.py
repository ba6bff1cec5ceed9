"""Copies of sent texts in the company mailbox's Sent folder, appended to a real Dovecot."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging

from sqlalchemy import select

from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.tables import messages
from tests.conftest import make_runtime


def runtime_for(sqlite_url, smtp_port, dovecot, **imap) -> Runtime:
    return make_runtime(
        sqlite_url,
        smtp_port,
        imap={
            "host": "127.0.0.1",
            "port": dovecot.port,
            "security": "tls",
            "ca_file": str(dovecot.ca_file),
            "username": dovecot.user,
            "password": dovecot.password,
            "save_to_sent": True,
            **imap,
        },
    )


async def run(runtime):
    sender = Sender(
        runtime.engine,
        runtime.route_book(),
        runtime.retry_policy,
        idle_poll=0.05,
        sent_folder=runtime.sent_folder(),
    )
    return await sender.run(asyncio.Event(), until_idle=True)


async def test_each_sent_text_lands_in_sent_marked_read(sqlite_url, smtp_server, dovecot):
    before = len(dovecot.messages("Sent"))
    runtime = runtime_for(sqlite_url, smtp_server.port, dovecot)
    ids = [
        enqueue(
            runtime, SendRequest(f"+1202555{i:04d}", "verizon", text=f"copy {i}"), utcnow()
        ).ids[0]
        for i in range(3)
    ]
    stats = await run(runtime)
    assert stats.copied == 3 and stats.copies_failed == 0
    copies = dovecot.messages("Sent")[before:]
    assert len(copies) == 3
    with runtime.engine.connect() as conn:
        sent_ids = {
            r.message_id for r in conn.execute(select(messages).where(messages.c.id.in_(ids)))
        }
    assert {
        email.message_from_bytes(c, policy=email.policy.default)["Message-ID"] for c in copies
    } == sent_ids
    seen = list((dovecot.maildir("Sent") / "cur").iterdir())
    assert len(seen) >= 3 and all(path.name.endswith("S") for path in seen)  # \\Seen


async def test_a_failed_copy_never_fails_the_text(sqlite_url, smtp_server, dovecot, caplog):
    """Nor is it said for each text: copies failing the same way are one warning."""
    before = len(dovecot.messages("Sent"))
    runtime = runtime_for(sqlite_url, smtp_server.port, dovecot, password="wrong-password")
    ids = [
        enqueue(runtime, SendRequest(f"+1202555014{n}", "verizon", text="hi"), utcnow()).ids[0]
        for n in range(3)
    ]
    stats = await run(runtime)
    assert stats.copies_failed == 3 and stats.copied == 0
    with runtime.engine.connect() as conn:
        states = conn.execute(select(messages.c.state).where(messages.c.id.in_(ids))).scalars()
        assert list(states) == ["sent"] * 3
    assert len(dovecot.messages("Sent")) == before
    assert "refused the sign-in" in caplog.text and "wrong-password" not in caplog.text
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("copy to the Sent folder failed" in m for m in said) == 1, said
