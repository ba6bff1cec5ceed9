"""YAML read with a bound on how deep it nests, for the operator's files (rules.yaml,
carriers.yaml).

PyYAML's composer reads a collection inside a collection by calling itself, a few calls a level,
so a file nesting a few hundred levels ("[[[[...", "- - - - ...") exhausts the interpreter's
stack: a RecursionError and a traceback, where a mistake in a file should be refused naming its
line. Real rules and carrier files nest four or five levels; past MAX_DEPTH the composer stops
with a YAML error at the line where it went too deep, which the files' readers already report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.events import Event

MAX_DEPTH = 50


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing collections nested more than MAX_DEPTH deep."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            # The event that would open the next level: its line is where the file went too deep.
            event = cast(Callable[[], Event], self.peek_event)()
            mark = event.start_mark if isinstance(event.start_mark, Mark) else None
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load(text: str) -> Any:
    """What `text` says, as yaml.safe_load reads it, nested no deeper than MAX_DEPTH."""
    return yaml.load(text, Loader=BoundedSafeLoader)


def compose(text: str) -> yaml.Node | None:
    """The node tree of `text`, as yaml.compose reads it, nested no deeper than MAX_DEPTH."""
    return yaml.compose(text, Loader=BoundedSafeLoader)
