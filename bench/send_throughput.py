"""Send throughput: the gateway's outbox drained through its pooled SMTP transport, against
Postfix's smtp-source into the same smtp-sink in the same run (the ceiling on this machine).

Prints human lines, then one JSON object on the last line:
  baseline_per_s        smtp-source -d -s CONNECTIONS into smtp-sink
  gateway_per_s         enqueued outbox rows drained by `Sender` (claim, build, send, record)
  ratio                 gateway_per_s / baseline_per_s           (target >= 0.15)
  pooled_vs_per_message pooled drain / one connection per message (target >= 3)
  enqueue_per_s         the enqueue service one text a transaction (`gateway send`, POST /messages)
  enqueue_batch_per_s   its bulk path, 500 texts a transaction (POST /messages/batch)
  enqueue_vs_send       the bulk path over the drain rate, median of per-round pairs (target >= 2)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine

from gateway.config import load_settings
from gateway.domain.delivery import AttemptOutcome, State
from gateway.domain.email_out import message_id_for
from gateway.domain.routing import OWN_SERVER, Choice, History, Route
from gateway.domain.sms import measure
from gateway.services.carrier_sim import free_port
from gateway.services.outbound import SendRequest, enqueue, enqueue_many
from gateway.services.routes import RouteBook
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.db import upgrade, utcnow
from gateway.store.outbox import NewMessage, insert_messages

TEXT = "Hi Ana, your order A-1001 is out for delivery with Sam. ETA 14:30. Reply to this text with questions."


def need(binary: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin"):
        path = Path(folder) / binary
        if path.exists():
            return str(path)
    found = shutil.which(binary)
    if not found:
        sys.exit(f"{binary} not found: run `make bench`, which installs Debian's postfix package")
    return found


class Sink:
    """smtp-sink on a loopback port: accepts and discards, as fast as Postfix can."""

    def __init__(self) -> None:
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [need("smtp-sink"), *user, f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("smtp-sink did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


def baseline(port: int, messages: int, sessions: int) -> float:
    command = [
        need("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(len(TEXT)),
        "-f",
        "dispatch@example.com",
        "-t",
        "2025550143@vtext.com",
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


def runtime_for(
    folder: Path,
    name: str,
    port: int,
    connections: int,
    per_connection: int | None = None,
    routing: bool = False,
) -> Runtime:
    db = folder / f"{name}.db"
    settings = load_settings(
        None,
        database={"url": f"sqlite:///{db}"},
        smtp={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "connections": connections,
            "from_address": "Dispatch <dispatch@example.com>",
            "max_messages_per_connection": per_connection,
            # With routing: a relay standing by and both limits kept (too high to be reached),
            # so every text pays for the bookkeeping.
            **({"daily_limit": 10**9, "per_minute": 10**9} if routing else {}),
        },
        relay={"enabled": routing, "host": "127.0.0.1", "port": port, "security": "none"},
        sender={"batch_size": 500, "idle_poll_seconds": 0.01},
    )
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    # What a running `gateway serve` or `gateway run` read once at start (the carrier book,
    # 0.1 s) is not part of any figure: a fresh runtime each round would count it every time.
    runtime.carriers  # noqa: B018
    runtime.channel_plan  # noqa: B018
    return runtime


def measure_enqueue(runtime: Runtime, count: int) -> float:
    """The enqueue service as `gateway send` and the API use it: one transaction a text."""
    started = time.perf_counter()
    for i in range(count):
        enqueue(runtime, SendRequest(f"+1202555{i % 10000:04d}", "uscellular", text=TEXT), utcnow())
    return count / (time.perf_counter() - started)


def measure_enqueue_batches(runtime: Runtime, count: int, batch: int) -> float:
    """The enqueue service's bulk path, as `POST /messages/batch` uses it: `batch` texts a
    transaction, each to a number new to the database."""
    requests = [
        SendRequest(f"+1312555{i % 10000:04d}", "uscellular", text=TEXT) for i in range(count)
    ]
    runtime.migrated_engine()
    started = time.perf_counter()
    for start in range(0, count, batch):
        enqueue_many(runtime, requests[start : start + batch], utcnow())
    return count / (time.perf_counter() - started)


def fill(runtime: Runtime, count: int) -> None:
    """Many rows fast, as a bulk import would write them."""
    now = utcnow()
    shape = measure(TEXT)
    rows = [
        NewMessage(
            to_phone=f"+1202555{i % 10000:04d}",
            carrier="uscellular",
            to_address=f"202555{i % 10000:04d}@email.uscc.net",
            gateway="email.uscc.net",
            gateway_reason="bench",
            body=TEXT,
            template=None,
            encoding=shape.encoding.value,
            segments=shape.segments,
            part=1,
            parts=1,
            message_id=message_id_for(f"b{i}x{time.monotonic_ns()}", "example.com"),
            idempotency_key=None,
            state=State.QUEUED,
            reason=None,
            due_at=now,
        )
        for i in range(count)
    ]
    with runtime.engine.begin() as conn:
        for start in range(0, count, 5000):
            insert_messages(conn, rows[start : start + 5000], now)


class FixedRoute(RouteBook):
    """Routing off, the baseline for its cost: every text to the own server, with no breaker,
    no limits and no counts (what the sender did before routing existed)."""

    def choose(self, history: History, now: dt.datetime, *_: object, **__: object) -> Choice:
        return OWN_SERVER  # whatever the text's address and channel

    def reserve(self, route: Route, now: dt.datetime) -> None:
        pass

    def observe(self, route: Route, outcome: AttemptOutcome, now: dt.datetime) -> None:
        pass

    def wrote(self, routes: list[Route]) -> None:
        pass

    def load(self, engine: Engine, now: dt.datetime) -> None:
        pass

    def refresh_counts(self, engine: Engine, now: dt.datetime) -> None:
        pass

    def refresh(self, engine: Engine, now: dt.datetime) -> None:
        pass

    def save(self, engine: Engine, now: dt.datetime) -> None:
        pass


def drain(runtime: Runtime, fixed: bool = False) -> tuple[float, int]:
    routes = runtime.route_book()
    if fixed:
        routes = FixedRoute(routes.lanes)
    pool = routes.lanes[Route.OWN].pool
    assert pool is not None
    sender = Sender(runtime.engine, routes, runtime.retry_policy, batch_size=500, idle_poll=0.01)

    async def go() -> tuple[float, int]:
        started = time.perf_counter()
        stats = await sender.run(asyncio.Event(), until_idle=True)
        elapsed = time.perf_counter() - started
        assert stats.by_outcome.get("accepted", 0) == stats.attempted, stats.by_outcome
        return stats.attempted / elapsed, pool.connects

    try:
        import uvloop

        return uvloop.run(go())
    except ImportError:
        return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=20000, help="messages in the pooled drain and the baseline"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="pooled and per-message runs are interleaved this many times",
    )
    parser.add_argument(
        "--per-message-count",
        type=int,
        default=1500,
        help="messages in each connection-per-message run",
    )
    parser.add_argument("--enqueue-count", type=int, default=2000)
    parser.add_argument("--batch-count", type=int, default=10000, help="texts a batch round")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    sink = Sink()
    baselines: list[float] = []
    pooled_rates: list[float] = []
    single_rates: list[float] = []
    pairs: list[float] = []
    routing_pairs: list[float] = []
    batch_rates: list[float] = []
    enqueue_pairs: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            baselines.append(baseline(sink.port, args.messages, args.connections))
            print(f"smtp-source -d -s{args.connections} into smtp-sink: {baselines[-1]:,.0f}/s")

            enqueue_rt = runtime_for(folder, "enqueue", sink.port, args.connections)
            enqueue_rate = measure_enqueue(enqueue_rt, args.enqueue_count)
            print(f"enqueue service (one transaction a text): {enqueue_rate:,.0f}/s")

            # The machine is shared: each pooled run is paired with a per-message run right
            # after it, and the ratio is taken per pair, so load that comes and goes hits both.
            for number in range(1, args.rounds + 1):
                batch_rt = runtime_for(folder, f"batch-{number}", sink.port, args.connections)
                batched = measure_enqueue_batches(batch_rt, args.batch_count, args.batch_size)
                pooled_rt = runtime_for(folder, f"pooled-{number}", sink.port, args.connections)
                fill(pooled_rt, args.messages)
                pooled, connects = drain(pooled_rt)
                batch_rates.append(batched)
                enqueue_pairs.append(batched / pooled)
                print(
                    f"round {number}: enqueue in batches of {args.batch_size} {batched:,.0f}/s, "
                    f"drained {pooled:,.0f}/s: {batched / pooled:.2f}x"
                )
                single_rt = runtime_for(
                    folder, f"single-{number}", sink.port, args.connections, per_connection=1
                )
                fill(single_rt, args.per_message_count)
                per_message, single_connects = drain(single_rt)
                routed_rt = runtime_for(
                    folder, f"routed-{number}", sink.port, args.connections, routing=True
                )
                fill(routed_rt, args.messages)
                routed, _ = drain(routed_rt)
                fixed_rt = runtime_for(folder, f"fixed-{number}", sink.port, args.connections)
                fill(fixed_rt, args.messages)
                fixed, _ = drain(fixed_rt, fixed=True)
                routing_pairs.append(routed / fixed)
                print(
                    f"round {number}: routing and quotas on {routed:,.0f}/s, off {fixed:,.0f}/s: {routed / fixed:.2f}"
                )
                pooled_rates.append(pooled)
                single_rates.append(per_message)
                pairs.append(pooled / per_message)
                print(
                    f"round {number}: pooled {pooled:,.0f}/s ({connects} connections), "
                    f"one connection per message {per_message:,.0f}/s ({single_connects} connections): {pooled / per_message:.2f}x"
                )

            baselines.append(baseline(sink.port, args.messages, args.connections))
            print(f"smtp-source again: {baselines[-1]:,.0f}/s")
    finally:
        sink.stop()
    baseline_rate = statistics.median(baselines)
    gateway_rate = statistics.median(pooled_rates)
    figures = {
        "bench": "send_throughput",
        "messages": args.messages,
        "connections": args.connections,
        "rounds": args.rounds,
        "baseline_per_s": round(baseline_rate),
        "gateway_per_s": round(gateway_rate),
        "ratio": round(gateway_rate / baseline_rate, 3),
        "per_message_per_s": round(statistics.median(single_rates)),
        "pooled_vs_per_message": round(statistics.median(pairs), 2),
        "pooled_vs_per_message_min": round(min(pairs), 2),
        "routing_vs_fixed": round(statistics.median(routing_pairs), 3),
        "enqueue_per_s": round(enqueue_rate),
        "enqueue_one_vs_send": round(enqueue_rate / gateway_rate, 3),
        "enqueue_batch_per_s": round(statistics.median(batch_rates)),
        "enqueue_vs_send": round(statistics.median(enqueue_pairs), 2),
        "enqueue_vs_send_min": round(min(enqueue_pairs), 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
