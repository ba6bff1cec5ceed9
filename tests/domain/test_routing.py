import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.delivery import OutcomeKind
from gateway.domain.routing import (
    EMAIL_ROUTES,
    Breaker,
    BreakerPolicy,
    BreakerState,
    History,
    Route,
    RouteStatus,
    RoutingPolicy,
    breaker_after,
    breaker_state,
    bucket_take,
    choose_route,
    explain_route_error,
)

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
POLICY = BreakerPolicy(threshold=3, cooldown=dt.timedelta(seconds=60))
ROUTING = RoutingPolicy()


def status(route, **changes):
    values = dict(
        route=route, enabled=True, breaker=BreakerState.CLOSED, sent_24h=0, daily_limit=None
    )
    values.update(changes)
    return RouteStatus(**values)


OWN, RELAY = status(Route.OWN), status(Route.RELAY)


def test_own_server_first():
    assert choose_route(OWN, RELAY, History(), ROUTING).route is Route.OWN


@pytest.mark.parametrize(
    ("own", "history", "words"),
    [
        (status(Route.OWN, enabled=False), History(), "is disabled"),
        (
            status(Route.OWN, breaker=BreakerState.OPEN, last_error="535 5.7.8 bad"),
            History(),
            "is failing: 535 5.7.8 bad",
        ),
        (
            status(Route.OWN, sent_24h=500, daily_limit=500),
            History(),
            "daily limit (500/500 in 24 h)",
        ),
        (status(Route.OWN, rate_ok=False), History(), "per-minute rate"),
        (OWN, History(Route.OWN, OutcomeKind.AUTH, "auth"), "last attempt (auth)"),
        (OWN, History(Route.OWN, OutcomeKind.TLS, "connect"), "last attempt (tls)"),
        (OWN, History(Route.OWN, OutcomeKind.NETWORK, "connect"), "last attempt (network)"),
        (OWN, History(Route.OWN, OutcomeKind.TEMPORARY, "connect"), "last attempt (temporary)"),
        (OWN, History(Route.OWN, OutcomeKind.TEMPORARY, "rcpt", own_temporary=2), "4xx 2 times"),
    ],
)
def test_relay_takes_over_and_says_why(own, history, words):
    choice = choose_route(own, RELAY, history, ROUTING)
    assert choice.route is Route.RELAY and words in choice.reason


def test_one_4xx_is_not_yet_a_reason_to_leave_the_own_server():
    history = History(Route.OWN, OutcomeKind.TEMPORARY, "rcpt", own_temporary=1)
    assert choose_route(OWN, RELAY, history, ROUTING).route is Route.OWN


@pytest.mark.parametrize("route", EMAIL_ROUTES)
def test_ambiguous_attempts_stay_on_their_route(route):
    history = History(route, OutcomeKind.AMBIGUOUS, "data")
    assert choose_route(OWN, RELAY, history, ROUTING).route is route
    blocked = {
        Route.OWN: (status(Route.OWN, enabled=False), RELAY),
        Route.RELAY: (OWN, status(Route.RELAY, enabled=False)),
    }[route]
    choice = choose_route(*blocked, history, ROUTING)
    assert choice.route is None and "may have been delivered" in choice.reason


@given(st.sampled_from(EMAIL_ROUTES), st.sampled_from([None, *OutcomeKind]))
def test_a_pinned_route_is_the_only_one_used(pinned, last):
    history = History(Route.OWN if last else None, last, "connect", pinned=pinned)
    assert choose_route(OWN, RELAY, history, ROUTING).route is pinned
    down = {Route.OWN: (status(Route.OWN, enabled=False), RELAY),
            Route.RELAY: (OWN, status(Route.RELAY, enabled=False))}[pinned]  # fmt: skip
    choice = choose_route(*down, history, ROUTING)
    assert choice.route is None and "the dispatcher asked for" in choice.reason


def test_both_out_means_wait():
    choice = choose_route(
        status(Route.OWN, enabled=False),
        status(Route.RELAY, breaker=BreakerState.OPEN),
        History(),
        ROUTING,
    )
    assert choice.route is None and "no route" in choice.reason


def test_own_server_again_when_only_history_speaks_against_it_and_the_relay_is_out():
    choice = choose_route(
        OWN,
        status(Route.RELAY, enabled=False),
        History(Route.OWN, OutcomeKind.NETWORK, "connect"),
        ROUTING,
    )
    assert choice.route is Route.OWN and "relay is disabled" in choice.reason


