"""The tables. Times are aware datetimes, stored as UTC (SQLModel's UTCDateTime refuses naive
ones), so comparisons in SQL mean the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, LargeBinary, Text, UniqueConstraint, false, text
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
    # Set when a hard bounce from the carrier's gateway says the address is bad: the carrier
    # (or the number) should be checked. Cleared when a reply confirms a carrier.
    carrier_doubt: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime
    updated_at: dt.datetime


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        # Whether a thread's contact is a driver or a customer: by the orders that name them.
        Index("ix_orders_driver", "driver_id"),
        Index("ix_orders_customer", "customer_id"),
    )

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


class OrderEvent(SQLModel, table=True):
    """A status change of an order, as the order system (or a dispatcher) reported it."""

    __tablename__ = "order_events"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_order_events_idempotency_key"),
        Index("ix_order_events_order", "order_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id")
    status: str = Field(max_length=40)
    eta: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, max_length=500)
    idempotency_key: str | None = Field(default=None, max_length=255)
    occurred_at: dt.datetime
    created_at: dt.datetime


class Conversation(SQLModel, table=True):
    """Everything exchanged with one contact, whatever order or rule a text came from: the
    orders are labels on the texts inside it (messages.order_id)."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_contact", "contact_id", unique=True),
        Index("ix_conversations_last", "last_message_at", "id"),  # the dashboard's list
        Index("ix_conversations_assigned", "assigned_to"),  # a dispatcher's "mine"
    )

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id")
    created_at: dt.datetime
    last_message_at: dt.datetime
    # The dispatcher it is left to; None: to everyone.
    assigned_to: int | None = Field(default=None, foreign_key="users.id")
    # Marked done when the newest reply was this one (0: none yet); a newer reply reopens it.
    # None: open.
    done_through: int | None = Field(default=None, sa_type=BigInteger)


class ConversationRead(SQLModel, table=True):
    """How far a user has read a conversation: replies after this one are unread to them."""

    __tablename__ = "conversation_reads"

    conversation_id: int = Field(foreign_key="conversations.id", primary_key=True)
    user_id: int = Field(foreign_key="users.id", primary_key=True)
    read_inbound_id: int = Field(sa_type=BigInteger)


# The claim query repeats these conditions word for word: a planner uses a partial index only
# when it can see that the query's WHERE implies the index's, and bound parameters hide that.
DUE_CONDITION = "state IN ({})".format(", ".join(f"'{state.value}'" for state in DUE_STATES))
LEASED_CONDITION = f"state = '{State.SENDING.value}'"
FRESH_CONDITION = f"{DUE_CONDITION} AND fresh_until IS NOT NULL"


