"""Reads never wait for writers (issue 20, point 2), through a real `gateway serve` on SQLite:
another process holds the database's write lock, a write request (a new text) waits behind it,
and meanwhile `/healthz`, a dashboard conversation page and `GET /api/v1/messages/{id}` all
answer. The lock is let go only after they have: a read that waited for it (a session or token
bookkeeping write, a thread marked read, a handler blocking the event loop) would hang until the
client gives up, and fail the test."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from gateway.config import load_settings
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import access, views
from gateway.store.db import utcnow
from tests.test_dashboard import PASSWORD, Served

pytestmark = pytest.mark.slow

HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE contacts SET updated_at = updated_at")
print("held", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


def test_reads_answer_while_another_process_holds_the_write_lock(tmp_path):
    server = Served(tmp_path)
    try:
        runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
        token = access.create_token(runtime.engine, "erp", utcnow())
        text = enqueue(runtime, SendRequest("+12025550143", "verizon", text="Driver on the way"),
                       utcnow()).ids[0]  # fmt: skip
        with runtime.engine.connect() as conn:
            conversation = views.message(conn, text)["conversation_id"]
        assert server.sign_in("dana", PASSWORD, {}).status_code == 303
        auth = {"Authorization": f"Bearer {token}"}
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "gw.db")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "held"
            written: list[object] = []
            writer = threading.Thread(target=lambda: written.append(server.client.post(
                "/api/v1/messages", headers=auth, timeout=60,
                json={"to": "+12025550144", "carrier": "verizon", "text": "waits"})))  # fmt: skip
            writer.start()
            # The write is waiting for the lock now (or soon): the reads must not.
            assert server.client.get("/healthz", timeout=5).json() == {"ok": True}
            page = server.client.get(f"/conversations/{conversation}", timeout=5)
            assert page.status_code == 200 and "Driver on the way" in page.text
            message = server.client.get(f"/api/v1/messages/{text}", headers=auth, timeout=5)
            assert message.status_code == 200 and message.json()["text"] == "Driver on the way"
            assert holder.poll() is None and writer.is_alive()  # still held, still waiting
        finally:
            holder.communicate("\n", timeout=30)
        writer.join(60)
        assert written and written[0].status_code == 201  # it went once the lock was free
    finally:
        server.stop()
