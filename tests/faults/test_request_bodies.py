"""Request bodies from someone who wants the server to read a lot (issue 20, point 3), against a
real `gateway serve`: a body past `[web] max_body_bytes` is refused with 413 before it is read
(declared, or streamed in chunks: the server stops reading near the limit), the batch endpoint
takes its documented ten times, credentials are checked before any body is parsed (401 first),
and every refusal is the API's `{"error", "message"}`, a deeply nested body included."""

from __future__ import annotations

import json
import socket

import pytest

from gateway.store import access
from gateway.store.db import make_engine, utcnow
from tests.test_dashboard import Served

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path, "max_body_bytes = 100000\n")
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    server.token = access.create_token(engine, "erp", utcnow())
    engine.dispose()
    yield server
    server.stop()


def raw_request(port: int, head: bytes, chunks, budget: int) -> tuple[bytes, int]:
    """Send `head`, then body chunks until the server answers (or `budget` bytes are sent);
    (its answer, how many body bytes went)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(head)
        client.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += client.recv(65536)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                break
            if answer or sent >= budget:
                break
            try:
                client.sendall(chunk)
            except (BlockingIOError, OSError):
                break
            sent += len(chunk)
        client.setblocking(True)
        client.settimeout(20)
        try:
            while b"\r\n\r\n" not in answer and (more := client.recv(65536)):
                answer += more
            answer += client.recv(65536)
        except OSError:
            pass
    return answer, sent


def test_a_declared_body_past_the_limit_is_refused_before_it_is_read(served):
    head = (
        f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {served.token}\r\nContent-Length: 100000000\r\n\r\n"
    ).encode()
    answer, sent = raw_request(served.port, head, [b"{" * 1000] * 10, budget=10_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer and b"max_body_bytes" in answer
    assert sent <= 10_000  # answered without waiting for the 100 MB


def test_a_chunked_body_is_not_read_past_the_limit(served):
    head = (
        f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {served.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent = raw_request(served.port, head, (chunk for _ in range(6400)), budget=100_000_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 10_000_000  # a 100 MB body was cut off near the 100 kB limit, not read whole


def test_credentials_come_before_the_body(served):
    for body in (b"{not json", b"[" * 50000, json.dumps({"to": "x"}).encode()):
        answer = served.client.post("/api/v1/messages", content=body,
                                    headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
    wrong = served.client.post("/api/v1/messages", content=b"{not json", headers={
        "Content-Type": "application/json", "Authorization": "Bearer gw_not-a-token"})  # fmt: skip
    assert wrong.status_code == 401


def test_every_refusal_has_the_apis_shape(served):
    auth = {"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"}
    deep = served.client.post("/api/v1/messages", content=b"[" * 20000 + b"]" * 20000,
                              headers=auth)  # fmt: skip
    assert deep.status_code == 400 and set(deep.json()) == {"error", "message"}
    missing = served.client.get("/api/v1/no-such-thing", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong_method = served.client.delete("/api/v1/messages", headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_the_batch_endpoint_takes_ten_times_the_limit(served):
    auth = {"Authorization": f"Bearer {served.token}"}
    text = "y" * 2000  # 250 texts of 2 kB: 500 kB, past the 100 kB limit, within ten times it
    batch = {"messages": [{"to": f"+1202555{n:04d}", "carrier": "verizon", "text": text}
                          for n in range(250)]}  # fmt: skip
    answer = served.client.post("/api/v1/messages/batch", json=batch, headers=auth, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    one = served.client.post("/api/v1/messages", json=batch["messages"][0] | {"text": "z" * 4000,
                             "variables": {"pad": "p" * 100000}}, headers=auth)  # fmt: skip
    assert one.status_code == 413
