import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.phone import _CANNOT_TEXT, PhoneError, parse_phone, region_and_type


@pytest.mark.parametrize(
    ("typed", "e164", "national"),
    [
        ("+12025550143", "+12025550143", "2025550143"),
        ("(202) 555-0143", "+12025550143", "2025550143"),
        ("202.555.0143", "+12025550143", "2025550143"),
        ("+1 604 555 0123", "+16045550123", "6045550123"),  # Canada, same plan
        ("+44 7700 900123", None, None),  # reserved for drama: not a valid number
    ],
)
def test_parses_what_dispatchers_type(typed, e164, national):
    if e164 is None:
        with pytest.raises(PhoneError):
            parse_phone(typed, "US")
        return
    phone = parse_phone(typed, "US")
    assert (phone.e164, phone.national) == (e164, national)


def test_default_region_applies_to_national_numbers():
    phone = parse_phone("07400 123456", "GB")
    assert (phone.e164, phone.national, phone.region) == ("+447400123456", "7400123456", "GB")
    with pytest.raises(PhoneError, match="landline"):
        parse_phone("020 7946 0018", "GB")


@pytest.mark.parametrize(
    ("typed", "words"),
    [
        ("", "no phone number"),
        ("hello", "not a phone number"),
        ("+1 900 555 0123", "premium-rate"),
        ("+44 20 7946 0958", "landline"),
        ("+1 202 555 01", "not a valid number"),
        ("+12025550143\r\nBcc: x@y.z", "not a phone number"),
        ("1" * 200, "not a phone number"),
    ],
)
def test_refuses_with_a_reason(typed, words):
    with pytest.raises(PhoneError) as caught:
        parse_phone(typed, "US")
    assert words in caught.value.reason


@given(st.text(max_size=60))
def test_any_input_parses_or_is_refused_with_a_reason(text):
    try:
        phone = parse_phone(text, "US")
    except PhoneError as exc:
        assert exc.reason
    else:
        assert phone.e164.startswith("+") and phone.national.isdigit()


@given(
    st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)),
    st.text(alphabet="0123456789", min_size=4, max_size=13),
)
def test_a_number_is_accepted_exactly_when_the_plan_calls_it_valid(region, digits):
    # parse_phone asks the plan for the number's type once instead of also asking is_valid_number.
    try:
        number = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return
    valid = phonenumbers.is_valid_number(number)
    # The region and the type, worked out together (the type once), are the library's.
    national = phonenumbers.national_significant_number(number)
    expected = (phonenumbers.region_code_for_number(number), phonenumbers.number_type(number))
    assert region_and_type(number.country_code, national) == expected
    try:
        parse_phone(digits, region)
        accepted = True
    except PhoneError:
        accepted = False
    assert accepted == (valid and phonenumbers.number_type(number) not in _CANNOT_TEXT)


def _example_numbers() -> list[str]:
    kinds = [kind for kind in vars(phonenumbers.PhoneNumberType).values() if isinstance(kind, int)]
    found = set()
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in kinds:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                found.add(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            found.add(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return sorted(found)


def test_every_plans_example_numbers_are_read_as_the_library_reads_them():
    # parse_phone works the region and the type out in one pass (region_and_type, with a library
    # helper number_type itself uses); this holds both to the public answers for every example
    # of every type, shared country codes (+1, +7, +44) and non-geographic ones included.
    examples = _example_numbers()
    assert len(examples) > 1000
    for typed in examples:
        number = phonenumbers.parse(typed)
        expected = phonenumbers.number_type(number)
        national = phonenumbers.national_significant_number(number)
        found = region_and_type(number.country_code, national)
        assert found == (phonenumbers.region_code_for_number(number), expected), typed
        try:
            phone = parse_phone(typed, "US")
        except PhoneError:
            assert expected == phonenumbers.PhoneNumberType.UNKNOWN or expected in _CANNOT_TEXT
            continue
        assert expected != phonenumbers.PhoneNumberType.UNKNOWN and expected not in _CANNOT_TEXT
        assert phone.region == phonenumbers.region_code_for_number(number), typed
        assert phone.national == phonenumbers.national_significant_number(number)
