"""A pool of persistent SMTP connections (aiosmtplib) to one server.

Opening a connection (TCP, TLS, EHLO, AUTH) costs several round trips; a text costs three
(MAIL, RCPT, DATA). Keeping connections open and reusing them is the largest single gain in
throughput, so the pool keeps up to `connections` of them and hands each message to an idle one.
It opens and signs in to a server the one way the gateway does (`connect`, `authenticate`),
which `gateway doctor` uses too, so what the doctor passes is what the sender meets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosmtplib

from gateway.domain.delivery import (
    NO_PASSWORD,
    NO_TOKEN,
    AttemptOutcome,
    OutcomeKind,
    password_sign_in_ends,
    password_sign_in_ends_hint,
)
from gateway.transport.tls import tls_context

Security = Literal["tls", "starttls", "none"]
log = logging.getLogger("gateway.smtp")


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    connections: int = 4
    timeout: float = 30.0  # one command
    deadline: float = 60.0  # one message, from taking a connection to the server's answer
    local_hostname: str | None = None
    # Some servers cap messages per connection; None keeps a connection as long as it works.
    max_messages_per_connection: int | None = None
    # Signs in with XOAUTH2 using the token this returns (asked again for each new connection).
    oauth2_token: Callable[[], Awaitable[str]] | None = None

    def __repr__(self) -> str:  # never show the password, whatever logs this
        return (
            f"SmtpServer({self.host}:{self.port}, security={self.security}, "
            f"user={self.username!r}, connections={self.connections})"
        )


class _Unusable(Exception):
    """The connection cannot carry another message; the outcome says why."""

    def __init__(self, outcome: AttemptOutcome) -> None:
        super().__init__(outcome.reply)
        self.outcome = outcome


class SmtpPool:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self._idle: list[aiosmtplib.SMTP] = []
        self._carried: dict[int, int] = {}  # id(connection) -> messages it carried
        self._slots = asyncio.Semaphore(server.connections)
        self._tls = tls_context(server.ca_file) if server.security != "none" else None
        self.connects = 0  # connections opened, for diagnostics and the benchmark
        self._told_password_ends = False  # said once a pool, not at every connection

    async def send(self, sender: str, recipients: Sequence[str], data: bytes) -> AttemptOutcome:
        """Hand one message to the server; never raises for anything the server or network does.

        The outcome is the first recipient's (the phone's gateway address). Further recipients
        (an archive copy) are best effort: a refusal of one of them does not fail the text.
        """
        async with self._slots:
            # The connection in use, wherever the transaction has got to: whatever ends it
            # (a deadline, a failure) must close exactly this one.
            held: list[aiosmtplib.SMTP | None] = [self._idle.pop() if self._idle else None]
            try:
                async with asyncio.timeout(self.server.deadline):
                    outcome, keep = await self._transaction(held, sender, recipients, data)
            except TimeoutError:
                self._drop(held[0])
                return _deadline_outcome(self.server.deadline)
            except _Unusable as exc:
                self._drop(held[0])
                return exc.outcome
            client = held[0]
            if keep and client is not None and self._room_left(client):
                self._idle.append(client)
            else:
                await self._retire(client)
            return outcome

    def _room_left(self, client: aiosmtplib.SMTP) -> bool:
        limit = self.server.max_messages_per_connection
        carried = self._carried.get(id(client), 0) + 1
        self._carried[id(client)] = carried
        return limit is None or carried < limit

    async def _retire(self, client: aiosmtplib.SMTP | None) -> None:
        """Close a healthy connection politely (QUIT)."""
        if client is not None and client.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.quit()
        self._drop(client)

    def _drop(self, client: aiosmtplib.SMTP | None) -> None:
        """Close a connection at once and forget it."""
        if client is not None:
            self._carried.pop(id(client), None)
            with contextlib.suppress(Exception):
                client.close()

    async def _transaction(
        self,
        held: list[aiosmtplib.SMTP | None],
        sender: str,
        recipients: Sequence[str],
        data: bytes,
    ) -> tuple[AttemptOutcome, bool]:
        pooled = held[0]
        reused = pooled is not None and pooled.is_connected
        if pooled is not None and pooled.is_connected:
            client = pooled
        else:
            self._drop(pooled)
            held[0] = None
            client = await self._connect()
            held[0] = client
        try:
            await _command(client, b"MAIL", b"FROM:<" + sender.encode() + b">")
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            if not reused:
                raise _Unusable(_network("mail", exc)) from None
            # The server closed an idle connection; nothing was handed over, so a fresh one
            # carries the message at once.
            self._drop(client)
            held[0] = None
            client = await self._connect()
            held[0] = client
            await self._step(
                client, "mail", _command(client, b"MAIL", b"FROM:<" + sender.encode() + b">")
            )
        except aiosmtplib.SMTPResponseException as exc:
            return await _refused(client, "mail", exc)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _Unusable(_network("mail", exc)) from None

        for index, recipient in enumerate(recipients):
            try:
                await _command(client, b"RCPT", b"TO:<" + recipient.encode() + b">")
            except aiosmtplib.SMTPResponseException as exc:
                if index == 0:
                    return await _refused(client, "rcpt", exc)
                log.warning("copy to %s refused: %s %s", recipient, exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise _Unusable(_network("rcpt", exc)) from None

        try:
            response = await client.data(data, timeout=None)
        except aiosmtplib.SMTPResponseException as exc:
            return await _refused(client, "data", exc)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # aiosmtplib sends DATA, the message and the final "." in one call, so a loss here
            # may be after the server took the message: ambiguous, never resent at once.
            raise _Unusable(
                AttemptOutcome(OutcomeKind.AMBIGUOUS, _words(exc), None, "data")
            ) from None
        reply = f"{response.code} {response.message}".strip()
        return AttemptOutcome(OutcomeKind.ACCEPTED, reply, response.code, "data"), True

    async def _step(self, client: aiosmtplib.SMTP, phase: str, call: object) -> None:
        try:
            await call  # type: ignore[misc]
        except aiosmtplib.SMTPResponseException as exc:
            outcome, _ = await _refused(client, phase, exc)
            raise _Unusable(outcome) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _Unusable(_network(phase, exc)) from None

    async def _connect(self) -> aiosmtplib.SMTP:
        server = self.server
        try:
            client, greeting = await connect(server, self._tls)
        except aiosmtplib.SMTPConnectResponseError as exc:
            kind = OutcomeKind.TEMPORARY if 400 <= exc.code < 500 else OutcomeKind.NETWORK
            raise _Unusable(AttemptOutcome(kind, _reply(exc), exc.code, "connect")) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _Unusable(_connect_failure(server, exc)) from None
        try:
            how = await authenticate(client, server)
        except NoCredentials as exc:
            self._drop(client)
            raise _Unusable(AttemptOutcome(OutcomeKind.AUTH, str(exc), None, "auth")) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            self._drop(client)
            raise _Unusable(
                AttemptOutcome(OutcomeKind.AUTH, _reply(exc), exc.code, "auth")
            ) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self._drop(client)
            raise _Unusable(_connect_failure(server, exc)) from None
        told = self._told_password_ends
        if how == "password" and not told and password_sign_in_ends(server.host, greeting):
            self._told_password_ends = True
            log.warning("signed in to %s with a password; %s", server.host,
                        password_sign_in_ends_hint())  # fmt: skip
        self.connects += 1
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await self._retire(client)


class NoCredentials(Exception):
    """A sign-in that cannot be tried: no password configured, or no OAuth2 access token (the
    token source's words)."""


async def connect(server: SmtpServer, tls: ssl.SSLContext | None) -> tuple[aiosmtplib.SMTP, str]:
    """A connection to `server` that has said EHLO (HELO to a server that refuses EHLO), over TLS
    from the start or STARTTLS as `security` says, and the server's greeting (its 220 line:
    whose server it is, behind whatever name). The sender's pool and `gateway doctor` both
    connect here. aiosmtplib's exceptions, OSError and ssl.SSLError as they come; nothing is
    left open when one does."""
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.security == "tls",
        # True: required, never opportunistic; False: never tried.
        start_tls=server.security == "starttls",
        tls_context=tls,
        timeout=server.timeout,
        local_hostname=server.local_hostname,
    )
    try:
        greeting = (await client.connect()).message
        if client.is_ehlo_or_helo_needed:  # connect() greets only when it needed to (TLS, AUTH)
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
    except BaseException:
        with contextlib.suppress(Exception):
            client.close()
        raise
    return client, greeting


