"""The SMTP session phase a refusal came in (MAIL, RCPT, DATA), and whether a refusal worded as an
unknown user came from looking the mailbox up."""

from __future__ import annotations

import re

# The phase of the SMTP session a refusal came in, as reports word it: in answer to DATA (after
# the message was seen), to RCPT (the recipient), or to MAIL (our own sender address).
_AT_DATA = re.compile(
    r"end of data|after data|>>> data|in reply to data|reply to end of data|"
    r"after end of data|data command|during data",
    re.IGNORECASE,
)
_AT_MAIL = re.compile(r"after mail from|in reply to mail from|mail from command", re.IGNORECASE)
# Refused on connecting, before any command (Exim's "after initial connection", Postfix's
# "refused to talk to me"): the server turned our host away, whatever the recipient.
_AT_CONNECT = re.compile(r"after initial connection|refused to talk to me", re.IGNORECASE)
_AT_RCPT = re.compile(
    r"(?:after|in reply to|like our|smtp:) ?rcpt\b|rcpt(?: to)? command|\[rcpt_to\]|"
    r"server has rejected (?:the )?(?:address|recipient)|recipient address rejected|"
    # qmail-remote's own words for a refusal of the recipient.
    r"most progress was rcpt to response|does not like recipient",
    re.IGNORECASE,
)
# A refusal whose address slot is empty ("550 : User unknown"): no mailbox was looked up, so the
# words are a filter's, not a directory's.
_NO_ADDRESS = re.compile(r"(?<![\d.])[45]\d\d(?:[ \-][245]\.\d{1,3}\.\d{1,3})? +: ")
# Words of a directory lookup by the system that holds the mailbox (Notes, Exchange): the address
# was looked up and is not there, whatever the session phase.
_DIRECTORY_LOOKUP = re.compile(
    r"not listed in .{0,40}director|ディレクトリには見つかりません|"
    r"recipient name is not recogni[sz]ed|not found in (?:the )?(?:address book|directory)"
)


def looked_up(
    status: str, phase: str | None, diagnostic: str, about: str, address: str, reporter: str
) -> bool:
    """Whether a refusal worded as an unknown user came from looking the mailbox up, rather
    than from a filter that words its refusals so. A lookup shows as a refusal at RCPT with an
    address in it, an addressing code (x.1.x, "bad destination mailbox"), a directory's words,
    or a report from the recipient's own mail system, which knows its users; after DATA, or
    where a relay does not say, the words alone do not show it."""
    if phase == "RCPT" and not _NO_ADDRESS.search(diagnostic):
        return True
    if status.split(".")[1:2] == ["1"]:
        return True
    if _same_organisation(address.rpartition("@")[2].lower(), reporter):
        return True
    return bool(_DIRECTORY_LOOKUP.search(" ".join(f"{diagnostic} {about}".lower().split())))


def _same_organisation(domain: str, other: str) -> bool:
    """Whether two domains are one, or one is under the other (mx.example.jp, example.jp)."""
    if not domain or not other or "." not in domain or "." not in other:
        return False
    return domain == other or domain.endswith(f".{other}") or other.endswith(f".{domain}")


def session_phase(address: str, diagnostic: str, about: str, transcript: str) -> str | None:
    """The SMTP command a refusal answered (MAIL, RCPT or DATA; CONNECT for the greeting), where
    the report says: in the server's words, in the report's words about the recipient ("...
    (in reply to RCPT TO command)"), or in a session transcript."""
    phases = (_AT_CONNECT, "CONNECT"), (_AT_MAIL, "MAIL"), (_AT_DATA, "DATA"), (_AT_RCPT, "RCPT")
    for wording, phase in phases:
        if wording.search(diagnostic) or wording.search(about):
            return phase
    return _command_before(transcript, diagnostic, address)


def _command_before(transcript: str, reply: str, address: str) -> str | None:
    """The command a session transcript shows answered by `reply` (">>> DATA" then
    "<<< 550 ..."), or refused right after naming `address` (">>> RCPT To:<a@b>" then a 4xx or
    5xx): the phase the refusal came in, or None when the transcript does not show it."""
    wanted = " ".join(reply.lower().split())[:40]
    command = named = None
    for line in transcript.splitlines():
        stripped = line.strip()
        sent = re.match(r">>> ?([A-Za-z]+)", stripped)
        if sent:
            command = sent.group(1).upper()
            named = address.lower() in stripped.lower() if address else False
        elif stripped.startswith("<<<"):
            answer = " ".join(stripped[3:].lower().split())
            if len(wanted) >= 8 and wanted in answer:
                return command
            if named and command == "RCPT" and answer[:1] in ("4", "5"):
                return command
    return None
