"""The reader of standard reports (RFC 3464): a message/delivery-status part with a block per
recipient (its address, Action, Status, the remote server's words)."""

from __future__ import annotations

import base64
import email.message
import email.policy
import quopri
import re
from dataclasses import replace
from email.errors import MissingHeaderBodySeparatorDefect
from typing import Any

from gateway.domain.bounces.codes import ADDRESS, REPLY_CODE, STATUS
from gateway.domain.bounces.letters import text_about
from gateway.domain.bounces.mime import ReportMail, part_payload, payload_text
from gateway.domain.bounces.recipient import Recipient, Report, recipient

# Reporting systems that file each failure under a category of their own, in a field of the
# recipient's block (PowerMTA's X-PowerMTA-BounceCategory): the categories that name the reason.
_REPORTER_CATEGORIES = {
    "bad-mailbox": "userunknown", "bad-domain": "hostunknown", "inactive-mailbox": "suspend",
    "quota-issues": "mailboxfull", "message-expired": "expired", "spam-related": "spamdetected",
    "virus-related": "virusdetected", "relaying-issues": "norelaying",
}  # fmt: skip


def from_status_part(
    mail: ReportMail, blocks: list[dict[str, str]], as_written: bool = False
) -> Report | None:
    """The recipients a status part's blocks (`status_blocks`) name. `as_written`: also those
    whose address is no valid one (a slip such as "user@#example.net"), for when nothing else
    names them."""
    failed: list[Recipient] = []
    delivered = unnamed_failures = 0
    human = mail.text
    addresses = [_recipient_address(b, as_written) for b in blocks]
    block_addresses = [a for a in addresses if a]
    for fields, address in zip(blocks, addresses, strict=True):
        action = fields.get("action", "").lower()
        status_found = STATUS.search(fields.get("status", ""))
        status = ".".join(status_found.groups()) if status_found else ""
        if action in ("delivered", "relayed", "expanded") or status.startswith("2."):
            # Counted whether or not the block names its recipient: a report of deliveries
            # only is no failure, however its letter is worded.
            delivered += 1
            continue
        if not address:
            # A failure whose block does not say whose: the letter may (the caller reads it).
            unnamed_failures += action in ("failed", "delayed") or status[:1] in ("4", "5")
            continue
        near = text_about(human, address, block_addresses)
        diagnostic = fields.get("diagnostic-code", "")
        diagnostic = re.sub(r"^\s*(smtp|x-[\w\-]+)\s*;\s*", "", diagnostic, flags=re.IGNORECASE)
        code_found = REPLY_CODE.search(diagnostic + " ")
        found = recipient(
            address,
            status,
            code_found.group(1) if code_found else "",
            # With no Diagnostic-Code, a letter about one recipient is about it throughout
            # ("The user's account is disabled" before the address).
            diagnostic or (human[:2000] if len(set(block_addresses)) <= 1 else near),
            human,
            # The Status field's comment ("5.0.0 (Remote SMTP server has rejected address)")
            # is the reporter's own word on how the refusal came.
            f"{fields.get('status', '')} {near}",
            _REPORTER_CATEGORIES.get(fields.get("x-powermta-bouncecategory", "").lower()),
            mail.reporter,
        )
        if action == "delayed":
            # RFC 3464: the reporting system has not delivered it yet and will keep trying. The
            # words are read as ever (what they say of the address), but nothing is final.
            found = replace(found, final=False)
        failed.append(found)
    if failed:
        return Report(
            "bounce",
            tuple(failed),
            original_message_id=mail.original_id,
            reader="delivery-status",
        )
    if delivered and not unnamed_failures:
        return Report("delivery_report", original_message_id=mail.original_id)
    return None


def single_status(blocks: list[dict[str, str]]) -> str:
    """The Status a delivery-status part's blocks state for its one failed recipient, or ""."""
    failed = [b for b in blocks[1:] if b.get("action", "failed").lower() == "failed"]
    found = STATUS.search(failed[0].get("status", "")) if len(failed) == 1 else None
    return ".".join(found.groups()) if found and found.group(1) != "2" else ""


