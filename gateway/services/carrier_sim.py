"""A stand-in for the carriers' email-to-SMS gateways: an SMTP server on loopback that keeps
what each "phone" received. Used by the demo; tests use their own servers."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


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


@dataclass
class CarrierSimulator:
    host: str = "127.0.0.1"
    port: int = 0  # any free port
    inbox: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        text = body.get_content().strip() if body is not None else ""
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.inbox[rcpt.lower()].append(
                    Received(rcpt, text, str(parsed.get("Message-ID", "")), envelope.mail_from)
                )
        return "250 2.0.0 delivered to the simulated phone"

    def start(self) -> int:
        if not self.port:
            self.port = free_port(self.host)
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()
        return self.port

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
