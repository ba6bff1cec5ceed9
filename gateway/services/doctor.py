"""Connection checks, step by step: what a support desk would try by hand, each step timed and,
when it fails, followed by the fix in plain words. The dashboard's "test connection" button
runs these; nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from gateway.config import ConfigError, ImapSettings, ServerSettings
from gateway.domain.delivery import AUTH_HINT
from gateway.transport.imap import ImapError, ImapServer, sign_in


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str
    hint: str | None = None


class _Failed(Exception):
    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


class _Steps:
    """Runs steps in order and stops at the first that fails: later ones would only repeat it."""

    def __init__(self) -> None:
        self.done: list[Step] = []

    async def run(self, name: str, work: Callable[[], Awaitable[str]]) -> bool:
        started = time.perf_counter()
        try:
            detail, ok, hint = await work(), True, None
        except _Failed as exc:
            detail, ok, hint = exc.detail, False, exc.hint
        except ConfigError as exc:
            detail, ok, hint = str(exc), False, "fix the setting named and test again"
        self.done.append(Step(name, ok, time.perf_counter() - started, detail, hint))
        return ok


async def _reach(endpoint: ServerSettings | ImapSettings, steps: _Steps, role: str) -> bool:
    host, port, timeout = endpoint.host, endpoint.port, min(endpoint.timeout_seconds, 15.0)

    async def dns() -> str:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise _Failed(
                f"{host!r} does not resolve ({exc.strerror})",
                f"check the spelling of the {role} host name, and that this machine has DNS",
            ) from None
        return ", ".join(sorted({str(info[4][0]) for info in found}))

    async def connect() -> str:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            raise _Failed(
                f"no answer from {host}:{port} within {timeout:g} s",
                f"a firewall drops the connection: many networks block port {port} outbound "
                "(port 25 above all); try 587 (STARTTLS) or 465 (TLS), or ask the network's "
                "administrator",
            ) from None
        except OSError as exc:
            raise _Failed(
                f"{host}:{port} refused the connection ({exc.strerror or exc})",
                f"nothing listens on port {port} there: check the port ({_usual_ports(role)}) "
                "and that the server is running",
            ) from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return f"{host}:{port} answers"

    return await steps.run(f"DNS: {host}", dns) and await steps.run(
        f"TCP connect: {host}:{port}", connect
    )


def _usual_ports(role: str) -> str:
    if role == "IMAP":
        return "993 with TLS"
    return "587 with STARTTLS, 465 with TLS"


async def check_smtp(server: ServerSettings, section: str) -> list[Step]:
    """DNS, TCP, TLS or STARTTLS with EHLO, then AUTH when a username is set."""
    steps = _Steps()
    if not await _reach(server, steps, "SMTP"):
        return steps.done
    context = ssl.create_default_context(cafile=str(server.ca_file) if server.ca_file else None)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.security == "tls",
        start_tls=server.security == "starttls",
        tls_context=context,
        timeout=min(server.timeout_seconds, 15.0),
    )
    security = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[server.security]

    async def greet() -> str:
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except (ssl.SSLError, aiosmtplib.SMTPConnectError) as exc:
            if "certificate" in str(exc).lower():
                raise _Failed(
                    f"the certificate of {server.host} is not trusted: {exc}",
                    f"the name must match the certificate; a private authority needs "
                    f"{section}.ca_file",
                ) from None
            raise _Failed(f"{security} failed: {exc}", _tls_hint(server)) from None
        except aiosmtplib.SMTPException as exc:
            text = str(exc)
            if "starttls" in text.lower():
                raise _Failed(
                    f"{server.host}:{server.port} does not offer STARTTLS",
                    "use security = 'tls' on port 465 if the server speaks TLS from the start; "
                    "nothing is ever sent in the clear by default",
                ) from None
            raise _Failed(f"the greeting failed: {text}", _tls_hint(server)) from None
        offered = sorted(client.esmtp_extensions)
        return f"{security}; the server offers {', '.join(offered) or 'nothing beyond SMTP'}"

    async def auth() -> str:
        if server.oauth2_token_file or server.oauth2_token_command:
            return "OAuth2 is configured: the token is checked when the first text is sent"
        password = server.resolve_password(section)
        if password is None:
            raise _Failed(
                f"{section}.username is set but no password is",
                f"give {section}.password_env or {section}.password_file (an app password "
                "where two-step sign-in is on)",
            )
        try:
            await client.login(server.username or "", password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            words = f"{exc.code} {exc.message}"
            disabled = "smtpclientauthentication" in words.lower() or "5.7.139" in words
            hint = (
                "SMTP AUTH is disabled for this mailbox: an administrator turns it on per "
                "mailbox (Microsoft 365), or use OAuth2"
                if disabled
                else AUTH_HINT
            )
            raise _Failed(f"the server refused the sign-in: {words}", hint) from None
        except aiosmtplib.SMTPException as exc:
            raise _Failed(f"AUTH failed: {exc}", AUTH_HINT) from None
        return f"signed in as {server.username}"

    try:
        if await steps.run(f"{security} and EHLO", greet) and server.username:
            await steps.run(f"AUTH as {server.username}", auth)
    finally:
        with contextlib.suppress(Exception):
            if client.is_connected:
                await client.quit()
        client.close()
    return steps.done


def _tls_hint(server: ServerSettings) -> str:
    if server.security == "tls":
        return "port 465 speaks TLS from the start; port 587 wants security = 'starttls'"
    return "check security and port: 587 with 'starttls', 465 with 'tls'"


async def check_imap(imap: ImapSettings) -> list[Step]:
    """DNS, TCP, sign-in, the folder and its message count, IDLE support."""
    steps = _Steps()
    if not await _reach(imap, steps, "IMAP"):
        return steps.done
    client: Any = None

    async def login() -> str:
        nonlocal client
        if not imap.username:
            raise _Failed("imap.username is not set", "give the mailbox's user name")
        server = ImapServer(
            host=imap.host,
            port=imap.port,
            security="tls" if imap.security == "tls" else "none",
            username=imap.username,
            password=imap.resolve_password("imap") or "",
            ca_file=imap.ca_file,
            timeout=min(imap.timeout_seconds, 15.0),
        )
        try:
            client = await sign_in(server)
        except ImapError as exc:
            raise _Failed(str(exc), AUTH_HINT) from None
        except (OSError, TimeoutError) as exc:
            raise _Failed(f"the sign-in failed: {exc or type(exc).__name__}") from None
        return f"signed in as {imap.username}"

    async def folder() -> str:
        response = await client.select(imap.folder)
        if response.result != "OK":
            raise _Failed(
                f"the folder {imap.folder!r} cannot be opened",
                "check imap.folder (INBOX is the usual one)",
            )
        count = next(
            (
                line.split()[0]
                for line in response.lines
                if isinstance(line, bytes) and line.endswith(b"EXISTS")
            ),
            b"?",
        )
        idle = "IDLE" if client.has_capability("IDLE") else "no IDLE (the worker polls)"
        return f"{imap.folder}: {count.decode()} messages; {idle}"

    try:
        if await steps.run(f"sign in as {imap.username or '?'}", login):
            await steps.run(f"folder {imap.folder}", folder)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 5)
    return steps.done
