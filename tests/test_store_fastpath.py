"""The hot paths write with driver SQL (store/fastpath.py), not through SQLAlchemy. Every value
they write must read back through SQLAlchemy as what was meant, and be stored exactly as
SQLAlchemy itself would store it: queries compare times as text on SQLite, so a row in another
shape would sort wrongly without any error."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, Table, select, update

from gateway.domain.delivery import AttemptOutcome, Decision, OutcomeKind, State
from gateway.store.contacts import ensure_conversations, set_carriers, upsert_contacts
from gateway.store.db import make_engine, upgrade
from gateway.store.inbox import store_inbound_rows
from gateway.store.outbox import NewMessage, insert_messages
from gateway.store.routes import take_quota
from gateway.store.sending import AttemptRecord, claim_due, record_attempts
from gateway.store.tables import attempts, contacts, conversations, inbound, messages

# Microseconds and a zone that is not UTC: both must come through.
WRITTEN = dt.datetime(2026, 3, 4, 7, 6, 7, 89_123, tzinfo=dt.timezone(dt.timedelta(hours=2)))
LEASE = dt.timedelta(minutes=5)


def _new_message(contact: int, conversation: int, n: int) -> NewMessage:
    return NewMessage(
        to_phone="+12025550143", carrier="verizon", to_address="2025550143@vtext.com",
        gateway="vtext.com", gateway_reason="the carrier's gateway", body=f"text {n}",
        template=None, encoding="GSM-7", segments=1, part=1, parts=1,
        message_id=f"<fast-{n}@example.com>", idempotency_key=f"key-{n}", state=State.QUEUED,
        reason=None, due_at=WRITTEN - dt.timedelta(minutes=1), contact_id=contact,
        conversation_id=conversation, automated=True, fresh_until=WRITTEN + dt.timedelta(days=1),
        respect_quiet_hours=True,
    )  # fmt: skip


def write_through_the_fast_paths(engine: Engine) -> dict[Table, list[int]]:
    """Rows of each table that only the driver-SQL paths wrote: their ids."""
    with engine.begin() as conn:
        found = upsert_contacts(conn, {"+12025550143": None, "+12025550199": "att"}, "given",
                                WRITTEN)  # fmt: skip
        contact = found["+12025550143"][0]
        set_carriers(conn, {contact: "verizon"}, "dispatcher", WRITTEN)
        conversation = ensure_conversations(conn, [contact], WRITTEN)[contact]
        ids = insert_messages(conn, [_new_message(contact, conversation, n) for n in (1, 2)],
                              WRITTEN)  # fmt: skip
    claimed = claim_due(engine, "w1", WRITTEN, LEASE, 10)
    grant, _ = take_quota(engine, "own", 100, 2, "w1", WRITTEN, WRITTEN + LEASE)
    finished = WRITTEN + dt.timedelta(seconds=3)
    outcome = AttemptOutcome(OutcomeKind.ACCEPTED, "250 ok", 250)
    record_attempts(engine, [
        AttemptRecord(message=c.id, number=1, worker="w1", route="own", route_reason="test",
                      outcome=outcome, decision=Decision(State.SENT, None, "sent"),
                      started_at=WRITTEN, finished_at=finished, reservation=grant)
        for c in claimed
    ])  # fmt: skip
    with engine.begin() as conn:
        store_inbound_rows(conn, [_inbound_row(n, contact, conversation, ids[0]) for n in (1, 2)])
    with engine.connect() as conn:
        attempt_ids = list(conn.execute(select(attempts.c.id)).scalars())
        inbound_ids = list(conn.execute(select(inbound.c.id)).scalars())
    return {
        contacts: [found[phone][0] for phone in found],
        conversations: [conversation],
        messages: ids,
        attempts: attempt_ids,
        inbound: inbound_ids,
    }


def _inbound_row(n: int, contact: int, conversation: int, message: int) -> dict[str, Any]:
    """A stored reply, every column given as the mailbox reader gives it."""
    return {
        "mailbox": "INBOX", "uidvalidity": 7, "uid": n, "dedup_key": f"dedup-{n}",
        "message_id": f"<reply-{n}@vzwpix.com>", "kind": "reply",
        "from_address": "2025550143@vzwpix.com", "from_domain": "vzwpix.com",
        "phone": "+12025550143", "carrier": "verizon", "subject": None, "text": "On my way",
        "in_reply_to": "<fast-1@example.com>", "original_message_id": None,
        "details": '{"attachments": ["text_0.txt"]}', "keyword": None,
        "matched_message_id": message, "contact_id": contact, "conversation_id": conversation,
        "order_id": None, "match_rule": "in_reply_to", "confidence": 1.0, "size": 321,
        "raw": b"From: 2025550143@vzwpix.com\r\n\r\nOn my way\r\n", "stored_at": WRITTEN,
        "imported": n == 2,
    }  # fmt: skip


def _raw(conn: Connection, table: Table, column: str, row: int) -> Any:
    """The value as the database holds it, read past SQLAlchemy's types."""
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    sql = f"SELECT {column} FROM {table.name} WHERE id = {mark}"
    return conn.exec_driver_sql(sql, (row,)).scalar()


def test_what_the_fast_paths_write_reads_back_as_sqlalchemy_writes_it(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    written = write_through_the_fast_paths(engine)
    assert all(written.values()), written
    compared = 0
    for table, ids in written.items():
        for row in ids:
            for column in table.columns:
                if column.primary_key:
                    continue
                with engine.connect() as conn:
                    before = _raw(conn, table, column.name, row)
                    value = conn.execute(select(column).where(table.c.id == row)).scalar_one()
                with engine.begin() as conn:
                    conn.execute(update(table).where(table.c.id == row).values({column: value}))
                with engine.connect() as conn:
                    after = _raw(conn, table, column.name, row)
                assert before == after, (table.name, column.name, before, after)
                compared += 1
    assert compared > 100  # every column of every table the fast paths write


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def test_fast_path_times_read_back_as_the_instants_written(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    written = write_through_the_fast_paths(engine)
    expected = [
        (contacts, "created_at", WRITTEN),
        (contacts, "updated_at", WRITTEN),
        (conversations, "last_message_at", WRITTEN),
        (messages, "created_at", WRITTEN),
        (messages, "fresh_until", WRITTEN + dt.timedelta(days=1)),
        (messages, "sent_at", WRITTEN + dt.timedelta(seconds=3)),
        (attempts, "started_at", WRITTEN),
        (attempts, "finished_at", WRITTEN + dt.timedelta(seconds=3)),
        (inbound, "stored_at", WRITTEN),
    ]
    with engine.connect() as conn:
        for table, column, instant in expected:
            row = written[table][0]
            value = conn.execute(select(table.c[column]).where(table.c.id == row)).scalar_one()
            assert _utc(value) == instant, (table.name, column, value)