class Message(SQLModel, table=True):
    """An outbound text: the outbox row, the single source of truth for its delivery."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("message_id", name="uq_messages_message_id"),
        UniqueConstraint("idempotency_key", name="uq_messages_idempotency_key"),
        Index("ix_messages_to_phone", "to_phone", "created_at"),
        Index("ix_messages_to_address", "to_address", "sent_at"),  # a bounce names its address
        Index("ix_messages_order", "order_id", "state"),  # an event supersedes waiting texts
        Index("ix_messages_contact_due", "contact_id", "due_at"),  # per-contact throttle
        Index("ix_messages_conversation", "conversation_id", "id"),  # a thread, its last text
        Index("ix_messages_channel_ref", "channel_ref"),  # a phone's or Twilio's event names it
        # Texts that went stale while waiting are found without reading the whole backlog.
        Index(
            "ix_messages_fresh",
            "fresh_until",
            sqlite_where=text(FRESH_CONDITION),
            postgresql_where=text(FRESH_CONDITION),
        ),
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
    # The channel that carries it (email, smsgate, twilio; gateway_reason says why), and the id
    # it has there: the one an SMS channel's events name it by.
    channel: str = Field(
        default="email", max_length=20, sa_column_kwargs={"server_default": "email"}
    )
    channel_ref: str | None = Field(default=None, max_length=64)
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
    # Texts the rules made (not a person): they keep quiet hours and the per-contact cap.
    automated: bool = False
    rule: str | None = Field(default=None, max_length=100)
    event_id: int | None = Field(default=None, foreign_key="order_events.id")
    fresh_until: dt.datetime | None = None  # not sent after this: its news is stale
    respect_quiet_hours: bool = False  # recorded for every text: held to the allowed hours?
    pinned_route: str | None = Field(default=None, max_length=20)  # re-sent by a chosen route
    # A failure is resolved (off the Failures page, kept in its history) when a dispatcher
    # re-sent it and the new text went, or dismissed it.
    resent_as: int | None = None  # the text it was re-sent as
    dismissed_at: dt.datetime | None = None
    dismissed_by: str | None = Field(default=None, max_length=100)


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
    quota_checked_at: dt.datetime | None = None  # written to lock the row while quota is taken
    failing_since: dt.datetime | None = None  # the first of its consecutive failures


class QuotaReservation(SQLModel, table=True):
    """Sends a worker may make on a route with a daily limit, taken from the database before
    it makes them: counted by every worker until each is recorded as an attempt (`remaining`
    goes down in the same transaction), handed back, or, for a worker that died, expired."""

    __tablename__ = "quota_reservations"
    __table_args__ = (Index("ix_quota_reservations_route", "route", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    route: str = Field(max_length=20)
    worker: str = Field(max_length=100)
    remaining: int
    expires_at: dt.datetime


class ChannelEvent(SQLModel, table=True):
    """An event an SMS channel reported (a text received, sent, delivered or failed), kept once
    by its id: the phone and Twilio call again when an answer is lost."""

    __tablename__ = "channel_events"
    __table_args__ = (
        UniqueConstraint("channel", "event_id", name="uq_channel_events_event"),
        Index("ix_channel_events_message", "message_id", "kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=20)
    event_id: str = Field(max_length=100)
    kind: str = Field(max_length=40)
    message_id: int | None = Field(default=None, foreign_key="messages.id")
    detail: str | None = Field(default=None, sa_type=Text)
    received_at: dt.datetime


class InboundMessage(SQLModel, table=True):
    """A message read from the company mailbox: what it is, what it says, what it belongs to."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        # Fetching a message twice stores it once: by its place in the mailbox, and by its
        # Message-ID (or, without one, a digest of its bytes) across UIDVALIDITY changes.
        UniqueConstraint("mailbox", "uidvalidity", "uid", name="uq_inbound_messages_uid"),
        UniqueConstraint("dedup_key", name="uq_inbound_messages_dedup_key"),
        Index("ix_inbound_messages_kind", "kind", "id"),
        Index("ix_inbound_messages_from_domain", "from_domain", "stored_at"),
        Index("ix_inbound_messages_conversation", "conversation_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=255)
    uidvalidity: int | None = Field(default=None, sa_type=BigInteger)
    uid: int | None = Field(default=None, sa_type=BigInteger)
    dedup_key: str = Field(max_length=300)
    message_id: str | None = Field(default=None, max_length=300)
    kind: str = Field(max_length=20)
    from_address: str | None = Field(default=None, max_length=320)
    from_domain: str | None = Field(default=None, max_length=255)
    phone: str | None = Field(default=None, max_length=20)
    carrier: str | None = Field(default=None, max_length=40)
    subject: str | None = Field(default=None, sa_type=Text)
    text: str = Field(sa_type=Text)
    in_reply_to: str | None = Field(default=None, max_length=300)
    original_message_id: str | None = Field(default=None, max_length=300)
    details: str | None = Field(default=None, sa_type=Text)  # JSON: recipients, attachments
    keyword: str | None = Field(default=None, max_length=10)
    matched_message_id: int | None = Field(default=None, foreign_key="messages.id")
    contact_id: int | None = Field(default=None, foreign_key="contacts.id")
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id")
    order_id: int | None = Field(default=None, foreign_key="orders.id")
    match_rule: str = Field(max_length=20)
    confidence: float = 0.0
    size: int
    raw: bytes = Field(sa_type=LargeBinary)
    stored_at: dt.datetime
    # Read by `gateway inbox import` (older mail): it changed what it says, sent nothing and
    # called no webhook.
    imported: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class QuarantinedMessage(SQLModel, table=True):
    """A message that could not be read or was too large: kept with the error, never retried,
    never in the way of the messages after it."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid", name="uq_quarantine_uid"),)

    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=255)
    uidvalidity: int | None = Field(default=None, sa_type=BigInteger)
    uid: int | None = Field(default=None, sa_type=BigInteger)
    error: str = Field(sa_type=Text)
    size: int
    raw: bytes = Field(sa_type=LargeBinary)  # the whole message, or its head when too large
    stored_at: dt.datetime


class MailboxState(SQLModel, table=True):
    """How far each mailbox has been read; written in the same transaction as what was read."""

    __tablename__ = "mailboxes"

    name: str = Field(primary_key=True, max_length=255)
    uidvalidity: int | None = Field(default=None, sa_type=BigInteger)
    last_uid: int = Field(default=0, sa_type=BigInteger)
    updated_at: dt.datetime
    # One process reads a mailbox at a time: it holds this lease and renews it; when it dies,
    # the lease runs out and another process takes the mailbox over from last_uid.
    holder: str | None = Field(default=None, max_length=100)
    held_until: dt.datetime | None = None


class JobRun(SQLModel, table=True):
    """One firing of a scheduled job. The unique (job, slot) is the lock: when several gateway
    processes fire the same job for the same time, the one that writes this row does the work."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job_id", "slot", name="uq_job_runs_job_slot"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=200)
    slot: dt.datetime  # the time the job was due, to the minute
    worker: str = Field(max_length=100)
    texts: int = 0
    fired_at: dt.datetime


