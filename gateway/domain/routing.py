"""Which route carries a text: the company's own server, or the hosted relay.

Own first, because then the sender is the company, a copy lands in Sent and failure reports come
home. The relay takes over when the own server cannot do the job: disabled, unreachable, failing
TLS or sign-in, at its daily limit, or answering 4xx again and again. A message whose last
attempt is ambiguous (lost after the final ".") stays on its route: the first copy may have
arrived, and a second through another route could not be told apart from it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.domain.channels import Channel
from gateway.domain.delivery import OutcomeKind, auth_hint


class Route(StrEnum):
    OWN = "own"  # email, through the company's own server
    RELAY = "relay"  # email, through the hosted relay
    SMSGATE = "smsgate"  # the company's Android phone
    TWILIO = "twilio"


EMAIL_ROUTES = (Route.OWN, Route.RELAY)


def channel_of(route: Route) -> Channel:
    return Channel.EMAIL if route in EMAIL_ROUTES else Channel(route.value)


class BreakerState(StrEnum):
    CLOSED = "closed"  # in use
    OPEN = "open"  # failing: not used until the cool-down has passed
    HALF_OPEN = "half_open"  # cool-down over: the next attempt is a probe


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 3  # consecutive route failures that open the breaker
    cooldown: dt.timedelta = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures of the route itself
    opened_at: dt.datetime | None = None
    last_error: str | None = None
    # The first of the consecutive failures: how long the route has been failing (opened_at
    # moves with every probe that fails, so it cannot say).
    failing_since: dt.datetime | None = None


# Outcomes that say the route is broken (not the message): they count towards the breaker and
# move the message to the other route.
ROUTE_FAILURES = frozenset({OutcomeKind.NETWORK, OutcomeKind.TLS, OutcomeKind.AUTH})


# Sends a route's limits count: the server took the message, or may have.
COUNTS_AGAINST_LIMIT = frozenset({OutcomeKind.ACCEPTED, OutcomeKind.AMBIGUOUS})


def is_route_failure(kind: OutcomeKind, phase: str) -> bool:
    # A 4xx at the greeting (421 "too busy") is the server refusing all mail, not this message.
    return kind in ROUTE_FAILURES or (kind is OutcomeKind.TEMPORARY and phase == "connect")


def breaker_state(breaker: Breaker, policy: BreakerPolicy, now: dt.datetime) -> BreakerState:
    """The state that holds at `now`: an open breaker whose cool-down is over is half-open."""
    cooled = breaker.opened_at is not None and now >= breaker.opened_at + policy.cooldown
    if breaker.state is BreakerState.OPEN and cooled:
        return BreakerState.HALF_OPEN
    return breaker.state


def breaker_after(
    breaker: Breaker,
    kind: OutcomeKind,
    phase: str,
    reply: str,
    policy: BreakerPolicy,
    now: dt.datetime,
) -> Breaker:
    """The breaker after an attempt on its route ended with `kind`."""
    if kind is OutcomeKind.AMBIGUOUS:
        return breaker  # says nothing about the route either way
    if not is_route_failure(kind, phase):
        # The server answered this message (250, or a 4xx/5xx about it): the route works.
        return Breaker(BreakerState.CLOSED, 0, None, breaker.last_error)
    failures = breaker.failures + 1
    since = breaker.failing_since or now
    probing = breaker_state(breaker, policy, now) is BreakerState.HALF_OPEN
    if probing or failures >= policy.threshold:
        return Breaker(BreakerState.OPEN, failures, now, reply, since)
    return replace(breaker, failures=failures, last_error=reply, failing_since=since)


# --- the per-minute rate: a token bucket -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: dt.datetime


def bucket_take(bucket: Bucket | None, per_minute: float, now: dt.datetime) -> tuple[Bucket, bool]:
    """Take one token from a bucket that refills `per_minute` tokens a minute and holds at most
    a minute's worth. Returns the new bucket and whether a token was there."""
    capacity = max(per_minute, 1.0)
    if bucket is None:
        bucket = Bucket(capacity, now)
    elapsed = max((now - bucket.updated).total_seconds(), 0.0)  # a clock that steps back adds none
    tokens = min(capacity, bucket.tokens + elapsed * per_minute / 60.0)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), True
    return Bucket(tokens, now), False


# --- choosing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteStatus:
    route: Route
    enabled: bool  # configured and switched on
    breaker: BreakerState
    sent_24h: int  # texts handed to this route in the last 24 hours (rolling)
    daily_limit: int | None
    rate_ok: bool = True  # the per-minute bucket has a token
    last_error: str | None = None
    # The server refuses mail to carriers' email-to-SMS gateways (some relays do, and bill the
    # attempts all the same): it never takes a text addressed to one.
    refuses_gateways: bool = False

    def unavailable_because(self, to_carrier: bool = False) -> str | None:
        """Why this route cannot take a text now ("is disabled", ...), or None when it can.
        `to_carrier`: the text is addressed to a carrier's gateway (not a provider's)."""
        if not self.enabled:
            return "is disabled"
        if to_carrier and self.refuses_gateways:
            return "does not deliver to carrier gateways (delivers_to_gateways = false)"
        if self.breaker is BreakerState.OPEN:
            return f"is failing: {self.last_error or 'circuit open'}"
        if self.daily_limit is not None and self.sent_24h >= self.daily_limit:
            return f"is at its daily limit ({self.sent_24h}/{self.daily_limit} in 24 h)"
        if not self.rate_ok:
            return "is at its per-minute rate"
        return None