def only_delayed(blocks: list[dict[str, str]]) -> bool:
    """Whether a delivery-status part's recipient blocks all say the reporter is still trying
    (RFC 3464 "Action: delayed"), whether or not they name the recipient."""
    actions = [b["action"].lower() for b in blocks[1:] if b.get("action")]
    return bool(actions) and all(action == "delayed" for action in actions)


def status_blocks(part: email.message.Message) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part: the first is about the message, the rest
    are one per recipient."""
    payload = part_payload(part)
    if not isinstance(payload, list):
        return _blocks(payload_text(part))
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        # Not allowed for a message/ type (RFC 2045 6.4), and some systems do it: the email
        # package has parsed the encoded text as fields. Put it back together and decode it.
        return _blocks(_decoded(_as_written(payload), encoding))
    blocks: list[dict[str, str]] = []
    for block in payload:
        if not isinstance(block, email.message.Message):
            continue
        fields = {str(k).lower(): _from_jis(" ".join(str(v).split())) for k, v in block.items()}
        # The email package parses message/delivery-status into a header-only part a block,
        # and any other message/ type (RFC 6533's message/global-delivery-status) as one
        # message: its headers are the first block, its body the rest. A block's fields also
        # end at the first line the package cannot read as one (a field folded without
        # indentation): the rest of the block is the part's body too.
        rest = [] if block.is_multipart() else _blocks(payload_text(block))
        if rest and any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in block.defects):
            for name, value in rest.pop(0).items():
                fields.setdefault(name, value)
        blocks += [fields, *rest]
    return blocks


def _as_written(blocks: list[Any]) -> str:
    """The text of a status part that the email package has parsed into blocks, as written
    (each block's fields, then whatever it took for the block's body)."""
    written = []
    for block in blocks:
        if isinstance(block, email.message.Message) and not block.is_multipart():
            fields = "".join(f"{name}: {value}\n" for name, value in block.items())
            written.append(fields + payload_text(block))
    return "\n\n".join(written)


def _decoded(text: str, encoding: str) -> str:
    data = text.encode("ascii", "replace")
    try:
        raw = base64.b64decode(data) if encoding == "base64" else quopri.decodestring(data)
    except ValueError:  # binascii.Error: not base64 after all
        return text
    return raw.decode("utf-8", "replace")


def _blocks(text: str) -> list[dict[str, str]]:
    return [_fields(b) for b in re.split(r"\r?\n\s*\r?\n", _from_jis(text)) if b.strip()]


def _from_jis(value: str) -> str:
    """`value` with its ISO-2022-JP runs read: Japanese systems write them, escape sequences and
    all, into fields that are meant to be ASCII (a Notes Diagnostic-Code)."""
    if "\x1b$" not in value:
        return value
    try:
        return value.encode("latin-1").decode("iso-2022-jp")
    except (UnicodeError, LookupError):
        return value


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and current:
            fields[current] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            current = name.strip().lower()
            fields.setdefault(current, value.strip())
    return fields


def _recipient_address(fields: dict[str, str], as_written: bool = False) -> str:
    """The address a recipient's block is about: the one the sender wrote, where the reporter
    kept it (Original-Recipient, RFC 3464 2.3.1), since that is the address the sender knows;
    else the one delivery last tried (Final-Recipient: an alias's target, a mailbox's internal
    name, an X.400 form). `as_written`: where neither is a valid address, the first that has
    an "@", as written."""
    named = [_address_field(fields.get(name)) for name in ("original-recipient", "final-recipient")]
    for written in named:
        found = ADDRESS.search(written)
        if found:
            return found.group(0)
    if not as_written:
        return ""
    return next((w for w in named if "@" in w and not any(c.isspace() for c in w)), "")


def _address_field(value: str | None) -> str:
    """The address a field gives, as written: "rfc822; <user@host>" gives user@host."""
    if not value:
        return ""
    return re.sub(r"^\s*[\w\-]+\s*;\s*", "", value).strip().strip("<>").strip()
