"""The two routes as the sender sees them: how each addresses mail (a Lane), and their live
state (the RouteBook): breakers, rolling 24-hour counts, per-minute buckets."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine

from gateway.domain.channels import Channel, ChannelPlan, OutgoingText, next_channel
from gateway.domain.delivery import AttemptOutcome, OutcomeKind
from gateway.domain.email_out import Mailbox, OutboundEmail
from gateway.domain.routing import (
    COUNTS_AGAINST_LIMIT,
    Breaker,
    BreakerPolicy,
    BreakerState,
    Bucket,
    Choice,
    History,
    Route,
    RouteStatus,
    RoutingPolicy,
    breaker_after,
    breaker_state,
    bucket_take,
    channel_of,
    choose_on_channel,
    choose_route,
    failed_last,
    plain_choice,
)
from gateway.store.routes import load_breakers, save_breakers, sent_last_24h
from gateway.transport.smtp import SmtpPool

log = logging.getLogger(__name__)

_CLOSED = Breaker()

# How long a message waits when no route can take it, at least (a breaker's cool-down may be
# longer; a daily limit frees a slot only as old sends leave the 24-hour window).
NO_ROUTE_WAIT = dt.timedelta(seconds=60)


class TextClient(Protocol):
    """An SMS channel's client (the phone, Twilio): sends one text, says where it is."""

    connections: int  # texts it sends at once

    @property
    def where(self) -> str: ...

    async def send(self, text: OutgoingText) -> AttemptOutcome: ...

    async def close(self) -> None: ...


@dataclass
class Lane:
    """One route: an email route's connection pool and how it addresses mail, or an SMS
    channel's client."""

    route: Route
    pool: SmtpPool | None  # None: not configured or switched off
    sender: Mailbox | None = None  # From (email routes)
    envelope_sender: str = ""  # MAIL FROM, where bounces go
    reply_to: Mailbox | None = None
    copies: tuple[str, ...] = ()  # extra envelope recipients (the relay's archive Bcc)
    daily_limit: int | None = None
    per_minute: int | None = None
    # Address replies (and, on our own server, bounces) to mailbox+TOKEN@domain, TOKEN being the
    # text's Message-ID token, so the answer names the text it answers.
    plus_addressing: bool = False
    # False for a relay that refuses mail to carriers' gateways ([relay] delivers_to_gateways).
    carrier_gateways: bool = True
    client: TextClient | None = None  # an SMS channel's route: None when not configured

    @property
    def enabled(self) -> bool:
        return self.pool is not None or self.client is not None

    @property
    def where(self) -> str:
        if self.client is not None:
            return self.client.where
        if self.pool is not None:
            return f"{self.pool.server.host}:{self.pool.server.port}"
        return ""

    def email(self, to: str, message_id: str, body: str, now: dt.datetime) -> OutboundEmail:
        sender, reply_to = self.sender, self.reply_to
        assert sender is not None  # email routes have a From
        if self.plus_addressing:
            token = message_id.strip("<>").partition("@")[0]
            if reply_to is not None:
                reply_to = plus_address(reply_to, token)
            else:
                sender = plus_address(sender, token)
        return OutboundEmail(
            sender=sender, to=to, message_id=message_id, date=now, body=body, reply_to=reply_to
        )

    def envelope_for(self, message_id: str) -> str:
        """MAIL FROM for one text: where its bounce goes."""
        if self.plus_addressing and self.reply_to is None:
            token = message_id.strip("<>").partition("@")[0]
            return plus_address(Mailbox(self.envelope_sender), token).address
        return self.envelope_sender


def plus_address(mailbox: Mailbox, token: str) -> Mailbox:
    local, _, domain = mailbox.address.partition("@")
    return Mailbox(f"{local.split('+', 1)[0]}+{token}@{domain}", mailbox.name)


