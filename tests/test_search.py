"""Search (issue 21, part 2): by a contact's name, a number in any format a person types, an
order reference, or words in any text or reply; hits mark what matched and open the thread at
it; the indexes are kept current in the transaction that stores a text or a reply."""

from __future__ import annotations

import pytest

from gateway.services.orders import OrderInput, Orders
from gateway.services.outbound import SendRequest, enqueue, enqueue_many
from gateway.store import access, search, views
from gateway.store.db import utcnow
from tests.conftest import make_runtime
from tests.test_dashboard import PASSWORD, client_for, reply_in

M0, M1 = search.MARK_START, search.MARK_END


@pytest.fixture
def runtime(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    access.add_user(runtime.engine, "dana", "dispatcher", PASSWORD, utcnow())
    return runtime


def send(runtime, phone: str, text: str, **more) -> int:
    return enqueue(runtime, SendRequest(phone, "verizon", text=text, **more), utcnow()).ids[0]


def find(runtime, query: str) -> list[dict]:
    with runtime.engine.connect() as conn:
        return search.search(conn, query)


def test_finds_by_name_number_order_and_words(runtime):
    ana = send(runtime, "+12025550143", "Your parcel leaves the depot at noon", name="Ana Lopez",
               order_ref="A-1007")  # fmt: skip
    send(runtime, "+13125550199", "Driver assigned: Rosa", name="Ben")
    reply_in(runtime, ana, "Please leave it with the neighbour at number 12")
    with runtime.engine.connect() as conn:
        thread = views.message(conn, ana)["conversation_id"]
    # A name, any part of it, any case.
    [hit] = find(runtime, "lopez")
    assert (hit["kind"], hit["conversation_id"]) == ("contact", thread)
    assert hit["snippet"] == f"Ana {M0}Lopez{M1}"
    # A number as a person types it.
    for typed in ("(202) 555-0143", "202.555.0143", "+1 202 555 0143", "5550143"):
        assert [h["conversation_id"] for h in find(runtime, typed)] == [thread], typed
    # An order reference, and its prefix.
    assert [(h["kind"], h["item_id"]) for h in find(runtime, "a-1007")] == [("order", ana)]
    # Words of a text and of a reply, as prefixes, accents and case aside.
    [text] = find(runtime, "depot noon")
    assert (text["kind"], text["item_id"]) == ("text", ana) and f"{M0}depot{M1}" in text["snippet"]
    [reply] = find(runtime, "NEIGHB")
    assert reply["kind"] == "reply" and f"{M0}neighbour{M1}" in reply["snippet"]
    assert find(runtime, "zebra") == []


def test_what_a_person_types_is_never_search_syntax(runtime):
    send(runtime, "+12025550143", 'He said "leave it" AND NOT (here)*')
    # "a_b" is one word to a regular expression's \w but two to the index's tokenizer (a
    # phrase, which an index without positions refuses).
    for typed in ('"', "AND", "NOT (", "*", "col:value", "'; DROP TABLE messages; --", "%_\\",
                  "a_b", "order_12 x", "ab\u0301c"):  # fmt: skip
        find(runtime, typed)  # no error
    assert [h["kind"] for h in find(runtime, '"leave it" AND')] == ["text"]
    send(runtime, "+12025550143", "The key is under the door_mat")
    assert [h["kind"] for h in find(runtime, "door_mat")] == ["text"]


def test_the_index_follows_every_stored_text_in_its_transaction(runtime):
    Orders(runtime).upsert(OrderInput(ref="W-9", customer="+12025550177", carrier="verizon",
                                      customer_name="Gus"), utcnow())  # fmt: skip
    send(runtime, "+12025550177", "Gate code 4411", order_ref="W-9")
    assert [h["kind"] for h in find(runtime, "4411")] == ["text"]


def test_an_order_is_found_in_each_conversation_at_its_newest_text(runtime):
    # The customer's and the driver's threads both hold texts of A-1007; A-1008 is newer.
    first = send(runtime, "+12025550143", "Confirmed", name="Ana", order_ref="A-1007")
    driver = send(runtime, "+12025550188", "Pick up at the depot", name="Sam", order_ref="A-1007")
    later = send(runtime, "+12025550143", "On its way", order_ref="A-1007")
    other = send(runtime, "+13125550199", "Confirmed", name="Ben", order_ref="A-1008")
    send(runtime, "+13125550100", "Confirmed", name="Cy", order_ref="B-1007")
    hits = [(h["kind"], h["item_id"], h["name"], h["snippet"]) for h in find(runtime, "A-100")]
    assert hits == [
        ("order", other, "Ben", f"{M0}A-100{M1}8"),
        ("order", later, "Ana", f"{M0}A-100{M1}7"),
        ("order", driver, "Sam", f"{M0}A-100{M1}7"),
    ], hits
    assert first < driver < later < other


def test_a_batch_written_many_rows_a_statement_is_indexed_whole(runtime):
    # A bulk enqueue writes its rows dozens to a statement: each text still gets its own id
    # and is found by its words, the last statement's as much as the first's.
    words = [f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(120)]
    requests = [SendRequest(f"+1202555{i:04d}", "verizon", text=f"Parcel {w} is out")
                for i, w in enumerate(words)]  # fmt: skip
    stored = enqueue_many(runtime, requests, utcnow())
    for index in (0, 31, 32, 64, 119):
        [hit] = find(runtime, words[index])
        assert (hit["kind"], hit["item_id"]) == ("text", stored[index].ids[0])
        with runtime.engine.connect() as conn:
            assert views.message(conn, hit["item_id"])["to"] == f"+1202555{index:04d}"


def test_the_search_page_marks_the_match_and_opens_the_thread_at_it(runtime):
    ana = send(runtime, "+12025550143", "Your parcel <b>leaves</b> the depot", name="Ana")
    dana = client_for(runtime, "dana")
    page = dana.get("/search", params={"q": "depot"}).text
    assert "<mark>depot</mark>" in page and "<b>" not in page
    with runtime.engine.connect() as conn:
        thread = views.message(conn, ana)["conversation_id"]
    assert f'href="/conversations/{thread}#m-{ana}"' in page
    assert f'id="m-{ana}"' in dana.get(f"/conversations/{thread}").text
    assert "Nothing found" in dana.get("/search", params={"q": "zebra"}).text
