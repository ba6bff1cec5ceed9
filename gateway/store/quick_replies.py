"""Quick replies: short texts an admin keeps for dispatchers (their checking is the service's)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.store.tables import quick_replies


class QuickReplyError(ValueError):
    """The quick reply cannot be kept; the message says why."""


def all_replies(conn: Connection) -> list[dict[str, Any]]:
    query = select(quick_replies).order_by(quick_replies.c.name)
    return [dict(row._mapping) for row in conn.execute(query)]


def find(conn: Connection, reply_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(quick_replies).where(quick_replies.c.id == reply_id)).first()
    return dict(row._mapping) if row else None


def add(conn: Connection, name: str, text: str, by: str, now: dt.datetime) -> None:
    try:
        with conn.begin_nested():
            conn.execute(
                insert(quick_replies).values(name=name, text=text, created_by=by, created_at=now)
            )
    except IntegrityError:
        raise QuickReplyError(f"a quick reply named {name!r} exists already") from None


def remove(conn: Connection, reply_id: int) -> bool:
    return bool(conn.execute(delete(quick_replies).where(quick_replies.c.id == reply_id)).rowcount)
