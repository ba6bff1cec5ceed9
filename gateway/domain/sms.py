"""What a text costs as SMS, and how to make it fit.

GSM-7 (3GPP TS 23.038) packs 160 characters in one message and 153 per part of a longer one;
characters of its extension table take two septets (an escape and the character), and the pair
is never split. A text with any character outside GSM-7 is sent as UCS-2: 70 UTF-16 code units in
one message and 67 per part; a character outside the Basic Multilingual Plane takes two code units
(a surrogate pair), also never split.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7 = GSM7_BASIC | GSM7_EXTENSION
# Counted by the regular expression engine: every enqueue measures its text and its parts, and
# a loop in Python over each character was most of an enqueue's time.
_EXTENSION_CHARS = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")
_ASTRAL_CHARS = re.compile("[\U00010000-\U0010ffff]")

# Typographic characters that turn a whole text into UCS-2 (less than half the room per
# message) for no gain in meaning, and their plain equivalents.
_PLAIN_EQUIVALENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u2009": " ", "\u200a": " ",
    "\u2002": " ", "\u2003": " ", "\u3000": " ",
    "\u2022": "-",
}  # fmt: skip
_PLAIN_TABLE = str.maketrans(_PLAIN_EQUIVALENTS)
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
MAX_PARTS = 9
MIN_LIMIT = 40  # below this a numbered part has no room left for words


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


class LongText(StrEnum):
    SPLIT = "split"
    TRUNCATE = "truncate"


@dataclass(frozen=True, slots=True)
class Measure:
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def normalise(text: str) -> str:
    """Plain, compact text: typographic quotes and dashes made plain (only where that keeps the
    text in GSM-7 is it worth it, but plain quotes never hurt), invisible and control characters
    dropped, runs of spaces collapsed, line ends unified, ends trimmed."""
    if text.isascii() and text.isprintable():
        # One line of plain ASCII, as most notifications are: only its spaces can change.
        return _SPACES.sub(" ", text).strip()
    return normalise_any(text)


def normalise_any(text: str) -> str:
    """normalise without its shortcut for plain ASCII (which must give the same)."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_PLAIN_TABLE)
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def encoding_of(text: str) -> Encoding:
    return Encoding.GSM7 if GSM7.issuperset(text) else Encoding.UCS2


def char_units(ch: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return 2 if ch in GSM7_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1


def units_of(text: str, encoding: Encoding) -> int:
    doubled = _EXTENSION_CHARS if encoding is Encoding.GSM7 else _ASTRAL_CHARS
    return len(text) + len(doubled.findall(text))


def segment_texts(text: str) -> list[str]:
    """The text cut the way a phone cuts it into concatenated SMS parts."""
    encoding = encoding_of(text)
    single, part = (
        (GSM7_SINGLE, GSM7_PART) if encoding is Encoding.GSM7 else (UCS2_SINGLE, UCS2_PART)
    )
    if units_of(text, encoding) <= single:
        return [text] if text else []
    segments: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        cost = char_units(ch, encoding)
        if used + cost > part:  # a two-unit character moves whole to the next part
            segments.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += cost
    if current:
        segments.append("".join(current))
    return segments


def measure(text: str) -> Measure:
    encoding = encoding_of(text)
    units = units_of(text, encoding)
    single = GSM7_SINGLE if encoding is Encoding.GSM7 else UCS2_SINGLE
    segments = 1 if units <= single else len(segment_texts(text))
    return Measure(encoding, units, segments)


def part_limit(max_length: int, encoding: Encoding) -> int:
    """A carrier's max_length counts GSM-7 characters; UCS-2 text gets the same share of room
    (70 of 160), the way an SMS does."""
    if encoding is Encoding.GSM7:
        return max(MIN_LIMIT, max_length)
    return max(MIN_LIMIT, max_length * UCS2_SINGLE // GSM7_SINGLE)


def fit(text: str, max_length: int | None, mode: LongText) -> list[str]:
    """The texts to send so that each fits the carrier's `max_length`: the text itself, or its
    numbered parts `(1/3) ...`, or the text cut short with an ellipsis."""
    if not text:
        return []
    encoding = encoding_of(text)
    if max_length is None:
        return [text]
    limit = part_limit(max_length, encoding)
    if units_of(text, encoding) <= limit:
        return [text]
    if mode is LongText.TRUNCATE:
        return [_truncate(text, limit, encoding)]
    return _split(text, limit, encoding)


def _ellipsis(encoding: Encoding) -> str:
    # "…" is not in GSM-7: in a GSM-7 text it would turn the whole text into UCS-2.
    return "..." if encoding is Encoding.GSM7 else "…"


def _truncate(text: str, limit: int, encoding: Encoding) -> str:
    mark = _ellipsis(encoding)
    room = limit - units_of(mark, encoding)
    head = _take(text, room, encoding)
    cut = head.rstrip()
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= len(cut) * 2 // 3:  # end at a word, unless that wastes a third of the room
        cut = cut[:space].rstrip()
    return cut + mark


def _take(text: str, room: int, encoding: Encoding) -> str:
    """The longest prefix of `text` that costs at most `room` units."""
    used = 0
    for index, ch in enumerate(text):
        used += char_units(ch, encoding)
        if used > room:
            return text[:index]
    return text


def _split(text: str, limit: int, encoding: Encoding) -> list[str]:
    # At most MAX_PARTS parts keeps the prefix "(i/n) " one width, and nobody reads a tenth text
    # of one notification anyway: past that, the last part is cut short.
    room = limit - len(f"({MAX_PARTS}/{MAX_PARTS}) ")
    chunks: list[str] = []
    rest = text
    while rest and len(chunks) < MAX_PARTS - 1:
        head = _take(rest, room, encoding) or rest[0]
        if len(head) < len(rest):
            space = max(head.rfind(" "), head.rfind("\n"))
            if space >= len(head) // 2:  # break at a word when one is near the end
                head = head[: space + 1]
        chunks.append(head.strip())
        rest = rest[len(head) :].lstrip()
    if rest:
        last = rest if units_of(rest, encoding) <= room else _truncate(rest, room, encoding)
        chunks.append(last)
    chunks = [chunk for chunk in chunks if chunk]
    return [f"({index}/{len(chunks)}) {chunk}" for index, chunk in enumerate(chunks, 1)]
