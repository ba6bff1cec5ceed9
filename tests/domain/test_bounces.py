"""The bounce reader: standard reports, the shapes of common mail systems, and the real corpus."""

from __future__ import annotations

import base64
import email
import email.policy
import importlib.util
import quopri
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.bounces import TolerantMessage, mime, read_report
from gateway.domain.bounces.codes import ADDRESS

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


def the_failed_address(text: str) -> str:
    """The one failed address the report `text` names."""
    [failed] = read_report(parse(text)).recipients
    return failed.address


def failed_recipients(status: str, diagnostic: str):
    """The recipients read from a standard report of one failed delivery (DSN above)."""
    return read_report(
        parse(DSN.format(action="failed", status=status, diagnostic=diagnostic))
    ).recipients


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
    [failed] = failed_recipients(status, diagnostic)
    assert failed.reason == reason and not failed.permanent


def test_a_delay_warning_is_read_but_not_final():
    """RFC 3464's "Action: delayed": the reporter is still trying. Its words are read as ever
    (what they say of the address); the recipient is marked not final."""
    words = "450 4.1.1 <2025550143@vtext.com>: Recipient address rejected: User unknown"
    delayed = read_report(parse(DSN.format(action="delayed", status="4.1.1", diagnostic=words)))
    failed = read_report(parse(DSN.format(action="failed", status="5.1.1", diagnostic=words)))
    assert delayed.kind == "bounce" and [r.final for r in delayed.recipients] == [False]
    assert [r.final for r in failed.recipients] == [True]
    assert delayed.recipients[0].as_json()["final"] is False


@pytest.mark.parametrize(
    "opening",
    [
        "** Delivery incomplete **\n\nThere was a temporary problem delivering your message "
        "to 2025550143@vtext.com. Gmail will retry for 46 more hours. You'll be notified if "
        "the delivery fails permanently.\n",
        "This message was created automatically by mail delivery software.\n"
        "A message that you sent has not yet been delivered to one or more of its\n"
        "recipients after more than 24 hours on the queue on mx.example.com.\n\n"
        "  2025550143@vtext.com\n    Delay reason: SMTP error from remote mail server after\n"
        "    RCPT TO:<2025550143@vtext.com>: 451 4.3.0 Temporary failure\n\n"
        "No action is required on your part. Delivery attempts will continue for some time.\n",
    ],
)
def test_a_letter_that_says_it_is_still_trying_is_not_final(opening):
    letter = (
        "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>\n"
        "To: dispatch@example.com\nSubject: Warning: could not send message for past 4 hours\n\n"
        + opening
    )
    [failed] = read_report(parse(letter)).recipients
    assert failed.address == "2025550143@vtext.com" and failed.final is False


def test_a_success_notice_is_a_delivery_report_never_a_bounce():
    report = read_report(parse(DSN.format(action="delivered", status="2.0.0", diagnostic="250 ok")))
    assert report.kind == "delivery_report" and report.recipients == ()


# A standard report (it has a delivery-status part) whose recipient blocks name no recipient,
# from a system that signs and titles it like any mail: the part makes it a report (RFC 3464),
# so its letter is read for the recipient.
ADDRESSLESS_REPORT = """From: Mail Service <mail@relay.example.net>
To: dispatch@example.com
Subject: Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message to <2025550143@vtext.com> {letter}

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Action: {action}
Status: {status}

--B--
"""


def test_a_report_whose_blocks_name_no_recipient_is_read_from_its_letter():
    text = ADDRESSLESS_REPORT.format(
        letter="was refused: 550 5.1.1 user unknown", action="failed", status="5.1.1"
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status, failed.permanent) == (
        "2025550143@vtext.com",
        "5.1.1",
        True,
    )


def test_a_failure_beside_a_delivery_is_read_though_its_block_names_no_recipient():
    text = ADDRESSLESS_REPORT.format(
        letter="was refused: 550 5.1.1 user unknown",
        action="failed",
        status="5.1.1\n\nFinal-Recipient: rfc822; dispatch-copy@example.com\n"
        "Action: delivered\nStatus: 2.0.0",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.permanent) == ("2025550143@vtext.com", True)


def test_a_delay_whose_block_names_no_recipient_is_not_final():
    text = ADDRESSLESS_REPORT.format(
        letter="was held: 452 4.2.2 mailbox full", action="delayed", status="4.2.2"
    )
    [held] = read_report(parse(text)).recipients
    assert (held.address, held.final) == ("2025550143@vtext.com", False)


def test_a_delay_that_names_its_recipient_only_in_the_returned_original_is_not_final():
    text = ADDRESSLESS_REPORT.format(letter="", action="delayed", status="4.2.2").replace(
        "Your message to <2025550143@vtext.com> ", "Your message is held for now."
    )
    text = text.replace(
        "--B--",
        "--B\nContent-Type: message/rfc822\n\nFrom: dispatch@example.com\n"
        "To: 2025550143@vtext.com\nSubject: order 1042\n\nOn its way.\n--B--",
    )
    [held] = read_report(parse(text)).recipients
    assert (held.address, held.final) == ("2025550143@vtext.com", False)


def test_a_block_naming_no_valid_address_names_its_recipient_as_written():
    # A slip in the address ("#") makes it no valid one; the block still says who failed, and
    # where nothing else names a recipient, that is the one.
    text = DSN.format(action="failed", status="5.1.2", diagnostic="550 Host unknown").replace(
        "Final-Recipient: rfc822; 2025550143@vtext.com", "Final-Recipient: rfc822; dan@#example.net"
    )
    text = text.replace("To: 2025550143@vtext.com\n", "")
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.reason, failed.permanent) == (
        "dan@#example.net",
        "hostunknown",
        True,
    )


def test_a_valid_address_the_letter_names_comes_before_one_only_as_written():
    # The block names its recipient only by an address that is no valid one (its
    # Final-Recipient goes in after the Action field); the letter names a valid one.
    text = ADDRESSLESS_REPORT.format(
        letter="was refused: 550 5.1.1 user unknown",
        action="failed\nFinal-Recipient: rfc822; alias@#relay",
        status="5.1.1",
    )
    [failed] = read_report(parse(text)).recipients
    assert failed.address == "2025550143@vtext.com"


def test_a_report_of_deliveries_only_is_no_failure_whatever_its_blocks_name():
    text = ADDRESSLESS_REPORT.format(
        letter="could not be delivered at first; it has now been delivered",
        action="delivered",
        status="2.0.0",
    )
    report = read_report(parse(text))
    assert report is not None and report.kind == "delivery_report" and report.recipients == ()


# RFC 6533's report for mail sent with SMTPUTF8: the same fields in a
# message/global-delivery-status part, which the email package parses as one message (its
# headers the first block, its body the rest).
GLOBAL_REPORT = """From: MAILER-DAEMON@mx.example.org
To: dispatch@example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=global-delivery-status; boundary="B"

--B
Content-Type: text/plain; charset=utf-8

Your message could not be delivered.

--B
Content-Type: message/{status_type}

Reporting-MTA: dns; mx.example.org

Original-Recipient: utf-8; 2025550143@vtext.com
Final-Recipient: utf-8; 2025550143@vtext.com
{first_block_rest}

Final-Recipient: rfc822; 2025550144@vtext.com
Action: failed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 mailbox full

--B--
"""
FIRST_BLOCK_REST = "Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown"


