"""One thread per contact (issue 21, part 3): texts about any order, texts about none and the
contact's replies are one conversation; orders are labels on the texts."""

from __future__ import annotations

import datetime as dt

from alembic import command
from sqlalchemy import column, insert, select, table, update

from gateway.config import load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import views
from gateway.store.db import alembic_config, make_engine, upgrade
from gateway.store.tables import conversations, inbound, messages

NOW = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)
PHONE = "+12025550143"


def test_texts_about_different_orders_and_none_share_the_contacts_thread(db_url):
    runtime = Runtime(load_settings(None, database={"url": db_url}))
    upgrade(runtime.engine)
    for order in ("A-1", None, "A-2"):
        enqueue(runtime, SendRequest(PHONE, "verizon", text=f"about {order}", order_ref=order),
                NOW)  # fmt: skip
    with runtime.engine.connect() as conn:
        [thread] = conn.execute(select(conversations.c.id)).scalars()
        assert set(conn.execute(select(messages.c.conversation_id)).scalars()) == {thread}
        assert views.contact_conversation(conn, PHONE) == thread
        head = views.conversation(conn, thread)
        # Each text keeps its order as a label; the thread's latest order fills templates.
        assert [m["order_ref"] for m in head["messages"]] == ["A-1", None, "A-2"]
        assert head["order_ref"] == "A-2"
        # The order filter finds the thread by any of its texts' orders.
        for ref in ("A-1", "A-2"):
            assert [r["id"] for r in views.conversation_page(conn, order_ref=ref)] == [thread]
        assert views.conversation_page(conn, order_ref="A-3") == []


def _table(name: str, *names: str):  # type: ignore[no-untyped-def]
    return table(name, *(column(n) for n in names))


def test_the_migration_merges_each_contacts_threads_and_keeps_unread_replies(db_url):
    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0015")
    contacts_0015 = _table("contacts", "id", "phone", "opted_out", "created_at", "updated_at")
    orders_0015 = _table("orders", "id", "ref", "customer_id", "created_at", "updated_at")
    threads_0015 = _table("conversations", "id", "contact_id", "order_id", "created_at",
                          "last_message_at", "read_inbound_id")  # fmt: skip
    texts_0015 = _table("messages", "id", "conversation_id", "contact_id", "order_id", "to_phone",
                        "body", "encoding", "segments", "part", "parts", "message_id", "state",
                        "attempts", "due_at", "first_due_at", "created_at", "updated_at")  # fmt: skip
    replies_0015 = _table("inbound_messages", "id", "mailbox", "dedup_key", "kind", "match_rule",
                          "confidence", "size", "raw", "text", "stored_at",
                          "imported", "conversation_id")  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(contacts_0015), [
            {"id": 1, "phone": PHONE, "opted_out": False, "created_at": NOW, "updated_at": NOW},
            {"id": 2, "phone": "+12025550199", "opted_out": False, "created_at": NOW,
             "updated_at": NOW},
        ])  # fmt: skip
        conn.execute(insert(orders_0015), [
            {"id": 1, "ref": "A-1", "customer_id": 1, "created_at": NOW, "updated_at": NOW},
        ])  # fmt: skip
        # Contact 1: a thread about A-1 (read up to reply 1), one about no order (reply 3
        # unread, read up to 2), a later one about A-1 again; contact 2: one thread.
        conn.execute(insert(threads_0015), [
            {"id": 10, "contact_id": 1, "order_id": 1, "created_at": NOW,
             "last_message_at": NOW, "read_inbound_id": 1},
            {"id": 11, "contact_id": 1, "order_id": None, "created_at": NOW,
             "last_message_at": NOW + dt.timedelta(hours=2), "read_inbound_id": 2},
            {"id": 12, "contact_id": 1, "order_id": 1, "created_at": NOW,
             "last_message_at": NOW + dt.timedelta(hours=1), "read_inbound_id": 0},
            {"id": 20, "contact_id": 2, "order_id": None, "created_at": NOW,
             "last_message_at": NOW, "read_inbound_id": 0},
        ])  # fmt: skip
        conn.execute(insert(texts_0015), [
            {"id": n, "conversation_id": thread, "contact_id": contact, "order_id": order,
             "to_phone": PHONE, "body": f"text {n}", "encoding": "GSM-7", "segments": 1,
             "part": 1, "parts": 1, "message_id": f"<{n}@example.com>", "state": "sent",
             "attempts": 1, "due_at": NOW, "first_due_at": NOW, "created_at": NOW,
             "updated_at": NOW}
            for n, thread, contact, order in ((1, 10, 1, 1), (2, 11, 1, None), (3, 12, 1, 1),
                                              (4, 20, 2, None))
        ])  # fmt: skip
        conn.execute(insert(replies_0015), [
            {"id": n, "mailbox": "INBOX", "dedup_key": f"k{n}", "kind": "reply",
             "match_rule": "token", "confidence": 1.0, "size": 1, "raw": b"x", "text": "ok",
             "stored_at": NOW,
             "imported": False, "conversation_id": thread}
            for n, thread in ((1, 10), (2, 11), (3, 11))
        ])  # fmt: skip
    command.upgrade(alembic_config(engine), "0016")
    threads_0016 = _table("conversations", "id", "contact_id", "last_message_at",
                          "read_inbound_id")  # fmt: skip
    with engine.connect() as conn:
        threads = {row.id: row for row in conn.execute(select(threads_0016))}
        assert sorted(threads) == [10, 20]
        assert threads[10].contact_id == 1
        last = threads[10].last_message_at
        last = dt.datetime.fromisoformat(last) if isinstance(last, str) else last
        assert last.replace(tzinfo=dt.UTC) == NOW + dt.timedelta(hours=2)
        # Reply 3 was unread: it still is (the lowest mark of the threads with an unread reply).
        assert threads[10].read_inbound_id == 2
        moved = dict(conn.execute(select(messages.c.id, messages.c.conversation_id)).all())
        assert moved == {1: 10, 2: 10, 3: 10, 4: 20}
        assert set(conn.execute(select(inbound.c.conversation_id)).scalars()) == {10}
        assert dict(conn.execute(select(messages.c.id, messages.c.order_id)).all()) == {
            1: 1, 2: None, 3: 1, 4: None,
        }  # fmt: skip
    command.downgrade(alembic_config(engine), "0015")
    command.upgrade(alembic_config(engine), "head")


