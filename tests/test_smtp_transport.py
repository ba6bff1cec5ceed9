"""The pooled SMTP transport against real aiosmtpd servers that fail on command."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import trustme

from gateway.domain.delivery import OutcomeKind
from gateway.domain.email_out import Mailbox, OutboundEmail, build_email
from gateway.transport.smtp import SmtpPool, SmtpServer
from tests.servers import SmtpTestServer, microsoft_365_server, server_tls_context

SENDER = "dispatch@example.com"
RCPT = "2025550143@vtext.com"


def message(n: int = 0) -> bytes:
    return build_email(
        OutboundEmail(
            sender=Mailbox.parse(f"Dispatch <{SENDER}>"),
            to=RCPT,
            message_id=f"<m{n}@example.com>",
            date=dt.datetime(2026, 11, 24, tzinfo=dt.UTC),
            body=f"text {n}\n.leading dot survives",
        )
    )


def pool_for(server: SmtpTestServer, **kwargs) -> SmtpPool:
    options = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "connections": 2,
        "timeout": 5.0,
        "deadline": 10.0,
    }
    options.update(kwargs)
    return SmtpPool(SmtpServer(**options))


async def send(pool: SmtpPool, n: int = 0):
    return await pool.send(SENDER, [RCPT], message(n))


async def test_250_is_accepted_with_the_reply_line(smtp_server):
    pool = pool_for(smtp_server)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.code == 250
    assert outcome.reply.startswith("250 2.0.0")
    assert len(smtp_server.received) == 1
    assert b".leading dot survives" in smtp_server.received[0].content


async def send_once_through(server: SmtpTestServer):
    """One message through a fresh pool to `server`, started for it and stopped after."""
    server.start()
    try:
        pool = pool_for(server)
        outcome = await send(pool)
        await pool.close()
    finally:
        server.stop()
    return outcome


async def test_a_server_that_refuses_ehlo_is_greeted_with_helo():
    server = SmtpTestServer(helo_only=True)
    outcome = await send_once_through(server)
    assert outcome.kind is OutcomeKind.ACCEPTED, outcome
    assert len(server.received) == 1


async def test_connections_are_reused_across_messages(smtp_server):
    pool = pool_for(smtp_server, connections=2)
    outcomes = await asyncio.gather(*(send(pool, n) for n in range(40)))
    await pool.close()
    assert all(o.kind is OutcomeKind.ACCEPTED for o in outcomes)
    assert len(smtp_server.received) == 40
    assert pool.connects <= 2 and smtp_server.handler_.sessions <= 2


@pytest.mark.parametrize(
    ("phase", "reply", "kind"),
    [
        ("mail", "451 4.3.0 mail system busy", OutcomeKind.TEMPORARY),
        ("rcpt", "450 4.2.1 mailbox busy", OutcomeKind.TEMPORARY),
        ("rcpt", "451 4.7.1 greylisted, try later", OutcomeKind.TEMPORARY),
        ("rcpt", "550 5.1.1 no such phone", OutcomeKind.PERMANENT),
        ("data", "552 5.3.4 message too big", OutcomeKind.PERMANENT),
        ("data", "451 4.3.0 queue full", OutcomeKind.TEMPORARY),
        ("rcpt", "421 4.3.2 shutting down", OutcomeKind.TEMPORARY),
    ],
)
async def test_reply_codes_at_each_phase(smtp_server, phase, reply, kind):
    setattr(smtp_server.faults, f"{phase}_reply", reply)
    pool = pool_for(smtp_server, connections=1)
    outcome = await send(pool)
    assert (outcome.kind, outcome.code, outcome.phase) == (kind, int(reply[:3]), phase)
    assert outcome.reply == reply
    # After a refusal the connection is reset and, unless the server said 421, reused.
    setattr(smtp_server.faults, f"{phase}_reply", None)
    assert (await send(pool, 1)).kind is OutcomeKind.ACCEPTED
    await pool.close()
    assert pool.connects == (2 if reply.startswith("421") else 1)


@pytest.mark.parametrize(
    ("drop", "kind"),
    [("mail", OutcomeKind.NETWORK), ("rcpt", OutcomeKind.NETWORK), ("data", OutcomeKind.AMBIGUOUS)],
)
async def test_dropped_connection_by_phase(smtp_server, drop, kind):
    smtp_server.faults.drop_after = drop
    pool = pool_for(smtp_server, connections=1)
    outcome = await send(pool)
    assert outcome.kind is kind, outcome
    # Only a drop after the final "." leaves the message with the server.
    assert len(smtp_server.received) == (1 if drop == "data" else 0)
    smtp_server.faults.drop_after = None
    assert (await send(pool, 1)).kind is OutcomeKind.ACCEPTED  # reconnects
    await pool.close()


async def test_idle_connection_closed_by_the_server_is_replaced_at_once(smtp_server):
    pool = pool_for(smtp_server, connections=1)
    assert (await send(pool)).kind is OutcomeKind.ACCEPTED
    # The server goes away and comes back (as after an idle timeout): the pooled connection is dead.
    smtp_server.stop()
    again = SmtpTestServer(port=smtp_server.port)
    again.start()
    try:
        outcome = await send(pool, 1)
        await pool.close()
    finally:
        again.stop()
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert pool.connects == 2 and len(again.received) == 1


async def test_slow_reply_hits_the_message_deadline(smtp_server):
    # The server would answer after ten minutes and each command may take an hour: only the
    # deadline can end the send within the test's wait.
    smtp_server.faults.data_delay = 600.0
    pool = pool_for(smtp_server, connections=1, timeout=3600.0, deadline=0.5)
    outcome = await asyncio.wait_for(send(pool), 120)
    await pool.close()
    assert outcome.kind is OutcomeKind.AMBIGUOUS and "deadline" in outcome.reply


async def test_slow_but_in_time_is_accepted(smtp_server):
    smtp_server.faults.data_delay = 0.3
    pool = pool_for(smtp_server, connections=1, deadline=5.0)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.ACCEPTED


async def test_a_token_that_cannot_be_had_is_a_sign_in_never_tried(auth_server):
    async def expired() -> str:
        raise RuntimeError("the stored sign-in has expired")

    pool = pool_for(auth_server, username="dispatch@example.com", oauth2_token=expired)
    outcome = await send(pool)
    await pool.close()
    assert (outcome.kind, outcome.code, outcome.phase) == (OutcomeKind.AUTH, None, "auth")
    assert outcome.reply == "no OAuth2 access token: the stored sign-in has expired"
    assert not auth_server.received


async def test_421_at_the_greeting_defers():
    outcome = await send_once_through(SmtpTestServer(refuse_greeting=True))
    assert (outcome.kind, outcome.code, outcome.phase) == (OutcomeKind.TEMPORARY, 421, "connect")


async def test_nothing_listening_is_a_network_failure():
    from gateway.services.carrier_sim import free_port

    pool = SmtpPool(SmtpServer("127.0.0.1", free_port(), "none", timeout=2, deadline=3))
    outcome = await send(pool)
    assert outcome.kind is OutcomeKind.NETWORK and "cannot reach" in outcome.reply


# --- sign-in ------------------------------------------------------------------------------------


async def test_right_password_signs_in(auth_server):
    pool = pool_for(auth_server, username="dispatch", password="right")
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.ACCEPTED


async def test_a_password_sign_in_to_microsoft_365_is_said_to_end_once(caplog):
    # Greets as Exchange Online does, behind the company's own name for it.
    server = microsoft_365_server("dispatch", "right")
    server.start()
    try:
        pool = pool_for(server, username="dispatch", password="right",
                        max_messages_per_connection=1)  # fmt: skip
        outcomes = [await pool.send(SENDER, [RCPT], message(n)) for n in range(3)]
        await pool.close()
    finally:
        server.stop()
    assert [o.kind for o in outcomes] == [OutcomeKind.ACCEPTED] * 3 and pool.connects == 3
    said = [r.getMessage() for r in caplog.records if "December 2026" in r.getMessage()]
    assert len(said) == 1 and "gateway auth microsoft" in said[0], said


async def test_a_password_sign_in_elsewhere_says_nothing_of_it(auth_server, caplog):
    pool = pool_for(auth_server, username="dispatch", password="right")
    assert (await send(pool)).kind is OutcomeKind.ACCEPTED
    await pool.close()
    assert not [r for r in caplog.records if "December 2026" in r.getMessage()]


async def test_535_is_an_auth_failure(auth_server):
    pool = pool_for(auth_server, username="dispatch", password="wrong")
    outcome = await send(pool)
    await pool.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.AUTH, 535)
    assert "wrong" not in outcome.reply and not auth_server.received


def test_password_never_in_the_repr():
    assert "hunter2" not in repr(SmtpServer("h", 1, "tls", username="u", password="hunter2"))


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def starttls_server(server_cert):
    server = SmtpTestServer(tls_context=server_tls_context(server_cert), require_starttls=True)
    server.start()
    yield server
    server.stop()


async def test_implicit_tls_with_a_trusted_certificate(implicit_tls_server, ca_file):
    pool = pool_for(implicit_tls_server, security="tls", ca_file=ca_file)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert len(implicit_tls_server.received) == 1


async def test_starttls_with_a_trusted_certificate(starttls_server, ca_file):
    pool = pool_for(starttls_server, security="starttls", ca_file=ca_file)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.ACCEPTED


async def test_certificate_from_an_unknown_ca_is_refused(implicit_tls_server, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    pool = pool_for(implicit_tls_server, security="tls", ca_file=other)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.TLS and "certificate" in outcome.reply.lower()
    assert not implicit_tls_server.received


async def test_starttls_certificate_from_an_unknown_ca_is_refused(starttls_server, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    pool = pool_for(starttls_server, security="starttls", ca_file=other)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.TLS
    assert not starttls_server.received


async def test_starttls_required_but_not_offered_is_refused(smtp_server, ca_file):
    pool = pool_for(smtp_server, security="starttls", ca_file=ca_file)
    outcome = await send(pool)
    await pool.close()
    assert outcome.kind is OutcomeKind.TLS and "does not offer STARTTLS" in outcome.reply
    assert not smtp_server.received


async def test_messages_per_connection_cap_opens_a_new_connection(smtp_server):
    pool = pool_for(smtp_server, connections=1, max_messages_per_connection=2)
    for n in range(5):
        assert (await send(pool, n)).kind is OutcomeKind.ACCEPTED
    await pool.close()
    assert pool.connects == 3 and smtp_server.handler_.sessions == 3
