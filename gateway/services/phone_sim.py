"""A stand-in for the company's own Android phone running SMS Gate, for the demo: its local
server's API on loopback (texts posted to it, webhooks registered on it, its health), and what
the phone then does, as the app does it: a signed `sms:sent` and an `sms:delivered` per part to
the registered webhooks, and the person's answer a few seconds later as `sms:received`. Tests
use their own simulator, which also checks every request against the app's published API."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.domain.sms import measure
from gateway.domain.smsgate import signature
from gateway.services.carrier_sim import Phone

STAMPS = {"sms:received": "receivedAt", "sms:sent": "sentAt", "sms:delivered": "deliveredAt"}


class CompanyPhone:
    def __init__(
        self,
        username: str,
        password: str,
        signing_key: str,
        people: dict[str, Phone],
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.credentials = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.signing_key = signing_key
        self.people = people  # E.164 -> how that person's phone answers
        self.on_event = on_event
        self.hooks: dict[str, dict[str, str]] = {}
        self.texts: dict[str, dict[str, Any]] = {}
        self.answered: set[str] = set()
        self.received_sent = 0  # texts the people sent the phone, reported to the gateway
        self.timers: list[threading.Timer] = []
        self.lock = threading.Lock()
        phone = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                phone._serve(self, "GET")

            def do_POST(self) -> None:
                phone._serve(self, "POST")

            def do_DELETE(self) -> None:
                phone._serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body: Any = json.loads(request.rfile.read(length)) if length else {}
        path = request.path.split("?")[0]
        if (method, path) == ("GET", "/health"):
            self._answer(request, 200, {"status": "pass", "version": "demo"})
        elif request.headers.get("Authorization") != self.credentials:
            self._answer(request, 401, {"message": "Unauthorized"})
        elif (method, path) == ("POST", "/messages"):
            self._answer(request, *self._take(body))
        elif (method, path) == ("GET", "/webhooks"):
            self._answer(request, 200, list(self.hooks.values()))
        elif (method, path) == ("POST", "/webhooks"):
            self.hooks[body["id"]] = {"id": body["id"], "url": body["url"], "event": body["event"]}
            self._answer(request, 201, self.hooks[body["id"]])
        elif method == "DELETE" and path.startswith("/webhooks/"):
            self.hooks.pop(path.rsplit("/", 1)[1], None)
            self._answer(request, 204, None)
        else:
            self._answer(request, 404, {"message": f"no {method} {path}"})

    def _take(self, body: dict[str, Any]) -> tuple[int, Any]:
        ref, [number] = body["id"], body["phoneNumbers"]
        with self.lock:
            if ref in self.texts:
                return 409, {"message": "message with such ID already exists"}
            self.texts[ref] = body
            first = number not in self.answered
            self.answered.add(number)
        text = body["textMessage"]["text"]
        self._tell(f"the company's phone texts {number}: {text[:60]}")
        parts = measure(text).segments
        self._later(0.5, self._event, "sms:sent", {"messageId": ref, "phoneNumber": number})
        for _ in range(parts):
            self._later(1.0, self._event, "sms:delivered", {"messageId": ref,
                                                            "phoneNumber": number})  # fmt: skip
        answer = self.people.get(number, Phone()).answer
        if answer is not None and first:
            said = {"messageId": uuid.uuid4().hex[:20], "phoneNumber": number, "message": answer}
            self._later(random.uniform(2.0, 4.0), self._event, "sms:received", said)
        state = {"id": ref, "state": "Pending",
                 "recipients": [{"phoneNumber": number, "state": "Pending"}]}  # fmt: skip
        return 202, state

    def _event(self, event: str, payload: dict[str, str]) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        payload = {**payload, STAMPS[event]: stamp}
        if event == "sms:received":
            with self.lock:
                self.received_sent += 1
            self._tell(
                f"{payload['phoneNumber']} answers the company's phone: {payload['message']}"
            )
        for hook in [h for h in self.hooks.values() if h["event"] == event]:
            data = json.dumps({"deviceId": "demo-phone", "event": event, "id": uuid.uuid4().hex,
                               "payload": payload, "webhookId": hook["id"]}).encode()  # fmt: skip
            timestamp = str(int(time.time()))
            request = urllib.request.Request(hook["url"], data=data, method="POST", headers={
                "Content-Type": "application/json", "X-Timestamp": timestamp,
                "X-Signature": signature(self.signing_key, data, timestamp)})  # fmt: skip
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except OSError as exc:  # the app would call again later; the demo just says so
                self._tell(f"the company's phone could not reach {hook['url']}: {exc}")

    def _later(self, seconds: float, work: Callable[..., None], *args: Any) -> None:
        timer = threading.Timer(seconds, work, args)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def busy(self) -> bool:
        """Whether the phone is still about to report something."""
        return any(timer.is_alive() for timer in self.timers)

    def _tell(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
