"""The dashboard under a year's worth of data: 10,000 conversations and 100,000 texts (with
20,000 replies) in SQLite, served by a real `gateway serve` process.

Measures, with a signed-in HTTP client, the conversation list (the first page, and the
"unanswered" filter) and a thread page, each many times at random; the baseline in the same run
is `/healthz` through the same server (the cost of HTTP, FastAPI and the session check being
absent from it, a ratio shows what the pages themselves cost). Then the lag from a reply stored
(as the inbound worker stores it) to its event on an open `/events` stream.

Prints human lines, then one JSON object on the last line:
  list_p95_ms          GET /conversations                               (target < 100 ms)
  thread_p95_ms        GET /conversations/{id}                          (target < 100 ms)
  unanswered_p95_ms    GET /conversations?show=unanswered
  search_p95_ms        GET /search?q=... (names, numbers as typed, orders, words) (target < 100 ms)
  healthz_p95_ms       the baseline
  list_vs_healthz, thread_vs_healthz   p95 ratios
  sse_lag_p50_s, sse_lag_p95_s         reply stored -> its event read by the client
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx2 as httpx  # what the tests install for TestClient
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import load_settings
from gateway.services.carrier_sim import free_port
from gateway.services.inbound import Ingest
from gateway.services.runtime import Runtime
from gateway.store import access
from gateway.store.db import upgrade, utcnow
from gateway.store.outbox import NewMessage, insert_messages
from gateway.store.tables import contacts, conversations, inbound, messages
from gateway.transport.mailsource import Batch, Fetched

CONVERSATIONS = 10_000
TEXTS_EACH = 10
REPLIES_EACH = 2
REQUESTS = 300
PASSWORD = "correct horse battery"


def seed(runtime: Runtime) -> None:
    now = utcnow()
    start = now - dt.timedelta(days=365)
    engine = runtime.engine
    with engine.begin() as conn:
        conn.execute(insert(contacts), [
            {"phone": f"+1202{n:07d}", "name": f"Customer {n}", "carrier": "verizon",
             "carrier_source": "dispatcher", "opted_out": False, "created_at": start,
             "updated_at": start}
            for n in range(CONVERSATIONS)
        ])  # fmt: skip
        contact_ids = conn.execute(select(contacts.c.id).order_by(contacts.c.id)).scalars().all()
        times = [start + dt.timedelta(minutes=50 * n) for n in range(CONVERSATIONS)]
        conn.execute(insert(conversations), [
            {"contact_id": c, "created_at": t, "last_message_at": t}
            for c, t in zip(contact_ids, times, strict=True)
        ])  # fmt: skip
        conversation_ids = conn.execute(
            select(conversations.c.id).order_by(conversations.c.id)
        ).scalars().all()  # fmt: skip
        rows = []
        for n, (conversation, contact, at) in enumerate(
            zip(conversation_ids, contact_ids, times, strict=True)
        ):
            for k in range(TEXTS_EACH):
                rows.append(NewMessage(
                    to_phone=f"+1202{n:07d}", carrier="verizon",
                    to_address=f"202{n:07d}@vtext.com", gateway="vtext.com", gateway_reason="",
                    body=f"Order {n}: update {k}, your driver is on the way", template=None,
                    encoding="GSM-7", segments=1, part=1, parts=1,
                    message_id=f"<{uuid.uuid4().hex}@example.com>", idempotency_key=None,
                    state=runtime_state(k), reason=None, due_at=at, contact_id=contact,
                    conversation_id=conversation,
                ))  # fmt: skip
        for chunk in range(0, len(rows), 5000):
            insert_messages(conn, rows[chunk : chunk + 5000], start)
        replies = [
            {"mailbox": "bench", "dedup_key": f"seed-{n}-{k}", "kind": "reply",
             "phone": f"+1202{n:07d}", "text": f"Thanks! ({k})", "conversation_id": conversation,
             "contact_id": contact, "match_rule": "phone", "confidence": 0.8,
             "stored_at": at, "size": 300, "raw": b"Subject: Re:\r\n\r\nThanks!\r\n"}
            for n, (conversation, contact, at) in enumerate(
                zip(conversation_ids, contact_ids, times, strict=True))
            for k in range(REPLIES_EACH)
        ]  # fmt: skip
        for chunk in range(0, len(replies), 5000):
            conn.execute(insert(inbound), replies[chunk : chunk + 5000])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def runtime_state(k: int):
    from gateway.domain.delivery import State

    return State.FAILED if k == 3 else State.SENT


def serve(folder: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], cwd=folder, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("gateway serve did not start") from None
            time.sleep(0.2)


def signed_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    form = client.get("/login").text
    token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
    answer = client.post(
        "/login", data={"login_token": token, "name": "ada", "password": PASSWORD, "next": "/"}
    )
    assert answer.status_code == 303, answer.text
    return client


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    spent = []
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return spent


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def sse_lags(runtime: Runtime, base: str, cookies: httpx.Cookies, rounds: int = 20) -> list[float]:
    """Store a reply, time until the stream reports it; `rounds` times."""
    events: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=base, cookies=cookies, timeout=None) as client:
            try:
                with client.stream("GET", "/events") as stream:
                    for line in stream.iter_lines():
                        if line == "event: reply":
                            events.put(time.perf_counter())
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                return  # the server stopped at the end of the run

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(1.0)  # connected and past its first look
    ingest = Ingest(runtime, runtime.engine)
    with runtime.engine.connect() as conn:
        sent = conn.execute(select(messages).order_by(messages.c.id.desc()).limit(1)).one()
    lags = []
    for n in range(rounds):
        raw = (
            f"From: {sent.to_address}\r\nTo: dispatch@example.com\r\nSubject: Re:\r\n"
            f"Message-ID: <lag-{n}-{uuid.uuid4().hex}@vtext.com>\r\n"
            f"In-Reply-To: {sent.message_id}\r\n\r\nOn my way {n}\r\n"
        ).encode()
        batch = Batch("bench", None, (Fetched(None, raw, len(raw)),))
        ingest.store(batch, utcnow())
        stored = time.perf_counter()
        arrived = events.get(timeout=10)
        lags.append(arrived - stored)
        time.sleep(random.uniform(0.1, 0.6))  # not in step with the stream's polling
    stop.set()
    return lags


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-dashboard-"))
    port = free_port()
    url = f"sqlite:///{folder / 'gw.db'}"
    (folder / "gateway.toml").write_text(
        f'[database]\nurl = "{url}"\n[web]\nport = {port}\n[policy]\nquiet_hours = false\n'
    )
    runtime = Runtime(load_settings(folder / "gateway.toml"))
    upgrade(runtime.engine)
    started = time.perf_counter()
    seed(runtime)
    access.add_user(runtime.engine, "ada", "admin", PASSWORD, utcnow())
    total = CONVERSATIONS * TEXTS_EACH
    print(f"seeded {CONVERSATIONS:,} conversations, {total:,} texts, "
          f"{CONVERSATIONS * REPLIES_EACH:,} replies in {time.perf_counter() - started:.1f} s")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    process = serve(folder, port)
    try:
        client = signed_in(base)
        rng = random.Random(7)
        threads = [f"/conversations/{rng.randint(1, CONVERSATIONS)}" for _ in range(REQUESTS)]
        timed(client, ["/healthz", "/conversations", threads[0]] * 5)  # warm up
        healthz = timed(client, ["/healthz"] * REQUESTS)
        listing = timed(client, ["/conversations"] * REQUESTS)
        thread = timed(client, threads)
        unanswered = timed(client, ["/conversations?show=unanswered"] * (REQUESTS // 3))
        # What dispatchers type: a name, a number as written on a note, an order, common and
        # rare words (each a prefix, as the box reads them).
        typed = [
            f"Customer {rng.randint(1, CONVERSATIONS)}",
            "(202) 000-4242",
            "4242",
            "driver way",
            "Thanks",
            f"Order {rng.randint(1, CONVERSATIONS)}",
            "upd",
        ]
        searches = timed(client, [f"/search?q={quote(q)}" for q in typed] * (REQUESTS // 7))
        lags = sse_lags(runtime, base, client.cookies)
    finally:
        process.terminate()
        process.wait(10)
    figures = {
        "bench": "dashboard",
        "conversations": CONVERSATIONS,
        "messages": total,
        "list_p95_ms": round(p95(listing), 1),
        "thread_p95_ms": round(p95(thread), 1),
        "unanswered_p95_ms": round(p95(unanswered), 1),
        "search_p95_ms": round(p95(searches), 1),
        "healthz_p95_ms": round(p95(healthz), 2),
        "list_vs_healthz": round(p95(listing) / p95(healthz), 1),
        "thread_vs_healthz": round(p95(thread) / p95(healthz), 1),
        "sse_lag_p50_s": round(statistics.median(lags), 3),
        "sse_lag_p95_s": round(p95(lags), 3),
    }
    print(f"conversation list p95 {figures['list_p95_ms']} ms, thread p95 "
          f"{figures['thread_p95_ms']} ms, search p95 {figures['search_p95_ms']} ms "
          f"(target < 100 ms); /healthz p95 "
          f"{figures['healthz_p95_ms']} ms; reply to event p50 {figures['sse_lag_p50_s']} s")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