def test_a_global_delivery_status_report_is_read_block_by_block():
    text = GLOBAL_REPORT.format(
        status_type="global-delivery-status", first_block_rest=FIRST_BLOCK_REST
    )
    found = read_report(parse(text)).recipients
    assert [(r.address, r.status, r.permanent) for r in found] == [
        ("2025550143@vtext.com", "5.1.1", True),
        ("2025550144@vtext.com", "4.2.2", False),
    ]


@pytest.mark.parametrize("returned_type", ["message/global", "message/global-headers"])
def test_a_global_report_ties_to_the_text_by_its_returned_original(returned_type):
    # RFC 6533 returns the original (or its headers alone) as message/global(-headers): its
    # Message-ID is what ties the report to the text sent.
    returned = (
        f"--B\nContent-Type: {returned_type}\n\nMessage-ID: <t42.abc@example.com>\n"
        "From: dispatch@example.com\nTo: 2025550143@vtext.com\n\nOn its way.\n--B--\n"
    )
    text = GLOBAL_REPORT.format(
        status_type="global-delivery-status", first_block_rest=FIRST_BLOCK_REST
    ).replace("--B--\n", returned)
    assert read_report(parse(text)).original_message_id == "<t42.abc@example.com>"


def test_a_block_keeps_its_fields_past_a_line_that_is_no_field():
    # The email package ends a block's fields at the first line it cannot read as one.
    text = GLOBAL_REPORT.format(
        status_type="delivery-status",
        first_block_rest="delivered via the relay below\n" + FIRST_BLOCK_REST,
    )
    found = read_report(parse(text)).recipients
    assert [(r.address, r.status) for r in found] == [
        ("2025550143@vtext.com", "5.1.1"),
        ("2025550144@vtext.com", "4.2.2"),
    ]


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_a_status_part_in_a_transfer_encoding_is_read(encoding):
    # RFC 2045 allows no such encoding for a message/ type; some systems use one all the same.
    # Quoted-printable breaks a long line with "=" at its end (a soft line break).
    diagnostic = (
        "550 5.1.1 <2025550143@vtext.com>: Recipient address rejected: User unknown in "
        "virtual mailbox table (see https://help.example.org/?code=511)"
    )
    fields = (
        "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; 2025550143@vtext.com\n"
        f"Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; {diagnostic}\n"
    ).encode()
    written = (base64.encodebytes if encoding == "base64" else quopri.encodestring)(fields)
    text = (
        "From: Postmaster <postmaster@mx.example.org>\nTo: dispatch@example.com\n"
        "Subject: Delivery Status Notification (Failure)\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nDelivery has failed.\n\n"
        f"--B\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: {encoding}\n\n"
        f"{written.decode()}\n--B--\n"
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status, failed.diagnostic) == (
        "2025550143@vtext.com",
        "5.1.1",
        diagnostic,
    )


# A letter signed by an ordinary address, known for a report by its subject alone, which mail
# systems encode (RFC 2047) when it is in another language, and some always.
ENCODED_SUBJECT_LETTER = """From: Office <helpdesk@example.org>
To: dispatch@example.com
Subject: {subject}

Your message to 2025550143@vtext.com couldn't be delivered.
550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found
"""


@pytest.mark.parametrize(
    ("subject", "kind"),
    [
        ("=?utf-8?B?VW5kZWxpdmVyYWJsZTogb3JkZXIgMTA0Mg==?=", "bounce"),  # Undeliverable: ...
        ("=?iso-8859-1?Q?Non_remis=A0:_order_1042?=", "bounce"),
        ("=?utf-8?B?QXV0b21hdGljIHJlcGx5OiBvcmRlciAxMDQy?=", "auto_reply"),  # Automatic reply
    ],
)
def test_an_encoded_subject_is_read_decoded(subject, kind):
    report = read_report(parse(ENCODED_SUBJECT_LETTER.format(subject=subject)))
    assert report is not None and report.kind == kind


# A letter with the text we sent returned after its own parts ({own}: none, or HTML only).
LETTER_WITH_ORIGINAL = """From: Mail Delivery System <MAILER-DAEMON@mx.example.org>
To: dispatch@example.com
Subject: Undeliverable: order 1042
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="B"

{own}--B
Content-Type: message/rfc822

Message-ID: <t42.abc@example.com>
From: dispatch@example.com
To: 2025550143@vtext.com

Your mailbox is full, so we left the parcel with a neighbour.
--B--
"""


def test_the_returned_original_is_never_read_as_the_reports_words():
    # A report with no text of its own: the text we sent must not be read as why it failed.
    [failed] = read_report(parse(LETTER_WITH_ORIGINAL.format(own=""))).recipients
    assert "parcel" not in failed.diagnostic and failed.reason != "mailboxfull"


def test_a_report_whose_status_part_comes_first_is_read_with_its_text():
    # RFC 3464 puts the text first; a report that does not still has its words read, not the
    # blocks of its status part (which have no type of their own, so read as text/plain).
    text = """From: Mail Delivery System <MAILER-DAEMON@mx.example.org>
To: dispatch@example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; 2025550143@vtext.com
Action: failed
Status: 5.0.0

--B
Content-Type: text/plain

The recipient's mailbox is full.

--B--
"""
    [failed] = read_report(parse(text)).recipients
    assert failed.reason == "mailboxfull"


def test_a_report_written_in_html_only_is_read_as_the_text_it_shows():
    html = """--B
Content-Type: text/html; charset=utf-8

<html><head><style>p { color: red }</style></head><body>
<p>Your message to <b>&lt;2025550143@vtext.com&gt;</b> could not be delivered.</p>
<p>Remote server said: 550 5.1.1 user unknown</p></body></html>

"""
    [failed] = read_report(parse(LETTER_WITH_ORIGINAL.format(own=html))).recipients
    assert (failed.address, failed.status, failed.reason) == (
        "2025550143@vtext.com",
        "5.1.1",
        "userunknown",
    )


def test_a_reports_own_text_is_worked_out_once_however_many_readers_read_it(monkeypatch):
    # Written in HTML only, no address in its letter or its block: the status part's reader,
    # the letter's, and the returned original's all read its text, and none finds the
    # original's Message-ID in a part of its own, so each would look for it in the text.
    html = (
        "--B\nContent-Type: text/html\n\n<p>Your message could not be delivered: "
        "550 5.1.1 user unknown</p>\n\n"
    )
    text = ADDRESSLESS_REPORT.format(letter="", action="failed", status="5.1.1")
    text = text.replace(
        "--B\nContent-Type: text/plain\n\nYour message to <2025550143@vtext.com> \n\n", html
    )
    text = text.replace(
        "--B--",
        "--B\nContent-Type: message/rfc822\n\nFrom: dispatch@example.com\n"
        "To: 2025550143@vtext.com\n\nOn its way.\n--B--",
    )
    parsed = []
    real = mime.html_text
    monkeypatch.setattr(mime, "html_text", lambda html: parsed.append(1) or real(html))
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.reason) == ("2025550143@vtext.com", "userunknown")
    assert len(parsed) == 1


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


def reading(text: str, status: str) -> tuple[str, bool]:
    """The reason and permanence read from DSN_WITH_TEXT with that letter text and Status."""
    [failed] = read_report(parse(DSN_WITH_TEXT.format(text=text, status=status))).recipients
    return failed.reason, failed.permanent


def test_a_refusal_shown_after_data_is_read_at_data_even_when_the_session_was_pipelined():
    # A pipelining client logs ">>> DATA" before reading the RCPT replies; the reply still
    # counts as one to DATA, as the corpus's careful readers count it.
    body = (
        "   ----- Transcript of session follows -----\n"
        ">>> DATA\n<<< 550 <2025550143@vtext.com>... User unknown\n"
        "<<< 503 5.0.0 Need RCPT (recipient)\n"
    )
    assert reading(text=body, status="5.0.0") == ("filtered", False)