async def authenticate(client: aiosmtplib.SMTP, server: SmtpServer) -> str | None:
    """Sign in on a connection from `connect` as `server` says: XOAUTH2 with a token from
    `oauth2_token`, else the password; nothing without a username. Returns how ("oauth2",
    "password", None). NoCredentials when what it needs is missing; the server's refusal as
    aiosmtplib's SMTPAuthenticationError."""
    if not server.username:
        return None
    if server.oauth2_token is not None:
        try:
            token = await server.oauth2_token()
        except Exception as exc:  # the token source's failure, in its words
            raise NoCredentials(f"{NO_TOKEN}: {exc}") from None
        await client.auth_xoauth2(server.username, token)
        return "oauth2"
    if server.password is None:
        raise NoCredentials(f"username {server.username!r} {NO_PASSWORD}")
    await client.login(server.username, server.password)
    return "password"


async def _refused(
    client: aiosmtplib.SMTP, phase: str, exc: aiosmtplib.SMTPResponseException
) -> tuple[AttemptOutcome, bool]:
    """A definite answer from the server to this message. Returns it, and whether the
    connection can carry the next message."""
    kind = OutcomeKind.TEMPORARY if exc.code < 500 else OutcomeKind.PERMANENT
    outcome = AttemptOutcome(kind, _reply(exc), exc.code, phase)
    if exc.code == 421 or not client.is_connected:  # 421: the server is closing the channel
        return outcome, False
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        return outcome, False
    return outcome, True


