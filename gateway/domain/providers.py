"""Email-to-SMS providers: where a company's texts go once the carriers' gateways close.

A provider takes mail at `<number>@<its domain>` from a sender it has authorised, sends a real
SMS from a number of its own, and mails the person's replies (and, with most, delivery reports)
back to that sender. Every provider writes its addresses and its mail differently, so both are
data in carriers.yaml: this module renders the one and reads the other. Provider mail is still
mail from strangers' phones: reading it never raises, and what it finds is bounded.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers

from gateway.domain.carriers import CarrierStatus
from gateway.domain.phone import Phone, sender_phone

# The placeholders an address template may use, with what each stands for.
PLACEHOLDERS = {
    "national": "the national number (2025550143)",
    "e164": "the number with its + and country code (+12025550143)",
    "e164_digits": "the same without the + (12025550143)",
    "country_code": "the country calling code (1)",
}
MAX_FIELD = 2000  # characters kept of a value found in provider mail
MAX_BODY = 20_000  # characters of a body searched: patterns never see more


class Where(StrEnum):
    FROM = "from"  # the local part of the sender's address
    SUBJECT = "subject"
    BODY = "body"


class NumberFormat(StrEnum):
    INTERNATIONAL = "international"  # with its country code, + or not (447836123456)
    NATIONAL = "national"  # as dialled inside the provider's first country (2025550143)


@dataclass(frozen=True, slots=True)
class Locator:
    """Where one value sits in a provider's mail: the whole of a part, the rest of the line
    after a label (and the lines after it, up to one of `until`), or a pattern's first group."""

    where: Where
    label: str | None = None
    until: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    number: NumberFormat = NumberFormat.INTERNATIONAL  # how a phone number is written there

    def find(self, local_part: str, subject: str, body: str) -> str | None:
        source = {Where.FROM: local_part, Where.SUBJECT: subject, Where.BODY: body}[self.where]
        source = source[:MAX_BODY]
        if self.pattern is not None:
            found = self.pattern.search(source)
            if found is None:
                return None
            value = found.group("value") if "value" in found.re.groupindex else found.group(1)
            return _clip(value or "")
        if self.label is not None:
            return _after_label(source, self.label, self.until)
        return _clip(source)


@dataclass(frozen=True, slots=True)
class ReplyFormat:
    """How a provider mails back what a person typed."""

    senders: tuple[str, ...]  # address patterns, `*` for any run of characters
    phone: Locator
    text: Locator
    subject: re.Pattern[str] | None = None  # when set, the subject must match too


class ReportStatus(StrEnum):
    DELIVERED = "delivered"  # the handset has it
    FAILED = "failed"
    OPTED_OUT = "opted_out"  # the provider refuses: the person opted out with the provider
    UNKNOWN = "unknown"  # a report whose status names none of these: shown, changes nothing


@dataclass(frozen=True, slots=True)
class ReportFormat:
    """How a provider's delivery reports read."""

    senders: tuple[str, ...]
    phone: Locator
    status: Locator
    delivered: tuple[str, ...]  # words the status holds for each outcome (case does not matter)
    failed: tuple[str, ...]
    opted_out: tuple[str, ...] = ()
    reason: Locator | None = None
    subject: re.Pattern[str] | None = None

    def status_of(self, value: str) -> ReportStatus | None:
        """The outcome a status value names; opt-out first (it is a failure too), unknown
        words give None rather than a guess."""
        words = value.casefold()
        for status, names in (
            (ReportStatus.OPTED_OUT, self.opted_out),
            (ReportStatus.FAILED, self.failed),
            (ReportStatus.DELIVERED, self.delivered),
        ):
            if any(_has_word(words, name.casefold()) for name in names):
                return status
        return None


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    name: str
    countries: tuple[str, ...]  # empty: any country
    address: str  # template, e.g. "{e164_digits}@sms.example.com"
    authorise_sender: bool  # the provider only takes mail from senders registered with it
    max_length: int | None
    status: CarrierStatus
    source: str
    replies: ReplyFormat | None = None
    reports: ReportFormat | None = None
    kind: str = "provider"

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def serves(self, region: str | None) -> bool:
        return not self.countries or region is None or region in self.countries

    def is_open(self) -> bool:
        return self.status is not CarrierStatus.RETIRED

    def address_for(self, phone: Phone) -> str:
        return self.address.format_map(placeholders(phone))