def test_an_unknown_user_is_a_lookup_only_where_the_report_shows_one():
    # No phase, no addressing code: servers that filter word their refusals so too.
    assert reading(text="", status="5.0.0") == ("filtered", False)
    # The letter says the refusal answered RCPT: the mailbox was looked up and is not there.
    text = (
        "<2025550143@vtext.com>: host mx.vtext.com[192.0.2.1] said: 550\n"
        "    <2025550143@vtext.com>... User unknown (in reply to RCPT TO command)\n"
    )
    assert reading(text=text, status="5.0.0") == ("userunknown", True)


@pytest.mark.parametrize(
    "text",
    [
        '"2025550143@vtext.com":\nSMTP error from remote server after RCPT command:\n'
        "host: mx.vtext.com\n550 User unknown",
        "<2025550143@vtext.com>:\nRemote host said:\n550 User unknown\n[RCPT_TO]",
        "There was an error delivering your mail to <2025550143@vtext.com>.\n\n"
        "mx.vtext.com [192.0.2.1] did not like our RCPT TO:\n550 User unknown",
        "Delivery to the following recipients failed permanently:\n   * 2025550143@vtext.com\n"
        "SMTP:RCPT host 192.0.2.8: 550 User unknown",
    ],
)
def test_the_ways_reports_say_a_refusal_answered_rcpt(text):
    assert reading(text=text, status="5.0.0") == ("userunknown", True)


def test_the_status_fields_comment_is_the_reporters_word_on_the_phase():
    status = "5.0.0 (Remote SMTP server has rejected address)"
    assert reading(text="", status=status) == ("userunknown", True)


def test_a_transcript_refusing_the_recipient_as_it_is_named_is_at_rcpt():
    # The server's reply and the verdict line differ in words; the RCPT naming the address
    # followed by a 5xx shows the phase.
    text = (
        "   ----- Transcript of session follows -----\n"
        ">>> RCPT To:<2025550143@vtext.com>\n"
        "<<< 550 Requested User Mailbox not found. No such user here.\n"
        "550 <2025550143@vtext.com>... User unknown\n"
    )
    assert reading(text=text, status="5.0.0") == ("userunknown", True)


@pytest.mark.parametrize(
    "diagnostic",
    [
        "User Ana (2025550143@vtext.com) not listed in Domino Directory",
        "2025550143@vtext.com The recipient name is not recognized",
    ],
)
def test_a_directory_lookup_is_an_unknown_user_whatever_the_phase(diagnostic):
    [failed] = failed_recipients("5.0.0", diagnostic)
    assert (failed.reason, failed.permanent) == ("userunknown", True)


VERIZON_LETTER = """From: post_master@{reporter}
To: dispatch@example.com
Subject: Re: Your order

Error: Invalid user address

Error message below:
550 - Requested action not taken: no such user here

Message details:
  Subject: Your order
  MAIL FROM: dispatch@example.com
  RCPT TO: 2025550143@vtext.com
"""


def test_an_unknown_user_reported_by_the_recipients_own_mail_system_is_a_lookup():
    # Verizon's gateway answers for its own subscribers: it knows the number is not one.
    [failed] = read_report(parse(VERIZON_LETTER.format(reporter="vtext.com"))).recipients
    assert (failed.address, failed.reason, failed.permanent) == (
        "2025550143@vtext.com", "userunknown", True,
    )  # fmt: skip
    # The same words relayed by some other system, with no phase: they do not show a lookup.
    [failed] = read_report(parse(VERIZON_LETTER.format(reporter="relay.example.org"))).recipients
    assert (failed.reason, failed.permanent) == ("filtered", False)


def test_a_reporters_own_category_field_outranks_the_words():
    diagnostic = "550 5.2.1 <2025550143@vtext.com>... User Unknown"
    text = DSN.format(action="failed", status="5.2.1", diagnostic=diagnostic)
    [failed] = read_report(parse(text)).recipients
    assert (failed.reason, failed.permanent) == ("filtered", False)  # no phase, a 5.2.1
    text = text.replace(
        f"Diagnostic-Code: smtp; {diagnostic}\n",
        f"Diagnostic-Code: smtp; {diagnostic}\nX-PowerMTA-BounceCategory: bad-mailbox\n",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)


@pytest.mark.parametrize(
    ("letter", "reason", "permanent"),
    [
        # The reporter's verdict on the address, whatever the remote server's words.
        (
            "because the address couldn't be found. Check for typos or unnecessary spaces "
            "and try again.",
            "userunknown",
            True,
        ),
        # Its hedged wording is no verdict: the words are read as ever (a bare refusal).
        ("because the address couldn't be found, or is unable to receive mail.", "rejected", False),
        # Nor its verdict on a domain.
        (
            "because the domain vtext.com couldn't be found. Check for typos or unnecessary "
            "spaces and try again.",
            "rejected",
            False,
        ),
    ],
)
def test_a_reporters_verdict_in_its_letter_outranks_the_words(letter, reason, permanent):
    text = DSN.format(action="failed", status="5.0.0", diagnostic="550 Address rejected.")
    text = text.replace(
        "I'm sorry to have to inform you that your message could not be delivered.",
        f"** Address not found **\n\nYour message wasn't delivered to 2025550143@vtext.com "
        f"{letter}\n\nThe response from the remote server was:\n550 Address rejected.",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.reason, failed.permanent) == (reason, permanent)


def test_exchanges_own_category_outranks_its_status():
    # 5.4.4 alone is a domain with no route; Exchange's token says its MX points back at us.
    [failed] = failed_recipients("5.4.4", "554 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent")
    assert (failed.reason, failed.permanent) == ("hostunknown", True)
    [failed] = failed_recipients("5.4.4", "554 5.4.4 SMTPSEND.DNS.MxLoopback; DNS config error")
    assert (failed.reason, failed.permanent) == ("networkerror", False)


def test_a_reporters_verdict_holds_in_a_letter_with_no_status_part():
    text = """From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: dispatch@example.com
Subject: Delivery Status Notification (Failure)

** Address not found **

Your message wasn't delivered to 2025550143@vtext.com because the address couldn't be found.
Check for typos or unnecessary spaces and try again.

The response from the remote server was:
550 Address rejected.
"""
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.reason, failed.permanent) == (
        "2025550143@vtext.com",
        "userunknown",
        True,
    )


def test_an_unknown_user_refused_at_rcpt_under_a_policy_code_is_still_unknown():
    reply = "553 Invalid recipient 2025550143@vtext.com (Mode: normal)"
    text = DSN_WITH_TEXT.replace("550 <2025550143@vtext.com>... User unknown", reply)
    [failed] = read_report(parse(text.format(text="", status="5.7.1"))).recipients
    assert (failed.reason, failed.permanent) == ("rejected", False)  # the 5.7.1 alone
    transcript = f">>> RCPT TO:<2025550143@vtext.com>\n<<< {reply}\n"
    [failed] = read_report(parse(text.format(text=transcript, status="5.7.1"))).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)


def test_the_letter_of_a_report_about_one_recipient_is_read_whole():
    # No Diagnostic-Code: the letter's opening says why, before it names the address.
    text = DSN_WITH_TEXT.replace(
        "Diagnostic-Code: smtp; 550 <2025550143@vtext.com>... User unknown\n", ""
    ).format(
        text="The user(s) account is disabled.\n\n\n"
        "<2025550143@vtext.com>: 550 user unknown (in reply to RCPT TO command)\n",
        status="5.0.0",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.reason, failed.permanent) == ("suspend", False)


