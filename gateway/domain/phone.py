"""Phone numbers as the gateways need them: validated, mobile-capable, in national form."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType
from phonenumbers.phonenumberutil import _number_type_helper

# Longer input is never a phone number; refusing it early keeps hostile input cheap.
MAX_INPUT_LENGTH = 40

# Types the numbering plan says cannot receive a text. Everything else that is valid is
# accepted: phonenumbers types every North American number FIXED_LINE_OR_MOBILE.
_CANNOT_TEXT = {
    PhoneNumberType.FIXED_LINE: "a landline",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
    PhoneNumberType.UAN: "a universal access number",
    PhoneNumberType.PAGER: "a pager number",
}


class PhoneError(ValueError):
    """A number that cannot be texted; `str()` says why in words a dispatcher understands."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(reason)
        self.text = text
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str  # +12025550143: how the number is stored and shown
    national: str  # 2025550143: the local part a carrier gateway expects
    region: str | None  # ISO 3166 region of the number, when the plan says

    def __str__(self) -> str:
        return self.e164


def parse_phone(text: str, default_region: str) -> Phone:
    """Parse what a person typed into a textable number, or raise PhoneError saying why."""
    shown = text.strip()
    if not shown:
        raise PhoneError(text, "no phone number given")
    if len(shown) > MAX_INPUT_LENGTH or any(ch in shown for ch in "\r\n\x00"):
        raise PhoneError(text, f"{_short(shown)!r} is not a phone number")
    try:
        number = phonenumbers.parse(shown, default_region.upper())
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(text, f"{shown!r} is not a phone number ({_parse_reason(exc)})") from None
    national = phonenumbers.national_significant_number(number)
    region, kind = region_and_type(number.country_code or 0, national)
    if kind == PhoneNumberType.UNKNOWN:
        raise PhoneError(
            text, f"{shown!r} is not a valid number in the numbering plan of its country"
        )
    if kind in _CANNOT_TEXT:
        raise PhoneError(text, f"{shown!r} is {_CANNOT_TEXT[kind]} and cannot receive texts")
    return Phone(
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        national=national,
        region=region,
    )


def region_and_type(code: int, national: str) -> tuple[str | None, int]:
    """The region of a number and its type there, as phonenumbers' region_code_for_number and
    number_type give them, with the type worked out once: for a country code that several
    regions share (+1) the region is found by typing the number against each region's plan,
    and number_type would type it again. On a bulk enqueue that was a tenth of the time."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    if len(regions) == 1:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
        kind = PhoneNumberType.UNKNOWN
        if metadata is not None:
            kind = _number_type_helper(national, metadata)
        return regions[0], kind
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            # The region's own leading digits name it; its plan then types the number.
            if re.match(metadata.leading_digits, national):
                return region, _number_type_helper(national, metadata)
            continue
        kind = _number_type_helper(national, metadata)
        if kind != PhoneNumberType.UNKNOWN:
            return region, kind
    return None, PhoneNumberType.UNKNOWN


def _parse_reason(exc: phonenumbers.NumberParseException) -> str:
    reasons = {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
        phonenumbers.NumberParseException.NOT_A_NUMBER: "no digits to dial",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
        phonenumbers.NumberParseException.TOO_LONG: "too long",
    }
    return reasons.get(exc.error_type, "unreadable")


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:21] + "..."


def sender_phone(digits: str, region: str) -> Phone | None:
    """The phone a gateway or provider says a message came from (digits, + optional), or None.

    Lenient where parse_phone is strict: a number the plan calls invalid (a test number, a new
    range) is still the sender's. A local-only number (7 digits in North America) names no
    phone by itself."""
    if not re.fullmatch(r"\+?\d{7,15}", digits):
        return None
    try:
        return parse_phone(digits, region)
    except PhoneError:
        pass
    try:
        number = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return Phone(
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        national=phonenumbers.national_significant_number(number),
        region=phonenumbers.region_code_for_number(number),
    )
