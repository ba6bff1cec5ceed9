"""Settings changed in the dashboard, and the audit log of every change made there."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from gateway.store.tables import audit, overrides


def read(conn: Connection) -> dict[str, Any]:
    """`{"section.key": value}` as saved."""
    return {
        row.key: json.loads(row.value)
        for row in conn.execute(select(overrides.c.key, overrides.c.value))
    }


def version(engine: Engine) -> tuple[int, Any]:
    """Changes when any override changes: how a worker notices it must reload.
    (0, None) before the table exists, so a command run before `db upgrade` still works."""
    try:
        with engine.connect() as conn:
            found = conn.execute(select(func.count(), func.max(overrides.c.updated_at))).one()
    except (OperationalError, ProgrammingError):
        return 0, None
    return int(found[0]), found[1]


def save(conn: Connection, changes: dict[str, Any], actor: str, now: dt.datetime) -> None:
    """Write each change (None removes the override: the file's value applies again)."""
    for key, value in changes.items():
        conn.execute(delete(overrides).where(overrides.c.key == key))
        if value is not None:
            conn.execute(
                insert(overrides).values(
                    key=key, value=json.dumps(value), updated_at=now, updated_by=actor
                )
            )


def record(
    conn: Connection, actor: str, action: str, detail: dict[str, Any], now: dt.datetime
) -> None:
    conn.execute(
        insert(audit).values(at=now, actor=actor, action=action, detail=json.dumps(detail))
    )


def audit_log(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    return [
        {**row._mapping, "detail": json.loads(row.detail)}
        for row in conn.execute(select(audit).order_by(audit.c.id.desc()).limit(limit))
    ]