SENDMAIL_WITHOUT_CONTENT_TYPE = """From MAILER-DAEMON Sat Jun  9 14:15:30 2018
Date: Sat, 9 Jun 2018 03:06:57 +0900
From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>
To: dispatch@example.com
Subject: Returned mail: see transcript for details

This is a MIME-encapsulated message

--w58I6rE4086062/mx.example.org

   ----- The following addresses had permanent fatal errors -----
dispatch
    (expanded from: dispatch)

--w58I6rE4086062/mx.example.org
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: RFC822; 2025550143@vtext.com
Action: failed
Status: 4.4.7

Final-Recipient: RFC822; 3125550143@vtext.com
Action: failed
Status: 5.1.1

--w58I6rE4086062/mx.example.org--
"""


def test_a_mime_report_that_lost_its_content_type_header_is_read_by_its_delimiters():
    # Read as one text, it would yield at most a guess at one recipient.
    found = read_report(parse(SENDMAIL_WITHOUT_CONTENT_TYPE)).recipients
    assert [(r.address, r.status, r.permanent) for r in found] == [
        ("2025550143@vtext.com", "4.4.7", False), ("3125550143@vtext.com", "5.1.1", True),
    ]  # fmt: skip


def test_a_body_nesting_parts_thousands_deep_is_read_unrepaired():
    """A report whose headers lost their Content-Type is parsed again from its delimiters; a
    body nesting thousands of parts ran that second parse out of stack, past the bound the
    first parse keeps (the email package calls itself once a level)."""
    levels = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(5000)
    )
    text = (
        "From: MAILER-DAEMON@relay.example.org\nSubject: Undelivered Mail\n\n--outer\n"
        f"{levels}Content-Type: text/plain\n\nhello\n--outer--\n"
    )
    report = read_report(parse(text))
    assert report is None or report.kind == "bounce"


def test_a_letter_quoting_a_mime_original_is_not_taken_for_a_mime_report():
    original = "\n".join(["Received: from mx.example.com by relay.example.org"] * 8)
    text = LETTER.format(
        body="Sorry, we were unable to deliver your message to the following address.\n\n"
        "<2025550143@vtext.com>:\n550 5.1.1 User unknown\n\n"
        f"--- Below this line is a copy of the message.\n\n{original}\n"
        'Content-Type: multipart/alternative; boundary="X"\n\n--X\nContent-Type: text/plain\n\n'
        "Your order is on its way.\n--X--\n"
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status, failed.permanent) == (
        "2025550143@vtext.com", "5.1.1", True,
    )  # fmt: skip


def test_a_content_type_that_lost_its_semicolon_is_still_read_as_text():
    text = """From: "Mail Deliver System" <MAILER-DAEMON>
To: dispatch@example.com
Subject: Returned Mail: User unknown
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: text/plain
   charset="iso-2022-jp"

---The following addresses had delivery errors---

2025550143@vtext.com [User unknown]

--B
Received: from relay.example.org by mx.example.org
From: Dispatch <dispatch@example.com>
To: 2025550143@vtext.com

Your order is on its way.
--B--
"""
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.reason) == ("2025550143@vtext.com", "filtered")


def test_an_unknown_user_at_data_is_a_filter_unless_an_addressing_code_says_otherwise():
    body = (
        ">>> DATA\n<<< 550 <2025550143@vtext.com>... User unknown\n554 5.0.0 Service unavailable\n"
    )
    assert reading(text=body, status="5.0.0") == ("filtered", False)
    assert reading(text=body, status="5.2.0") == ("filtered", False)
    # 5.1.1, "bad destination mailbox": the mailbox itself, whichever command it answered.
    assert reading(text=body, status="5.1.1") == ("userunknown", True)


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


# " --B": not a delimiter to the email package, which would read the status part as text.
INDENTED_DELIMITER = DSN_WITH_TEXT.format(text="failed", status="5.2.2").replace(
    "\n--B\nContent-Type: message/delivery-status",
    "\n  --B\nContent-Type: message/delivery-status",
)


def test_an_indented_delimiter_still_ends_its_part():
    [failed] = read_report(parse(INDENTED_DELIMITER)).recipients
    assert (failed.status, failed.diagnostic) == (
        "5.2.2",
        "550 <2025550143@vtext.com>... User unknown",
    )


def test_a_header_the_email_package_will_not_write_back_leaves_the_report_unrepaired():
    # A vertical tab in a header is a line break to the email package's writer, which then
    # refuses the header as one holding another (found by the fuzzer): the indented delimiter
    # cannot be mended by writing the message out again, so the report is read as it came.
    text = INDENTED_DELIMITER.replace(
        "Subject:", "Content-ID: <0000>\x0bContent-Disposition: inline\nSubject:"
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status) == ("2025550143@vtext.com", "5.2.2")


def test_a_charset_name_the_codecs_refuse_leaves_the_report_unrepaired():
    # A NUL in the charset name of a part holding bytes beyond ASCII makes the email package's
    # writer raise ValueError ("embedded null character", found by the fuzzer) when the message
    # is written out to mend an indented delimiter: the report is read as it came.
    text = INDENTED_DELIMITER.replace(
        "Content-Type: text/plain\n\nfailed",
        "Content-Type: text/plain; charset=us-ascii\x00\x00\n\nfailed \u00e9chec",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status) == ("2025550143@vtext.com", "5.2.2")


def test_a_parameter_given_whole_and_in_pieces_leaves_the_others_readable():
    # RFC 2231 lets a parameter be given whole ("name*=") or in numbered pieces ("name*0=");
    # given both ways, the email package cannot order them and raises TypeError for any
    # parameter of that header (found by the fuzzer). The header keeps its plain parameters.
    text = (
        "From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail Returned to Sender\n"
        "Content-Type: text/plain; charset=us-ascii; name*=x; name*1=y\n\n"
        "<2025550143@vtext.com>: host mx.vtext.com said: 550 5.1.1 User unknown\n"
    )
    message = parse(text)  # its get_content_charset() raises TypeError (Python 3.11)
    [failed] = read_report(message).recipients
    assert (failed.address, failed.status) == ("2025550143@vtext.com", "5.1.1")
    assert message["Content-Type"].endswith("name*1=y")  # the caller's message is as it was


def test_a_multipart_with_such_a_parameter_is_read_when_parsed_tolerantly():
    # The parser itself asks for a multipart's boundary, and so raises on such a header: mail
    # is parsed with TolerantMessage, whose getters read the plain parameters.
    text = (
        "From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail Returned to Sender\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b";'
        " title*=utf-8''x; title*0=y\n\n"
        "--b\nContent-Type: text/plain\n\n<2025550143@vtext.com>: 550 5.1.1 User unknown\n"
        "--b\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; 2025550143@vtext.com\nAction: failed\nStatus: 5.1.1\n"
        "--b--\n"
    )
    # parse(text) raises TypeError (Python 3.11).
    message = email.message_from_string(text, TolerantMessage, policy=email.policy.compat32)
    assert message.get_param("report-type") == "delivery-status"
    assert message.get_params(header="content-type")[0] == ("multipart/report", "")
    [failed] = read_report(message).recipients
    assert (failed.address, failed.status, failed.permanent) == (
        "2025550143@vtext.com",
        "5.1.1",
        True,
    )


