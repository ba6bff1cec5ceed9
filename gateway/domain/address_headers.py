"""The addresses a header names (From, To, Reply-To), read with the standard library's parser.

That parser calls itself once a level for two things that nest: a comment inside a comment
("a (b (c)) <a@b>") and a group inside a group ("Team: Drivers: a@b;;"). A header that opens a
few hundred of either exhausts the interpreter's stack (RecursionError) wherever it is read: in
mail from strangers, and in an address someone typed into the settings. Real headers nest a
level or two; one that could nest deeper than MAX_NESTING names no address here, and is said to
(too_deep)."""

from __future__ import annotations

import email.utils

MAX_NESTING = 20


def comment_depth(value: str) -> int:
    """How deep `value` nests comments ("a (b (c))" is 2), counted so as never to fall short of
    the parser's own depth: a backslash inside a comment makes the next character plain, as it
    does for the parser, but a parenthesis in a quoted string counts too (where the parser's idea
    of what is quoted and this one's could part, counting more is the safe side)."""
    depth = deepest = 0
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and depth:
            escaped = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
    return deepest


def group_depth_bound(value: str) -> int:
    """At most how deep the parser could nest groups reading `value`: each group opens at a
    colon, so no deeper than there are colons (a colon in a quoted name or an IPv6 literal counts
    too, which errs on the safe side)."""
    return value.count(":")


def too_deep(value: str) -> bool:
    """Whether reading `value` could nest comments or groups deeper than any header this reads."""
    return comment_depth(value) > MAX_NESTING or group_depth_bound(value) > MAX_NESTING


def addresses(value: str) -> list[tuple[str, str]]:
    """(display name, address) for each address `value` names; none where it could nest
    deeper than MAX_NESTING."""
    return [] if too_deep(value) else email.utils.getaddresses([value])


def first_address(value: str) -> str:
    """The first address `value` names ("" where it names none, or could nest deeper than
    MAX_NESTING), as the parser gives it."""
    return "" if too_deep(value) else email.utils.parseaddr(value)[1]
