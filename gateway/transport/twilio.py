"""Twilio's Messages API: one create per text, HTTP Basic with the Account SID and Auth Token."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from gateway.domain.channels import OutgoingText
from gateway.domain.delivery import AttemptOutcome, OutcomeKind
from gateway.domain.twilio import create_outcome, create_params
from gateway.transport.http import AnswerLost, NotSent, Service, basic_auth


@dataclass
class TwilioClient:
    service: Service
    account_sid: str
    auth_token: str
    from_number: str | None
    messaging_service_sid: str | None
    status_url: str  # where Twilio reports each text's status: ours + ?ref=ID
    connections: int = 4

    @property
    def where(self) -> str:
        return f"{self.service.base_url} ({self.account_sid})"

    async def send(self, text: OutgoingText) -> AttemptOutcome:
        """Create the message. A lost answer is ambiguous: Twilio has no idempotency key, so
        the text is not created again before the status callback or a long wait."""
        callback = self.status_url + "?" + urllib.parse.urlencode({"ref": text.ref})
        params = create_params(
            text.phone, text.body, callback, self.from_number, self.messaging_service_sid,
            text.ttl_seconds,
        )  # fmt: skip
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        headers = {**self.auth_headers(), "Content-Type": "application/x-www-form-urlencoded"}
        try:
            answer = await self.service.request(
                "POST", path, urllib.parse.urlencode(params).encode(), headers
            )
        except NotSent as exc:
            return AttemptOutcome(OutcomeKind.NETWORK, str(exc), None, "connect")
        except AnswerLost as exc:
            return AttemptOutcome(OutcomeKind.AMBIGUOUS, str(exc), None, "data")
        return create_outcome(answer.status, answer.body)

    def auth_headers(self) -> dict[str, str]:
        return {
            "Authorization": basic_auth(self.account_sid, self.auth_token),
            "Accept": "application/json",
        }

    async def close(self) -> None:
        """Nothing is held open between requests."""
