"""Inbound throughput and IDLE latency against a real Dovecot on this machine.

2,000 replies (plain, a carrier footer, an MMS with its text in text_0.txt and a picture) wait
in a mailbox, each answering one of 2,000 sent texts. The gateway's inbound worker fetches,
parses, threads (by phone) and stores them. The baseline, in the same run, is the least any
reader must do: imaplib fetching the same bodies in one command.

Then the worker idles on the mailbox and replies are delivered one at a time: the latency is
from APPEND's OK (the message is in Dovecot) to its stored row.

Prints human lines, then one JSON object on the last line:
  messages              replies read
  per_s                 fetched, parsed, threaded and stored per second   (target >= 1000)
  baseline_per_s        imaplib fetching the same bodies
  ratio                 per_s / baseline_per_s
  idle_latency_p50_s    delivery to stored row, with IDLE                  (target < 1 s)
  idle_latency_p95_s
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme
from sqlalchemy import func, select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import load_settings
from gateway.services.inbound import Ingest, Receiver
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import upgrade, utcnow
from gateway.store.tables import inbound, messages
from tests import dovecot as dovecot_fixture


def phone(n: int) -> str:
    return f"206555{n:04d}"


def reply(n: int) -> bytes:
    head = (
        f"From: {phone(n)}@vzwpix.com\r\nTo: dispatch@example.com\r\nSubject: \r\n"
        f"Message-ID: <bench{n}.{time.time_ns()}@vzwpix.com>\r\n"
        "Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
    )
    shape = n % 3
    if shape == 0:
        return (head + f"\r\nLeave it by the back door please ({n})\r\n").encode()
    if shape == 1:
        return (
            head + f"\r\nRunning late, 10 minutes ({n})\r\n\r\n--\r\n====================\r\n"
            "This mobile text message is brought to you by AT&T\r\n"
        ).encode()
    return (
        head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8; name=text_0.txt\r\n"
        "Content-Disposition: attachment; filename=text_0.txt\r\n\r\n"
        f"Gate code 4412 ({n})\r\n--b\r\nContent-Type: image/jpeg; name=IMAGE_0.jpg\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + "/9j/4AAQSkZJRgABAQ==\r\n" * 40 + "--b--\r\n"
    ).encode()


def make_runtime(folder: Path, server: dovecot_fixture.Dovecot, mailbox: str) -> Runtime:
    settings = load_settings(
        None,
        database={"url": f"sqlite:///{folder / 'bench.db'}"},
        smtp={"host": "127.0.0.1", "port": 2525, "security": "none",
              "from_address": "Dispatch <dispatch@example.com>"},
        imap={"enabled": True, "host": "127.0.0.1", "port": server.port, "security": "tls",
              "ca_file": str(server.ca_file), "username": server.user,
              "password": server.password, "folder": mailbox},
        inbound={"fetch_chunk": 200},
    )  # fmt: skip
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    return runtime


def sent_texts(runtime: Runtime, count: int) -> None:
    """One sent text to each phone the replies come from (as if the sender had sent them)."""
    now = utcnow()
    for n in range(count):
        enqueue(runtime, SendRequest(f"+1{phone(n)}", "verizon", text=f"Order {n} is out"), now)
    with runtime.engine.begin() as conn:
        conn.execute(update(messages).values(state="sent", sent_at=now - dt.timedelta(minutes=5)))


def fill(server: dovecot_fixture.Dovecot, mailbox: str, count: int) -> None:
    client = server.client()
    try:
        client.create(mailbox)
        for n in range(count):
            client.append(mailbox, None, None, reply(n))
    finally:
        client.logout()


def baseline(server: dovecot_fixture.Dovecot, mailbox: str) -> float:
    client = server.client()
    try:
        client.select(mailbox, readonly=True)
        started = time.perf_counter()
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        took = time.perf_counter() - started
        count = sum(1 for item in data if isinstance(item, tuple))
    finally:
        client.logout()
    return count / took


async def drain(runtime: Runtime) -> tuple[int, float]:
    source = runtime.mail_source(runtime.engine)
    assert source is not None
    receiver = Receiver(Ingest(runtime, runtime.engine), source)
    started = time.perf_counter()
    stats = await receiver.run(asyncio.Event(), until_idle=True)
    return stats.stored, time.perf_counter() - started


async def idle_latency(
    runtime: Runtime, server: dovecot_fixture.Dovecot, mailbox: str, count: int
) -> list[float]:
    source = runtime.mail_source(runtime.engine)
    assert source is not None
    receiver = Receiver(Ingest(runtime, runtime.engine), source)
    stop = asyncio.Event()
    task = asyncio.create_task(receiver.run(stop))
    client = server.client()
    latencies = []
    try:
        deadline = time.monotonic() + 10
        while not (source._client is not None and source._client.has_pending_idle()):  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit("the worker never reached IDLE")
            await asyncio.sleep(0.01)
        with runtime.engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(inbound)).scalar() or 0
        for n in range(count):
            raw = reply(10_000 + n)
            await asyncio.to_thread(client.append, mailbox, None, None, raw)
            delivered = dt.datetime.now(dt.UTC)
            wanted = before + n + 1
            while True:
                with runtime.engine.connect() as conn:
                    row = conn.execute(
                        select(func.count(), func.max(inbound.c.stored_at)).select_from(inbound)
                    ).one()
                if row[0] >= wanted:
                    stored = row[1] if row[1].tzinfo else row[1].replace(tzinfo=dt.UTC)
                    latencies.append(max(0.0, (stored - delivered).total_seconds()))
                    break
                if (dt.datetime.now(dt.UTC) - delivered).total_seconds() > 10:
                    raise SystemExit(f"reply {n} was not stored within 10 s")
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)  # the worker is back in IDLE before the next
    finally:
        client.logout()
        stop.set()
        await task
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=40)
    args = parser.parse_args()
    reason = dovecot_fixture.available()
    if reason:
        sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="gw-bench-ca-") as ca_dir:
        # Over TLS, as company mailboxes are read: the baseline (imaplib) too.
        authority = trustme.CA()
        ca_file = Path(ca_dir) / "ca.pem"
        authority.cert_pem.write_to_path(str(ca_file))
        server = dovecot_fixture.start(authority.issue_cert("127.0.0.1", "localhost"), ca_file)
        run(server, args)


def run(server: dovecot_fixture.Dovecot, args: argparse.Namespace) -> None:
    try:
        with tempfile.TemporaryDirectory(prefix="gw-bench-inbound-") as tmp:
            folder = Path(tmp)
            runtime = make_runtime(folder, server, "Bench")
            sent_texts(runtime, args.messages)
            fill(server, "Bench", 0)
            asyncio.run(drain(runtime))  # the first look: from here on, what arrives is read
            fill(server, "Bench", args.messages)
            base = statistics.median(baseline(server, "Bench") for _ in range(3))
            stored, took = asyncio.run(drain(runtime))
            if stored != args.messages:
                sys.exit(f"stored {stored} of {args.messages} replies")
            with runtime.engine.connect() as conn:
                threaded = conn.execute(
                    select(func.count()).select_from(inbound).where(inbound.c.match_rule == "phone")
                ).scalar()
            per_s = stored / took
            print(
                f"read {stored} replies in {took:.2f} s: {per_s:,.0f}/s ({threaded} threaded by phone)"
            )
            print(f"baseline (imaplib fetch of the same bodies): {base:,.0f}/s")
            latencies = asyncio.run(idle_latency(runtime, server, "Bench", args.latency_samples))
            p50 = statistics.median(latencies)
            p95 = statistics.quantiles(latencies, n=20)[-1]
            print(f"IDLE: delivery to stored row p50 {p50:.3f} s, p95 {p95:.3f} s")
    finally:
        server.stop()
    print(json.dumps({
        "bench": "inbound",
        "messages": stored,
        "per_s": round(per_s),
        "baseline_per_s": round(base),
        "ratio": round(per_s / base, 3),
        "threaded_by_phone": threaded,
        "idle_latency_p50_s": round(p50, 3),
        "idle_latency_p95_s": round(p95, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
