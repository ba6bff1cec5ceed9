"""A wake-up call for live views. On PostgreSQL, a transaction that stores mail or a delivery
attempt sends NOTIFY on one channel; PostgreSQL delivers it to every listening process when the
transaction commits (never for one rolled back). Listeners then read what changed from the
tables by id, as they would anyway: the notification carries nothing but "look now". SQLite has
one machine and no notifications; its readers poll."""

from __future__ import annotations

from sqlalchemy import Connection

CHANNEL = "gateway_events"
# Texts stored: waiting senders look now (gateway/services/bell.py).
OUTBOX_CHANNEL = "gateway_outbox"


def notify(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {CHANNEL}")


def notify_outbox(conn: Connection) -> None:
    """In the transaction that stores texts: on PostgreSQL, the senders listening are woken
    at its commit (SQLite's are rung after it: bell.ring)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {OUTBOX_CHANNEL}")