def placeholders(phone: Phone) -> dict[str, str]:
    """The values an address template may use, for `phone`."""
    try:
        code = str(phonenumbers.parse(phone.e164).country_code)
    except phonenumbers.NumberParseException:  # a Phone is made from a parsed number
        code = ""
    return {
        "national": phone.national,
        "e164": phone.e164,
        "e164_digits": phone.e164.lstrip("+"),
        "country_code": code,
    }


# --- reading what a provider mails back -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderMail:
    provider: Provider
    phone: Phone | None
    text: str  # a reply: what the person typed (uncleaned); a report: its reason, if any
    report: ReportStatus | None = None  # None: a reply
    status_text: str = ""  # a report's status as the provider wrote it


def from_a_provider(providers: tuple[Provider, ...], sender: str) -> bool:
    """Whether any provider's replies or reports come from `sender` (cheap: no body read)."""
    return any(
        sender_matches(sender, fmt.senders)
        for provider in providers
        for fmt in (provider.replies, provider.reports)
        if fmt is not None
    )


def sender_matches(sender: str, patterns: tuple[str, ...]) -> bool:
    sender = sender.lower()
    return any(fnmatch.fnmatchcase(sender, pattern.lower()) for pattern in patterns)


def read_provider_mail(
    providers: tuple[Provider, ...], sender: str, subject: str, body: str
) -> ProviderMail | None:
    """The provider reply or report this mail is, by its sender and shape; None when it is no
    provider's. A report is tried first: some providers send both from one address, and a
    report whose status names no known outcome is then read as a reply only when the reply
    format fits it as well."""
    local_part = sender.partition("@")[0]
    for provider in providers:
        reports, replies = provider.reports, provider.replies
        is_reply = replies is not None and _from(replies.senders, replies.subject, sender, subject)
        if reports is not None and _from(reports.senders, reports.subject, sender, subject):
            status_text = reports.status.find(local_part, subject, body) or ""
            status = reports.status_of(status_text) if status_text else None
            if status is not None or not is_reply:
                reason = reports.reason.find(local_part, subject, body) if reports.reason else None
                return ProviderMail(
                    provider,
                    _phone(reports.phone, provider, local_part, subject, body),
                    reason or "",
                    status or ReportStatus.UNKNOWN,
                    status_text,
                )
        if replies is not None and is_reply:
            text = replies.text.find(local_part, subject, body) or ""
            return ProviderMail(
                provider, _phone(replies.phone, provider, local_part, subject, body), text
            )
    return None


def _from(
    senders: tuple[str, ...], pattern: re.Pattern[str] | None, sender: str, subject: str
) -> bool:
    if not sender_matches(sender, senders):
        return False
    return pattern is None or pattern.search(subject) is not None


def _phone(
    locator: Locator, provider: Provider, local_part: str, subject: str, body: str
) -> Phone | None:
    value = locator.find(local_part, subject, body)
    if not value:
        return None
    digits = re.sub(r"[\s().-]", "", value)[:20]
    if locator.number is NumberFormat.INTERNATIONAL and not digits.startswith("+"):
        digits = "+" + digits
    return sender_phone(digits, provider.countries[0] if provider.countries else "US")


def _after_label(text: str, label: str, until: tuple[str, ...]) -> str | None:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    head = re.compile(rf"^\s*{re.escape(label)}\s*[:=]\s?(.*)$", re.IGNORECASE)
    stops = [re.compile(rf"^\s*{re.escape(u)}\s*[:=]", re.IGNORECASE) for u in until]
    for index, line in enumerate(lines):
        found = head.match(line)
        if found is None:
            continue
        value = [found.group(1)]
        if stops:
            for later in lines[index + 1 :]:
                if any(stop.match(later) for stop in stops):
                    break
                value.append(later)
        return _clip("\n".join(value))
    return None


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![0-9a-z_]){re.escape(word)}(?![0-9a-z_])", text) is not None


def _clip(text: str) -> str:
    return text.strip()[:MAX_FIELD]
