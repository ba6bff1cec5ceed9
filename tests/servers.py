"""Real SMTP servers for tests (aiosmtpd in the test process), including ones that misbehave on
command: a reply code at a chosen phase, a connection dropped at a chosen phase, a slow reply,
a refusal at the greeting, failed sign-in, implicit TLS and STARTTLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from gateway.config import load_settings
from gateway.services.carrier_sim import free_port


@dataclass
class Faults:
    """What the server does; tests change it between messages."""

    mail_reply: str | None = None  # e.g. "451 4.3.0 try later"
    rcpt_reply: str | None = None
    data_reply: str | None = None
    drop_after: str | None = None  # "mail", "rcpt" or "data" (after the final ".")
    data_delay: float = 0.0
    by_recipient: dict[str, str] = field(default_factory=dict)  # rcpt address -> RCPT reply
    # Stop at a phase until the test sets `release`, having set `reached`: "mail" (MAIL sent,
    # no reply yet), "rcpt" (RCPT sent, no reply), "data" (the final "." in, no reply), or
    # "accepted" (the message taken, its 250 about to go). A client gone by then is not
    # answered, and its message not taken: the server queues only what it says 250 to.
    hold_at: str | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


async def _held(faults: Faults, phase: str, server: Any) -> bool:
    """Hold at `phase` if asked; True when the client is still there afterwards."""
    if faults.hold_at != phase:
        return True
    faults.reached.set()
    for _ in range(3000):  # 30 s at most
        if faults.release.is_set():
            break
        await asyncio.sleep(0.01)
    return not server.transport.is_closing()


class RecordingHandler:
    def __init__(self) -> None:
        self.faults = Faults()
        self.received: list[Received] = []
        self.sessions = 0
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.faults.drop_after == "mail":
            server.transport.abort()
            return "250 OK"
        if not await _held(self.faults, "mail", server):
            return "421 4.4.2 the client went away"
        if self.faults.mail_reply:
            return self.faults.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.faults.drop_after == "rcpt":
            server.transport.abort()
            return "250 OK"
        reply = self.faults.by_recipient.get(address) or self.faults.rcpt_reply
        if reply:
            return reply
        if not await _held(self.faults, "rcpt", server):
            return "421 4.4.2 the client went away"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.faults.data_delay:
            await asyncio.sleep(self.faults.data_delay)
        if self.faults.data_reply:
            return self.faults.data_reply
        for phase in ("data", "accepted"):
            if not await _held(self.faults, phase, server):
                return "421 4.4.2 the client went away"  # never taken, never answered
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            )
        if self.faults.drop_after == "data":
            server.transport.abort()  # the message arrived; the sender never hears so
        return "250 2.0.0 queued"


class GreetingRefusal(SMTP):
    """Answers 421 at the greeting and hangs up, as a busy server does."""

    async def _handle_client(self) -> None:  # aiosmtpd's session entry point
        await self.push("421 4.3.2 too busy, come back later")
        self.transport.close()


class HeloOnly(SMTP):
    """An old server that knows HELO and not EHLO (RFC 5321 4.1.1.1: a client falls back)."""

    async def smtp_EHLO(self, hostname: str) -> None:  # aiosmtpd's handler of the verb
        await self.push("502 5.5.2 Error: command not recognized")


class SmtpTestServer(Controller):
    def __init__(
        self,
        *,
        refuse_greeting: bool = False,
        helo_only: bool = False,
        port: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.handler_ = RecordingHandler()
        self.refuse_greeting = refuse_greeting
        self.helo_only = helo_only
        super().__init__(self.handler_, hostname="127.0.0.1", port=port or free_port(), **kwargs)

    def factory(self) -> SMTP:
        if self.refuse_greeting:
            return GreetingRefusal(self.handler, **self.SMTP_kwargs)
        if self.helo_only:
            return HeloOnly(self.handler, **self.SMTP_kwargs)
        return super().factory()

    def stop(self, no_assert: bool = True) -> None:
        # Tests may stop a server early (to kill it under a client); stopping twice is fine.
        if self._thread is not None:
            super().stop(no_assert=no_assert)

    @property
    def faults(self) -> Faults:
        return self.handler_.faults

    @property
    def received(self) -> list[Received]:
        return self.handler_.received


def password_checker(username: str, password: str):  # type: ignore[no-untyped-def]
    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == username.encode()
            and data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticate


def microsoft_365_server(username: str, password: str) -> SmtpTestServer:
    """A password-taking server that greets as Exchange Online does (not yet started)."""
    return SmtpTestServer(
        authenticator=password_checker(username, password),
        auth_require_tls=False,
        server_hostname="BN9PR03CA0123.outlook.office365.com",
        ident="Microsoft ESMTP MAIL Service ready",
    )


@contextlib.asynccontextmanager
async def loopback(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A TCP server on a free loopback port that runs `handle` for each connection (a server
    misbehaving on purpose, a proxy); yields the port, and closes the server after."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def server_tls_context(cert: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def listening(ports: tuple[int, ...], seconds: float, running: Any = None) -> bool:
    """Whether every port on 127.0.0.1 takes connections within `seconds` (a server a fixture
    just started); False at once when `running()` says its process is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if running is not None and not running():
            return False
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


async def eventually(condition: Any, what: str, seconds: float = 60) -> None:
    """Until `condition()` is true; a generous deadline (a shared machine may be slow), never a
    measure of how long it took."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.02)


class GatewayServe:
    """A real `gateway serve` in the folder: the SMS services' webhooks reach it over HTTP."""

    def __init__(self, folder: Any) -> None:
        self.url = f"http://127.0.0.1:{load_settings(folder / 'gateway.toml').web.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=folder,
                                        stdin=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=5).close()
                return
            except OSError:
                assert self.process.poll() is None, "gateway serve stopped"
                assert time.monotonic() < deadline, "gateway serve did not answer"
                time.sleep(0.1)

    @property
    def hook(self) -> str:  # the phone's
        return self.url + "/hooks/smsgate"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class HttpService:
    """A service simulated over real HTTP on 127.0.0.1 (SMS Gate's phone, Twilio): a thread
    serving `serve(request, method)`, which subclasses write; the answer may be lost on purpose
    (`drop`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                service.serve(self, "GET")

            def do_POST(self) -> None:
                service.serve(self, "POST")

            def do_DELETE(self) -> None:
                service.serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Any:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    @staticmethod
    def body_of(request: BaseHTTPRequestHandler) -> bytes:
        length = int(request.headers.get("Content-Length") or 0)
        return request.rfile.read(length) if length else b""

    @staticmethod
    def answer(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        request.send_response(status)
        if data:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    @staticmethod
    def drop(request: BaseHTTPRequestHandler) -> None:
        """Close the connection without an answer: what the client sent was taken."""
        request.close_connection = True
        request.connection.shutdown(socket.SHUT_RDWR)
