"""Raw SQL for the hot paths (every enqueue, every batch the sender claims and records): the
driver's own placeholder and the exact text SQLAlchemy stores a time as, so rows written here
read back through SQLAlchemy as if it had written them (tests/test_store_fastpath.py checks)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection


def select_in(conn: Connection, sql: str, items: Sequence[Any], mark: str) -> Iterator[Any]:
    """The rows of `sql`, whose `{marks}` is an IN list, over `items` in bounded chunks."""
    for statement, chunk in in_lists(sql, items, mark):
        yield from conn.exec_driver_sql(statement, tuple(chunk))


Row = TypeVar("Row")

# The most parameters one statement may carry on SQLite's oldest builds (newer ones allow
# 32,766, PostgreSQL 65,535).
MOST_PARAMETERS = 999


def row_batches(rows: Sequence[Row], width: int) -> Iterator[Sequence[Row]]:
    """`rows` of `width` parameters each, as many to a statement as MOST_PARAMETERS allows.
    Many rows a statement, not one a row (executemany): on SQLite the search index's trigger
    writes each statement's words out as a segment of their own, so a row a statement made the
    index a third of a bulk enqueue."""
    step = max(1, MOST_PARAMETERS // width)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], mark: str
) -> None:
    """Insert `rows` (values in the order of `columns`, times already as `driver_style` wants
    them) into `table`, many rows to a statement. Driver SQL: SQLAlchemy compiles a many-row
    INSERT again for every batch (it caches none), which was most of a bulk enqueue's time and
    nearly all of storing mail."""
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    for batch in row_batches(rows, len(columns)):
        conn.exec_driver_sql(
            head + ", ".join([one] * len(batch)), tuple(value for row in batch for value in row)
        )


def in_lists(sql: str, items: Sequence[Any], mark: str) -> Iterator[tuple[str, Sequence[Any]]]:
    # Bounded IN lists: SQLite and PostgreSQL drivers both cap the parameters of a statement.
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        yield placeholders(sql, mark).format(marks=", ".join([mark] * len(chunk))), chunk


def placeholders(sql: str, mark: str) -> str:
    return sql if mark == "?" else sql.replace("?", mark)


def driver_style(conn: Connection) -> tuple[str, Callable[[dt.datetime], object]]:
    """The driver's placeholder, and how a time must be passed to it to be stored exactly as
    SQLAlchemy's column type stores it."""
    if conn.dialect.name == "sqlite":
        # SQLAlchemy keeps times on SQLite as UTC text, "2026-01-02 03:04:05.000678"; string
        # comparisons in queries rely on every row having that exact shape.
        return "?", sqlite_time
    if conn.dialect.paramstyle in ("format", "pyformat"):
        return "%s", as_utc
    raise NotImplementedError(f"no fast path for the {conn.dialect.name} driver")


def as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.UTC)


def sqlite_time(value: dt.datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
