"""XOAUTH2 sign-in with a token from a file or a command, against a real aiosmtpd server."""

from __future__ import annotations

import asyncio
import base64
import sys

import pytest
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from gateway.config import ConfigError, load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from tests.conftest import make_runtime
from tests.servers import RecordingHandler, SmtpTestServer

GOOD = "ya29.good-access-token"


class OAuthHandler(RecordingHandler):
    """Accepts XOAUTH2 for dispatch@example.com with the GOOD token only."""

    async def auth_XOAUTH2(self, server, args):
        if len(args) < 2:
            return AuthResult(success=False)
        expected = f"user=dispatch@example.com\x01auth=Bearer {GOOD}\x01\x01".encode()
        return AuthResult(success=base64.b64decode(args[1]) == expected, handled=False)


@pytest.fixture
def oauth_server():
    server = SmtpTestServer(auth_require_tls=False)
    server.handler_ = server.handler = OAuthHandler()
    server.start()
    yield server
    server.stop()


def runtime_for(sqlite_url, port, **smtp) -> Runtime:
    return make_runtime(sqlite_url, port, username="dispatch@example.com", **smtp)


async def send_one(runtime):
    [message] = enqueue(runtime, SendRequest("+12025550143", "verizon", text="hi"), utcnow()).ids
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    await sender.run(asyncio.Event(), until_idle=True)
    with runtime.engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message)).one()
        tried = conn.execute(select(attempts).where(attempts.c.message_id == message)).all()
    return row, tried


async def test_token_from_a_file(sqlite_url, oauth_server, tmp_path):
    token = tmp_path / "token"
    token.write_text(GOOD + "\n")
    row, _ = await send_one(
        runtime_for(sqlite_url, oauth_server.port, oauth2_token_file=str(token))
    )
    assert row.state == "sent" and len(oauth_server.received) == 1


async def test_token_from_a_command(sqlite_url, oauth_server):
    command = f"{sys.executable} -c \"print('{GOOD}')\""
    row, _ = await send_one(
        runtime_for(sqlite_url, oauth_server.port, oauth2_token_command=command)
    )
    assert row.state == "sent"


async def test_stale_token_is_a_sign_in_failure_without_the_token_in_it(
    sqlite_url, oauth_server, tmp_path
):
    token = tmp_path / "token"
    token.write_text("ya29.expired")
    row, tried = await send_one(
        runtime_for(sqlite_url, oauth_server.port, oauth2_token_file=str(token))
    )
    assert row.state == "deferred" and "OAuth2" in row.reason
    assert (tried[0].outcome, tried[0].smtp_code) == ("auth", 535)  # the server refused the token
    assert "ya29" not in row.reason + tried[0].reply


async def test_failing_token_command_says_so_without_its_output(sqlite_url, oauth_server):
    command = (
        f"{sys.executable} -c \"import sys; print('ya29.leak', file=sys.stderr); sys.exit(3)\""
    )
    row, tried = await send_one(
        runtime_for(sqlite_url, oauth_server.port, oauth2_token_command=command)
    )
    assert row.state == "deferred" and tried[0].outcome == "auth"
    assert "exited with status 3" in tried[0].reply and "ya29" not in tried[0].reply


def test_oauth2_and_a_password_together_are_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("ya29.x")
    with pytest.raises(ConfigError, match="not several"):
        load_settings(None, smtp={"username": "u", "password": "p", "oauth2_token_file": token})
    with pytest.raises(ConfigError, match="needs a username"):
        load_settings(None, smtp={"oauth2_token_command": "get-token"})
