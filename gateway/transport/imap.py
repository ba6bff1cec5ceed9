"""Signing in to the company mailbox over IMAP (aioimaplib), and the copy of each sent text in
its Sent folder. Every IMAP connection the gateway opens, the mailbox reader's, the Sent copy's
and every doctor check's, is opened here, the same way:

- `security = "tls"`: TLS from the first byte (port 993); `"starttls"`: a plain connection that
  must offer STARTTLS and is upgraded before anything else is said (never opportunistic: a server
  that does not offer it is refused); `"none"`: loopback only (the config refuses it elsewhere).
  Certificates are always validated, against `ca_file` when one is given.
- A dropped connection is reported through `on_lost` whatever the security. aioimaplib's
  `IMAP4_SSL` takes no connection-lost callback, so the base `IMAP4` is given the TLS context
  itself; STARTTLS, which aioimaplib does not implement, upgrades the same protocol in place.
- A password signs in with LOGIN, an OAuth2 access token with AUTHENTICATE XOAUTH2. A server that
  refuses XOAUTH2 answers with a continuation line holding its error and waits for an empty
  line before its final NO; aioimaplib sends none, so the sign-in would end in a time-out
  instead of the server's words. The protocol here answers it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aioimaplib

from gateway.domain.delivery import no_token_hint
from gateway.transport.tls import tls_context

Security = Literal["tls", "starttls", "none"]


class ImapError(Exception):
    """The mailbox could not be used; the message says why in the server's words (never with a
    secret in it), `hint` what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ImapSignInRefused(ImapError):
    """The server refused the credentials (as opposed to not being reachable)."""


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    security: Security
    username: str
    password: str | None = None
    ca_file: Path | None = None
    timeout: float = 30.0
    # Signs in with XOAUTH2 using the token this returns (asked again for each new connection).
    oauth2_token: Callable[[], Awaitable[str]] | None = None

    def __repr__(self) -> str:  # never show the password, whatever logs this
        return (
            f"ImapServer({self.host}:{self.port}, security={self.security}, user={self.username!r})"
        )

    @property
    def where(self) -> str:
        return f"the mailbox at {self.host}:{self.port}"


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's protocol, answering a SASL challenge during AUTHENTICATE (see the module)."""

    sasl_challenge: bytes = b""

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is not None and command.name == "AUTHENTICATE":
            # XOAUTH2 sends everything at once: a challenge is the server's error (base64
            # JSON). An empty answer asks for the final tagged NO.
            self.sasl_challenge = line[1:].strip()
            self.transport.write(b"\r\n")
            return
        super()._continuation(line)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]  # aioimaplib is untyped
    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


async def connect(
    server: ImapServer, on_lost: Callable[[Exception | None], None] | None = None
) -> aioimaplib.IMAP4:
    """A connection to `server` that has said hello, over TLS unless `security` is "none".
    ImapError for a server that cannot be secured or whose certificate is not trusted; OSError
    and TimeoutError for one that cannot be reached."""
    context = tls_context(server.ca_file) if server.security != "none" else None
    client = _Client(
        server.host,
        server.port,
        timeout=server.timeout,
        conn_lost_cb=on_lost,
        ssl_context=context if server.security == "tls" else None,
    )
    try:
        await client.wait_hello_from_server()
        if server.security == "starttls":
            assert context is not None
            await _start_tls(client, server, context)
    except ssl.SSLCertVerificationError as exc:
        _abandon(client)
        raise ImapError(
            f"the certificate of {server.host} is not trusted: {exc.verify_message}",
            "the host name must match the certificate; a server with a certificate from a "
            "private authority needs imap.ca_file",
        ) from None
    except ssl.SSLError as exc:
        _abandon(client)
        port_hint = (
            "port 993 speaks TLS from the start (security = 'tls'); port 143 wants "
            "security = 'starttls'"
        )
        raise ImapError(f"TLS with {server.host}:{server.port} failed: {exc}", port_hint) from None
    except BaseException:
        _abandon(client)
        raise
    return client


async def sign_in(
    server: ImapServer, on_lost: Callable[[Exception | None], None] | None = None
) -> aioimaplib.IMAP4:
    """A signed-in connection to `server`; ImapSignInRefused when it refuses the credentials."""
    client = await connect(server, on_lost)
    try:
        await authenticate(client, server)
    except BaseException:
        _abandon(client)
        raise
    return client


async def authenticate(client: aioimaplib.IMAP4, server: ImapServer) -> None:
    """Sign in on a connection from `connect`: LOGIN with the password, or XOAUTH2 with a token.
    ImapSignInRefused, in the server's words and with a hint for this kind of sign-in."""
    if server.oauth2_token is not None:
        if not client.has_capability("AUTH=XOAUTH2"):
            raise ImapSignInRefused(
                f"{server.where} does not offer XOAUTH2 (OAuth2 sign-in); it offers "
                f"{_offered(client)}",
                'set [imap] auth = "password" for this server, or check host and port',
            )
        response = await _xoauth2(client, server)
    else:
        if client.has_capability("LOGINDISABLED"):
            raise ImapSignInRefused(
                f"{server.where} does not take a password here (LOGINDISABLED)",
                "the server wants TLS first (security = 'tls' or 'starttls') or OAuth2 "
                '([imap] auth = "oauth2")',
            )
        response = await client.login(server.username, server.password or "")
    if response.result == "OK":
        return
    words = _said(response.lines)
    challenge = getattr(client.protocol, "sasl_challenge", b"")
    if challenge:
        words += f" ({_decoded(challenge)})"
    raise ImapSignInRefused(
        f"{server.where} refused the sign-in of {server.username!r}: {response.result} {words}",
        sign_in_hint(server, words),
    )