@pytest.mark.parametrize("odd", ["\udcff", "\ud800"])  # an escaped byte; a surrogate escaping none
def test_text_holding_escaped_bytes_beside_wider_characters_is_still_read(odd):
    # The email package holds undecodable bytes as escapes; text holding those beside characters
    # beyond ASCII (a message rebuilt from text it had decoded) makes its getters raise
    # UnicodeEncodeError (found by the fuzzer). The reader reads the text as held.
    text = (
        "From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail Returned to Sender\n"
        f"Content-Type: text/plain\n\n<2025550143@vtext.com>: User unknown {odd} caf\u00e9\n"
    )
    report = read_report(email.message_from_string(text, policy=email.policy.compat32))
    assert [r.address for r in report.recipients] == ["2025550143@vtext.com"]


def test_the_code_beside_the_servers_reply_outranks_the_reporters_category():
    diagnostic = "5.1.0 - Unknown address error 550-'5.7.1 <bounce@ses.example>... Access denied'"
    [failed] = failed_recipients("5.0.0", diagnostic)
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
        ("2025550143@vtext.com", "networkerror", ""),  # the report states no status
        ("3125550143@tmomail.example", "hostunknown", ""),
        ("4155550143@txt.example.org", "userunknown", ""),
    ]


def test_a_japanese_diagnostic_in_iso_2022_jp_is_read():
    # Notes writes its Japanese words, escape sequences and all, into the Diagnostic-Code.
    words = "ユーザー Neko (2025550143@vtext.com) は Domino ディレクトリには見つかりません。"
    diagnostic = words.encode("iso-2022-jp").decode("ascii")
    [failed] = failed_recipients("5.0.0", diagnostic)
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
        "drivers@googlegroups.com", "rejected", "", False,
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


@pytest.mark.parametrize(
    "subject", ["Non remis : commande 1042", "Non recapitabile: commande 1042",
                "Unzustellbar: commande 1042"],
)  # fmt: skip
def test_exchanges_undeliverable_subject_in_other_languages_marks_a_letter_as_a_report(subject):
    # Signed by an administrator's own address, not a robot's: the subject is all that says so.
    letter = (
        f"From: Administrateur <admin@example.fr>\nTo: dispatch@example.com\n"
        f"Subject: {subject}\n\nVotre message n'a pas pu être remis.\n\n"
        "bob@example.fr\nL'adresse de messagerie est introuvable.\n"
    )
    assert the_failed_address(letter) == "bob@example.fr"


def test_an_ordinary_reply_is_not_a_report():
    assert (
        read_report(parse("From: 2025550143@vtext.com\nSubject: \n\nOK thanks, see you at 3\n"))
        is None
    )


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_any_bytes_are_read_without_an_exception(data):
    read_report(email.message_from_bytes(data, policy=email.policy.compat32))


def test_corpus_figures_meet_the_bar():
    """Issue 5's bar: a failed recipient detected for >= 98% of the failure reports, hard/soft
    right for >= 97%, the enhanced status code right for >= 90%, no non-failure called one."""
    spec = importlib.util.spec_from_file_location(
        "bounce_accuracy", Path(__file__).resolve().parents[2] / "bench" / "bounce_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    measured = module.measure(CORPUS)
    figures = measured["all"]
    assert figures["non_failures_called_failures"] == 0  # part of the bar, and met
    assert figures["detected"] >= 0.98
    assert figures["hard_soft_right"] >= 0.97
    assert figures["status_right"] >= 0.90
    # Issue 23's bar on the half no rule is written against.
    held_out = measured["hold_out"]
    assert held_out["non_failures_called_failures"] == 0
    assert held_out["detected"] >= 0.99
    assert held_out["hard_soft_right"] >= 0.95
    assert held_out["status_right"] >= 0.95
    # The unseen reports whose misses have been read (bench/data/bounces-unseen/read.txt): no
    # lower than as last read (bench/NOTES.md: batch 11's half, the hardest yet, brought
    # hard/soft from 0.944 to 0.920). Their unread hold-out is the benchmark's to judge, each
    # new batch once, not a floor here.
    unseen = module.measure(module.UNSEEN)["development"]
    assert unseen["detected"] >= 0.99
    assert unseen["hard_soft_right"] >= 0.92
    assert unseen["status_right"] >= 0.88
    assert unseen["non_failures_called_failures"] == 0
    # The same for the second collection's read half (bench/data/bounces-bounceparser): its
    # labels state no status, and one of its "not a bounce" reports is a 550 refusal the reader
    # rightly calls a failure (bench/NOTES.md).
    other = module.measure(module.BOUNCEPARSER)["development"]
    assert other["detected"] >= 0.99
    assert other["hard_soft_right"] >= 0.86
    assert other["non_failures_called_failures"] <= 1
    # And for the third (bench/data/bounces-mailman), whose labels name the failed addresses.
    # Its third batch's half brought them down from 1.0 (bench/NOTES.md says which and why).
    third = module.measure(module.MAILMAN)["development"]
    assert third["detected"] >= 0.98
    assert third["addresses_right"] >= 0.92
    assert third["hard_soft_right"] >= 0.95
    # And for the fourth (bench/data/bounces-bounce-email), whose labels say only which reports
    # are failures: its one read miss is an Exchange letter that names the recipient by display
    # name alone (bench/NOTES.md).
    fourth = module.measure(module.BOUNCE_EMAIL)["development"]
    assert fourth["detected"] >= 0.94
    assert fourth["non_failures_called_failures"] == 0


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
        # Postfix's queue holding a destination it could not reach: no account suspended.
        ("delivery temporarily suspended: host mx.example.net[192.0.2.7] refused to talk to me: "
         "421 Service not available", "4.0.0", "blocked", False),
        ("550 5.2.1 Account suspended", "5.2.1", "suspend", False),
    ],
)  # fmt: skip
def test_specific_words_and_codes(diagnostic, status, reason, permanent):
    [failed] = failed_recipients(status, diagnostic)
    assert (failed.reason, failed.permanent) == (reason, permanent)


@pytest.mark.parametrize(
    ("sample", "reader", "addresses"),
    [
        ("lhost-amavis-03.eml", "delivery-status", ["kijitora@example.com"]),
        ("lhost-exim-02.eml", "x-failed-recipients", ["kijitora@example.jp",
                                                      "sabatora@example.jp"]),
        ("lhost-v5sendmail-05.eml", "transcript", ["kijitora@example.edu",
         "kuroneko@example.or.jp", "kijitora@example.org", "mikeneko@example.co.jp"]),
        ("lhost-amazonworkmail-01.eml", "address list", ["kijitora@example.jp"]),
        ("lhost-dragonfly-03.eml", "first address", ["pseudo-local-part@yahoo-inc.example.com"]),
        ("lhost-postfix-64.eml", "returned original", ["xxxx@wanadoo.fr"]),
    ],
)  # fmt: skip
def test_each_report_format_has_its_reader(sample, reader, addresses):
    """One reader per way a report names its failed recipients, tried in a fixed order: the
    standard delivery-status part, then the letters' ways (a header, a transcript, a list, a
    mention), then the returned original's To."""
    raw = (CORPUS / "mail" / sample).read_bytes()
    report = read_report(email.message_from_bytes(raw, policy=email.policy.compat32))
    assert report.reader == reader
    assert [r.address for r in report.recipients] == addresses


def test_no_status_is_invented():
    """A report that states no status gives none: no x.0.9NN codes (a benchmark's convention)
    reach an operator. Every status the reader gives is one the report itself wrote."""
    for sample in sorted((CORPUS / "mail").iterdir()):
        raw = sample.read_bytes()
        report = read_report(email.message_from_bytes(raw, policy=email.policy.compat32))
        for failed in report.recipients if report else ():
            if failed.status:
                assert not re.fullmatch(r"[245]\.0\.9\d\d", failed.status), sample.name
                assert failed.status.encode() in raw, (sample.name, failed.status)