@dataclass(frozen=True, slots=True)
class History:
    """What the message's own attempts say."""

    last_route: Route | None = None
    last_kind: OutcomeKind | None = None
    last_phase: str = ""
    own_temporary: int = 0  # 4xx answers the own server gave this message
    # A dispatcher asked for this route ("re-send by relay"): no other route may take it.
    pinned: Route | None = None
    # Some attempt may have reached the person (an ambiguous end): the text never changes
    # channel after that, since a second copy by another could not be told apart.
    handed_over: bool = False


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    # After this many 4xx answers to one message, the own server is given up for that message.
    own_temporary_limit: int = 2


@dataclass(frozen=True, slots=True)
class Choice:
    route: Route | None  # None: neither route can take it now; wait
    reason: str


OWN_SERVER = Choice(Route.OWN, "own server")


def plain_choice(own: RouteStatus, history: History) -> Choice | None:
    """The choice for nearly every text, decided from the own route alone: a first attempt while
    the own server can take it. None when the relay's state must be weighed too."""
    if history.last_kind is None and history.pinned is None and own.unavailable_because() is None:
        return OWN_SERVER
    return None


def choose_route(
    own: RouteStatus,
    relay: RouteStatus,
    history: History,
    policy: RoutingPolicy,
    to_carrier: bool = False,
) -> Choice:
    """The route for a message's next attempt, and why (stored with the attempt). `to_carrier`:
    the text is addressed to a carrier's gateway, which some relays refuse."""
    statuses = {Route.OWN: own, Route.RELAY: relay}
    if history.pinned is not None:
        blocked = statuses[history.pinned].unavailable_because(to_carrier)
        if blocked is None:
            return Choice(history.pinned, f"{history.pinned.value}, as the dispatcher asked")
        return Choice(None, f"waiting for the {history.pinned.value} route the dispatcher asked "
                            f"for, which {blocked}")  # fmt: skip
    plain = plain_choice(own, history)
    if plain is not None:
        return plain
    if history.last_kind is OutcomeKind.AMBIGUOUS and history.last_route is not None:
        status = statuses[history.last_route]
        blocked = status.unavailable_because(to_carrier)
        if blocked is None:
            return Choice(history.last_route, "same route as the ambiguous attempt before")
        return Choice(
            None,
            f"waiting for the {history.last_route.value} route, which {blocked}: the last "
            "attempt may have been delivered, so no other route may send it",
        )

    own_out = own.unavailable_because()
    own_blocked = own_out
    last = history.last_kind
    if (
        own_blocked is None
        and history.last_route is Route.OWN
        and last is not None
        and is_route_failure(last, history.last_phase)
    ):
        own_blocked = f"failed this message's last attempt ({last.value})"
    if own_blocked is None and history.own_temporary >= policy.own_temporary_limit:
        own_blocked = f"answered 4xx {history.own_temporary} times to this message"
    if own_blocked is None:
        return OWN_SERVER

    relay_out = relay.unavailable_because(to_carrier)
    if relay_out is None:
        return Choice(Route.RELAY, f"relay, because the own server {own_blocked}")
    if own_out is None:
        # The relay is out too: the own server, despite this message's history, is all there is.
        return Choice(Route.OWN, f"own server again, because the relay {relay_out}")
    return Choice(None, f"no route: the own server {own_out}, and the relay {relay_out}")


def history_of(attempts: list[tuple[str, str, str | None]]) -> History:
    """A message's History from its attempts, oldest first: (route, outcome kind, phase)."""
    history = History()
    for route, kind, phase in attempts:
        history = history_after(history, Route(route), OutcomeKind(kind), phase or "")
    return history


def history_after(history: History, route: Route, kind: OutcomeKind, phase: str) -> History:
    own_temporary = history.own_temporary + (
        1 if route is Route.OWN and kind is OutcomeKind.TEMPORARY else 0
    )
    handed_over = history.handed_over or kind in (OutcomeKind.AMBIGUOUS, OutcomeKind.ACCEPTED)
    return History(route, kind, phase, own_temporary, history.pinned, handed_over)


def failed_last(route: Route, history: History) -> bool:
    """Whether the text's last attempt was on `route` and found the route broken."""
    kind = history.last_kind
    return (
        history.last_route is route
        and kind is not None
        and (is_route_failure(kind, history.last_phase))
    )


def choose_on_channel(status: RouteStatus, history: History) -> Choice:
    """The route of an SMS channel for a text that channel carries, or why it must wait."""
    route = status.route
    blocked = status.unavailable_because()
    if blocked is None:
        if history.last_kind is OutcomeKind.AMBIGUOUS:
            return Choice(route, f"{route.value} again: its last answer was lost (same id)")
        return Choice(route, route.value)
    return Choice(None, f"{route.value} {blocked}")


def explain_route_error(reply: str | None) -> str | None:
    """A route's last error as an operator should read it: a refused sign-in names the fix."""
    if reply is None:
        return None
    if reply[:3] in ("535", "534", "530") or any(w in reply for w in ("sign-in", "AUTH", "OAuth2")):
        return f"{reply} ({auth_hint(reply)})"
    return reply
