"""The company's Android phone running SMS Gate: texts posted to it, its webhooks registered,
its health and inbox read. Every request carries HTTP Basic authentication (the local server's
and the cloud's user name and password)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from gateway.domain.channels import OutgoingText
from gateway.domain.delivery import AttemptOutcome, OutcomeKind
from gateway.domain.smsgate import message_request, send_outcome
from gateway.transport.http import Answer, AnswerLost, NotSent, Service, basic_auth

# After a lost answer the same text is posted again at once, up to this many times: our id makes
# that safe (the phone answers 409 to an id it has).
REPOSTS = 2


class SmsGateError(Exception):
    """The phone did not do what was asked; the message says what it answered."""


@dataclass
class SmsGateClient:
    service: Service
    username: str
    password: str
    device_id: str | None = None
    sim: int | None = None
    connections: int = 4  # texts posted at once

    @property
    def where(self) -> str:
        return self.service.base_url

    def _headers(self, json_body: bool = False) -> dict[str, str]:
        headers = {
            "Authorization": basic_auth(self.username, self.password),
            "Accept": "application/json",
        }
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    async def send(self, text: OutgoingText) -> AttemptOutcome:
        """Post one text. A lost answer is posted again with the same id: 409 then says the
        phone has it. Only when every post's answer was lost is the outcome ambiguous."""
        body = json.dumps(
            message_request(
                text.ref, text.phone, text.body, text.ttl_seconds, self.device_id, self.sim
            )
        ).encode()
        lost = ""
        for _ in range(1 + REPOSTS):
            try:
                answer = await self.service.request(
                    "POST", "/messages", body, self._headers(json_body=True)
                )
            except NotSent as exc:
                if lost:  # an earlier post may have reached it
                    why = f"{lost}; then {exc}"
                    return AttemptOutcome(OutcomeKind.AMBIGUOUS, why, None, "data")
                return AttemptOutcome(OutcomeKind.NETWORK, str(exc), None, "connect")
            except AnswerLost as exc:
                lost = str(exc)
                continue
            return send_outcome(answer.status, answer.body)
        return AttemptOutcome(OutcomeKind.AMBIGUOUS, lost, None, "data")

    async def close(self) -> None:
        """Nothing is held open between requests."""

    async def _call(self, method: str, path: str, body: Any = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        try:
            answer = await self.service.request(
                method, path, data, self._headers(json_body=data is not None)
            )
        except (NotSent, AnswerLost) as exc:
            raise SmsGateError(str(exc)) from None
        if answer.status in (401, 403):
            raise SmsGateError(
                f"{answer.status}: the phone refused the user name and password "
                "([smsgate] username and password: the app shows them)"
            )
        if answer.status >= 400:
            raise SmsGateError(f"{answer.status}: {answer.body.strip()[:300]}")
        return answer

    async def health(self) -> dict[str, Any]:
        answer = await self._call("GET", "/health")
        return _json_object(answer)

    async def webhooks(self) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/webhooks")
        found = json.loads(answer.body or "[]")
        return [hook for hook in found if isinstance(hook, dict)] if isinstance(found, list) else []

    async def register_webhook(self, hook_id: str, url: str, event: str) -> None:
        body: dict[str, Any] = {"id": hook_id, "url": url, "event": event}
        if self.device_id:
            body["deviceId"] = self.device_id
        await self._call("POST", "/webhooks", body)

    async def remove_webhook(self, hook_id: str) -> None:
        await self._call("DELETE", "/webhooks/" + urllib.parse.quote(hook_id, safe=""))

    async def inbox(self, since: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query: dict[str, str] = {"limit": str(limit), "type": "SMS"}
        if since:
            query["from"] = since
        if self.device_id:
            query["deviceId"] = self.device_id
        answer = await self._call("GET", "/inbox?" + urllib.parse.urlencode(query))
        found = json.loads(answer.body or "[]")
        return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []

    async def state(self, ref: str) -> dict[str, Any]:
        answer = await self._call("GET", "/messages/" + urllib.parse.quote(ref, safe=""))
        return _json_object(answer)


def _json_object(answer: Answer) -> dict[str, Any]:
    try:
        found = json.loads(answer.body or "{}")
    except ValueError:
        raise SmsGateError(f"{answer.status}: the answer is not JSON") from None
    return found if isinstance(found, dict) else {}