@pytest.mark.parametrize(
    ("diagnostic", "reason"),
    [
        # Bare substrings once read these as block lists and spam: "marble" holds "rbl".
        ("550 Message from marble.example.com refused", "rejected"),
        ("550 Refused: the spamalot.example.org relay is unknown to us", "rejected"),
        # Whole words, with their inflections.
        ("550 Your server is blacklisted here", "blocked"),
        ("452 Recipient's quotas are exceeded", "mailboxfull"),
        # A product's name is not a reason: "Security" in "Messaging Security Suite" says
        # nothing about TLS; the words of a real one still do.
        (
            "Message from InterScan Messaging Security Suite: Unable to deliver message to"
            " <a@b.example>",
            "undefined",
        ),
        ("530 5.7.0 Must issue a STARTTLS command first", "securityerror"),
    ],
)
def test_reason_words_match_whole_words_only(diagnostic, reason):
    from gateway.domain.bounces import reason_of

    assert reason_of("", "550", diagnostic) == reason


@pytest.mark.parametrize(
    ("diagnostic", "reason"),
    [
        # How mail servers word an unknown user or domain, as Sisimai's published tables
        # record them (not read off any report here): each a bad address, where the words
        # alone were read as a refusal before.
        ("553 sorry, badrcptto(user mail-box not found) (#5.7.1)", "userunknown"),
        ("550 BAD_RECIPIENT - see http://mail.example.ac.uk/undelivered", "userunknown"),
        ("550-a@b.example is not an active address at this host", "userunknown"),
        ("550 Nonexistent user", "userunknown"),
        ("550 Unknown e-mail address", "userunknown"),
        ("550 Utilisateur inconnu !", "userunknown"),
        ("550 No existe ese usuario en este servidor", "userunknown"),
        ("550 Nessun utente simile in questo indirizzo", "userunknown"),
        ("550 The account or domain may not exist, they may be blacklisted", "hostunknown"),
        ("550 Recipient domain must exist", "hostunknown"),
        ("550 Mail domain mentioned in email address is unknown", "hostunknown"),
    ],
)
def test_reason_words_of_unknown_users_and_domains(diagnostic, reason):
    from gateway.domain.bounces import reason_of

    assert reason_of("", "550", diagnostic) == reason


def test_the_precedence_of_codes_over_words_is_one_table():
    from gateway.domain.bounces import reason_of

    # Words of a bad address, a code that says the address was fine: the code.
    assert reason_of("5.2.3", "552", "<a@b.example>: Recipient address rejected: User unknown") == (
        "mesgtoobig"
    )
    # A bare refusal in the words, an addressing code: the code says which refusal.
    assert reason_of("5.1.1", "550", "Address rejected") == "userunknown"
    # Otherwise the words: a generic code beside "user unknown" says nothing more.
    assert reason_of("5.0.0", "550", "User unknown") == "userunknown"
    assert reason_of("5.7.1", "550", "Message refused: spam") == "spamdetected"
    # 551, user not local: moved, however it is worded.
    assert reason_of("", "551", "User unknown; please try <new@example.org>") == "hasmoved"


@pytest.mark.parametrize(
    ("status", "diagnostic", "expected"),
    [
        # The reporter sums the failure up as "gave up" (4.4.7); the server said why (4.7.1).
        ("4.4.7", "450 4.7.1 Access denied. IP name lookup failed [192.0.2.222]", "4.7.1"),
        ("5.1.1", "550 5.7.1 Message rejected as spam by Content Filtering", "5.7.1"),
        # Only a specific code of the same class outranks the Status field: not a generic one,
        # not one of the other class.
        ("5.1.1", "550 5.0.0 <a@b.example>... User unknown", "5.1.1"),
        ("5.4.7", "451 4.4.1 Connection timed out", "5.4.7"),
        ("5.1.1", "550 User unknown", "5.1.1"),
    ],
)
def test_the_servers_own_specific_code_outranks_the_reporters_status(status, diagnostic, expected):
    [failed] = failed_recipients(status, diagnostic)
    assert failed.status == expected


SESSION_ERRORS = """From: MAILER-DAEMON@relay.example.org (Mail Delivery System)
To: postmaster@relay.example.org (Postmaster)
Subject: Postfix SMTP server: errors from localhost[127.0.0.1]
Date: Wed, 27 Apr 2022 15:45:12 +0900

Transcript of session follows.

 Out: 220 relay.example.org ESMTP
 In:  EHLO relay.example.org
 Out: 250-relay.example.org
 Out: 250 ENHANCEDSTATUSCODES
 In:  MAIL FROM:<dispatch@example.com>
 Out: 250 2.1.0 Ok
 In:  RCPT TO:<2025550143@vtext.com>
 Out: 250 2.1.5 Ok
 In:  DATA
 Out: 354 End data with <CR><LF>.<CR><LF>
 Out: 451 4.3.0 Error: queue file write error
 In:  QUIT
 Out: 221 2.0.0 Bye
"""


def test_a_failures_codes_are_its_refusals_not_the_steps_that_went_well():
    """A transcript's 250 2.1.0 and 220 come before the refusal: the failure is the 451 4.3.0."""
    report = read_report(parse(SESSION_ERRORS))
    assert report.kind == "bounce"
    [failed] = report.recipients
    assert (failed.address, failed.status, failed.smtp_code) == (
        "2025550143@vtext.com",
        "4.3.0",
        "451",
    )


def test_a_reply_code_is_a_word_of_its_own():
    """The digits ending a queue id ("mx222-q") are not a reply code; the 450 after it is."""
    [failed] = failed_recipients(
        "4.0.0",
        "queue id mx222-q held: 450 service permits 2 unverified sending IPs",
    )
    assert failed.smtp_code == "450"


def test_an_address_with_a_quoted_local_part_is_read():
    """RFC 5321 allows a quoted local part ("john..doe"@...), and servers echo it as written:
    the report is a bounce for that address, not a report with no recipient."""
    text = DSN.format(
        action="failed",
        status="5.1.1",
        diagnostic='550 5.1.1 <"john..doe"@example.org>... User Unknown',
    ).replace("rfc822; 2025550143@vtext.com", 'rfc822; "john..doe"@example.org')
    report = read_report(parse(text))
    assert report.kind == "bounce"
    [failed] = report.recipients
    assert (failed.address, failed.status, failed.reason) == (
        '"john..doe"@example.org',
        "5.1.1",
        "userunknown",
    )


def test_the_address_the_sender_wrote_is_the_recipient_where_the_report_keeps_it():
    """A block whose Final-Recipient is where delivery last went (a mailbox's internal name, an
    alias's target) names the failed recipient by the address we sent to in Original-Recipient
    (RFC 3464): that is the address a text and its contact are known by."""
    text = DSN.format(action="failed", status="5.2.2", diagnostic="552 mailbox full").replace(
        "Final-Recipient: rfc822; 2025550143@vtext.com",
        "Original-Recipient: rfc822;2025550143@vtext.com\n"
        "Final-Recipient: rfc822; u2025550143@store7.vzw.internal",
    )
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status) == ("2025550143@vtext.com", "5.2.2")


def test_a_final_recipient_only_report_names_it():
    text = DSN.format(action="failed", status="5.1.1", diagnostic="550 5.1.1 User unknown")
    assert the_failed_address(text) == "2025550143@vtext.com"