def test_a_name_given_with_a_text_is_the_contacts_name_wherever_the_number_is(db_url):
    import pytest

    from gateway.services.outbound import EnqueueError

    runtime = Runtime(load_settings(None, database={"url": db_url}))
    upgrade(runtime.engine)
    [sent] = enqueue(runtime, SendRequest(PHONE, "verizon", text="hi", name=" Ana "), NOW).ids
    with pytest.raises(EnqueueError, match="name"):
        enqueue(runtime, SendRequest(PHONE, "verizon", text="hi", name="Ana\r\nBcc: x"), NOW)
    with runtime.engine.connect() as conn:
        [row] = views.conversation_page(conn)
        assert row["name"] == "Ana"
        assert views.message(conn, sent)["name"] == "Ana"


def test_a_split_texts_parts_stay_together_and_in_order_in_the_thread(db_url):
    # Pooled connections can hand part 2 over before part 1; a reply stored between the two
    # moments must not land between the parts, nor part 2 show before part 1.
    runtime = Runtime(load_settings(None, database={"url": db_url}))
    upgrade(runtime.engine)
    long_text = " ".join(["Your order is on its way and will arrive this afternoon."] * 4)
    first, second = enqueue(runtime, SendRequest(PHONE, "verizon", text=long_text), NOW).ids
    after = enqueue(runtime, SendRequest(PHONE, "verizon", text="Driver is outside"), NOW).ids[0]
    with runtime.engine.begin() as conn:
        [thread] = conn.execute(select(conversations.c.id)).scalars()
        for row, seconds in ((first, 3), (second, 1), (after, 5)):
            conn.execute(
                update(messages)
                .where(messages.c.id == row)
                .values(state="sent", sent_at=NOW + dt.timedelta(seconds=seconds))
            )
        conn.execute(
            insert(inbound),
            [{"mailbox": "INBOX", "dedup_key": "r1", "kind": "reply", "text": "thanks",
              "match_rule": "phone", "size": 6, "raw": b"thanks", "conversation_id": thread,
              "stored_at": NOW + dt.timedelta(seconds=2)}],
        )  # fmt: skip
    with runtime.engine.connect() as conn:
        shown = views.conversation(conn, thread)["messages"]
    assert [(m["direction"], m.get("part")) for m in shown] == [
        ("out", 1), ("out", 2), ("in", None), ("out", 1),
    ]  # fmt: skip
