"""Teamwork in the dashboard (issue 21, part 4): read state per user, a conversation left to
a dispatcher or to everyone, marked done until a new reply, and each change shown to the
other dispatchers' pages through the event stream."""

from __future__ import annotations

import re

import pytest

from gateway.store import access, views
from gateway.store.db import utcnow
from tests.conftest import make_runtime
from tests.test_dashboard import PASSWORD, client_for, csrf_of, reply_in, text_to


@pytest.fixture
def runtime(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    for name in ("dana", "dave"):
        access.add_user(runtime.engine, name, "dispatcher", PASSWORD, utcnow())
    access.add_user(runtime.engine, "ada", "admin", PASSWORD, utcnow())
    return runtime


def thread_of(runtime, message: int) -> int:
    with runtime.engine.connect() as conn:
        return views.message(conn, message)["conversation_id"]


def badge(page: str) -> str | None:
    found = re.search(r'title="unread replies">(\d+)<', page)
    return found.group(1) if found else None


def user_id(runtime, name: str) -> int:
    with runtime.engine.connect() as conn:
        return next(u["id"] for u in views.active_users(conn) if u["name"] == name)


def test_reading_a_thread_clears_it_for_that_user_only(runtime):
    message = text_to(runtime)
    reply_in(runtime, message, "Running late?")
    dana, dave = client_for(runtime, "dana"), client_for(runtime, "dave")
    assert badge(dana.get("/conversations").text) == badge(dave.get("/conversations").text) == "1"
    admin = client_for(runtime, "ada")
    admin.get(f"/conversations/{thread_of(runtime, message)}")
    assert badge(admin.get("/conversations").text) is None
    assert badge(dana.get("/conversations").text) == "1"  # the admin read it, not dana
    assert "Running late?" in dana.get("/conversations?show=unread").text


def test_a_user_added_later_starts_with_nothing_unread(runtime):
    reply_in(runtime, text_to(runtime), "Old news")
    access.add_user(runtime.engine, "newt", "dispatcher", PASSWORD, utcnow())
    assert badge(client_for(runtime, "newt").get("/conversations").text) is None


def test_a_conversation_left_to_a_dispatcher_is_theirs_and_not_unassigned(runtime):
    message = text_to(runtime)
    thread = thread_of(runtime, message)
    dana, dave = client_for(runtime, "dana"), client_for(runtime, "dave")
    with runtime.engine.connect() as conn:
        start = views.positions(conn)
    answer = dana.post(f"/conversations/{thread}/assign",
                       data={"csrf": csrf_of(dana), "to": str(user_id(runtime, "dave"))})  # fmt: skip
    assert answer.status_code == 200 and "dave" in answer.text
    assert "Driver on the way" in dave.get("/conversations?show=mine").text
    assert "Driver on the way" not in dana.get("/conversations?show=mine").text
    assert "Driver on the way" not in dave.get("/conversations?show=unassigned").text
    assert 'title="left to dave"' in dana.get("/conversations").text
    # The others' pages hear of it from the event stream.
    with runtime.engine.connect() as conn:
        events, _ = views.changes_since(conn, *start)
    assert {"type": "conversation", "conversation_id": thread, "action": "assign",
            "by": "dana", "to": "dave"} in events  # fmt: skip
    # Back to everyone.
    dana.post(f"/conversations/{thread}/assign", data={"csrf": csrf_of(dana), "to": ""})
    assert "Driver on the way" in dave.get("/conversations?show=unassigned").text
    bad = dana.post(f"/conversations/{thread}/assign", data={"csrf": csrf_of(dana), "to": "x"})
    assert bad.status_code == 422


def test_done_until_a_new_reply_reopens_it(runtime):
    message = text_to(runtime)
    reply_in(runtime, message, "Thanks")
    thread = thread_of(runtime, message)
    dana = client_for(runtime, "dana")
    done = dana.post(f"/conversations/{thread}/done", data={"csrf": csrf_of(dana)})
    assert done.status_code == 200 and "Reopen" in done.text
    assert "Thanks" not in dana.get("/conversations").text  # the default list: open ones
    assert "Thanks" in dana.get("/conversations?show=done").text
    reply_in(runtime, message, "One more thing")
    assert "One more thing" in dana.get("/conversations").text
    assert "One more thing" not in dana.get("/conversations?show=done").text
    dana.post(f"/conversations/{thread}/done", data={"csrf": csrf_of(dana)})
    dana.post(f"/conversations/{thread}/reopen", data={"csrf": csrf_of(dana)})
    assert "One more thing" in dana.get("/conversations").text


def test_team_changes_need_the_csrf_token(runtime):
    thread = thread_of(runtime, text_to(runtime))
    dana = client_for(runtime, "dana")
    assert dana.post(f"/conversations/{thread}/done", data={}).status_code == 403
    assert dana.post(f"/conversations/{thread}/assign", data={"to": ""}).status_code == 403


def test_the_migration_gives_every_user_the_shared_read_mark(db_url):
    from alembic import command
    from sqlalchemy import column, insert, select, table

    from gateway.store.db import alembic_config, make_engine, upgrade
    from gateway.store.tables import conversation_reads

    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0016")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(table("contacts", column("id"), column("phone"), column("opted_out"),
                                  column("created_at"), column("updated_at"))),
                     [{"id": 1, "phone": "+12025550143", "opted_out": False, "created_at": now,
                       "updated_at": now}])  # fmt: skip
        conn.execute(insert(table("conversations", column("id"), column("contact_id"),
                                  column("created_at"), column("last_message_at"),
                                  column("read_inbound_id"))),
                     [{"id": 7, "contact_id": 1, "created_at": now, "last_message_at": now,
                       "read_inbound_id": 41}])  # fmt: skip
        conn.execute(insert(table("users", column("id"), column("name"), column("role"),
                                  column("password_hash"), column("created_at"),
                                  column("disabled"))),
                     [{"id": n, "name": f"u{n}", "role": "dispatcher", "password_hash": "x",
                       "created_at": now, "disabled": False} for n in (1, 2)])  # fmt: skip
    upgrade(engine)
    with engine.connect() as conn:
        marks = conn.execute(select(conversation_reads).order_by(conversation_reads.c.user_id))
        assert [tuple(row) for row in marks] == [(7, 1, 41), (7, 2, 41)]
    command.downgrade(alembic_config(engine), "0016")
    command.upgrade(alembic_config(engine), "head")


def test_the_tab_titles_count_is_each_users_own(runtime):
    first, second = text_to(runtime), text_to(runtime, "+12025550199", "Second")
    reply_in(runtime, first, "One")
    reply_in(runtime, second, "Two")
    dana, dave = client_for(runtime, "dana"), client_for(runtime, "dave")
    assert dana.get("/conversations/unread").json() == {"count": 2}
    dana.get(f"/conversations/{thread_of(runtime, first)}")
    assert dana.get("/conversations/unread").json() == {"count": 1}
    assert dave.get("/conversations/unread").json() == {"count": 2}
    assert client_for(runtime).get("/conversations/unread").status_code in (303, 401)


def test_a_conversation_with_no_reply_marked_done_is_listed_as_done(runtime):
    thread = thread_of(runtime, text_to(runtime, text="No answer expected"))
    dana = client_for(runtime, "dana")
    dana.post(f"/conversations/{thread}/done", data={"csrf": csrf_of(dana)})
    assert "No answer expected" not in dana.get("/conversations").text
    assert "No answer expected" in dana.get("/conversations?show=done").text
