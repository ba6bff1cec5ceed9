"""The bounce reader: standard reports, the shapes of common mail systems, and the real corpus."""

from __future__ import annotations

import email
import email.policy
import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.bounces import read_report

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / "bounces"


def parse(text: str):
    return email.message_from_bytes(text.encode(), policy=email.policy.compat32)


DSN = """From: Mail Delivery System <MAILER-DAEMON@mx.example.org>
To: dispatch@example.com
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; 2025550143@vtext.com
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B
Content-Type: message/rfc822

Message-ID: <abc123@example.com>
From: Dispatch <dispatch@example.com>
To: 2025550143@vtext.com

Your order is on its way.
--B--
"""


def test_standard_report_with_an_unknown_user_is_a_permanent_failure():
    report = read_report(
        parse(
            DSN.format(
                action="failed",
                status="5.1.1",
                diagnostic="550 5.1.1 <2025550143@vtext.com>: User unknown",
            )
        )
    )
    assert report.kind == "bounce" and report.original_message_id == "<abc123@example.com>"
    [failed] = report.recipients
    assert (failed.address, failed.status, failed.smtp_code, failed.reason, failed.permanent) == (
        "2025550143@vtext.com",
        "5.1.1",
        "550",
        "userunknown",
        True,
    )


@pytest.mark.parametrize(
    ("status", "diagnostic", "reason"),
    [
        ("5.7.1", "550 5.7.1 Service unavailable; client host blocked using Spamhaus", "blocked"),
        ("4.2.2", "452 4.2.2 Mailbox full", "mailboxfull"),
        ("5.4.7", "Delivery time expired", "expired"),
    ],
)
def test_refusals_that_say_nothing_about_the_address_are_not_permanent(status, diagnostic, reason):
    [failed] = read_report(
        parse(DSN.format(action="failed", status=status, diagnostic=diagnostic))
    ).recipients
    assert failed.reason == reason and not failed.permanent


def test_a_success_notice_is_a_delivery_report_never_a_bounce():
    report = read_report(parse(DSN.format(action="delivered", status="2.0.0", diagnostic="250 ok")))
    assert report.kind == "delivery_report" and report.recipients == ()


def test_feedback_report():
    text = """From: abuse@isp.example
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an abuse report.
--F
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: test/1.0
Version: 1
--F--
"""
    report = read_report(parse(text))
    assert report.kind == "feedback" and report.feedback_type == "abuse" and not report.recipients


def test_vacation_notice_is_an_auto_reply():
    text = "From: Ana <ana@example.org>\nSubject: Out of Office: order A-1\nAuto-Submitted: auto-replied\n\nI am away until Monday.\n"
    assert read_report(parse(text)).kind == "auto_reply"


def test_a_bounce_that_looks_like_a_reply_is_still_a_bounce():
    # Verizon's gateway answers with "Re:" and no report structure at all.
    text = (
        "From: post_master@vtext.com\nTo: dispatch@example.com\nSubject: Re: order\n"
        "X-Failed-Recipients: 2025550143@vtext.com\n\nError: 550 5.1.1 User unknown 2025550143@vtext.com\n"
    )
    [failed] = read_report(parse(text)).recipients
    assert failed.address == "2025550143@vtext.com" and failed.permanent


LETTER = """From: Mail Delivery System <MAILER-DAEMON@mx.example.org>
To: dispatch@example.com
Subject: Mail delivery failed

{body}
"""


def test_pipelined_transcript_refusal_is_at_rcpt_not_data():
    # A pipelining client sees the RCPT refusal after ">>> DATA"; the 503 says so.
    body = (
        "   ----- Transcript of session follows -----\n"
        ">>> DATA\n<<< 550 <2025550143@vtext.com>... User unknown\n"
        "<<< 503 5.0.0 Need RCPT (recipient)\n"
    )
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=body, status="5.0.0"))).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)
    # Sendmail's "554 no valid recipients" for DATA says the same as the 503.
    body = body.replace(
        "<<< 503 5.0.0 Need RCPT (recipient)", "<<< 554 5.5.1 Error: no valid recipients"
    )
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=body, status="5.0.0"))).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)


def test_an_unknown_user_at_data_is_a_filter_unless_an_addressing_code_says_otherwise():
    body = (
        ">>> DATA\n<<< 550 <2025550143@vtext.com>... User unknown\n554 5.0.0 Service unavailable\n"
    )
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=body, status="5.0.0"))).recipients
    assert (failed.reason, failed.permanent) == ("filtered", False)
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=body, status="5.2.0"))).recipients
    assert (failed.reason, failed.permanent) == ("filtered", False)
    # 5.1.1, "bad destination mailbox": the mailbox itself, whichever command it answered.
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=body, status="5.1.1"))).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)


