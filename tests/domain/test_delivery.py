import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.delivery import (
    AttemptOutcome,
    OutcomeKind,
    RetryPolicy,
    State,
    backoff_seconds,
    decide,
)

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
POLICY = RetryPolicy()


def outcome(kind, reply="x", code=None):
    return AttemptOutcome(kind, reply, code)


def test_250_is_sent():
    assert (
        decide(outcome(OutcomeKind.ACCEPTED, "250 ok", 250), 1, T0, T0, POLICY, 0.5).state
        is State.SENT
    )


def test_5xx_fails_with_the_servers_words():
    decision = decide(
        outcome(OutcomeKind.PERMANENT, "550 5.1.1 no such user", 550), 1, T0, T0, POLICY, 0.5
    )
    assert decision.state is State.FAILED and "550 5.1.1 no such user" in decision.reason


def test_4xx_and_network_defer_with_backoff():
    for kind in (OutcomeKind.TEMPORARY, OutcomeKind.NETWORK, OutcomeKind.AUTH, OutcomeKind.TLS):
        decision = decide(outcome(kind, "451 later", 451), 1, T0, T0, POLICY, 0.0)
        assert decision.state is State.DEFERRED
        assert decision.due_at == T0 + dt.timedelta(seconds=15)


def test_auth_failure_names_app_passwords_and_oauth2():
    decision = decide(
        outcome(OutcomeKind.AUTH, "535 5.7.8 bad credentials", 535), 1, T0, T0, POLICY, 0
    )
    assert "app password" in decision.reason and "OAuth2" in decision.reason


def test_ambiguous_waits_at_least_the_hold():
    decision = decide(outcome(OutcomeKind.AMBIGUOUS, "lost"), 1, T0, T0, POLICY, 0.0)
    assert decision.state is State.DEFERRED
    assert decision.due_at - T0 >= dt.timedelta(seconds=POLICY.ambiguous_hold_seconds)
    assert decision.reason.startswith("ambiguous")


def test_expires_after_the_lifetime():
    late = T0 + POLICY.lifetime - dt.timedelta(seconds=1)
    decision = decide(outcome(OutcomeKind.TEMPORARY, "451 later"), 5, T0, late, POLICY, 0.5)
    assert decision.state is State.FAILED and decision.reason.startswith("expired")


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=1))
def test_backoff_is_bounded_and_grows(attempts, jitter):
    delay = backoff_seconds(attempts, POLICY, jitter)
    assert POLICY.base_seconds / 2 <= delay <= POLICY.cap_seconds
    assert backoff_seconds(attempts + 1, POLICY, 1.0) >= backoff_seconds(attempts, POLICY, 1.0)
