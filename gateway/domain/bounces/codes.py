"""How reports write what they carry: enhanced status codes (RFC 3463), SMTP reply codes,
addresses, Message-IDs."""

from __future__ import annotations

import re

STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# A failure's codes are of class 4 or 5: a 2xx among a failure's words is a step of the session
# that went well ("250 2.1.5 Ok" before the refusal in a transcript). A reply code is a word of
# its own, not the digits ending a host or queue name ("neko222-nyaan").
FAILURE_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY_CODE = re.compile(r"(?<![\w.\-])([45]\d\d)(?=[ \-])")
# An address as reports write it: a local part of atom characters, or a quoted string, which
# RFC 5321 allows and servers echo back as written ("john..doe"@example.com), then a domain.
# An apostrophe may stand inside a local part (o'brien@), but one before it is a quote around
# the address ("addressed to 'a@example.com'"); nor does a local part start with a dot.
# A local part of atoms starts where a run of them starts (from inside a run the search would
# reach the same end as from its start), and is at most 128 characters (RFC 5321 allows 64): a
# search trying every position of a stranger's long run with no "@" in it ("a.a.a.a...", twenty
# thousand characters) otherwise took time growing with the square of its length.
_ATOM = r"A-Za-z0-9!#$%&*+/=?^_`{|}~\-"
LOCAL_PART = rf"(?:\"[^\"\s]{{1,128}}\"|(?<![{_ATOM}])[{_ATOM}][{_ATOM}'.]{{0,127}})"
# A domain: labels joined by single dots ("example.net...User unknown" ends at "net"), each of
# at most 63 characters, at most 127 of them (RFC 1035's limits).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL}){{0,126}}"
# The pattern alone, for the readers that find an address in a place of their own.
ADDRESS_PATTERN = rf"{LOCAL_PART}@{_DOMAIN}"
ADDRESS = re.compile(ADDRESS_PATTERN)

RCPT_TO = re.compile(rf"rcpt to:\s*<?({ADDRESS_PATTERN})", re.IGNORECASE)
MESSAGE_ID = re.compile(r"^message-id:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
# An enhanced code right after the reply code is the remote server's own, where a reporter puts
# its own category first ("5.1.0 - Unknown address error 550-'5.7.1 ... Access denied'").
PAIRED_STATUS = re.compile(r"(?<![\d.])[45]\d\d[ \-]'?([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
