"""Row ids in paths: a number the id columns cannot hold (past 2^31 - 1, or below 1) names no
row, so it is answered 404 like any other id that names none, never passed to the driver (which
raises on it: a 500)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

# Every table's id is an INTEGER column: 32 bits on PostgreSQL (SQLite's hold 64, but no
# gateway fills two billion rows of one table).
MAX_ROW_ID = 2**31 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def names_no_row(errors: list[dict[str, object]]) -> bool:
    """The validation failed only because a path id is out of the database's range."""
    return bool(errors) and all(
        isinstance(error.get("loc"), tuple | list)
        and error["loc"][0] == "path"  # type: ignore[index]
        and error.get("type") in ("less_than_equal", "greater_than_equal")
        for error in errors
    )
