"""Choosing a channel, and the SMS services' protocols: signatures (against the services' own
published examples where they publish one), answers, events and statuses."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gateway.domain import smsgate, twilio
from gateway.domain.carriers import GatewayAddress, Unreachable
from gateway.domain.channels import Channel, ChannelPlan, channel_for, choose_channel, next_channel
from gateway.domain.delivery import OutcomeKind, State

EMAIL, PHONE, TWILIO = Channel.EMAIL, Channel.SMSGATE, Channel.TWILIO


def plan(*order: Channel, **countries: list[str]) -> ChannelPlan:
    limits = {PHONE: frozenset(countries.get("smsgate", [])),
              TWILIO: frozenset(countries.get("twilio", []))}  # fmt: skip
    return ChannelPlan(order, {c: v for c, v in limits.items() if c in order})


def test_each_text_takes_the_first_channel_that_reaches_it():
    both = plan(EMAIL, PHONE)
    assert choose_channel(both, "US", True, "verizon's gateway").channel is EMAIL
    closed = choose_channel(both, "US", False, "AT&T closed its gateway")
    assert closed.channel is PHONE
    assert closed.why == "sent by the company's phone (SMS Gate), because AT&T closed its gateway"
    assert choose_channel(plan(PHONE, EMAIL), "US", True, "x").channel is PHONE


def test_a_channel_limited_to_countries_passes_others_on():
    limited = plan(EMAIL, PHONE, TWILIO, smsgate=["GB"], twilio=["US", "CA"])
    assert choose_channel(limited, "GB", False, "no gateway").channel is PHONE
    assert choose_channel(limited, "CA", False, "no gateway").channel is TWILIO
    nowhere = choose_channel(limited, "DE", False, "no gateway")
    assert nowhere.channel is None
    assert (
        "smsgate is limited to GB" in nowhere.why and "twilio is limited to CA, US" in nowhere.why
    )


def test_channel_for_reads_what_email_would_do():
    phone_only = plan(EMAIL, PHONE)
    gone = Unreachable("carrier_retired", "AT&T closed its email-to-SMS gateway on 2025-06-17")
    assert channel_for(phone_only, "US", gone).channel is PHONE
    open_one = GatewayAddress("2025550143@vtext.com", None, "vtext.com", None, why="verizon")
    assert channel_for(phone_only, "US", open_one) == choose_channel(phone_only, "US", True,
                                                                      "verizon")  # fmt: skip


def test_the_next_channel_skips_those_down_and_those_that_cannot_reach():
    three = plan(PHONE, EMAIL, TWILIO, twilio=["US"])
    assert next_channel(three, PHONE, "US", by_email=True) is EMAIL
    assert next_channel(three, PHONE, "US", by_email=False) is TWILIO
    assert next_channel(three, PHONE, "GB", by_email=False) is None
    assert next_channel(three, PHONE, "US", by_email=True, down=[EMAIL]) is TWILIO


# --- Twilio --------------------------------------------------------------------------------

URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
          ("From", "+14158675309"), ("To", "+18005551212")]  # fmt: skip


def test_twilio_signatures_match_twilios_published_examples():
    # The example in Twilio's request-validation documentation and its libraries' tests.
    assert twilio.signature("12345", URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio.signature("12345", URL, list(reversed(PARAMS))) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                ("Digits", "1234"), ("Digits", "1234")]  # fmt: skip
    assert twilio.signature("12345", URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_may_sign_the_address_with_or_without_its_default_port():
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    signed = twilio.signature("12345", with_port, PARAMS)
    assert twilio.signature_problem("12345", URL, PARAMS, signed) is None
    plain = twilio.signature("12345", URL, PARAMS)
    assert twilio.signature_problem("12345", with_port, PARAMS, plain) is None
    other_port = "https://mycompany.com:8443/myapp.php?foo=1&bar=2"
    assert twilio.signature_problem("12345", other_port, PARAMS, plain) is not None


@pytest.mark.parametrize(
    ("url", "params", "given"),
    [(URL, PARAMS, ""), (URL + "&x=1", PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
     (URL, [*PARAMS[:-1], ("To", "+1")], "RSOYDt4T1cUTdK1PDd93/VVr8B8=")],
)  # fmt: skip
def test_a_twilio_call_not_signed_for_this_address_and_form_is_refused(url, params, given):
    assert twilio.signature_problem("12345", url, params, given) is not None
    assert twilio.signature_problem("12345", URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=") is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "words"),
    [
        (201, '{"sid": "SM1", "status": "queued"}', OutcomeKind.ACCEPTED, "SM1"),
        (400, '{"code": 21610, "message": "Attempt to send to unsubscribed recipient"}',
         OutcomeKind.PERMANENT, "opted out"),
        (400, '{"code": 21211, "message": "Invalid To"}', OutcomeKind.PERMANENT, "not a valid"),
        (401, '{"code": 20003, "message": "Authenticate"}', OutcomeKind.AUTH, "auth token"),
        (429, '{"code": 20429, "message": "Too Many Requests"}', OutcomeKind.TEMPORARY, "429"),
        (503, "<html>down</html>", OutcomeKind.TEMPORARY, "503"),
    ],
)  # fmt: skip
def test_twilios_answers_to_a_create(status, body, kind, words):
    outcome = twilio.create_outcome(status, body)
    assert outcome.kind is kind and words in outcome.reply


def test_twilio_statuses_map_to_ours():
    assert twilio.status_update("delivered", None).state is State.DELIVERED
    failed = twilio.status_update("undelivered", "30003")
    assert (
        failed.state is State.FAILED and "30003" in failed.reason and "unreachable" in failed.reason
    )
    for step in ("queued", "sending", "sent", "accepted"):
        assert twilio.status_update(step, None).state is None


# --- SMS Gate ------------------------------------------------------------------------------


def test_smsgate_signatures_are_hmac_sha256_of_body_and_timestamp():
    body, stamp = b'{"event": "sms:received"}', "1765000000"
    expected = hmac.new(b"key", body + stamp.encode(), hashlib.sha256).hexdigest()
    assert smsgate.signature("key", body, stamp) == expected
    now = 1765000000.0
    assert smsgate.signature_problem("key", body, stamp, expected, now) is None
    assert smsgate.signature_problem("key", body, stamp, expected.upper(), now) is None
    assert "5 minutes" in smsgate.signature_problem("key", body, stamp, expected, now + 301)
    assert "does not match" in smsgate.signature_problem("other", body, stamp, expected, now)
    assert "required" in smsgate.signature_problem("key", body, None, expected, now)
    assert "Unix seconds" in smsgate.signature_problem("key", body, "1e9", expected, now)


def test_smsgate_events_are_read_or_refused():
    event = smsgate.parse_event(json.dumps({
        "id": "e1", "event": "sms:delivered", "deviceId": "d", "webhookId": "w",
        "payload": {"messageId": "m1", "phoneNumber": "+12025550143",
                    "deliveredAt": "2026-12-06T10:00:00.000+01:00"}}).encode())  # fmt: skip
    assert (event.kind, event.message_id, event.at.isoformat()) == (
        smsgate.EventKind.DELIVERED,
        "m1",
        "2026-12-06T10:00:00+01:00",
    )
    ping = smsgate.parse_event(b'{"id": "e2", "event": "system:ping", "payload": {}}')
    assert ping.kind is smsgate.EventKind.OTHER
    for bad in (b"", b"[]", b'{"id": 5}', b'{"id": "x", "event": "sms:failed", "payload": {}}',
                b'{"id": "x", "event": "sms:received", "payload": {"messageId": "m", '
                b'"phoneNumber": ["+1"]}}'):  # fmt: skip
        with pytest.raises(smsgate.EventError):
            smsgate.parse_event(bad)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(202, OutcomeKind.ACCEPTED), (409, OutcomeKind.ACCEPTED), (503, OutcomeKind.TEMPORARY),
     (401, OutcomeKind.AUTH), (400, OutcomeKind.PERMANENT), (500, OutcomeKind.TEMPORARY)],
)  # fmt: skip
def test_the_phones_answers_to_a_post(status, kind):
    assert smsgate.send_outcome(status, '{"message": "said"}').kind is kind


def test_a_text_on_the_phone_carries_our_id_and_its_time_to_live():
    ref = smsgate.our_id("<" + "b" * 40 + "@example.com>")
    assert ref == "b" * 36  # the longest id the phone takes
    body = smsgate.message_request(ref, "+12025550143", "Hi", 2, "dev", 2)
    assert body["id"] == ref and body["ttl"] == smsgate.MIN_TTL_SECONDS
    assert body["deviceId"] == "dev" and body["simNumber"] == 2 and body["withDeliveryReport"]