DSN_WITH_TEXT = """From: MAILER-DAEMON@mx.example.org
To: dispatch@example.com
Subject: Returned mail
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

{text}
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; 2025550143@vtext.com
Action: failed
Status: {status}
Diagnostic-Code: smtp; 550 <2025550143@vtext.com>... User unknown
--B--
"""


@pytest.mark.parametrize(
    ("body", "reason", "permanent"),
    [
        ("2025550143@vtext.com: 551 not our customer", "hasmoved", True),
        ("2025550143@vtext.com: 553 5.1.8 Domain of sender address x@y.example does not exist",
         "rejected", False),
        ("2025550143@vtext.com: 553 mx.vtext.example does not exist", "hostunknown", True),
        ("2025550143@vtext.com: Mail size limit exceeded", "mesgtoobig", False),
        ("2025550143@vtext.com: vdelivermail: account is locked", "suspend", False),
    ],
)  # fmt: skip
def test_letters_read_by_their_words(body, reason, permanent):
    [failed] = read_report(parse(LETTER.format(body=body))).recipients
    assert (failed.address, failed.reason, failed.permanent) == (
        "2025550143@vtext.com", reason, permanent,
    )  # fmt: skip


def test_each_failure_line_is_its_own_recipient_even_when_it_is_the_senders_own():
    body = (
        "dispatch@example.com: 550 5.2.2 Mailbox full\n"
        "2025550143@vtext.com: 550 5.1.1 User unknown\n"
    )
    full, unknown = read_report(parse(LETTER.format(body=body))).recipients
    assert (full.address, full.status, full.permanent) == ("dispatch@example.com", "5.2.2", False)
    assert (unknown.address, unknown.status, unknown.permanent) == (
        "2025550143@vtext.com", "5.1.1", True,
    )  # fmt: skip


def test_a_lost_boundary_is_found_again():
    text = DSN_WITH_TEXT.format(text="failed", status="5.1.1").replace(
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
        'Content-Type: multipart/report; report-type=delivery-status;\nboundary="B"',
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status) == ("2025550143@vtext.com", "5.1.1")


def test_an_indented_delimiter_still_ends_its_part():
    # " --B": not a delimiter to the email package, which would read the status part as text.
    text = DSN_WITH_TEXT.format(text="failed", status="5.2.2").replace(
        "\n--B\nContent-Type: message/delivery-status",
        "\n  --B\nContent-Type: message/delivery-status",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.status, failed.diagnostic) == (
        "5.2.2",
        "550 <2025550143@vtext.com>... User unknown",
    )


def test_the_code_beside_the_servers_reply_outranks_the_reporters_category():
    diagnostic = "5.1.0 - Unknown address error 550-'5.7.1 <bounce@ses.example>... Access denied'"
    [failed] = read_report(
        parse(DSN.format(action="failed", status="5.0.0", diagnostic=diagnostic))
    ).recipients
    assert (failed.status, failed.permanent) == ("5.7.1", False)


def test_each_verdict_line_of_a_sendmail_transcript_is_its_own_recipient():
    body = (
        "   ----- Transcript of session follows -----\n"
        "554 <2025550143@vtext.com>... Remote protocol error: Connection reset by peer\n"
        "550 tmomail.example (smtp)... 550 Host unknown\n"
        "554 <3125550143@tmomail.example>... 550 Host unknown (Authoritative answer)\n"
        "While talking to mx.example.org:\n"
        ">>> RCPT To:<4155550143@txt.example.org>\n"
        "<<< 550 Requested User Mailbox not found. No such user here.\n"
    )
    found = read_report(parse(LETTER.format(body=body))).recipients
    assert [(r.address, r.reason, r.status) for r in found] == [
        ("2025550143@vtext.com", "networkerror", "5.0.944"),
        ("3125550143@tmomail.example", "hostunknown", "5.0.912"),
        ("4155550143@txt.example.org", "userunknown", "5.0.911"),
    ]


