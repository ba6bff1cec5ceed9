"""The store and the enqueue service on a real SQLite file and, where present, PostgreSQL."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, update
from sqlmodel import SQLModel

from gateway.config import load_settings
from gateway.domain.delivery import State
from gateway.services.outbound import EnqueueError, SendRequest, enqueue, enqueue_many
from gateway.services.runtime import Runtime
from gateway.store import search
from gateway.store.db import DatabaseError, make_engine, require_current, upgrade, utcnow
from gateway.store.sending import claim_due, release
from gateway.store.tables import contacts, messages
from gateway.store.views import list_messages

NOW = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=60)


@pytest.fixture
def runtime(db_url) -> Runtime:
    settings = load_settings(None, database={"url": db_url})
    rt = Runtime(settings)
    upgrade(rt.engine)
    return rt


def rows(runtime):
    with runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(messages).order_by(messages.c.id))]


def test_unmigrated_database_is_refused_with_the_command_to_run(db_url):
    engine = make_engine(db_url)
    with pytest.raises(DatabaseError, match="gateway db upgrade"):
        require_current(engine)
    upgrade(engine)
    require_current(engine)


def test_migrations_build_exactly_the_models(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        options = {"compare_type": True, "include_name": search.declared}
        diff = compare_metadata(MigrationContext.configure(conn, opts=options), SQLModel.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_savepoint_holds_sqlites_write_lock_so_its_writes_never_fail_at_once(tmp_path):
    """A SQLite transaction opened by a savepoint (the mailbox reader's store, a contact's
    save) reads, then writes. Were it deferred, another writer could commit between the two,
    and the write would fail at once with "database is locked" (the demo's mailbox reader did,
    its first seconds); holding the write lock from the savepoint on, the other writer waits."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE marks (n INTEGER)")
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None, timeout=0.1)
    with engine.connect() as conn, conn.begin(), conn.begin_nested():
        assert conn.exec_driver_sql("SELECT count(*) FROM marks").scalar() == 0
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("INSERT INTO marks VALUES (1)")  # waits its turn (gives up here)
        conn.exec_driver_sql("INSERT INTO marks VALUES (2)")
    other.execute("INSERT INTO marks VALUES (1)")  # its turn
    assert other.execute("SELECT n FROM marks ORDER BY n").fetchall() == [(1,), (2,)]
    other.close()
    engine.dispose()


def test_enqueue_stores_a_queued_row_with_its_message_id(runtime):
    result = enqueue(runtime, SendRequest("+1 202 555 0143", "verizon", text="Hi Ana"), NOW)
    [row] = rows(runtime)
    assert result.ids == [row["id"]] and result.state is State.QUEUED
    assert row["to_phone"] == "+12025550143" and row["to_address"] == "2025550143@vtext.com"
    assert row["message_id"].startswith("<") and row["message_id"].endswith("@example.com>")
    assert row["state"] == "queued" and row["encoding"] == "GSM-7" and row["segments"] == 1
    assert "reportedly" in result.warning


def test_same_idempotency_key_returns_the_first_message(runtime):
    first = enqueue(
        runtime, SendRequest("+12025550143", "verizon", text="one", idempotency_key="evt-1"), NOW
    )
    again = enqueue(
        runtime, SendRequest("+12025550143", "verizon", text="two", idempotency_key="evt-1"), NOW
    )
    assert again.ids == first.ids and again.existing and again.message_ids == first.message_ids
    assert len(rows(runtime)) == 1


def test_contact_keeps_its_carrier(runtime):
    enqueue(runtime, SendRequest("+12025550143", "verizon", text="one"), NOW)
    second = enqueue(runtime, SendRequest("+12025550143", text="two"), NOW)
    assert second.to_address == "2025550143@vtext.com"


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (SendRequest("+1 900 555 0123", "verizon", text="x"), "premium-rate"),
        (SendRequest("not a number", "verizon", text="x"), "not a phone number"),
        (SendRequest("+12025550143", "nosuchcarrier", text="x"), "unknown carrier"),
        (SendRequest("+12025550143", "verizon", template="nope"), "no such template"),
        (
            SendRequest(
                "+12025550143", "verizon", template="delivered", variables={"order_ref": "A"}
            ),
            "customer_name",
        ),
        (SendRequest("+12025550143", "verizon", text="   "), "empty"),
        (SendRequest("+12025550143\r\nBcc: x@y.z", "verizon", text="x"), "not a phone number"),
        (SendRequest("+12025550143", "verizon\r\nBcc: x@y.z", text="x"), "unknown carrier"),
        (
            SendRequest("+12025550143", "verizon", text="x", order_ref="A-1\r\nBcc: x@y.z"),
            "line break",
        ),
        (
            SendRequest("+12025550143", "verizon", text="x", idempotency_key="k\nBcc: x@y.z"),
            "line break",
        ),
    ],
)
def test_bad_requests_store_nothing(runtime, request_, words):
    with pytest.raises(EnqueueError, match=words):
        enqueue(runtime, request_, NOW)
    assert rows(runtime) == []


