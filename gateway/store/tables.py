"""Every table, as the SQLAlchemy Core handle the queries use: one registry, typed.

SQLModel declares the tables (`models.py`) but does not type their `__table__`; these handles
are read off the mapper instead, so no module needs a `type: ignore` to reach a table.
"""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import Table
from sqlmodel import SQLModel

from gateway.store import models


def table_of(model: type[SQLModel]) -> Table:
    found = sqlalchemy.inspect(model).local_table
    if not isinstance(found, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return found


contacts = table_of(models.Contact)
orders = table_of(models.Order)
order_events = table_of(models.OrderEvent)
conversations = table_of(models.Conversation)
conversation_reads = table_of(models.ConversationRead)
messages = table_of(models.Message)
attempts = table_of(models.DeliveryAttempt)
routes = table_of(models.RouteState)
reservations = table_of(models.QuotaReservation)
channel_events = table_of(models.ChannelEvent)
inbound = table_of(models.InboundMessage)
quarantine = table_of(models.QuarantinedMessage)
mailboxes = table_of(models.MailboxState)
job_runs = table_of(models.JobRun)
tokens = table_of(models.ApiToken)
users = table_of(models.User)
api_requests = table_of(models.ApiRequest)
webhook_deliveries = table_of(models.WebhookDelivery)
cursors = table_of(models.Cursor)
overrides = table_of(models.SettingOverride)
audit = table_of(models.AuditEntry)
sessions = table_of(models.WebSession)
login_failures = table_of(models.LoginFailure)
heartbeats = table_of(models.WorkerHeartbeat)
quick_replies = table_of(models.QuickReply)