def test_a_japanese_diagnostic_in_iso_2022_jp_is_read():
    # Notes writes its Japanese words, escape sequences and all, into the Diagnostic-Code.
    words = "ユーザー Neko (2025550143@vtext.com) は Domino ディレクトリには見つかりません。"
    diagnostic = words.encode("iso-2022-jp").decode("ascii")
    [failed] = read_report(
        parse(DSN.format(action="failed", status="5.0.0", diagnostic=diagnostic))
    ).recipients
    assert "ディレクトリ" in failed.diagnostic
    assert (failed.reason, failed.permanent) == ("userunknown", True)


def test_a_google_group_refusing_a_post_in_any_language_is_a_rejection():
    text = """From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: dispatch@example.com
Subject: Delivery Status Notification (Failure)
X-Failed-Recipients: drivers@googlegroups.com
Content-Type: text/plain; charset="UTF-8"

Hallo dispatch@example.com, Sie erhalten diese E-Mail, weil die Gruppe (drivers) nicht vorhanden ist.
"""
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.reason, failed.status, failed.permanent) == (
        "drivers@googlegroups.com", "rejected", "5.0.918", False,
    )  # fmt: skip


def test_a_report_with_no_word_on_recipients_names_the_returned_originals_to():
    text = """From: MAILER-DAEMON@mx.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: text/plain

Delivery report unavailable
--B
Content-Type: message/rfc822

From: dispatch@example.com
To: 2025550143@vtext.com
Message-ID: <tok@example.com>

Your order is out
--B--
"""
    report = read_report(parse(text))
    assert [r.address for r in report.recipients] == ["2025550143@vtext.com"]
    assert report.original_message_id == "<tok@example.com>"


def test_an_ordinary_reply_is_not_a_report():
    assert (
        read_report(parse("From: 2025550143@vtext.com\nSubject: \n\nOK thanks, see you at 3\n"))
        is None
    )


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_any_bytes_are_read_without_an_exception(data):
    read_report(email.message_from_bytes(data, policy=email.policy.compat32))


def test_corpus_figures_do_not_fall():
    """Issue 5's bar: detected >= 0.98 and status >= 0.90 (met), hard/soft >= 0.97 (not met
    yet); this keeps what is reached from slipping back. Raise the floors as the reader improves."""
    spec = importlib.util.spec_from_file_location(
        "bounce_accuracy", Path(__file__).resolve().parents[2] / "bench" / "bounce_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.measure(CORPUS)
    assert figures["non_failures_called_failures"] == 0  # part of the bar, and met
    assert figures["detected"] >= 0.98  # the bar, met
    assert figures["hard_soft_right"] >= 0.93
    assert figures["status_right"] >= 0.92  # the bar (0.90), met


@pytest.mark.parametrize(
    ("diagnostic", "status", "reason", "permanent"),
    [
        ("550 5.1.1 Address rejected", "5.1.1", "userunknown", True),  # the code says which
        ("554 No SMTP service; Bad DNS PTR resource record", "5.7.1", "requireptr", False),
        ("DNS lookup failure: host mx.example.org not found", "5.4.4", "hostunknown", True),
        ("Host not found, try again", "4.4.3", "networkerror", False),
        # Postfix's recipient refusal: the words after it say why; with none, the recipient.
        ("550 <a@b.example>: Recipient address rejected.", "5.0.0", "userunknown", True),
        ("550 5.4.1 [a@b.example]: Recipient address rejected: Access denied", "5.4.1",
         "userunknown", True),
        ("554 5.3.0 <a@b.example>: Recipient address rejected: Mailer error", "5.3.0",
         "mailererror", False),
        ("452 4.2.2 <a@b.example>: Recipient address rejected: Mailbox full", "4.2.2",
         "mailboxfull", False),
        ("450 4.7.1 <a@b.example>: Recipient address rejected: Greylisted for 300 seconds",
         "4.7.1", "rejected", False),
        ("550 <a@b.example>: Recipient address rejected: try the next MX", "5.0.0", "rejected",
         False),
        # No address looked up: a filter's words.
        ("550 : User unknown", "5.0.0", "filtered", False),
        # Refused at MAIL FROM: about our sender, not the recipient.
        ("SMTP error from remote mail server after MAIL FROM:<us@example.com>: 553 5.1.0 "
         "us example.com does not exist", "5.1.0", "rejected", False),
        ("Delivery failed 20 attempts", "", "expired", False),
    ],
)  # fmt: skip
def test_specific_words_and_codes(diagnostic, status, reason, permanent):
    [failed] = read_report(
        parse(DSN.format(action="failed", status=status, diagnostic=diagnostic))
    ).recipients
    assert (failed.reason, failed.permanent) == (reason, permanent)