class ApiToken(SQLModel, table=True):
    """A bearer token for the HTTP API. Only its SHA-256 is kept: the token is shown once."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    revoked: bool = False
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None


class User(SQLModel, table=True):
    """A dashboard user; the password is kept as an argon2 hash."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    role: str = Field(max_length=20)  # dispatcher | admin
    password_hash: str = Field(max_length=200)
    created_at: dt.datetime
    # Replies up to this one are read to a user added after them: they start from their day one.
    unread_after: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    disabled: bool = False  # an admin switched this user off; their sessions end


class ApiRequest(SQLModel, table=True):
    """What an Idempotency-Key was first used for, and what was answered: the same key and body
    gets the same answer; a different body is refused; one still running answers 409."""

    __tablename__ = "api_requests"
    __table_args__ = (
        UniqueConstraint("token_id", "idempotency_key", name="uq_api_requests_token_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    token_id: int = Field(foreign_key="api_tokens.id")
    idempotency_key: str = Field(max_length=255)
    endpoint: str = Field(max_length=200)
    body_hash: str = Field(max_length=64)
    status_code: int | None = None  # None while the request runs
    response: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime
    completed_at: dt.datetime | None = None


class WebhookDelivery(SQLModel, table=True):
    """One event for one configured URL: the delivery log and the retry queue in one."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "delivered_at", "next_at"),)

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=500)
    event: str = Field(max_length=20)  # reply | bounce | state
    payload: str = Field(sa_type=Text)
    attempts: int = 0
    next_at: dt.datetime
    delivered_at: dt.datetime | None = None
    gave_up: bool = False
    last_status: int | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime


class Cursor(SQLModel, table=True):
    """How far a reader of an append-only table has got (webhooks: inbound mail, attempts)."""

    __tablename__ = "cursors"

    name: str = Field(primary_key=True, max_length=50)
    position_id: int = Field(default=0, sa_type=BigInteger)
    updated_at: dt.datetime


class SettingOverride(SQLModel, table=True):
    """A setting changed in the dashboard: it wins over gateway.toml (the environment still wins
    over both) and every process picks it up within seconds."""

    __tablename__ = "setting_overrides"

    key: str = Field(primary_key=True, max_length=100)  # section.key, e.g. smtp.enabled
    value: str = Field(sa_type=Text)  # JSON
    updated_at: dt.datetime
    updated_by: str = Field(max_length=100)


class AuditEntry(SQLModel, table=True):
    """Who changed what in the dashboard, and when. Secrets are recorded as changed, never shown."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime
    actor: str = Field(max_length=100)
    action: str = Field(max_length=50)
    detail: str = Field(sa_type=Text)  # JSON


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie carries a random token; only its digest is kept."""

    __tablename__ = "web_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id")
    csrf: str = Field(max_length=64)
    created_at: dt.datetime
    seen_at: dt.datetime
    expires_at: dt.datetime


class LoginFailure(SQLModel, table=True):
    """A failed sign-in, counted per name and per address to slow down password guessing."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_name", "name", "at"),
        Index("ix_login_failures_address", "address", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    address: str = Field(max_length=64)
    at: dt.datetime


class WorkerHeartbeat(SQLModel, table=True):
    """A `gateway run` process saying it is alive, and how far behind its mailbox view may be:
    what /readyz and /metrics report from any process."""

    __tablename__ = "worker_heartbeats"

    name: str = Field(primary_key=True, max_length=100)  # host:pid:random
    started_at: dt.datetime
    seen_at: dt.datetime
    mailbox_lag_seconds: float | None = None  # None: no mailbox, or not looked yet
    # How its mailbox reader fares (None: it reads none): working or failing, why, since when.
    mailbox_ok: bool | None = None
    mailbox_error: str | None = Field(default=None, sa_type=Text)
    mailbox_since: dt.datetime | None = None


class QuickReply(SQLModel, table=True):
    """A short text an admin keeps for dispatchers to pick in a thread; its variables come
    from the contact (name, first_name, phone) and the thread's latest order."""

    __tablename__ = "quick_replies"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=60, unique=True)
    text: str = Field(max_length=1000)
    created_by: str = Field(max_length=100)
    created_at: dt.datetime