def test_line_breaks_in_text_and_variables_stay_in_the_body(runtime):
    enqueue(
        runtime,
        SendRequest(
            "+12025550143",
            "verizon",
            template="delivered",
            variables={"customer_name": "Ana\r\nBcc: x@y.z", "order_ref": "A-1"},
        ),
        NOW,
    )
    [row] = rows(runtime)
    assert "Bcc: x@y.z" in row["body"]  # text for the phone, never a header


@pytest.mark.parametrize(
    ("carrier", "reason"),
    [("att", "carrier_retired"), (None, "carrier_unknown"), ("tmobile", "carrier_retired")],
)
def test_unreachable_contacts_are_stored_suppressed_with_their_reason(runtime, carrier, reason):
    result = enqueue(runtime, SendRequest("+12025550143", carrier, text="hi"), NOW)
    [row] = rows(runtime)
    assert result.state is State.SUPPRESSED and row["state"] == "suppressed"
    assert row["reason"] == reason and row["to_address"] is None
    if carrier == "att":
        assert row["gateway_reason"] == (
            "AT&T closed its email-to-SMS gateway on 2025-06-17; "
            "configure an email-to-SMS provider ([gateways] provider) to reach it"
        )


def test_opted_out_contact_is_suppressed(runtime):
    enqueue(runtime, SendRequest("+12025550143", "verizon", text="one"), NOW)
    with runtime.engine.begin() as conn:
        conn.execute(update(contacts).values(opted_out=True))
    result = enqueue(runtime, SendRequest("+12025550143", "verizon", text="two"), NOW)
    assert result.state is State.SUPPRESSED and rows(runtime)[-1]["reason"] == "opted_out"


def test_long_text_is_split_into_keyed_parts(runtime):
    result = enqueue(
        runtime,
        SendRequest("+13125550199", "uscellular", text="word " * 80, idempotency_key="k"),
        NOW,
    )
    stored = rows(runtime)
    assert len(result.ids) == len(stored) == 3
    assert [r["body"][:6] for r in stored] == ["(1/3) ", "(2/3) ", "(3/3) "]
    assert all(len(r["body"]) <= 150 for r in stored)  # US Cellular's max_length
    assert (
        enqueue(
            runtime,
            SendRequest("+13125550199", "uscellular", text="other", idempotency_key="k"),
            NOW,
        ).ids
        == result.ids
    )


def test_order_is_created_bare_and_linked(runtime):
    enqueue(runtime, SendRequest("+12025550143", "verizon", text="hi", order_ref="A-7"), NOW)
    [listed] = list_messages(runtime.engine)
    assert listed["order_ref"] == "A-7"


# --- a batch ----------------------------------------------------------------------------------------

BATCH = [
    SendRequest("+12025550143", "verizon", text="one", order_ref="B-1"),
    SendRequest("not a number", "verizon", text="x"),
    SendRequest("+12025550143", text="two", order_ref="B-1"),  # the contact's carrier, learnt
    SendRequest("+13125550199", "uscellular", text="word " * 80, idempotency_key="long"),
    SendRequest("+13125550199", "uscellular", text="again", idempotency_key="long"),
    SendRequest("+12025550143", "att", text="closed"),
    SendRequest("+14155550100", "verizon", text="quiet", respect_quiet_hours=True),
    SendRequest("+12025550143", "verizon", template="nope"),
    SendRequest("+14155550100", "verizon", text="bare"),
]


def shape(runtime):
    """What the rows say, with the ids and tokens a second database would number differently."""
    stored = rows(runtime)
    conversations = {}
    for row in stored:
        conversations.setdefault(row["conversation_id"], len(conversations))
    return [
        (r["to_phone"], r["carrier"], r["to_address"], r["body"], r["state"], r["reason"],
         r["part"], r["parts"], r["idempotency_key"], r["due_at"], conversations[r["conversation_id"]],
         r["order_id"] is not None)
        for r in stored
    ]  # fmt: skip


def test_a_batch_stores_what_the_same_requests_one_by_one_store(runtime, tmp_path):
    one_by_one = Runtime(load_settings(None, database={"url": f"sqlite:///{tmp_path / 'ref.db'}"}))
    upgrade(one_by_one.engine)
    expected = []
    for request in BATCH:
        try:
            made = enqueue(one_by_one, request, NOW)
            expected.append((made.state, len(made.ids), made.existing))
        except EnqueueError as exc:
            expected.append(str(exc))
    results = enqueue_many(runtime, BATCH, NOW)
    got = [
        str(r) if isinstance(r, EnqueueError) else (r.state, len(r.ids), r.existing)
        for r in results
    ]
    assert got == expected
    assert shape(runtime) == shape(one_by_one)
    # The repeated key answers with the first request's rows, as a later request would.
    assert results[4].ids == results[3].ids and results[4].existing
    stored = {row["id"] for row in rows(runtime)}
    assert {i for r in results if not isinstance(r, EnqueueError) for i in r.ids} == stored


