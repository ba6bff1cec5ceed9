"""From a dispatcher's request to the SMTP server's 250: a text posted to the API of a real
`gateway serve` is sent by a real, idle `gateway run` (the default poll of one second), on SQLite
and on PostgreSQL. Each send waits a random moment first, so the sender is idle when it comes.
The baseline measured in the same run is the API's own answer: the part of the wait that is the
request itself. Last line: one JSON object of the figures."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_out import drop_database, fresh_database
from bench.workers import folder_for, start, stop, why_not_up
from gateway.services.carrier_sim import free_port

SENDS = int(os.environ.get("LATENCY_SENDS", "60"))


class Stamped:
    """An SMTP server that notes when it says 250 to each message."""

    def __init__(self) -> None:
        self.accepted: list[float] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.accepted.append(time.monotonic())
        return "250 OK"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(db_url: str | None, sink: Stamped, port: int) -> tuple[list[float], list[float]]:
    folder, _ = folder_for(db_url, port, "gw-latency-")
    web = free_port()
    config = (folder / "gateway.toml").read_text().replace("idle_poll_seconds = 0.05", "")
    (folder / "gateway.toml").write_text(config + f"\n[web]\nport = {web}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    made = subprocess.run([sys.executable, "-m", "gateway", "tokens", "create", "bench",
                           "--format", "json"], cwd=folder, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    token = json.loads(made.stdout)["token"]
    with open(folder / "serve.log", "wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=folder,
                                 env=env, stdin=subprocess.DEVNULL, stderr=log)  # fmt: skip
    worker = start(folder)
    url = f"http://127.0.0.1:{web}/api/v1/messages"
    body = json.dumps({"to": "+12025550143", "carrier": "verizon", "text": "Driver on the way"})
    latencies: list[float] = []
    answers: list[float] = []
    try:
        _wait_up(f"http://127.0.0.1:{web}/healthz", folder, [serve, worker])
        for n in range(SENDS + 2):  # the first two warm both processes up
            time.sleep(random.uniform(1.2, 2.0))  # idle: past the sender's look after a send
            before = len(sink.accepted)
            request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
            started = time.monotonic()
            urllib.request.urlopen(request, timeout=30).close()
            answered = time.monotonic()
            deadline = started + 30
            while len(sink.accepted) <= before:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no 250 in 30 s: {why_not_up(folder, [worker])}")
                time.sleep(0.002)
            if n >= 2:
                latencies.append(sink.accepted[before] - started)
                answers.append(answered - started)
    finally:
        stop([worker, serve])
    return latencies, answers


def _wait_up(health: str, folder: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(health, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                said = why_not_up(folder, processes)
                raise SystemExit(f"gateway serve did not answer: {said}") from None
            time.sleep(0.1)


def main() -> None:
    sink = Stamped()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    figures: dict[str, object] = {"bench": "send_latency", "sends": SENDS}
    try:
        sqlite, answers = measure(None, sink, port)
        name, url = fresh_database()
        try:
            postgres, pg_answers = measure(url, sink, port)
        finally:
            drop_database(name)
    finally:
        controller.stop()
    for label, values in (("sqlite", sqlite), ("postgres", postgres)):
        figures[f"{label}_p50_ms"] = round(1000 * statistics.median(values))
        figures[f"{label}_p95_ms"] = round(1000 * percentile(values, 0.95))
    figures["api_answer_p50_ms"] = round(1000 * statistics.median(answers + pg_answers))
    figures["sqlite_p50_vs_answer"] = round(
        statistics.median(sqlite) / statistics.median(answers), 2
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
