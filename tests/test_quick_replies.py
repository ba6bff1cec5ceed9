"""Replies that work (issue 21, part 6): quick replies an admin keeps, filled from the contact;
a template or quick reply that needs a value the thread does not have asks for it in the form."""

from __future__ import annotations

import re

import pytest

from gateway.store import access, views
from gateway.store.db import utcnow
from tests.conftest import make_runtime
from tests.test_dashboard import PASSWORD, client_for, csrf_of


@pytest.fixture
def runtime(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, utcnow())
    access.add_user(runtime.engine, "ada", "admin", PASSWORD, utcnow())
    return runtime


def thread(runtime) -> int:
    from gateway.services.outbound import SendRequest, enqueue

    sent = enqueue(runtime, SendRequest("+12025550143", "verizon", text="Hello",
                                        name="Ana Lopez"), utcnow()).ids[0]  # fmt: skip
    with runtime.engine.connect() as conn:
        return views.message(conn, sent)["conversation_id"]


def add(client, name: str, text: str):
    return client.post("/quick-replies", data={"csrf": csrf_of(client, "/settings"),
                                               "name": name, "text": text})  # fmt: skip


def draft_of(page: str) -> str:
    return re.search(r'<textarea id="draft"[^>]*>([^<]*)</textarea>', page).group(1)


def test_an_admin_keeps_quick_replies_and_a_dispatcher_picks_them(runtime):
    conversation = thread(runtime)
    admin, dana = client_for(runtime, "ada"), client_for(runtime, "dana")
    assert add(admin, "on way", "Hi {{ first_name }}, we are on our way!").status_code == 303
    assert "we are on our way!" in admin.get("/settings").text
    page = dana.get(f"/conversations/{conversation}").text
    [option] = re.findall(r'<option value="(\d+)">on way</option>', page)
    filled = dana.get(f"/conversations/{conversation}/quick", params={"reply": option}).text
    assert draft_of(filled) == "Hi Ana, we are on our way!"
    # A dispatcher cannot add one; a broken one is refused with the reason.
    dana_csrf = csrf_of(dana)
    refused = dana.post("/quick-replies", data={"csrf": dana_csrf, "name": "x", "text": "y"})
    assert refused.status_code == 403
    broken = add(admin, "broken", "Hi {{ first_name")
    assert broken.status_code == 200 and "broken" in broken.text and 'role="alert"' in broken.text
    # Nested past what Jinja (or the Python it writes) can read: refused the same way, not a 500.
    for deep in (
        "{{ " + "(" * 100 + "x" + ")" * 100 + " }}",
        "{{ " + "[" * 300 + "]" * 300 + " }}",
    ):
        refused = add(admin, "deep", deep)
        assert refused.status_code == 200 and "nested too deeply" in refused.text
    assert add(admin, "on way", "again").status_code == 200  # the name is taken


def test_a_value_the_thread_does_not_have_is_asked_for_in_the_form(runtime):
    conversation = thread(runtime)
    admin, dana = client_for(runtime, "ada"), client_for(runtime, "dana")
    add(admin, "eta", "Hi {{ first_name }}, we arrive at {{ eta }}.")
    page = dana.get(f"/conversations/{conversation}").text
    [option] = re.findall(r'<option value="(\d+)">eta</option>', page)
    asked = dana.get(f"/conversations/{conversation}/quick", params={"reply": option}).text
    assert 'name="var_eta"' in asked and "This needs eta" in asked
    filled = dana.get(f"/conversations/{conversation}/quick",
                      params={"reply": option, "var_eta": "14:30"}).text  # fmt: skip
    assert draft_of(filled) == "Hi Ana, we arrive at 14:30." and "var_eta" not in filled
    # The same for an order template in a thread with no order: asked, not refused.
    template = dana.get(f"/conversations/{conversation}/template",
                        params={"template": "out_for_delivery"}).text  # fmt: skip
    assert 'name="var_' in template and 'class="error"' not in template
