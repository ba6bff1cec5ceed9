import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.domain.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_PARTS,
    Encoding,
    LongText,
    char_units,
    encoding_of,
    fit,
    measure,
    normalise,
    normalise_any,
    part_limit,
    segment_texts,
    units_of,
)


def test_gsm7_counts():
    assert measure("a" * 160) == measure("a" * 160)
    assert measure("a" * 160).segments == 1
    assert measure("a" * 161).segments == 2
    assert measure("a" * 306).segments == 2
    assert measure("a" * 307).segments == 3
    assert measure("€" * 80).units == 160 and measure("€" * 80).segments == 1


def test_ucs2_counts():
    assert measure("ж" * 70).encoding is Encoding.UCS2
    assert measure("ж" * 70).segments == 1
    assert measure("ж" * 71).segments == 2
    assert measure("😀" * 35).units == 70 and measure("😀" * 35).segments == 1
    assert measure("😀" * 36).segments == 2


def test_escape_pair_never_split_across_segments():
    text = "a" * 152 + "€" + "a" * 10  # the escape would land on septet 153
    segments = segment_texts(text)
    assert segments[0] == "a" * 152 and segments[1].startswith("€")


def test_surrogate_pair_never_split_across_segments():
    text = "ж" * 66 + "😀" + "ж" * 10
    segments = segment_texts(text)
    assert segments[0] == "ж" * 66 and segments[1].startswith("😀")


def test_typographic_quotes_do_not_force_ucs2():
    text = normalise("“Your order’s here” — thanks…")
    assert text == '"Your order\'s here" - thanks...'
    assert encoding_of(text) is Encoding.GSM7


def test_whitespace_is_normalised():
    assert normalise("  hi \t there \r\n\r\n\r\n\n bye  ") == "hi there\n\nbye"
    assert normalise("a\u200bb\x07c") == "ab c"


def test_truncate_uses_an_ellipsis_that_keeps_the_encoding():
    gsm = fit("word " * 100, 160, LongText.TRUNCATE)
    assert len(gsm) == 1 and gsm[0].endswith("...") and units_of(gsm[0], Encoding.GSM7) <= 160
    ucs = fit("слово " * 100, 160, LongText.TRUNCATE)
    assert ucs[0].endswith("…") and units_of(ucs[0], Encoding.UCS2) <= 70


def test_split_numbers_parts():
    parts = fit("word " * 60, 160, LongText.SPLIT)
    assert [p[:6] for p in parts] == ["(1/2) ", "(2/2) "]


def test_short_text_is_untouched():
    assert fit("Hi Ana", 160, LongText.SPLIT) == ["Hi Ana"]
    assert fit("x" * 1000, None, LongText.SPLIT) == ["x" * 1000]


gsm_chars = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION - {"\r", "\f"}))
any_text = st.one_of(
    st.text(alphabet=gsm_chars, max_size=1500),
    st.text(max_size=600),
)


@settings(max_examples=300)
@given(any_text, st.integers(min_value=40, max_value=1000), st.sampled_from(list(LongText)))
def test_every_part_fits_the_carrier_limit(raw, max_length, mode):
    text = normalise(raw)
    assume(text)
    parts = fit(text, max_length, mode)
    assert parts
    encoding = encoding_of(text)
    for part in parts:
        assert units_of(part, encoding_of(part)) <= part_limit(max_length, encoding)
        # shaping never turns a GSM-7 text into UCS-2
        if encoding is Encoding.GSM7:
            assert encoding_of(part) is Encoding.GSM7
    assert len(parts) <= MAX_PARTS


@settings(max_examples=300)
@given(any_text, st.integers(min_value=40, max_value=1000))
def test_split_keeps_every_word_when_it_fits_in_the_parts(raw, max_length):
    text = normalise(raw)
    assume(text)
    parts = fit(text, max_length, LongText.SPLIT)
    if len(parts) == 1:
        assert parts[0] == text or parts[0].endswith(("...", "…"))
        return
    body = "".join(part.split(") ", 1)[1] for part in parts)
    if not body.endswith(("...", "…")):
        assert body.replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


@given(st.text(max_size=800))
def test_segments_rebuild_the_text(text):
    segments = segment_texts(text)
    assert "".join(segments) == text
    m = measure(text)
    single, per_part = (160, 153) if m.encoding is Encoding.GSM7 else (70, 67)
    for segment in segments:
        limit = single if len(segments) == 1 else per_part
        assert units_of(segment, m.encoding) <= limit


@pytest.mark.parametrize("ch", sorted(GSM7_EXTENSION))
def test_extension_characters_cost_two(ch):
    assert measure(ch).units == 2 and measure(ch).encoding is Encoding.GSM7


@given(
    st.text(
        alphabet=st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION)) | st.characters(),
        max_size=400,
    )
)
def test_counting_agrees_with_the_definition_character_by_character(text):
    # The counts are made by regular expressions for speed; they must mean the rule itself.
    gsm7 = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)
    assert encoding_of(text) is (Encoding.GSM7 if gsm7 else Encoding.UCS2)
    encoding = encoding_of(text)
    assert units_of(text, encoding) == sum(char_units(ch, encoding) for ch in text)
    single = 160 if gsm7 else 70
    assert measure(text).segments == max(1, len(segment_texts(text)))
    assert (measure(text).segments == 1) == (units_of(text, encoding) <= single)


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=300))
def test_the_plain_ascii_shortcut_normalises_as_the_general_path_does(text):
    assert normalise(text) == normalise_any(text)
