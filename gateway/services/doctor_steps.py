"""The steps `gateway doctor` reports: each a check with its outcome, how long it took, and
the fix when it failed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.config import ConfigError
from gateway.store.db import DatabaseError


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str
    hint: str | None = None
    warning: bool = False  # passed, but worth a look (contacts on an ending carrier, say)
    section: str = ""


class StepFailed(Exception):
    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


class Steps:
    """Runs steps in order and stops at the first that fails: later ones would only repeat it."""

    def __init__(self) -> None:
        self.done: list[Step] = []

    async def run(self, name: str, work: Callable[[], Awaitable[str]]) -> bool:
        started = time.perf_counter()
        warning = False
        try:
            detail, ok, hint = await work(), True, None
        except StepWarning as exc:
            detail, ok, hint, warning = exc.detail, True, exc.hint, True
        except StepFailed as exc:
            detail, ok, hint = exc.detail, False, exc.hint
        except (ConfigError, DatabaseError) as exc:  # their words name the fix
            detail, ok, hint = str(exc), False, None
        self.done.append(Step(name, ok, time.perf_counter() - started, detail, hint, warning))
        return ok

    @property
    def ok(self) -> bool:
        """Whether every step so far passed."""
        return all(step.ok for step in self.done)


class StepWarning(StepFailed):
    """Not a failure: something to look at."""