def _offered(client: aioimaplib.IMAP4) -> str:
    methods = sorted(c for c in client.protocol.capabilities if c.upper().startswith("AUTH="))
    return ", ".join(methods) or "no AUTH= methods"


def sign_in_hint(server: ImapServer, words: str) -> str:
    """What to do about a refused IMAP sign-in, for the kind of sign-in that was refused."""
    lowered = words.lower()
    if server.oauth2_token is not None:
        return (
            "the access token was refused: check imap.username is the mailbox the token was "
            "issued for, and sign in again (`gateway auth microsoft` or `gateway auth google`)"
        )
    if "basicauthblocked" in lowered or "logondenied" in lowered or "outlook" in server.host:
        return (
            'Microsoft 365 accepts only OAuth2 for IMAP: set [imap] auth = "oauth2" and run '
            "`gateway auth microsoft`"
        )
    if "application-specific" in lowered or "gmail" in server.host:
        return (
            "Gmail wants an app password for IMAP (two-step verification on), or OAuth2: "
            '[imap] auth = "oauth2" and `gateway auth google`'
        )
    return (
        "check imap.username and imap's password (an app password where the provider has "
        "two-step sign-in on)"
    )


async def _start_tls(client: aioimaplib.IMAP4, server: ImapServer, context: ssl.SSLContext) -> None:
    protocol = client.protocol
    if not client.has_capability("STARTTLS"):
        raise ImapError(
            f"{server.host}:{server.port} does not offer STARTTLS, so the sign-in would go in "
            "the clear; it was not tried",
            "use security = 'tls' on port 993 if the server speaks TLS from the start",
        )
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    response = await asyncio.wait_for(protocol.execute(command), server.timeout)
    if response.result != "OK":
        raise ImapError(f"{server.host} refused STARTTLS: {_said(response.lines)}")
    if protocol.incomplete_line:
        # Bytes after the OK and before the handshake were written by someone in the middle.
        raise ImapError(f"{server.host} sent data before the TLS handshake; refused")
    loop = asyncio.get_running_loop()
    secured = await loop.start_tls(
        protocol.transport, protocol, context,
        server_hostname=server.host, ssl_handshake_timeout=server.timeout,
    )  # fmt: skip
    protocol.transport = secured
    # What the server said before TLS may have been altered: ask again (RFC 3501 6.2.1).
    protocol.capabilities = set()
    await asyncio.wait_for(protocol.capability(), server.timeout)


async def _xoauth2(client: aioimaplib.IMAP4, server: ImapServer) -> aioimaplib.Response:
    assert server.oauth2_token is not None
    try:
        token = await server.oauth2_token()
    except Exception as exc:  # the token source's failure, in its words
        raise ImapSignInRefused(
            f"no OAuth2 access token for {server.username!r}: {exc}",
            no_token_hint("imap"),
        ) from None
    return await client.xoauth2(server.username, token)


def _abandon(client: aioimaplib.IMAP4) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()
    if not client._client_task.done():
        client._client_task.cancel()


def _said(lines: list[bytes]) -> str:
    return b" ".join(bytes(line) for line in lines if isinstance(line, bytes | bytearray))[
        :300
    ].decode("utf-8", "replace")


def _decoded(challenge: bytes) -> str:
    try:
        return base64.b64decode(challenge, validate=True).decode("utf-8", "replace")[:300]
    except ValueError:
        return challenge[:300].decode("ascii", "replace")


def failure_words(exc: BaseException, timeout: float) -> str:
    """A connection's failure as an operator should read it: its own words where it has some;
    where the server gave no answer in time, the setting that says how long it is given."""
    if isinstance(exc, TimeoutError | aioimaplib.CommandTimeout) and not str(exc):
        command = getattr(getattr(exc, "command", None), "name", None)
        to = f" to {command}" if isinstance(command, str) else ""
        return f"no answer{to} in time (imap.timeout_seconds = {timeout:g})"
    return str(exc) or type(exc).__name__


class SentFolder:
    def __init__(self, server: ImapServer, folder: str) -> None:
        self.server = server
        self.folder = folder
        self._client: aioimaplib.IMAP4 | None = None
        self._dropped = False

    async def append(self, message: bytes, when: dt.datetime) -> None:
        """Store `message` in the folder, marked as read. One retry on a new connection."""
        for last_try in (False, True):
            try:
                client = await self._connection()
                response = await client.append(
                    message, mailbox=self.folder, flags=r"(\Seen)", date=when
                )
            except (OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout) as exc:
                await self.close()
                if last_try:
                    reason = failure_words(exc, self.server.timeout)
                    raise ImapError(f"cannot reach {self.server.where}: {reason}") from None
                continue
            if response.result != "OK":
                words = _said(response.lines)
                raise ImapError(f"{self.server.where} refused the copy: {response.result} {words}")
            return

    async def _connection(self) -> aioimaplib.IMAP4:
        if self._client is not None and not self._dropped and self._client.get_state() == "AUTH":
            return self._client
        await self.close()

        def lost(_exc: Exception | None) -> None:
            self._dropped = True  # the next copy opens a new connection rather than time out

        self._dropped = False
        self._client = await sign_in(self.server, lost)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 5)