async def _command(client: aiosmtplib.SMTP, verb: bytes, argument: bytes) -> None:
    """MAIL or RCPT with an address the domain layer already validated.

    aiosmtplib's mail() and rcpt() re-parse each address with email.utils (tens of µs a message)
    and start a timer per command; the message deadline around the whole transaction already
    bounds every command, so none is started here.
    """
    response = await client.execute_command(verb, argument, timeout=None)
    if response.code != 250 and response.code != 251:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def _words(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _network(phase: str, exc: BaseException) -> AttemptOutcome:
    return AttemptOutcome(OutcomeKind.NETWORK, _words(exc), None, phase)


def _deadline_outcome(deadline: float) -> AttemptOutcome:
    # The deadline can fall in any phase; only the transaction knows which, and it is gone.
    # Treat it as ambiguous: the message may have been handed over.
    return AttemptOutcome(
        OutcomeKind.AMBIGUOUS, f"no answer within the {deadline:g} s deadline", None, "deadline"
    )


def _connect_failure(server: SmtpServer, exc: BaseException) -> AttemptOutcome:
    text = _words(exc)
    lowered = text.lower()
    if "starttls" in lowered and "not supported" in lowered:
        return AttemptOutcome(
            OutcomeKind.TLS,
            f"{server.host}:{server.port} does not offer STARTTLS, which security = 'starttls' "
            "requires; nothing was sent in the clear (use security = 'tls' on port 465 if the "
            "server speaks TLS from the start)",
            None,
            "connect",
        )
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "certificate" in lowered:
        return AttemptOutcome(
            OutcomeKind.TLS,
            f"TLS with {server.host}:{server.port} failed: {text}",
            None,
            "connect",
        )
    if "auth" in lowered and "not supported" in lowered:
        return AttemptOutcome(OutcomeKind.AUTH, text, None, "auth")
    return AttemptOutcome(
        OutcomeKind.NETWORK,
        f"cannot reach {server.host}:{server.port}: {text}",
        None,
        "connect",
    )
