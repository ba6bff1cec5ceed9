"""Texts from a CSV file into the outbox, a batch at a time: an operator's bulk send.

Each row is a text as `gateway send` takes it. A row that cannot become a text is reported with
its line and why, and stores nothing; the others are stored. Rows go in batches of BATCH, each in
one transaction, so a crash part-way keeps the batches before it: give each row a `key` and the
same file can be imported again without sending anything twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.domain.delivery import State
from gateway.services.csv_rows import csv_rows
from gateway.services.outbound import EnqueueError, SendRequest, enqueue_many
from gateway.services.runtime import Runtime

COLUMNS = ("to", "carrier", "text", "template", "order_ref", "key")
VARIABLE_PREFIX = "var."  # "var.eta" is the template variable eta
BATCH = 500


class TextsFileError(ValueError):
    """The file as a whole cannot be read (its header); nothing was stored."""


@dataclass
class TextsReport:
    total: int
    queued: int = 0
    repeated: int = 0  # rows whose key an earlier import (or row) already used
    not_sent: list[tuple[int, str]] = field(default_factory=list)  # stored suppressed: why
    problems: list[tuple[int, str]] = field(default_factory=list)  # refused: nothing stored


def import_texts(
    runtime: Runtime,
    text: str,
    now: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> TextsReport:
    """Enqueue every row of the CSV `text`; report each one that was refused or not sent."""
    rows = list(_rows(text))
    report = TextsReport(total=len(rows))
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        results = enqueue_many(runtime, [request for _, request in chunk], now)
        for (line, _), result in zip(chunk, results, strict=True):
            if isinstance(result, EnqueueError):
                report.problems.append((line, str(result)))
            elif result.existing:
                report.repeated += 1
            elif result.state is State.SUPPRESSED:
                report.not_sent.append((line, result.reason or "not sent"))
            else:
                report.queued += 1
        if progress is not None:
            progress(start + len(chunk), len(rows))
    return report


def _rows(text: str) -> Iterator[tuple[int, SendRequest]]:
    names, rows = csv_rows(text, TextsFileError)
    if "to" not in names or not {"text", "template"} & set(names):
        raise TextsFileError(
            "the CSV needs a header line with `to` and `text` or `template` (columns: "
            f"{', '.join(COLUMNS)}, and {VARIABLE_PREFIX}NAME for each template variable)"
        )
    unknown = [n for n in names if n not in COLUMNS and not n.startswith(VARIABLE_PREFIX)]
    if unknown:
        raise TextsFileError(
            f"unknown CSV column {unknown[0]!r} (known: {', '.join(COLUMNS)}, "
            f"{VARIABLE_PREFIX}NAME)"
        )
    for line, cells in rows:
        yield line, _request(cells)


def _request(cells: dict[str, str]) -> SendRequest:
    return SendRequest(
        to=cells.get("to", ""),
        carrier=cells.get("carrier") or None,
        text=cells.get("text") or None,
        template=cells.get("template") or None,
        variables={
            name[len(VARIABLE_PREFIX) :]: value
            for name, value in cells.items()
            if name.startswith(VARIABLE_PREFIX) and value
        },
        order_ref=cells.get("order_ref") or None,
        idempotency_key=cells.get("key") or None,
    )
