"""Reading an operator's CSV file: its header, and its rows with the line each ends on."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator


def csv_rows(
    text: str, error: type[ValueError]
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header's column names, and each row as (line, cells trimmed), columns past the
    header dropped. What the csv module cannot read (a cell past its 128 KiB limit) is raised
    as `error` naming the line, never as its own exception."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        names = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise error(f"line 1: {exc}") from None

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        try:
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}
        except csv.Error as exc:
            # Raised before the line it is on is counted.
            raise error(f"line {reader.line_num + 1}: {exc}") from None

    return names, rows()