def test_an_address_in_quotes_is_read_without_them():
    """Letters quote the address they are about ("addressed to 'a@b'"): the apostrophe before
    it is a quote, not part of the address, though one may stand inside a local part."""
    text = (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.org>\n"
        "Subject: Mail delivery failure\n\n"
        "The following message, addressed to '2025550143@vtext.com',\n"
        "failed because it has not been collected after 30 days\n"
    )
    assert the_failed_address(text) == "2025550143@vtext.com"
    inside = text.replace("'2025550143@vtext.com'", "o'brien@example.org")
    assert the_failed_address(inside) == "o'brien@example.org"


# Exchange's letter (its Internet Mail Service): the original's To, then the recipients it could
# not reach, each in X.400 form with the Internet address as an attribute.
EXCHANGE_LETTER = (
    "From: System Administrator <postmaster@mx.example.org>\n"
    "To: bounces@gateway.example.com\nSubject: Undeliverable: order 1042\n\n"
    "Your message\n\n  To:      {to}\n  Subject: order 1042\n\n"
    "did not reach the following recipient(s):\n\n"
    "c=US;a= ;p=Example;o=Site;{tag}2025550143@vtext.com; on Fri, 4 Oct 2002\n"
    "    The recipient name is not recognized\n"
)


def test_the_failed_recipient_is_the_first_address_after_the_letter_says_which_failed():
    """A letter that quotes the original's To before its list of failures (Exchange's "Your
    message To: ... did not reach the following recipient(s):") names the failed one after."""
    text = EXCHANGE_LETTER.format(to="drivers@example.com", tag="dda:SMTP=")
    assert the_failed_address(text) == "2025550143@vtext.com"


def test_a_letter_naming_each_failure_in_the_same_words_names_them_all():
    """SMTP32 words each failure alike ("Unknown user: a@b"): every address named in a line
    worded as the first failure's is a failure too, not just the first."""
    text = (
        "From: postmaster@mx.example.org\nTo: bounces@gateway.example.com\n"
        "Subject: Undeliverable Mail\n\n"
        "Unknown user: 2025550143@vtext.com\n\nRCPT TO generated following response:\n"
        "553 5.3.0 <2025550143@vtext.com>... Addressee unknown\n\n"
        "Unknown user: 2025550199@vtext.com\n\nRCPT TO generated following response:\n"
        "553 5.3.0 <2025550199@vtext.com>... Addressee unknown\n\n"
        "Original message follows.\n"
    )
    found = read_report(parse(text)).recipients
    assert [r.address for r in found] == ["2025550143@vtext.com", "2025550199@vtext.com"]


def test_a_domain_ends_where_its_dots_do():
    """A domain's labels are joined by single dots: Sendmail's "a@b.net...User unknown" names
    b.net, not "b.net...user"."""
    text = (
        "From: MAILER-DAEMON@mx.example.org\nSubject: Returned mail\n\n"
        "The message could not be sent: 550 2025550143@vtext.com...User account is overquota\n"
    )
    found = read_report(parse(text)).recipients
    assert [r.address for r in found] == ["2025550143@vtext.com"]


def test_a_message_id_is_never_the_failed_recipient():
    """A letter that quotes the original's headers names its Message-ID, which looks like an
    address (ours: "<...@gateway.example.com>") and is none."""
    text = (
        "From: MAILER-DAEMON@mx.example.org\nTo: bounces@gateway.example.com\n"
        "Subject: Returned mail\n\n"
        "> Message-ID: <20261207.4f2a@gateway.example.com>\n"
        "> References: <20261206.77c1@gateway.example.com>\n\n"
        "Sorry, mail for 2025550143@vtext.com bounced: user unknown.\n"
    )
    assert the_failed_address(text) == "2025550143@vtext.com"


@pytest.mark.parametrize("tag", ["dda:SMTP=", "RFC-822=", "rfc822="])
def test_an_x400_address_is_read_without_its_tag(tag):
    """Exchange's X.400 connector writes the Internet address as an attribute of its own
    address ("...;dda:SMTP=a@b;"); "=" may stand in a local part, so the tag must be dropped,
    or the bounce is filed under an address no contact has."""
    text = EXCHANGE_LETTER.format(to="Dispatch", tag=tag)
    assert the_failed_address(text) == "2025550143@vtext.com"


@pytest.mark.parametrize(
    ("code", "status"),
    [("521", "5.3.2"), ("550", "5.3.2"), ("521", "5.0.0")],
)
def test_a_system_that_takes_no_mail_is_a_bad_address_by_the_standard_codes(code, status):
    """RFC 3463's x.3.2 ("system not accepting network messages") and RFC 7504's 521 ("host
    does not accept mail") say the address cannot receive, however the words are put."""
    [failed] = failed_recipients(
        status,
        f"{code} {status} <2025550143@vtext.com>: Recipient address rejected:"
        " System not accepting network messages",
    )
    assert (failed.reason, failed.permanent) == ("notaccept", True)


def test_a_reply_code_names_a_reason_only_where_the_enhanced_code_names_none():
    """551 is "user not local", but a server that pairs it with 5.7.1 refused delivery for
    policy: the address is not called moved (a bad address) on the reply code alone."""
    [failed] = failed_recipients(
        "5.7.1",
        "551 5.7.1 <2025550143@vtext.com>: Recipient address rejected: Delivery not authorized",
    )
    assert failed.permanent is False and failed.reason != "hasmoved"
    moved = failed_recipients("5.0.0", "551 not our user")
    assert [(r.reason, r.permanent) for r in moved] == [("hasmoved", True)]


QMAIL_NO_CONNECTION = """From: MAILER-DAEMON@mx.example.org
To: dispatch@example.com
Subject: failure notice

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<2025550143@carrier.example>:
Sorry, no SMTP connection got far enough; most progress was RCPT TO response; remote host \
192.0.2.32 said: 550 Unknown user 2025550143@carrier.example
. (#5.5.0)

--- Below this line is a copy of the message.

From: dispatch@example.com
To: 2025550143@carrier.example
Subject: Your order

On its way.
"""


def test_qmails_words_for_a_refusal_at_rcpt_show_the_mailbox_was_looked_up():
    """qmail says "most progress was RCPT TO response" (and "does not like recipient") where
    other systems say "in reply to RCPT TO": an unknown user refused there is a bad address."""
    [failed] = read_report(parse(QMAIL_NO_CONNECTION)).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)
    liked = QMAIL_NO_CONNECTION.replace(
        "Sorry, no SMTP connection got far enough; most progress was RCPT TO response; remote host"
        " 192.0.2.32 said:",
        "192.0.2.32 does not like recipient.\nRemote host said:",
    )
    assert liked != QMAIL_NO_CONNECTION
    [failed] = read_report(parse(liked)).recipients
    assert (failed.reason, failed.permanent) == ("userunknown", True)


def test_a_stated_status_is_kept_when_the_block_names_a_mailbox_file_not_an_address():
    """Exim writes "Final-Recipient: rfc822;/var/spool/..." for a local mailbox file; the
    letter names the address, and the block's Status still belongs to it."""
    text = (
        DSN.format(action="failed", status="5.2.2", diagnostic="")
        .replace("Diagnostic-Code: smtp; \n", "")
        .replace("rfc822; 2025550143@vtext.com", "rfc822;/var/spool/mail/2025550143")
        .replace(
            "I'm sorry to have to inform you that your message could not be delivered.",
            "This message was created automatically by mail delivery software.\n\n"
            "  2025550143@vtext.com\n    mailbox is full",
        )
        .replace("Subject:", "X-Failed-Recipients: 2025550143@vtext.com\nSubject:", 1)
    )
    assert "Diagnostic-Code" not in text
    [failed] = read_report(parse(text)).recipients
    assert (failed.address, failed.status, failed.reason) == (
        "2025550143@vtext.com",
        "5.2.2",
        "mailboxfull",
    )