@dataclass
class RouteBook:
    lanes: dict[Route, Lane]
    breaker_policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    routing_policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    breakers: dict[Route, Breaker] = field(default_factory=dict)
    # A send moves through these counts: in flight (handed to a server), recorded (outcome known,
    # not yet written), flushed (written since the last count from the database), counted (in
    # the database at the last count). Each step adds before it subtracts, so a route's total
    # can only overcount, never let a limit be passed.
    in_flight: dict[Route, int] = field(default_factory=dict)
    recorded: dict[Route, int] = field(default_factory=dict)
    flushed: dict[Route, int] = field(default_factory=dict)
    counted: dict[Route, int] = field(default_factory=dict)
    buckets: dict[Route, Bucket] = field(default_factory=dict)
    dirty: bool = False
    # Email-to-SMS providers' domains: a text to any other gateway domain is to a carrier's.
    provider_domains: frozenset[str] = frozenset()
    # The channels in preference, for a text whose channel cannot take it (never handed over).
    plan: ChannelPlan = field(default_factory=ChannelPlan)

    def status(self, route: Route, now: dt.datetime) -> RouteStatus:
        lane = self.lanes[route]
        breaker = self.breakers.get(route, _CLOSED)
        rate_ok = True
        if lane.per_minute is not None:
            _, rate_ok = bucket_take(self.buckets.get(route), lane.per_minute, now)
        return RouteStatus(
            route=route,
            enabled=lane.enabled,
            breaker=breaker_state(breaker, self.breaker_policy, now),
            sent_24h=self.sent_24h(route),
            daily_limit=lane.daily_limit,
            rate_ok=rate_ok,
            last_error=breaker.last_error,
            refuses_gateways=not lane.carrier_gateways,
        )

    def sent_24h(self, route: Route) -> int:
        return (
            self.in_flight.get(route, 0)
            + self.recorded.get(route, 0)
            + self.flushed.get(route, 0)
            + self.counted.get(route, 0)
        )

    def choose(
        self,
        history: History,
        now: dt.datetime,
        to_address: str = "",
        channel: Channel = Channel.EMAIL,
        region: Callable[[], str | None] | None = None,
    ) -> Choice:
        """The route for a text's next attempt on its channel. When that channel cannot take
        it and it was never handed over, the next channel in the order that reaches its number
        (`region` tells the number's country, asked only then) takes it."""
        if history.pinned is not None:
            channel = channel_of(history.pinned)
        first = self._choose_on(channel, history, now, to_address)
        if history.handed_over or history.pinned is not None:
            return first
        if first.route is not None and not failed_last(first.route, history):
            return first
        down = [channel]
        where = region() if region is not None else None
        while True:
            other = next_channel(self.plan, channel, where, bool(to_address), down)
            if other is None:
                return first  # its own channel again, when it can take it at all
            # A fresh history: the other channel's routes have not failed this text.
            found = self._choose_on(other, History(), now, to_address)
            if found.route is not None:
                because = (
                    first.reason
                    if first.route is None
                    else (f"{first.route.value} failed its last attempt")
                )
                return Choice(found.route, f"{found.reason}, because {because}")
            down.append(other)

    def _choose_on(
        self, channel: Channel, history: History, now: dt.datetime, to_address: str
    ) -> Choice:
        if channel is not Channel.EMAIL:
            return choose_on_channel(self.status(Route(channel.value), now), history)
        if not to_address:
            return Choice(None, "email cannot reach the number (no open gateway or provider)")
        own = self.status(Route.OWN, now)
        # Most texts are first attempts with the own server working: no need to weigh the relay.
        plain = plain_choice(own, history)
        if plain is not None:
            return plain
        domain = to_address.rpartition("@")[2].lower()
        to_carrier = bool(domain) and domain not in self.provider_domains
        return choose_route(own, self.status(Route.RELAY, now), history, self.routing_policy,
                            to_carrier)  # fmt: skip

    def at_limit(self, route: Route) -> None:
        """The database says the route has no send left today (other workers used it): treat
        it as full until the counts are read again."""
        limit = self.lanes[route].daily_limit
        if limit is not None:
            self.counted[route] = max(self.counted.get(route, 0), limit)

    def reserve(self, route: Route, now: dt.datetime) -> None:
        """Count a send against the route before it starts, so limits hold with sends in flight."""
        self.in_flight[route] = self.in_flight.get(route, 0) + 1
        lane = self.lanes[route]
        if lane.per_minute is not None:
            self.buckets[route], _ = bucket_take(self.buckets.get(route), lane.per_minute, now)

    def observe(self, route: Route, outcome: AttemptOutcome, now: dt.datetime) -> None:
        if outcome.kind in COUNTS_AGAINST_LIMIT:
            self.recorded[route] = self.recorded.get(route, 0) + 1
        self.in_flight[route] = self.in_flight.get(route, 0) - 1
        before = self.breakers.get(route, _CLOSED)
        if before is _CLOSED and outcome.kind is OutcomeKind.ACCEPTED:
            return  # the common case: a closed breaker stays closed
        after = breaker_after(
            before, outcome.kind, outcome.phase, outcome.reply, self.breaker_policy, now
        )
        if after != before:
            self.breakers[route] = after
            self.dirty = True
            # A route that keeps failing is said once, in the server's words, as it stops being
            # used; and once as it works again (its probe after the cool-down, or any answer).
            if before.state is BreakerState.CLOSED and after.state is BreakerState.OPEN:
                log.warning(
                    "route %s fails (%s): not tried again for %d s",
                    route.value, after.last_error, self.breaker_policy.cooldown.total_seconds(),
                )  # fmt: skip
            elif before.state is not BreakerState.CLOSED and after.state is BreakerState.CLOSED:
                log.warning("route %s works again", route.value)

    def wait_until(self, now: dt.datetime) -> dt.datetime:
        """When to look again for a message no route could take."""
        until = now + NO_ROUTE_WAIT
        for breaker in self.breakers.values():
            if breaker.state is BreakerState.OPEN and breaker.opened_at is not None:
                until = max(until, breaker.opened_at + self.breaker_policy.cooldown)
        return until

    # --- sharing with the database (other workers, `gateway routes`) -------------------------

    def load(self, engine: Engine, now: dt.datetime) -> None:
        self.dirty = False
        self.refresh(engine, now)

    def refresh(self, engine: Engine, now: dt.datetime) -> None:
        """Breakers and counts as the database holds them: what every worker saw and sent, so
        a breaker one process opens holds in all of them within a refresh. A breaker changed
        here and not yet saved is kept (callers save first)."""
        if not self.dirty:
            stored = load_breakers(engine)
            for route in Route:
                if route.value in stored:
                    self.breakers[route] = stored[route.value]
        self.refresh_counts(engine, now)

    def wrote(self, routes: list[Route]) -> None:
        """These sends' outcomes are now in the database."""
        for route in routes:
            self.flushed[route] = self.flushed.get(route, 0) + 1
            self.recorded[route] = self.recorded.get(route, 0) - 1

    def refresh_counts(self, engine: Engine, now: dt.datetime) -> None:
        """Count again from the database, which holds every flushed send (and other workers')."""
        counts = sent_last_24h(engine, now)
        self.counted = {route: counts.get(route.value, 0) for route in Route}
        self.flushed = {}

    def save(self, engine: Engine, now: dt.datetime) -> None:
        """Write the breakers for other workers and `gateway routes` (callers check `dirty`)."""
        self.dirty = False
        save_breakers(engine, {r.value: b for r, b in self.breakers.items()}, now)
