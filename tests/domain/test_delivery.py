import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.delivery import (
    MAX_HINT,
    AttemptOutcome,
    OutcomeKind,
    RetryPolicy,
    State,
    backoff_seconds,
    decide,
    password_sign_in_ends,
    retry_hint,
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


@pytest.mark.parametrize(
    "reply, fix",
    [("no OAuth2 access token: the stored sign-in has expired", "gateway auth microsoft"),
     ("username 'dispatch' is set but no password is configured", "password_env")],
)  # fmt: skip
def test_a_sign_in_never_put_to_the_server_says_what_to_set_not_that_it_was_refused(reply, fix):
    decision = decide(outcome(OutcomeKind.AUTH, reply), 1, T0, T0, POLICY, 0)
    assert decision.reason.startswith(f"cannot sign in: {reply} (")
    assert fix in decision.reason and "refused" not in decision.reason


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


@pytest.mark.parametrize(
    ("reply", "seconds"),
    [
        ("451 4.7.1 Please try again in 5 minutes", 300),
        ("450 4.2.0 Greylisted, retry after 300 seconds", 300),
        ("421 4.7.0 Try again later in 2 hours", 7200),
        ("452 4.3.1 Retry-After: 120", 120),
        ("421 4.7.28 rate limited; retry in 30s", 30),
        ("451 try again after 90 sec", 90),
        ("421-4.7.0 Try again later, closing connection.", None),
        ("450 4.2.1 mailbox busy", None),
        ("451 retry in 0 seconds", None),
        ("451 try again in 999999 hours", MAX_HINT.total_seconds()),
    ],
)
def test_retry_hints_in_server_replies(reply, seconds):
    hint = retry_hint(reply)
    assert (hint.total_seconds() if hint else None) == seconds


def test_a_hint_longer_than_the_backoff_is_respected():
    decision = decide(
        outcome(OutcomeKind.TEMPORARY, "451 4.7.1 try again in 20 minutes", 451),
        1,
        T0,
        T0,
        POLICY,
        0.0,
    )
    assert decision.state is State.DEFERRED and decision.due_at == T0 + dt.timedelta(minutes=20)
    shorter = decide(
        outcome(OutcomeKind.TEMPORARY, "451 try again in 1 second", 451), 1, T0, T0, POLICY, 0.0
    )
    assert shorter.due_at == T0 + dt.timedelta(seconds=15)  # never sooner than the backoff


def test_a_hint_beyond_the_lifetime_fails_the_text():
    decision = decide(
        outcome(OutcomeKind.TEMPORARY, "451 try again in 5 hours", 451),
        1,
        T0,
        T0 + dt.timedelta(hours=2),
        POLICY,
        0.0,
    )
    assert decision.state is State.FAILED and decision.reason.startswith("expired")


@given(st.text(max_size=200))
def test_any_reply_gives_no_hint_or_a_bounded_one(reply):
    hint = retry_hint(reply)
    assert hint is None or dt.timedelta(0) < hint <= MAX_HINT


@pytest.mark.parametrize(
    ("host", "greeting", "ends"),
    [
        ("smtp.office365.com", "", True),
        ("SMTP-MAIL.OUTLOOK.COM.", "", True),
        # A company's own name for the host: the greeting shows whose server it is.
        (
            "mail.contoso.example",
            "BN9PR03CA0123.outlook.office365.com Microsoft ESMTP MAIL "
            "Service ready at Mon, 7 Dec 2026 16:00:00 +0000",
            True,
        ),
        ("smtp.gmail.com", "smtp.gmail.com ESMTP a1-20020a05 - gsmtp", False),
        # Names that only contain the words are not Microsoft's.
        ("smtp.notoutlook.com", "", False),
        ("mail.example", "mail.example ESMTP Postfix (outlook.com.example)", False),
    ],
)
def test_password_sign_in_ends_on_microsoft_365_only(host, greeting, ends):
    assert password_sign_in_ends(host, greeting) is ends