def test_no_relay_configured_and_own_at_its_limit_waits():
    choice = choose_route(
        status(Route.OWN, sent_24h=3, daily_limit=3),
        status(Route.RELAY, enabled=False),
        History(),
        ROUTING,
    )
    assert choice.route is None


# --- the breaker ----------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_failures_and_probes_after_cooldown():
    breaker = Breaker()
    for _ in range(3):
        breaker = breaker_after(breaker, OutcomeKind.NETWORK, "connect", "refused", POLICY, T0)
    assert breaker.state is BreakerState.OPEN and breaker.last_error == "refused"
    assert breaker_state(breaker, POLICY, T0 + dt.timedelta(seconds=59)) is BreakerState.OPEN
    probe_time = T0 + dt.timedelta(seconds=60)
    assert breaker_state(breaker, POLICY, probe_time) is BreakerState.HALF_OPEN
    # a failed probe opens it again at once, a good one closes it
    again = breaker_after(breaker, OutcomeKind.AUTH, "auth", "535", POLICY, probe_time)
    assert again.state is BreakerState.OPEN and again.opened_at == probe_time
    closed = breaker_after(breaker, OutcomeKind.ACCEPTED, "data", "250 ok", POLICY, probe_time)
    assert closed.state is BreakerState.CLOSED and closed.failures == 0


def test_message_level_answers_prove_the_route_works():
    breaker = Breaker(failures=2)
    for kind, phase in [(OutcomeKind.PERMANENT, "rcpt"), (OutcomeKind.TEMPORARY, "rcpt")]:
        assert breaker_after(breaker, kind, phase, "x", POLICY, T0).failures == 0


def test_ambiguous_says_nothing_about_the_route():
    breaker = Breaker(failures=2)
    assert breaker_after(breaker, OutcomeKind.AMBIGUOUS, "data", "x", POLICY, T0) == breaker


@given(st.lists(st.sampled_from(list(OutcomeKind)), max_size=30))
def test_breaker_is_open_exactly_after_threshold_consecutive_route_failures(kinds):
    breaker = Breaker()
    streak = 0
    for kind in kinds:
        breaker = breaker_after(breaker, kind, "connect", "x", POLICY, T0)
        if kind is OutcomeKind.AMBIGUOUS:
            continue
        streak = (
            streak + 1
            if kind
            in (OutcomeKind.NETWORK, OutcomeKind.TLS, OutcomeKind.AUTH, OutcomeKind.TEMPORARY)
            else 0
        )
        assert (breaker.state is BreakerState.OPEN) == (streak >= POLICY.threshold) or (
            breaker.state is BreakerState.OPEN and streak > 0
        )


# --- the per-minute bucket ---------------------------------------------------------------------------


@given(
    st.integers(min_value=1, max_value=120),
    st.lists(st.floats(min_value=0, max_value=5), max_size=200),
)
def test_bucket_never_allows_more_than_the_rate_plus_one_minute_of_burst(per_minute, gaps):
    bucket, now, taken = None, T0, 0
    for gap in gaps:
        now += dt.timedelta(seconds=gap)
        bucket, ok = bucket_take(bucket, per_minute, now)
        taken += ok
    elapsed_minutes = (now - T0).total_seconds() / 60
    assert taken <= per_minute * (1 + elapsed_minutes) + 1e-6


def test_bucket_refills():
    bucket, ok = bucket_take(None, 30, T0)
    for _ in range(29):
        bucket, ok = bucket_take(bucket, 30, T0)
    assert ok
    bucket, ok = bucket_take(bucket, 30, T0)
    assert not ok
    bucket, ok = bucket_take(bucket, 30, T0 + dt.timedelta(seconds=2))
    assert ok


def test_clock_stepping_back_adds_no_tokens():
    bucket, _ = bucket_take(None, 1, T0)
    bucket, ok = bucket_take(bucket, 1, T0 - dt.timedelta(hours=1))
    assert not ok


@pytest.mark.parametrize(
    "error, fix",
    [("535 5.7.8 Username and Password not accepted", "app password"),
     ("no OAuth2 access token: the stored sign-in has expired", "gateway auth microsoft"),
     ("451 4.3.0 try later", None)],
)  # fmt: skip
def test_a_routes_last_error_names_the_fix_for_a_sign_in(error, fix):
    shown = explain_route_error(error)
    assert shown is not None and shown.startswith(error)
    assert (fix in shown) if fix else shown == error
