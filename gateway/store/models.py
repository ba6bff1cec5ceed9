"""The tables. Times are aware datetimes, stored as UTC (SQLModel's UTCDateTime refuses naive
ones), so comparisons in SQL mean the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from gateway.domain.delivery import DUE_STATES, State


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"

    id: int | None = Field(default=None, primary_key=True)
    phone: str = Field(max_length=20, unique=True)  # E.164
    name: str | None = Field(default=None, max_length=200)
    carrier: str | None = Field(default=None, max_length=40)
    # Who said which carrier this is: "dispatcher" (typed) or "reply" (learned from a reply).
    carrier_source: str | None = Field(default=None, max_length=20)
    opted_out: bool = False
    created_at: dt.datetime
    updated_at: dt.datetime


class Order(SQLModel, table=True):
    __tablename__ = "orders"

    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(max_length=100, unique=True)
    customer_id: int | None = Field(default=None, foreign_key="contacts.id")
    driver_id: int | None = Field(default=None, foreign_key="contacts.id")
    status: str | None = Field(default=None, max_length=40)
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    timezone: str | None = Field(default=None, max_length=64)
    created_at: dt.datetime
    updated_at: dt.datetime


class Conversation(SQLModel, table=True):
    """The texts exchanged with one contact about one order (or about no order)."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_contact_order", "contact_id", "order_id"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id")
    order_id: int | None = Field(default=None, foreign_key="orders.id")
    created_at: dt.datetime
    last_message_at: dt.datetime


# The claim query repeats these conditions word for word: a planner uses a partial index only
# when it can see that the query's WHERE implies the index's, and bound parameters hide that.
DUE_CONDITION = "state IN ({})".format(", ".join(f"'{state.value}'" for state in DUE_STATES))
LEASED_CONDITION = f"state = '{State.SENDING.value}'"


class Message(SQLModel, table=True):
    """An outbound text: the outbox row, the single source of truth for its delivery."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("message_id", name="uq_messages_message_id"),
        UniqueConstraint("idempotency_key", name="uq_messages_idempotency_key"),
        Index("ix_messages_to_phone", "to_phone", "created_at"),
        # Claiming takes the oldest due rows in index order, without sorting the backlog.
        Index(
            "ix_messages_due",
            "due_at",
            "id",
            sqlite_where=text(DUE_CONDITION),
            postgresql_where=text(DUE_CONDITION),
        ),
        Index(
            "ix_messages_leased",
            "lease_until",
            sqlite_where=text(LEASED_CONDITION),
            postgresql_where=text(LEASED_CONDITION),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id")
    contact_id: int | None = Field(default=None, foreign_key="contacts.id")
    order_id: int | None = Field(default=None, foreign_key="orders.id")
    to_phone: str = Field(max_length=20)
    carrier: str | None = Field(default=None, max_length=40)
    to_address: str | None = Field(default=None, max_length=320)
    gateway: str | None = Field(default=None, max_length=255)  # the domain mailed
    gateway_reason: str | None = Field(default=None, max_length=500)  # why that gateway
    body: str = Field(sa_type=Text)
    template: str | None = Field(default=None, max_length=100)
    encoding: str = Field(max_length=10)
    segments: int
    part: int = 1
    parts: int = 1
    message_id: str = Field(max_length=255)  # the header value, with angle brackets
    idempotency_key: str | None = Field(default=None, max_length=255)
    state: str = Field(max_length=20)
    reason: str | None = Field(default=None, sa_type=Text)
    route: str | None = Field(default=None, max_length=20)  # own | relay
    attempts: int = 0
    last_reply: str | None = Field(default=None, sa_type=Text)
    due_at: dt.datetime
    first_due_at: dt.datetime
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: dt.datetime | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None = None


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index("ix_delivery_attempts_message", "message_id", "number"),
        # Each route's rolling 24-hour count, read by every worker.
        Index("ix_delivery_attempts_route_time", "route", "finished_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id")
    number: int
    route: str = Field(max_length=20)
    route_reason: str | None = Field(default=None, max_length=500)  # why this route
    worker: str | None = Field(default=None, max_length=100)
    outcome: str = Field(max_length=20)  # accepted, temporary, permanent, network, ambiguous, ...
    phase: str | None = Field(default=None, max_length=20)
    smtp_code: int | None = None
    reply: str | None = Field(default=None, sa_type=Text)
    started_at: dt.datetime
    finished_at: dt.datetime


class RouteState(SQLModel, table=True):
    """Each route's circuit breaker, shared by every worker and shown by `gateway routes`."""

    __tablename__ = "routes"

    name: str = Field(primary_key=True, max_length=20)
    breaker: str = Field(max_length=20)
    failures: int = 0
    opened_at: dt.datetime | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    updated_at: dt.datetime
