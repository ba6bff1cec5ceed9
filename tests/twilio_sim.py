"""A simulated Twilio, for what we cannot run in a test: the Messages create over real HTTP, each
request's form checked against the published specification (tests/data/specs/twilio), each
answer built to its message schema; and the status callbacks and incoming-text webhooks Twilio
makes, form-encoded and signed as Twilio signs them (X-Twilio-Signature: base64 HMAC-SHA1 with
the Auth Token over the URL, then each parameter sorted by name, name then value).

Faults on command: the next creates answered with a Twilio error (e.g. 400, code 21610), or
taken and their answer lost."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import HttpService
from tests.specs import twilio

CREATE = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
ERRORS = {21610: "Attempt to send to unsubscribed recipient", 30003: "Unreachable handset"}


@dataclass
class TwilioFaults:
    errors: list[tuple[int, int]] = field(default_factory=list)  # next creates: (status, code)
    lose_answers: int = 0


class FakeTwilio(HttpService):
    def __init__(self) -> None:
        super().__init__()
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.faults = TwilioFaults()
        self.created: list[dict[str, str]] = []  # each create's form, in order
        self.forms: dict[str, dict[str, str]] = {}  # message sid -> its create's form

    def serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        if method == "GET":
            self._list(request)
            return
        assert method == "POST", f"the gateway asked Twilio for {method} {request.path}"
        self._create(request)

    def _signed_in(self, request: BaseHTTPRequestHandler) -> bool:
        credentials = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") == "Basic " + credentials:
            return True
        self.answer(request, 401, {"code": 20003, "message": "Authenticate", "status": 401})
        return False

    def _list(self, request: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(request.path)
        assert parts.path == f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        twilio().check_parameters(CREATE, "GET", dict(urllib.parse.parse_qsl(parts.query)))
        if not self._signed_in(request):
            return
        page = {"messages": [], "end": 0, "first_page_uri": self.url + parts.path,
                "next_page_uri": None, "page": 0, "page_size": 1, "previous_page_uri": None,
                "start": 0, "uri": self.url + request.path}  # fmt: skip
        twilio().check_response(CREATE, "GET", 200, page)
        self.answer(request, 200, page)

    def _create(self, request: BaseHTTPRequestHandler) -> None:
        expected = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        assert request.path == expected, f"the gateway posted to {request.path}"
        raw = self.body_of(request)
        if not self._signed_in(request):
            return
        assert request.headers.get("Content-Type") == "application/x-www-form-urlencoded"
        form = dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
        twilio().check_request(CREATE, "POST", _typed(form))
        with self.lock:
            self.created.append(form)
            if self.faults.errors:
                status, code = self.faults.errors.pop(0)
                self.answer(request, status, {"code": code, "message": ERRORS.get(code, "error"),
                                               "status": status})  # fmt: skip
                return
            sid = "SM" + secrets.token_hex(16)
            self.forms[sid] = form
            lose = self.faults.lose_answers > 0
            self.faults.lose_answers -= int(lose)
        if lose:
            self.drop(request)
            return
        now = email.utils.format_datetime(email.utils.localtime(), usegmt=False)
        message = {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": form["Body"],
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD",
            "sid": sid, "status": "queued", "subresource_uris": {"media": "/Media.json"},
            "to": form["To"], "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }  # fmt: skip
        twilio().check_response(CREATE, "POST", 201, message)
        self.answer(request, 201, message)

    # --- Twilio's calls to the gateway -------------------------------------------------------

    def sign(self, url: str, params: dict[str, str], token: str | None = None) -> str:
        data = url + "".join(name + value for name, value in sorted(params.items()))
        key = (token or self.auth_token).encode()
        return base64.b64encode(hmac.new(key, data.encode(), hashlib.sha1).digest()).decode()

    def call(
        self, url: str, params: dict[str, str], signature: str | None = None
    ) -> tuple[int, str]:
        body = urllib.parse.urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": self.sign(url, params) if signature is None
                   else signature}  # fmt: skip
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self, sid: str, status: str, error_code: int | None = None) -> tuple[int, str]:
        """The status callback of message `sid`, to the address its create gave."""
        form = self.forms[sid]
        params = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01",
                  "MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                  "To": form["To"], "From": form.get("From", "")}  # fmt: skip
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        twilio().check_named("message_enum_status", status)
        return self.call(form["StatusCallback"], params)

    def incoming(self, url: str, sender: str, to: str, body: str) -> tuple[int, str]:
        sid = "SM" + secrets.token_hex(16)
        params = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "MessageSid": sid,
                  "SmsSid": sid, "SmsMessageSid": sid, "From": sender, "To": to, "Body": body,
                  "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received"}  # fmt: skip
        return self.call(url, params)


def _typed(form: dict[str, str]) -> dict[str, Any]:
    """The form's values as the specification types them (a form carries only text)."""
    properties = twilio().operation(CREATE, "POST")["requestBody"]["content"][
        "application/x-www-form-urlencoded"]["schema"]["properties"]  # fmt: skip
    typed: dict[str, Any] = {}
    for name, value in form.items():
        assert name in properties, f"Messages create has no parameter {name!r}"
        kind = properties[name].get("type")
        if kind == "integer":
            assert value.lstrip("-").isdigit(), f"{name}={value!r} is not an integer"
            typed[name] = int(value)
        elif kind == "boolean":
            typed[name] = value.lower() == "true"
        else:
            typed[name] = value
    return typed
