"""The SMS channels as an operator manages them: each channel's state and counts, and our
webhooks on the company's phone (registered, listed, removed)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import urllib.parse
from typing import Any

from gateway.config import ConfigError
from gateway.domain.channels import Channel
from gateway.domain.routing import EMAIL_ROUTES, Route, explain_route_error
from gateway.domain.smsgate import HOOK_EVENTS
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow

HOOK_PREFIX = "gateway-"  # the ids of the webhooks we register on the phone


def channel_rows(runtime: Runtime, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One row per channel in the order, then the configured ones left out of it."""
    now = now or utcnow()
    book = runtime.route_book()
    book.load(runtime.migrated_engine(), now)
    order = [Channel(name) for name in runtime.settings.channels.order]
    plan = runtime.channel_plan
    others = [c for c in (Channel.SMSGATE, Channel.TWILIO) if plan.configured(c) and c not in order]
    rows = []
    for channel in [*order, *others]:
        routes = list(EMAIL_ROUTES) if channel is Channel.EMAIL else [Route(channel.value)]
        statuses = [book.status(route, now) for route in routes]
        enabled = [s for s in statuses if s.enabled]
        limits = [s.daily_limit for s in enabled if s.daily_limit is not None]
        errors = [
            f"{s.route.value}: {explain_route_error(s.last_error)}"
            for s in enabled
            if s.unavailable_because() is not None and s.last_error
        ]
        countries = plan.countries.get(channel, frozenset())
        rows.append(
            {
                "channel": channel.value,
                "position": order.index(channel) + 1 if channel in order else None,
                "where": ", ".join(book.lanes[r].where for r in routes if book.lanes[r].enabled),
                "state": _state(statuses),
                "sent_today": sum(s.sent_24h for s in enabled),
                "daily_limit": sum(limits) if limits and len(limits) == len(enabled) else None,
                "per_minute": book.lanes[routes[0]].per_minute,
                "countries": ", ".join(sorted(countries)) or "all",
                "last_error": "; ".join(errors) or None,
            }
        )
    return rows


def _state(statuses: list[Any]) -> str:
    enabled = [s for s in statuses if s.enabled]
    if not enabled:
        return "off"
    if any(s.unavailable_because() is None for s in enabled):
        return "ok"
    return "; ".join(f"{s.route.value} {s.unavailable_because()}" for s in enabled)


def hook_url(runtime: Runtime) -> str:
    """Where the phone calls `gateway serve`: [web] public_url + /hooks/smsgate."""
    public = runtime.settings.web.public_url
    if public is None:
        raise ConfigError(
            "set web.public_url: the address the phone reaches gateway serve at "
            "(e.g. https://gateway.example.com; http://127.0.0.1:8025 on the same machine)"
        )
    url = public + "/hooks/smsgate"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise ConfigError(
            f"web.public_url is {public!r}: the phone calls only https addresses (plain http "
            "only to 127.0.0.1); put gateway serve behind TLS (the README's Deployment)"
        )
    return url


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def smsgate_webhooks(runtime: Runtime, action: str) -> list[dict[str, Any]]:
    """Our webhooks on the phone after `action`: "list", "register" (one per event we act on,
    replacing ours) or "remove" (ours only; others' are left)."""
    if not runtime.settings.smsgate.configured:
        raise ConfigError("[smsgate] is not configured (url, username, password_env)")
    client = runtime.smsgate_client()
    if action == "register":
        url = hook_url(runtime)
        for event in HOOK_EVENTS:
            await client.register_webhook(HOOK_PREFIX + event.replace(":", "-"), url, event)
    elif action == "remove":
        for hook in await client.webhooks():
            if str(hook.get("id", "")).startswith(HOOK_PREFIX):
                await client.remove_webhook(str(hook["id"]))
    return [
        {"id": h.get("id"), "event": h.get("event"), "url": h.get("url"),
         "ours": str(h.get("id", "")).startswith(HOOK_PREFIX)}
        for h in await client.webhooks()
    ]  # fmt: skip
