"""Fuzz targets: each feeds bytes to a parser that takes input from strangers. A rejection with
a reason (MailError, PhoneError, ValueError from a header check) is the expected answer to bad
input; any other exception escapes.

Two uses:
- tests/faults/test_fuzz.py imports TARGETS and replays the saved corpus (tests/data/fuzz/)
  and every past crasher through them, in process and deterministically: no atheris needed.
- `python tests/faults/fuzz_targets.py TARGET [libFuzzer flags] DIR...` explores with atheris
  (coverage-guided); `make fuzz` runs it for each target, adding what it finds to the corpus and
  any crash to tests/data/fuzz/crashers/, which the replay then holds for ever."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from gateway.domain.carriers import CarrierFileError
from gateway.domain.carriers_file import load_carriers
from gateway.domain.email_out import Mailbox, OutboundEmail, build_email
from gateway.domain.inbound import Identity, MailError, keyword_of, parse_mail
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.rules import RuleError, load_rules
from gateway.domain.sms import LongText, fit, measure, normalise
from gateway.services.csv_rows import csv_rows

REPO = Path(__file__).resolve().parents[2]
BOOK = load_carriers((REPO / "carriers.yaml").read_text())
IDENTITY = Identity(frozenset({"dispatch@example.com"}), "example.com")


def inbound_mail(data: bytes) -> None:
    try:
        mail = parse_mail(data, BOOK, IDENTITY)
    except MailError as exc:
        assert str(exc)
        return
    keyword_of(mail.text)
    assert len(mail.text) <= 2000


def phone_number(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        phone = parse_phone(text, "US")
    except PhoneError as exc:
        assert exc.reason
        return
    assert phone.e164.startswith("+")


def sms_text(data: bytes) -> None:
    text = normalise(data.decode("utf-8", "replace"))
    if not text:
        return
    measure(text)
    for mode in LongText:
        parts = fit(text, 160, mode)
        assert all(measure(part).segments >= 1 for part in parts)


OURS = (b"From:", b"To:", b"Subject:", b"Date:", b"Message-ID:", b"Reply-To:",
        b"MIME-Version:", b"Content-Type:", b"Content-Transfer-Encoding:")  # fmt: skip
WHEN = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def email_headers(data: bytes) -> None:
    """Every field that reaches a header, from the fuzzer: refused with a reason, or a message
    whose header lines are ours alone (a line break never starts a header of its own)."""
    to, sender, subject, reply_to, body = (data.decode("utf-8", "replace").split("\x1f")
                                           + [""] * 5)[:5]  # fmt: skip
    try:
        raw = build_email(OutboundEmail(
            sender=Mailbox.parse(sender or "Dispatch <dispatch@example.com>", "From"),
            to=to or "2025550143@vtext.com", message_id="<a@example.com>", date=WHEN,
            body=body, subject=subject,
            reply_to=Mailbox.parse(reply_to, "Reply-To") if reply_to else None,
        ))  # fmt: skip
    except ValueError as exc:
        assert str(exc)
        return
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert line.startswith(OURS) or line[:1] in (b" ", b"\t"), line


# The operator's own files, which the command line reads: a mistake in one is refused with a
# reason naming it, never a traceback.


def carriers_file(data: bytes) -> None:
    try:
        load_carriers(data.decode("utf-8", "replace"), "carriers.yaml")
    except CarrierFileError as exc:
        assert str(exc)


def rules_file(data: bytes) -> None:
    try:
        load_rules(data.decode("utf-8", "replace"), "rules.yaml")
    except RuleError as exc:
        assert str(exc)


def csv_file(data: bytes) -> None:
    try:
        _names, rows = csv_rows(data.decode("utf-8", "replace"), ValueError)
        for _line, row in rows:
            assert all(isinstance(value, str) for value in row.values())
    except ValueError as exc:
        assert str(exc)


TARGETS = {
    "inbound_mail": inbound_mail,
    "phone_number": phone_number,
    "sms_text": sms_text,
    "email_headers": email_headers,
    "carriers_file": carriers_file,
    "rules_file": rules_file,
    "csv_file": csv_file,
}

if __name__ == "__main__":
    import atheris

    atheris.instrument_all()  # the gateway's modules are imported above: instrument them now
    target = TARGETS[sys.argv[1]]
    # libFuzzer runs argv[0] through the shell for -merge and -fork: name the interpreter and
    # the target with it, so those runs come back here.
    self = f"{sys.executable} {Path(__file__).resolve()} {sys.argv[1]}"
    atheris.Setup([self, *sys.argv[2:]], target)
    atheris.Fuzz()
