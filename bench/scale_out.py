"""Scale-out on PostgreSQL: the outbox drained by 1, 2 and 3 `gateway run` processes sharing one
database, into Postfix's smtp-sink, each count measured in the same run.

Each round: a fresh database with the same backlog, not yet due; N processes started and waited
for until each has written its first heartbeat (so their start-up, a second of imports each on
cores they share, is not counted as sending); then the whole backlog made due at once and timed
until every row is sent (read from the database). Counts are measured in interleaved rounds
(1, 2, 3, 1, 2, 3) and the best rate of each kept, since this machine's noise only ever slows a
round. The figure is each rate as a ratio to the one-process rate: on a 2-core machine a flat
line is expected (the processes share the cores with PostgreSQL and smtp-sink), a drop is not.

Prints human lines, then one JSON object on the last line:
  processes       the counts measured, e.g. [1, 2, 3]
  per_s           drain rate for each count
  ratio_to_one    each rate / the one-process rate
  min_ratio_to_one  the lowest for more than one process (below ~1: processes get in each
                  other's way)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy
from sqlalchemy import func, select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.send_throughput import Sink, fill
from bench.workers import count as sent
from bench.workers import folder_for, start, stop, why_not_up
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from gateway.store.tables import heartbeats, messages

ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def fresh_database() -> tuple[str, str]:
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sqlalchemy.engine.make_url(ADMIN_URL).set(database=name)
    return name, url.render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def alive(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(heartbeats)).scalar_one())


def drain(processes: int, count: int, sink_port: int) -> float:
    name, url = fresh_database()
    folder, runtime = folder_for(url, sink_port, "gw-scale-")
    fill(runtime, count)
    later = utcnow() + dt.timedelta(days=1)
    with runtime.engine.begin() as conn:  # not due until every process is up
        conn.execute(update(messages).values(due_at=later))
    workers = [start(folder) for _ in range(processes)]
    try:
        waited = time.perf_counter()
        while alive(runtime) < processes:
            if time.perf_counter() - waited > 60:
                raise SystemExit(
                    f"{processes} processes did not start within 60 s "
                    f"({why_not_up(folder, workers)})"
                )
            time.sleep(0.05)
        with runtime.engine.begin() as conn:
            conn.execute(update(messages).values(due_at=utcnow()))
        started = time.perf_counter()
        while sent(runtime, "sent") < count:
            if time.perf_counter() - started > 600:
                raise SystemExit(f"{processes} processes did not drain {count} texts in 10 min")
            time.sleep(0.02)
        took = time.perf_counter() - started
    finally:
        stop(workers)
        runtime.engine.dispose()
        drop_database(name)
    return count / took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--max-processes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sink = Sink()
    counts = list(range(1, args.max_processes + 1))
    best = dict.fromkeys(counts, 0.0)
    try:
        for round_ in range(1, args.rounds + 1):
            for n in counts:
                rate = drain(n, args.messages, sink.port)
                best[n] = max(best[n], rate)
                print(f"round {round_}: {n} process(es) {rate:,.0f} texts/s")
    finally:
        sink.stop()
    rates = [best[n] for n in counts]
    ratios = [round(rate / rates[0], 2) for rate in rates]
    print(json.dumps({
        "bench": "scale_out", "messages": args.messages, "processes": counts,
        "per_s": [round(rate) for rate in rates], "ratio_to_one": ratios,
        "min_ratio_to_one": min(ratios[1:] or ratios),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
