"""A simulated Android phone running SMS Gate, for what we cannot run in a test (a phone): its
local server's API over real HTTP, every request the gateway makes checked against the
published specification (tests/data/specs/smsgate/swagger.json) and every answer it gives built
to it; and its webhook calls, built from the payload schemas and signed as the app signs them
(HMAC-SHA256 of the body then the timestamp, lowercase hex, in X-Signature beside X-Timestamp).

Faults on command: the next posts answered with a chosen status, or taken and their answer lost
(the connection closed before the phone's 202)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import HttpService
from tests.specs import check_smsgate_event, smsgate


@dataclass
class PhoneFaults:
    answer_status: list[int] = field(default_factory=list)  # the next posts answer these
    lose_answers: int = 0  # the next posts are taken, then the connection closes unanswered
    silent: bool = False  # every post is taken (or found there) and never answered


class SmsGatePhone(HttpService):
    def __init__(
        self, username: str = "sms", password: str = "phone-pass", signing_key: str = "sign-123"
    ) -> None:
        super().__init__()
        self.username, self.password, self.signing_key = username, password, signing_key
        self.device_id = "PyDmBQZZXYmyxMwED8Fzy"
        self.faults = PhoneFaults()
        self.messages: dict[str, dict[str, Any]] = {}  # our id -> the posted body
        self.posts: list[dict[str, Any]] = []  # every POST /messages body, in order
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.inbox: list[dict[str, Any]] = []  # what GET /inbox lists
        self.states: dict[str, str] = {}  # our id -> its state, when not "Sent"

    def serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        raw = self.body_of(request)
        path = parts.path
        spec_path = "/messages/{id}" if path.startswith("/messages/") else path
        spec_path = "/webhooks/{id}" if path.startswith("/webhooks/") else spec_path
        spec = smsgate()
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        open_to_all = spec.operation(spec_path, method).get("security") == []  # /health
        if not open_to_all and request.headers.get("Authorization") != expected:
            self.answer(request, 401, {"code": 401, "message": "Unauthorized"})
            return
        spec.check_parameters(spec_path, method, query)
        body = json.loads(raw) if raw else None
        status, answer = self._route(method, spec_path, path, body, raw)
        if status == 0:  # taken; the answer is lost on the way
            self.drop(request)
            return
        spec.check_response(spec_path, method, status, answer)
        self.answer(request, status, answer)

    def _route(
        self, method: str, spec_path: str, path: str, body: Any, raw: bytes
    ) -> tuple[int, Any]:
        spec = smsgate()
        if (method, spec_path) == ("POST", "/messages"):
            spec.check_request("/messages", "POST", body)
            with self.lock:
                self.posts.append(body)
                if self.faults.answer_status:
                    status = self.faults.answer_status.pop(0)
                    return status, {"code": status, "message": f"simulated {status}"}
                if self.faults.silent:
                    self.messages.setdefault(body["id"], body)
                    return 0, None
                if body["id"] in self.messages:
                    return 409, {"code": 409, "message": "message with such ID already exists"}
                self.messages[body["id"]] = body
                if self.faults.lose_answers:
                    self.faults.lose_answers -= 1
                    return 0, None
            return 202, self._state(body["id"], "Pending")
        if (method, spec_path) == ("GET", "/messages/{id}"):
            ref = urllib.parse.unquote(path.rsplit("/", 1)[1])
            assert ref in self.messages, f"the gateway asked for {ref}, which it never posted"
            return 200, self._state(ref, self.states.get(ref, "Sent"))
        if (method, spec_path) == ("GET", "/webhooks"):
            return 200, list(self.webhooks.values())
        if (method, spec_path) == ("POST", "/webhooks"):
            spec.check_request("/webhooks", "POST", body)
            hook = {"id": body.get("id") or uuid.uuid4().hex, "url": body["url"],
                    "event": body["event"], "deviceId": self.device_id}  # fmt: skip
            self.webhooks[hook["id"]] = hook
            return 201, hook
        if (method, spec_path) == ("DELETE", "/webhooks/{id}"):
            self.webhooks.pop(urllib.parse.unquote(path.rsplit("/", 1)[1]), None)
            return 204, None
        if (method, spec_path) == ("GET", "/health"):
            return 200, {"status": "pass", "version": "1.40.0", "releaseId": 1, "checks": {}}
        if (method, spec_path) == ("GET", "/inbox"):
            return 200, list(self.inbox)
        raise AssertionError(f"the gateway asked the phone for {method} {path}")

    def _state(self, ref: str, state: str) -> dict[str, Any]:
        body = self.messages[ref]
        recipients = [{"phoneNumber": n, "state": state} for n in body["phoneNumbers"]]
        if state == "Failed":
            for recipient in recipients:
                recipient["error"] = "RESULT_ERROR_NO_SERVICE"
        return {"id": ref, "deviceId": self.device_id, "state": state, "recipients": recipients}

    def inbox_text(self, phone: str, text: str) -> None:
        """A text the phone received, listed by GET /inbox (no webhook calls)."""
        self.inbox.append({"id": uuid.uuid4().hex[:21], "type": "SMS", "sender": phone,
                           "contentPreview": text, "createdAt": _now(), "simNumber": 1})  # fmt: skip

    # --- the phone's webhook calls ---------------------------------------------------------

    def sign(self, body: bytes, timestamp: str, key: str | None = None) -> str:
        secret = (key or self.signing_key).encode()
        return hmac.new(secret, body + timestamp.encode(), hashlib.sha256).hexdigest()

    def event(self, name: str, payload: dict[str, Any], event_id: str | None = None) -> bytes:
        body = {
            "deviceId": self.device_id,
            "event": name,
            "id": event_id or uuid.uuid4().hex,
            "payload": payload,
            "webhookId": next(
                (h["id"] for h in self.webhooks.values() if h["event"] == name), "manual"
            ),
        }
        check_smsgate_event(body)
        return json.dumps(body).encode()

    def call(
        self,
        url: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST a webhook body as the app does; (status, JSON answer)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        sent = {"Content-Type": "application/json", "X-Timestamp": stamp,
                "X-Signature": signature if signature is not None else self.sign(body, stamp)}  # fmt: skip
        sent.update(headers or {})
        request = urllib.request.Request(url, data=body, headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def received(self, phone: str, text: str, message_id: str | None = None) -> bytes:
        return self.event("sms:received", {
            "messageId": message_id or uuid.uuid4().hex[:20], "phoneNumber": phone,
            "message": text, "receivedAt": _now(), "simNumber": 1})  # fmt: skip

    def delivered(self, ref: str) -> bytes:
        phone = self.messages[ref]["phoneNumbers"][0]
        return self.event("sms:delivered", {
            "messageId": ref, "phoneNumber": phone, "deliveredAt": _now()})  # fmt: skip

    def failed(self, ref: str, reason: str) -> bytes:
        phone = self.messages[ref]["phoneNumbers"][0]
        return self.event("sms:failed", {
            "messageId": ref, "phoneNumber": phone, "failedAt": _now(), "reason": reason})  # fmt: skip


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
