"""Whether a part of the gateway works: the mailbox reader, a sending route. A part that fails
must show, once: a change of state is news (logged once, with the server's words), a retry
that fails the same way is not. Time comes in as an argument."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass
class Health:
    ok: bool | None = None  # None: not tried yet
    error: str | None = None  # why it fails, in the server's words
    since: dt.datetime | None = None  # when it began to work, or to fail

    def failing(self, error: str, now: dt.datetime) -> bool:
        """Record a failure. True when that is news: it worked (or was not tried) until now, or
        it now fails for another reason."""
        news = self.ok is not False or self.error != error
        if self.ok is not False:
            self.since = now
        self.ok, self.error = False, error
        return news

    def working(self, now: dt.datetime) -> bool:
        """Record that it works. True when that is news after a failure (a recovery)."""
        news = self.ok is False
        if self.ok is not True:
            self.since = now
        self.ok, self.error = True, None
        return news


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before try `attempt` (1, 2, ...) after failures: doubling, capped."""
    return float(min(cap, base * 2.0 ** max(0, attempt - 1)))