def test_a_key_seen_before_the_batch_replays_its_rows(runtime):
    first = enqueue(
        runtime, SendRequest("+12025550143", "verizon", text="a", idempotency_key="k"), NOW
    )
    [again, fresh] = enqueue_many(
        runtime,
        [SendRequest("+12025550143", "verizon", text="b", idempotency_key="k"),
         SendRequest("+12025550143", "verizon", text="c")],
        NOW,
    )  # fmt: skip
    assert (again.ids, again.existing) == (first.ids, True)
    assert not fresh.existing and len(rows(runtime)) == 2


def test_a_batch_of_only_bad_requests_stores_nothing(runtime):
    results = enqueue_many(runtime, [BATCH[1], BATCH[7]], NOW)
    assert all(isinstance(r, EnqueueError) for r in results) and rows(runtime) == []


def test_the_per_contact_cap_counts_the_texts_earlier_in_the_batch(db_url):
    settings = load_settings(
        None, database={"url": db_url}, policy={"max_per_contact_hour": 2, "quiet_hours": False}
    )
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    requests = [
        SendRequest("+12025550143", "verizon", text=f"rule text {i}", automated=True, rule="r")
        for i in range(3)
    ]
    results = enqueue_many(runtime, requests, NOW)
    due = [row["due_at"].replace(tzinfo=dt.UTC) for row in rows(runtime)]
    assert [r.state for r in results] == [State.QUEUED] * 3
    assert due[:2] == [NOW, NOW] and due[2] == NOW + dt.timedelta(hours=1)


# --- claiming --------------------------------------------------------------------------------------


def queue(runtime, n):
    for i in range(n):
        enqueue(runtime, SendRequest("+12025550143", "verizon", text=f"text {i}"), NOW)


def test_claims_do_not_overlap_and_leases_expire(runtime):
    queue(runtime, 5)
    first = claim_due(runtime.engine, "w1", NOW, LEASE, 3)
    second = claim_due(runtime.engine, "w2", NOW, LEASE, 10)
    assert len(first) == 3 and len(second) == 2
    assert not {c.id for c in first} & {c.id for c in second}
    assert claim_due(runtime.engine, "w3", NOW, LEASE, 10) == []
    # w1 dies: when its lease runs out, its rows are due again.
    later = NOW + LEASE + dt.timedelta(seconds=1)
    third = claim_due(runtime.engine, "w3", later, LEASE, 10)
    assert {c.id for c in third} == {c.id for c in first} | {c.id for c in second}


def test_release_makes_rows_due_again(runtime):
    queue(runtime, 2)
    claimed = claim_due(runtime.engine, "w1", NOW, LEASE, 10)
    assert release(runtime.engine, "w1", [c.id for c in claimed], NOW) == 2
    assert all(r["state"] == "queued" and r["lease_owner"] is None for r in rows(runtime))
    assert len(claim_due(runtime.engine, "w2", NOW, LEASE, 10)) == 2


def test_rows_not_yet_due_are_not_claimed(runtime):
    queue(runtime, 1)
    assert claim_due(runtime.engine, "w1", NOW - dt.timedelta(seconds=1), LEASE, 10) == []


def test_concurrent_claimers_never_share_a_row(runtime):
    queue(runtime, 200)
    taken: list[list[int]] = []
    lock = threading.Lock()

    def claimer(name):
        while True:
            got = claim_due(runtime.engine, name, NOW, LEASE, 7)
            if not got:
                return
            with lock:
                taken.append([c.id for c in got])

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for batch in taken for i in batch]
    assert len(ids) == len(set(ids)) == 200


def test_concurrent_texts_to_one_new_number_make_one_contact_and_conversation(runtime):
    """Eight writers enqueue to the same new number at once: one contact (the losers of the
    insert find the winner's row) and one conversation, every text stored."""
    from sqlalchemy import func, select

    from gateway.store.tables import contacts, conversations

    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        start.wait()
        try:
            enqueue(runtime, SendRequest("+12025550188", "verizon", text=f"text {n}"), NOW)
        except BaseException as exc:  # a thread cannot raise into the test: kept, asserted
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(contacts)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(conversations)).scalar() == 1
    assert len(rows(runtime)) == 8


def test_utcnow_is_aware():
    assert utcnow().tzinfo is not None


