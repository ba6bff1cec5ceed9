"""`gateway doctor` for the SMS channels: each configured one reached and signed in to, the
phone's health, our webhooks on it, `[web] public_url` reachable from here, and with
`--send-to +NUMBER` a test text by each. Every failure names its fix."""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
from typing import Any

from gateway.config import ConfigError
from gateway.domain.channels import OutgoingText
from gateway.domain.delivery import OutcomeKind
from gateway.services.channels import HOOK_PREFIX, hook_url
from gateway.services.doctor_steps import Step, StepFailed, Steps, StepWarning
from gateway.services.runtime import Runtime
from gateway.transport.http import AnswerLost, NotSent
from gateway.transport.smsgate import SmsGateClient, SmsGateError
from gateway.transport.twilio import TwilioClient

TEST_TEXT = "Test text from gateway doctor: the channel works."


async def check_smsgate(runtime: Runtime, send_to: str | None) -> list[Step]:
    gate = runtime.settings.smsgate
    steps = Steps()
    clients: list[SmsGateClient] = []

    async def reachable() -> str:
        client = runtime.smsgate_client()
        clients.append(client)
        try:
            health = await client.health()
        except SmsGateError as exc:
            raise StepFailed(
                str(exc),
                f"is the app's server on and the phone reachable from here? smsgate.url = "
                f"{gate.url}",
            ) from None
        status = health.get("status", "?")
        if status == "fail":
            raise StepFailed(f"the phone says it is not well: {health.get('checks')}",
                             "open the app on the phone: it shows what is wrong")  # fmt: skip
        return f"{gate.url}: {status}, app {health.get('version', '?')}"

    async def signed_in() -> str:
        try:
            hooks = await clients[0].webhooks()
        except SmsGateError as exc:
            raise StepFailed(str(exc), "smsgate.username and the password the app shows") from None
        return f"{len(hooks)} webhook(s) on the phone"

    async def webhooks() -> str:
        if gate.poll_seconds:
            return f"not needed: the phone is read every {gate.poll_seconds:g} s"
        if not gate.resolve_signing_key():
            raise StepFailed("no signing key: the phone's calls cannot be checked",
                             "set smsgate.signing_key_env to the app's signing key")  # fmt: skip
        url = hook_url(runtime)
        hooks = await clients[0].webhooks()
        ours = [h for h in hooks if str(h.get("id", "")).startswith(HOOK_PREFIX)
                and h.get("url") == url]  # fmt: skip
        if len(ours) < 4:
            raise StepFailed(
                f"{len(ours)} of our 4 webhooks point at {url}",
                "gateway channels webhooks --register (or set smsgate.poll_seconds)",
            )
        return f"received texts and delivery reports go to {url}"

    await steps.run("reachable", reachable)
    if steps.ok:
        await steps.run("signed in", signed_in)
    if steps.ok:
        await steps.run("webhooks", webhooks)
        if not gate.poll_seconds:
            await steps.run("public_url", lambda: _public_url_answers(runtime))
    if steps.ok and send_to is not None:
        await steps.run(f"test text to {send_to}",
                        lambda: _test_text(clients[0], send_to))  # fmt: skip
    return steps.done


async def check_twilio(runtime: Runtime, send_to: str | None) -> list[Step]:
    steps = Steps()
    clients: list[TwilioClient] = []

    async def signed_in() -> str:
        client = runtime.twilio_client()
        clients.append(client)
        path = f"/2010-04-01/Accounts/{client.account_sid}/Messages.json?PageSize=1"
        try:
            answer = await client.service.request("GET", path, None, client.auth_headers())
        except (NotSent, AnswerLost) as exc:
            raise StepFailed(str(exc), "can this host reach api.twilio.com on port 443?") from None
        if answer.status in (401, 403):
            raise StepFailed(f"{answer.status}: Twilio refused the Account SID and Auth Token",
                             "twilio.account_sid and the Auth Token, from the Console")  # fmt: skip
        if answer.status != 200:
            raise StepFailed(f"{answer.status}: {answer.body[:200]}")
        return f"account {client.account_sid}"

    await steps.run("signed in", signed_in)
    if steps.ok:
        await steps.run("public_url", lambda: _public_url_answers(runtime))
    if steps.ok and send_to is not None:
        await steps.run(f"test text to {send_to}",
                        lambda: _test_text(clients[0], send_to))  # fmt: skip
    return steps.done


async def _public_url_answers(runtime: Runtime) -> str:
    public = runtime.settings.web.public_url
    if public is None:
        raise StepFailed(
            "web.public_url is not set: the service cannot report back",
            "set web.public_url to where gateway serve is reached from outside",
        )

    def ask() -> int:
        try:
            with urllib.request.urlopen(public + "/healthz", timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        status = await asyncio.to_thread(ask)
    except (OSError, ValueError) as exc:
        raise StepWarning(
            f"{public}/healthz did not answer from this host: {exc}",
            "is gateway serve running, and does public_url lead to it (proxy, DNS, TLS)?",
        ) from None
    if status != 200:
        raise StepWarning(f"{public}/healthz answered {status}", "public_url must lead to "
                          "gateway serve")  # fmt: skip
    return f"{public} answers"


async def _test_text(client: Any, phone: str) -> str:
    text = OutgoingText(f"doctor-{secrets.token_hex(8)}", phone, TEST_TEXT, 3600)
    outcome = await client.send(text)
    if outcome.kind is not OutcomeKind.ACCEPTED:
        raise StepFailed(f"{outcome.kind.value}: {outcome.reply}")
    return f"taken: {outcome.reply}"


async def check_channels(runtime: Runtime, send_to: str | None) -> list[tuple[str, list[Step]]]:
    """Each SMS channel in [channels] order, checked."""
    found: list[tuple[str, list[Step]]] = []
    order = runtime.settings.channels.order
    for name, check in (("smsgate", check_smsgate), ("twilio", check_twilio)):
        if name in order:
            try:
                found.append((name, await check(runtime, send_to)))
            except ConfigError as exc:
                found.append((name, [Step("configured", False, 0.0, str(exc))]))
    return found
