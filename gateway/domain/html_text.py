"""The text of an HTML part: for replies sent as HTML only, and for failure reports written so."""

from __future__ import annotations

import contextlib
from html.parser import HTMLParser


class HtmlText(HTMLParser):
    """The text of an HTML page, and apart from it the text of its preformatted blocks (where
    some carriers put the typed text of a reply)."""

    def read(self, page: str) -> None:
        """Feed at most 200,000 characters of `page`. The standard parser raises
        AssertionError on some malformed markup (a marked section such as `<![Type`, found by
        the fuzz run): what was read before it is kept, and the rest is left unread."""
        with contextlib.suppress(AssertionError, ValueError):
            self.feed(page[:200_000])

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.preformatted: list[str] = []
        self._skip = 0
        self._pre = 0
        self.saw_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "pre":
            self._pre += 1
            self.saw_pre = True
        elif tag in ("br", "p", "div", "tr"):
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._pre and data.strip():
            self.preformatted.append(data)


def html_text(page: str) -> str:
    """The text `page` shows, a line break for each line-breaking element."""
    reader = HtmlText()
    reader.read(page)
    return "".join(reader.text)