def test_claims_walk_the_partial_indexes_without_sorting_the_backlog(sqlite_url):
    """A backlog must not make each claim sort every due row (it once did: a temp B-tree)."""
    from sqlalchemy.dialects import sqlite

    from gateway.store import sending

    engine = make_engine(sqlite_url)
    upgrade(engine)
    plans = []
    for condition, order in (
        (sending._expired_leases(NOW), messages.c.lease_until),
        (sending._due_rows(NOW), messages.c.due_at),
    ):
        chosen = (
            select(messages.c.id)
            .where(condition)
            .order_by(order, messages.c.id)
            .limit(500)
            .scalar_subquery()
        )
        statement = update(messages).where(messages.c.id.in_(chosen)).values(state="sending")
        sql = str(
            statement.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
        )
        with engine.connect() as conn:
            plans.append(
                " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            )
    assert "ix_messages_leased" in plans[0] and "ix_messages_due" in plans[1]
    assert not any("TEMP B-TREE" in plan for plan in plans), plans


def test_upgrade_from_the_first_schema_keeps_rows(db_url):
    from alembic import command
    from sqlalchemy import column as sa_column
    from sqlalchemy import table as sa_table

    from gateway.store.db import alembic_config

    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0001")
    runtime = Runtime(load_settings(None, database={"url": db_url}))
    # Only the first schema's columns: today's table has more, with defaults it would send.
    first = sa_table(
        "messages",
        *(sa_column(name) for name in (
            "to_phone", "to_address", "body", "encoding", "segments", "part", "parts",
            "message_id", "state", "attempts", "due_at", "first_due_at", "created_at",
            "updated_at",
        )),
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            first.insert().values(
                to_phone="+12025550143",
                to_address="2025550143@vtext.com",
                body="hi",
                encoding="GSM-7",
                segments=1,
                part=1,
                parts=1,
                message_id="<old@example.com>",
                state="queued",
                attempts=0,
                due_at=NOW,
                first_due_at=NOW,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    upgrade(engine)
    require_current(engine)
    assert [c.message_id for c in claim_due(runtime.engine, "w", NOW, LEASE, 10)] == [
        "<old@example.com>"
    ]
    command.downgrade(alembic_config(engine), "0001")
    command.upgrade(alembic_config(engine), "head")


def test_a_foreign_key_error_is_raised_not_retried_forever(runtime):
    from sqlalchemy.exc import IntegrityError

    from gateway.store.contacts import ensure_order

    if runtime.engine.dialect.name == "sqlite":
        with runtime.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(IntegrityError), runtime.engine.begin() as conn:
        ensure_order(conn, "A-404", customer_id=999_999, now=NOW)


def test_sends_recorded_against_a_reservation_count_it_down(runtime):
    """A daily-limit grant is counted down by the attempts that used it, in their own
    transaction (several in one batch), and what it holds counts against the limit."""
    from sqlalchemy import select

    from gateway.domain.delivery import AttemptOutcome, Decision, OutcomeKind
    from gateway.store.routes import take_quota
    from gateway.store.sending import AttemptRecord, claim_due, record_attempts
    from gateway.store.tables import reservations

    queue(runtime, 3)
    claimed = claim_due(runtime.engine, "w1", NOW, LEASE, 10)
    grant, granted = take_quota(runtime.engine, "own", 12, 10, "w1", NOW, NOW + LEASE)
    assert granted == 10
    # Another worker may have only what is left of the limit: 12 - 10 held.
    assert take_quota(runtime.engine, "own", 12, 10, "w2", NOW, NOW + LEASE)[1] == 2
    sent = Decision(State.SENT, None, "sent")
    record_attempts(runtime.engine, [
        AttemptRecord(message=c.id, number=1, worker="w1", route="own", route_reason="test",
                      outcome=AttemptOutcome(OutcomeKind.ACCEPTED, "250 ok", 250),
                      decision=sent, started_at=NOW, finished_at=NOW, reservation=grant)
        for c in claimed
    ])  # fmt: skip
    with runtime.engine.connect() as conn:
        left = conn.execute(
            select(reservations.c.remaining).where(reservations.c.id == grant)
        ).scalar_one()
    assert left == 7
    # The three sends now count as sent, the rest of the grant as held: the limit is full.
    assert take_quota(runtime.engine, "own", 12, 10, "w3", NOW, NOW + LEASE) == (None, 0)


def test_message_tokens_are_never_handed_out_twice_even_across_a_fork(runtime):
    import os

    first = [runtime.new_message_token() for _ in range(600)]  # more than one draw of 256
    assert len(set(first)) == 600 and all(len(token) == 24 for token in first)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next tokens, to the parent
        os.write(write, ",".join(runtime.new_message_token() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = set(os.read(read, 4096).decode().split(","))
    ours = {runtime.new_message_token() for _ in range(300)}
    assert len(theirs) == 5 and not theirs & ours
