import email._parseaddr as _parseaddr
import email.utils
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.address_headers import (
    MAX_NESTING,
    addresses,
    comment_depth,
    first_address,
    group_depth_bound,
    too_deep,
)

# Deep enough that the standard library's parser, one call a level, runs out of stack (even
# under hypothesis, which raises the recursion limit to about 2,000).
THOUSANDS = "(" * 5000


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        ("dispatch@example.com", 0),
        ("Dispatch (office) <dispatch@example.com>", 1),
        ("a (b (c)) <a@example.com>", 2),
        # Counted whether quoted or not: counting more than the parser is the safe side.
        ('"((( quoted" <a@example.com>', 3),
        # A backslash makes the next character plain inside a comment only, as for the parser.
        (r"a \(\(\( <a@example.com>", 1),
        (r"a (\(\() <a@example.com>", 1),
        ("(a) (b (c)) (d)", 2),
        ("((unclosed", 2),
        (")(", 1),
    ],
)
def test_how_deep_a_header_nests_comments(value, depth):
    assert comment_depth(value) == depth


@pytest.mark.parametrize(
    "value",
    [
        f"{THOUSANDS}x <dispatch+abcd@example.com>",
        # Groups in groups ("Team: Drivers: a@b;;"), read one call a level too.
        "g:" * 5000 + "dispatch+abcd@example.com",
    ],
)
def test_a_header_nesting_thousands_deep_names_no_address(value):
    assert too_deep(value)
    assert addresses(value) == []
    assert first_address(value) == ""


def test_headers_as_written_are_read_as_before():
    value = "Ana (driver) <ana@example.com>, bob@example.com"
    assert addresses(value) == [("Ana (driver)", "ana@example.com"), ("", "bob@example.com")]
    assert first_address(value) == "ana@example.com"
    nested = "(" * MAX_NESTING + "x" + ")" * MAX_NESTING + " <a@example.com>"
    assert first_address(nested) == "a@example.com"


# Every character the parser treats apart, so the properties below meet quoting, escaping,
# domain literals, groups and comments in every order.
HEADER_TEXT = st.text(alphabet='()"\\[]<>@a ,:;.\r', max_size=80)


def parser_depth(value: str, method: str) -> int:
    """How deep the standard library's address parser nests calls to one of its own methods
    (`getcomment`, `getaddress`) reading `value`, both ways the gateway reads a header."""
    depth = deepest = 0
    original = getattr(_parseaddr.AddrlistClass, method)

    def counting(self: _parseaddr.AddrlistClass) -> object:
        nonlocal depth, deepest
        depth += 1
        deepest = max(deepest, depth)
        try:
            return original(self)
        finally:
            depth -= 1

    with patch.object(_parseaddr.AddrlistClass, method, counting):
        email.utils.getaddresses([value])
        email.utils.parseaddr(value)
    return deepest


@settings(max_examples=500, deadline=None)
@given(HEADER_TEXT)
def test_comment_depth_never_falls_short_of_how_deep_the_parser_goes(value):
    """Whatever the quoting, escaping and domain literals: the parser never nests more
    comments than comment_depth counts (the guard's whole point)."""
    assert comment_depth(value) >= parser_depth(value, "getcomment")


@settings(max_examples=500, deadline=None)
@given(HEADER_TEXT)
def test_group_depth_bound_never_falls_short_of_how_deep_the_parser_goes(value):
    """The parser reads a group inside a group by calling itself: never more levels than
    group_depth_bound allows (one call reads each address at the top; each further level is
    a group)."""
    assert group_depth_bound(value) >= parser_depth(value, "getaddress") - 1
