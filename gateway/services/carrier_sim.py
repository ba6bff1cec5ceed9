"""A stand-in for the carriers' email-to-SMS gateways, an email-to-SMS provider, and the phones
behind them, for the demo.

SMTP servers on loopback (one for the company's own server, one for the hosted relay) take the
gateway's mail; each "phone" keeps what it received and behaves as real ones do: most answer a
few seconds later through their carrier's gateway, one answers STOP, and one number does not
exist, so its carrier sends a delivery-failure report back. Mail to the provider's domain is
texted whatever the carrier: the provider mails a delivery report, and the phone's answer comes
back in the provider's format (carriers.yaml's `generic` entry). Answers and reports are written
into the company mailbox (a Maildir) the way a delivery agent would. Tests use their own servers.
"""

from __future__ import annotations

import email
import email.policy
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from gateway.transport.mailsource import deliver_to_maildir


def free_port(host: str = "127.0.0.1") -> int:
    # aiosmtpd's controller checks its server by connecting to the port it was given, so it
    # needs a real port number rather than 0.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    phone_address: str
    text: str
    message_id: str
    sender: str
    via: str = ""  # which server handed it over: "own" or "relay"


@dataclass(frozen=True)
class Phone:
    """How the phone at an address behaves: its answer to the first text it gets (None: it
    stays silent), or that its number does not exist."""

    answer: str | None = None
    unknown_number: bool = False
    delay: tuple[float, float] = (1.5, 4.0)  # seconds before it answers


@dataclass
class PhoneNetwork:
    """The carriers' gateways, the phones behind them, and the way back to the mailbox."""

    maildir: Path | None = None
    company: str = "dispatch@demo.example"
    phones: dict[str, Phone] = field(default_factory=dict)  # gateway address -> behaviour
    inbox: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    on_event: Callable[[str], None] | None = None  # told of each text and answer, for the demo
    # The simulated provider: what it takes mail at, and where its reports come from.
    provider_domain: str = "sms.provider.example"
    provider_reports: str = "reports@provider.example"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controllers: list[Controller] = field(default_factory=list)
    _answered: set[str] = field(default_factory=set)
    _timers: list[threading.Timer] = field(default_factory=list)
    dropped: int = 0  # messages written into the company mailbox (answers, reports, bounces)

    def busy(self) -> bool:
        """Whether a phone, the provider or a carrier is still about to write something."""
        return any(timer.is_alive() for timer in self._timers)

    def listen(self, via: str, host: str = "127.0.0.1") -> int:
        """An SMTP server that hands mail to the phones; returns its port."""
        port = free_port(host)
        controller = Controller(_Handler(self, via), hostname=host, port=port)
        controller.start()
        self._controllers.append(controller)
        return port

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for controller in self._controllers:
            controller.stop()
        self._controllers.clear()

    def received(self, address: str) -> list[Received]:
        with self._lock:
            return list(self.inbox.get(address.lower(), []))

    # --- what a phone does with a text --------------------------------------------------------

    def deliver(self, via: str, envelope: Any) -> None:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        text = body.get_content().strip() if body is not None else ""
        message_id = str(parsed.get("Message-ID", ""))
        for rcpt in envelope.rcpt_tos:
            address = rcpt.lower()
            with self._lock:
                self.inbox[address].append(
                    Received(address, text, message_id, envelope.mail_from, via)
                )
            phone = self.phones.get(address, Phone())
            if address.endswith("@" + self.provider_domain):
                self._later(0.8, self._report, address, "Delivered")
            if phone.unknown_number:
                self._later(1.0, self._bounce, address, message_id, envelope.mail_from)
                self._tell(f"{address}: no such number; its carrier will report it")
                continue
            self._tell(f"{address} received (by {via}): {text[:60]}")
            with self._lock:
                first = address not in self._answered
                self._answered.add(address)
            if phone.answer is not None and first:
                self._later(random.uniform(*phone.delay), self._answer, address, phone.answer)

    def _later(self, seconds: float, work: Callable[..., None], *args: Any) -> None:
        timer = threading.Timer(seconds, work, args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _tell(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)

    def _answer(self, address: str, text: str) -> None:
        # As carriers send them: from the phone's gateway address, no thread headers.
        domain = address.split("@")[1]
        raw = (
            (
                f"From: {address}\r\nTo: {self.company}\r\nSubject: \r\n"
                f"Date: {formatdate()}\r\nMessage-ID: <{uuid.uuid4().hex}@{domain}>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
            ).encode()
            + text.encode()
            + b"\r\n"
        )
        self._drop(raw)
        self._tell(f"{address} answered: {text}")

    def _report(self, address: str, status: str) -> None:
        # The provider's delivery report: labelled lines, as carriers.yaml's `generic` reads.
        number = "+" + address.split("@")[0]
        raw = (
            f"From: Provider reports <{self.provider_reports}>\r\nTo: {self.company}\r\n"
            f"Subject: Delivery report\r\nDate: {formatdate()}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@provider.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"To: {number}\r\nStatus: {status}\r\nReason: the handset acknowledged it\r\n"
        ).encode()
        self._drop(raw)
        self._tell(f"the provider reports {number}: {status}")

    def _bounce(self, address: str, message_id: str, sender: str) -> None:
        domain = address.split("@")[1]
        boundary = f"=_{uuid.uuid4().hex}"
        raw = (
            f"From: Mail Delivery System <MAILER-DAEMON@{domain}>\r\nTo: {sender}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nDate: {formatdate()}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@{domain}>\r\nAuto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
            f"\r\n\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            f"The message could not be delivered to {address}: the number is not in service."
            f"\r\n\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.{domain}\r\n\r\nFinal-Recipient: rfc822; {address}\r\n"
            "Action: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
            f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: {sender}\r\nTo: {address}\r\nMessage-ID: {message_id}\r\n"
            f"\r\n--{boundary}--\r\n"
        ).encode()
        self._drop(raw)
        self._tell(f"{domain} reported {address} unknown")

    def _drop(self, raw: bytes) -> None:
        with self._lock:
            self.dropped += 1
        if self.maildir is not None:
            deliver_to_maildir(self.maildir, raw, f"{time.time():.6f}.{uuid.uuid4().hex}.demo")


class _Handler:
    def __init__(self, network: PhoneNetwork, via: str) -> None:
        self.network, self.via = network, via

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.network.deliver(self.via, envelope)
        return "250 2.0.0 delivered to the simulated phone"
