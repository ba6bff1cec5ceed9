"""The sender's memory with a large backlog: a `gateway run` process draining 100,000 queued
texts from SQLite into Postfix's smtp-sink, its resident set sampled from /proc every 0.1 s.

The baseline, measured in the same run, is the same process idle on an empty outbox: what the
imports and the runtime cost before any text. The target is an absolute one (the issue's: under
200 MB), since memory, unlike time, does not swing with the machine's load; the ratio shows
what the backlog itself adds.

Prints human lines, then one JSON object on the last line:
  queued        texts in the backlog
  rss_mb        the highest resident set while draining it
  idle_rss_mb   the same process on an empty outbox
  rss_vs_idle   rss_mb / idle_rss_mb
  drained_per_s how fast the backlog went (for context)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.send_throughput import Sink, fill
from bench.workers import count, folder_for, start, stop


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_rss(sink_port: int) -> float:
    folder, runtime = folder_for(None, sink_port, "gw-memory-")
    process = start(folder)
    try:
        time.sleep(4)  # imported, migrated, workers started and polling
        return rss_mb(process.pid)
    finally:
        stop([process])
        runtime.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()
    sink = Sink()
    try:
        idle = idle_rss(sink.port)
        print(f"idle gateway run: {idle:.0f} MB")
        folder, runtime = folder_for(None, sink.port, "gw-memory-")
        for start_at in range(0, args.queued, 20_000):
            fill(runtime, min(20_000, args.queued - start_at))
        print(f"queued {count(runtime, 'queued'):,} texts")
        process = start(folder)
        peak, started, last_count = 0.0, time.perf_counter(), 0.0
        try:
            while True:
                peak = max(peak, rss_mb(process.pid))
                now = time.perf_counter()
                if now - last_count >= 0.5:
                    last_count = now
                    if count(runtime, "sent") >= args.queued:
                        break
                if now - started > 900:
                    raise SystemExit("the backlog was not drained in 15 minutes")
                time.sleep(0.1)
            took = time.perf_counter() - started
        finally:
            stop([process])
            runtime.engine.dispose()
    finally:
        sink.stop()
    print(f"drained {args.queued:,} in {took:.1f} s; highest resident set {peak:.0f} MB")
    print(json.dumps({
        "bench": "memory", "queued": args.queued, "rss_mb": round(peak, 1),
        "idle_rss_mb": round(idle, 1), "rss_vs_idle": round(peak / idle, 2),
        "drained_per_s": round(args.queued / took),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