EXIM_REFUSED_ON_CONNECTING = """From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: dispatch@example.com
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: 2025550143@carrier.example

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  2025550143@carrier.example
    host mx.carrier.example [192.0.2.1]
    SMTP error from remote mail server after initial connection:
    550 Access denied
"""


@pytest.mark.parametrize(
    "letter",
    [
        EXIM_REFUSED_ON_CONNECTING,
        EXIM_REFUSED_ON_CONNECTING.replace(
            "SMTP error from remote mail server after initial connection:\n    550 Access denied",
            "host mx.carrier.example[192.0.2.1] refused to talk to me: 554 Not welcome",
        ),
    ],
)
def test_a_refusal_on_connecting_is_our_host_turned_away(letter):
    """Refused before any command, in words that say no more than "access denied": the server
    turned our host away (blocked), which says nothing about the address."""
    [failed] = read_report(parse(letter)).recipients
    assert (failed.reason, failed.permanent) == ("blocked", False)


@pytest.mark.parametrize(
    "refusal",
    [
        "550 SC-001 Unfortunately, messages from 192.0.2.7 weren't sent. Please contact your"
        " Internet service provider.",
        "554 Connections from [192.0.2.7] are not accepted",
    ],
)
def test_a_refusal_naming_our_sending_address_is_our_host_turned_away(refusal):
    """Refused after MAIL FROM in words that name the IP address we sent from: the server turned
    our host away (blocked), not our sender address (rejected) or the recipient."""
    letter = EXIM_REFUSED_ON_CONNECTING.replace(
        "SMTP error from remote mail server after initial connection:\n    550 Access denied",
        f"SMTP error from remote mail server after MAIL FROM:<dispatch@example.com>:\n    {refusal}",
    )
    [failed] = read_report(parse(letter)).recipients
    assert (failed.reason, failed.permanent) == ("blocked", False)
    # The same refusal without the address is one of our sender, as before.
    plain = letter.replace("messages from 192.0.2.7", "messages").replace(
        "Connections from [192.0.2.7]", "Connections"
    )
    [failed] = read_report(parse(plain)).recipients
    assert failed.reason != "blocked"


@pytest.mark.parametrize(
    "diagnostic",
    [
        "550 5.1.1 <2025550143@vtext.com> - 192.0.2.7 has sent to too many recipients this hour"
        " (in reply to RCPT TO command)",
        "550 Connection frequency limited. http://example.com/help (in reply to end of DATA"
        " command)",
    ],
)
def test_a_limit_on_our_sending_is_not_a_bad_address(diagnostic):
    """A server that says we sent too much too fast has said nothing against the address, even
    under an addressing code (5.1.1) at RCPT: try later, do not drop the number."""
    [failed] = failed_recipients("5.1.1", diagnostic)
    assert (failed.reason, failed.permanent) == ("ratelimited", False)


@pytest.mark.parametrize(
    ("command", "reason", "permanent"),
    [("RCPT TO", "userunknown", True), ("end of DATA", "rejected", False)],
)
def test_the_access_maps_bare_refusal_of_a_recipient_at_rcpt_is_a_bad_address(
    command, reason, permanent
):
    """Postfix's "Recipient address rejected: Access denied" under the policy code 5.7.1 is how
    that server refuses a recipient it will not take, when it comes at RCPT; the same words
    after DATA say nothing about the address."""
    [failed] = failed_recipients(
        "5.7.1",
        "554 5.7.1 <2025550143@vtext.com>: Recipient address rejected:"
        f" Access denied (in reply to {command} command)",
    )
    assert (failed.reason, failed.permanent) == (reason, permanent)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("to user@example.com now", ["user@example.com"]),
        ("...user@example.com", ["user@example.com"]),  # a local part does not start with a dot
        ("addressed to 'a@example.com'", ["a@example.com"]),  # a quote, not the local part
        ("o'brien@example.com", ["o'brien@example.com"]),
        ('"john..doe"@example.com', ['"john..doe"@example.com']),
        ("a@b.net...User unknown", ["a@b.net"]),
        ("a@b@c.org", ["a@b"]),
        ("x" * 200 + "@example.com", []),  # past any local part RFC 5321 allows
        ("a." * 5000, []),
    ],
)
def test_the_address_pattern_finds_addresses_as_reports_write_them(text, found):
    """Where an address starts and ends; and a run with no "@" is passed over once, not from
    every position of it (bench/hostile_mail.py measures how long that takes)."""
    assert ADDRESS.findall(text) == found


FORWARDED_REPORT = """From: MAILER-DAEMON@mail.example.jp
To: dispatch@example.com
Subject: Undelivered Mail Returned to Sender
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that the message returned
below could not be delivered to one or more destinations.

For further assistance, please contact <support@isp.example.net>

---------------------------------
From MAILER-DAEMON  Thu Apr 29 23:34:45 2015
""" + DSN.format(
    action="failed",
    status="4.0.0",
    diagnostic="delivery temporarily suspended: host mx.vtext.example[192.0.2.7] refused to talk"
    " to me: 421 Service not available",
)


def test_a_report_a_postmaster_forwards_in_a_letter_is_read_for_its_failures():
    """A letter quoting, after a mailbox's "From " line, the standard report its writer was
    sent: the failures are the quoted report's, not the address the letter offers for help."""
    report = read_report(parse(FORWARDED_REPORT))
    [failed] = report.recipients
    assert (failed.address, failed.status, failed.reason) == ("2025550143@vtext.com", "4.0.0",
                                                              "blocked")  # fmt: skip
    assert report.reader == "delivery-status"
    assert report.original_message_id == "<abc123@example.com>"


def test_a_domain_not_accepting_mail_for_now_leaves_the_address_good():
    from gateway.domain.bounces.recipient import recipient

    said = "DNS Error: DNS type 'mx' lookup of example.org responded with code NOERROR"
    for_now = recipient("a@example.org", "4.0.0", "", f"{said}; does not accept mail")
    for_good = recipient("a@example.org", "5.0.0", "", f"{said}; does not accept mail")
    assert for_now.reason == for_good.reason == "notaccept"
    assert not for_now.permanent and for_good.permanent
    # An unknown user stays a bad address whatever the class.
    assert recipient("a@example.org", "4.1.1", "450", "450 4.1.1 User unknown").permanent


def test_codes_read_as_the_registry_defines_them():
    from gateway.domain.bounces import reason_of

    # IANA's registry of enhanced status codes: a domain with no route to it is a bad address
    # under 5 and a failed lookup for now under 4; a mailbox or domain whose owner changed (RFC
    # 7293). Its x.7.13, "User Account Disabled", is the sender's own account (after AUTH), not
    # the recipient's: no reason of the recipient's.
    assert reason_of("5.4.4", "550", "550 5.4.4 Unable to route") == "hostunknown"
    assert reason_of("4.4.4", "451", "451 4.4.4 Unable to route") == "networkerror"
    assert reason_of("5.7.13", "525", "525 5.7.13 Ask your administrator") == "securityerror"
    assert reason_of("5.7.17", "550", "550 5.7.17 Mailbox owner has changed") == "hasmoved"
