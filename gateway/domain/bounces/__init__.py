"""Reading delivery reports: which recipients failed, how, and whether the address itself is bad.

Mail comes back in two shapes. Standard reports (RFC 3464) carry a message/delivery-status part
with a block per recipient: its address, Action, Status (an enhanced code such as 5.1.1) and the
remote server's words. Many systems still send a letter instead ("The following address(es)
failed: ..."), so the same facts are also read from the report's text.

"Permanent" here is about the address, not the status class: a 5xx refusal for policy, spam or
reputation fails that message but says nothing about the number; only reasons that mean the
address is wrong (unknown user or host, moved, accepts no mail) make it permanent, and only then
should a contact's carrier or number be questioned.

"User unknown" alone does not show that: filters (Japanese carriers' sender filters, content
filters after DATA) word their refusals the same way. It is read as a bad address only where the
report shows the mailbox was looked up: refused at RCPT, under an addressing code (x.1.x), in a
directory's words, by the recipient's own mail system, or in the reporter's own verdict (a category
field of its own, or the words it keeps for that verdict alone).
"""

from __future__ import annotations

import email.message
import email.policy
from dataclasses import replace

from gateway.domain.bounces.dsn import (
    from_status_part,
    only_delayed,
    single_status,
    status_blocks,
)
from gateway.domain.bounces.letters import from_text, looks_like_bounce, still_trying, text_about
from gateway.domain.bounces.mime import (
    DELIVERY_STATUS,
    MAX_PART_DEPTH,
    MAX_PARTS,
    ReportMail,
    TolerantMessage,
    UnreadableMime,
    content_type,
    find_part,
    forwarded_report,
    header_text,
    parse_bounded,
    payload_text,
    returned_recipients,
    with_boundary,
    with_readable_parameters,
)
from gateway.domain.bounces.others import feedback, is_auto_reply
from gateway.domain.bounces.reasons import ADDRESS_REASONS, reason_of
from gateway.domain.bounces.recipient import Recipient, Report, recipient

# --- reading a report -------------------------------------------------------------------------


def read_report(message: email.message.Message) -> Report | None:
    """The report `message` is, or None when it is not a report of any kind."""
    message = with_boundary(with_readable_parameters(message))
    param = message.get_param("report-type")
    report_type = param.lower() if isinstance(param, str) else ""
    if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return feedback(message)
    # Bounces before auto-replies: mail systems mark their bounces Auto-Submitted too.
    status_part = find_part(message, *DELIVERY_STATUS)
    blocks = status_blocks(status_part) if status_part is not None else []
    mail = ReportMail(message)
    stated = ""
    delayed = False
    if status_part is not None:
        report = from_status_part(mail, blocks)
        if report is not None:
            return report
        # A block that names no address (Exim's "rfc822;/var/spool/..." for a mailbox file) still
        # states the status: the letter names the recipient.
        stated = single_status(blocks)
        # Blocks that say the reporter is still trying make the letter's failures not final,
        # though the letter may not say so.
        delayed = only_delayed(blocks)
    # A delivery-status part makes the message a report (RFC 3464) however it is signed and
    # titled; without one, the letter must look like a report.
    if status_part is not None or looks_like_bounce(mail):
        quoted = forwarded_report(message) if status_part is None else None
        if quoted is not None:
            # A postmaster forwarding the report they were sent: its failures, not the
            # letter's contact address. (A quoted report has a status part of its own, so
            # reading it never looks for another quote: one level, whatever the letter nests.)
            report = read_report(quoted)
            if report is not None and report.kind == "bounce" and report.recipients:
                return report
        report = from_text(mail, stated, delayed)
        if report is not None:
            return report
        # A report with no word on its recipients (Postfix's "Delivery report unavailable"):
        # the returned original's To is who it was for.
        returned = returned_recipients(message)
        if returned:
            text = mail.text
            final = not (delayed or still_trying(text))
            failed = tuple(
                replace(
                    recipient(a, "", "", text_about(text, a, returned), reporter=mail.reporter),
                    final=final,
                )
                for a in returned
            )
            return Report(
                "bounce",
                failed,
                original_message_id=mail.original_id,
                reader="returned original",
            )
        if status_part is not None:
            # Nothing names a valid address: the blocks' addresses as the reporter wrote them.
            report = from_status_part(mail, blocks, as_written=True)
            if report is not None:
                return report
    if is_auto_reply(message):
        return Report("auto_reply")
    return None


__all__ = [
    "ADDRESS_REASONS",
    "MAX_PARTS",
    "MAX_PART_DEPTH",
    "Recipient",
    "Report",
    "TolerantMessage",
    "UnreadableMime",
    "content_type",
    "header_text",
    "parse_bounded",
    "payload_text",
    "read_report",
    "reason_of",
]
