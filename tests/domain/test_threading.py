"""Matching inbound mail to our texts: rule order, the phone window, bounces."""

from __future__ import annotations

import datetime as dt

from gateway.domain.bounces import Recipient
from gateway.domain.inbound import InboundMail, Kind
from gateway.domain.phone import parse_phone
from gateway.domain.threading import Rule, Sent, ids_to_look_up, match

NOW = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
WINDOW = dt.timedelta(hours=72)
OURS = Sent(1, "<aaa111@example.com>", NOW - dt.timedelta(hours=30), NOW)
LATEST = Sent(2, "<bbb222@example.com>", NOW - dt.timedelta(hours=1), NOW)


def mail(kind=Kind.REPLY, **fields) -> InboundMail:
    base = {
        "sender": "2065550143@vtext.com",
        "subject": "",
        "message_id": None,
        "phone": parse_phone("+12065550143", "US"),
        "carrier": "verizon",
        "text": "ok",
        "in_reply_to": None,
    }
    return InboundMail(kind=kind, **{**base, **fields})


def test_header_beats_token_beats_phone():
    by_id = {OURS.message_id: OURS, "<tok9@example.com>": LATEST}
    found = match(mail(referenced_ids=(OURS.message_id,), plus_tokens=("tok9",)), "example.com",
                  by_id, LATEST, NOW, WINDOW)  # fmt: skip
    assert (found.rule, found.sent) == (Rule.IN_REPLY_TO, OURS)
    found = match(mail(plus_tokens=("tok9",)), "example.com", by_id, OURS, NOW, WINDOW)
    assert (found.rule, found.sent, found.confidence) == (Rule.PLUS_TOKEN, LATEST, 0.95)


def test_phone_match_is_surer_when_recent_and_absent_outside_the_window():
    assert match(mail(), "example.com", {}, LATEST, NOW, WINDOW).confidence == 0.8
    assert match(mail(), "example.com", {}, OURS, NOW, WINDOW).confidence == 0.6
    old = Sent(3, "<c@example.com>", NOW - WINDOW - dt.timedelta(seconds=1), NOW)
    assert match(mail(), "example.com", {}, old, NOW, WINDOW).rule is Rule.NONE
    assert match(mail(phone=None), "example.com", {}, LATEST, NOW, WINDOW).rule is Rule.NONE


def test_only_replies_and_reports_are_threaded():
    for kind in (Kind.OWN_COPY, Kind.OTHER, Kind.AUTO_REPLY):
        found = match(mail(kind, referenced_ids=(OURS.message_id,)), "example.com",
                      {OURS.message_id: OURS}, LATEST, NOW, WINDOW)  # fmt: skip
        assert found.rule is Rule.NONE


def test_bounce_by_original_then_by_recipient():
    failed = Recipient("2065550143@vtext.com", "5.1.1", "550", "userunknown", True, "")
    bounce = mail(Kind.BOUNCE, original_message_id=OURS.message_id, recipients=(failed,))
    assert ids_to_look_up(bounce, "example.com") == (OURS.message_id,)
    found = match(bounce, "example.com", {OURS.message_id: OURS}, LATEST, NOW, WINDOW)
    assert (found.rule, found.sent, found.confidence) == (Rule.ORIGINAL, OURS, 1.0)
    found = match(bounce, "example.com", {}, LATEST, NOW, WINDOW)
    assert (found.rule, found.sent, found.confidence) == (Rule.RECIPIENT, LATEST, 0.7)
