"""A part that fails must show: a real `gateway run` whose mailbox cannot be reached keeps its
reader alive (retrying with a capped backoff), says so once with the server's words and once
when it recovers, and the failure is in `/readyz` (503 with a `mailbox` object after the grace
period), `gateway status`, `/metrics` and a banner on every dashboard page. Likewise sending,
when every route fails."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from gateway.domain.health import Health, backoff
from gateway.services.carrier_sim import free_port
from gateway.services.runtime import Runtime
from gateway.store import access
from gateway.store.db import utcnow
from gateway.web.app import create_app
from tests.conftest import gateway_folder, run_gateway
from tests.test_dashboard import sign_in
from tests.test_real_mail import GatewayRun, until

pytestmark = pytest.mark.slow
T0 = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)


def test_health_says_each_change_once():
    health = Health()
    assert health.failing("refused", T0)  # news: it never worked
    assert not health.failing("refused", T0 + dt.timedelta(seconds=5))  # the same again
    assert health.since == T0
    assert health.failing("certificate not trusted", T0 + dt.timedelta(seconds=6))  # another
    assert health.since == T0  # still failing since the first
    assert health.working(T0 + dt.timedelta(seconds=7))  # the recovery is news
    assert not health.working(T0 + dt.timedelta(seconds=8))
    assert health.since == T0 + dt.timedelta(seconds=7)


def test_backoff_doubles_and_is_capped():
    assert [backoff(n, cap=60) for n in (1, 2, 3, 6, 7, 50)] == [1, 2, 4, 32, 60, 60]


class LateProxy:
    """A port where nothing listens until `open()`; then it relays to the real server."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def status(folder) -> dict:
    done = run_gateway("status", "--format", "json", cwd=folder)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def face_of(folder) -> TestClient:
    """The dashboard and API as `gateway serve` runs them on this folder's configuration."""
    from gateway.config import load_settings

    runtime = Runtime(load_settings(folder / "gateway.toml"))
    with runtime.engine.connect() as conn:
        users = {user["name"] for user in access.list_users(conn)}
    if "ops" not in users:
        access.add_user(runtime.engine, "ops", "admin", "correct horse battery", utcnow())
    return TestClient(create_app(runtime), follow_redirects=False)


def test_a_mailbox_that_cannot_be_reached_shows_everywhere_and_recovers(
    tmp_path, smtp_server, dovecot
):
    # Refused at once while the proxy is closed; once open, the TLS sign-in through it may be
    # slow on a loaded machine: a short timeout there is a second failure, not the recovery.
    proxy = LateProxy(dovecot.port)
    folder = gateway_folder(
        tmp_path,
        smtp_server.port,
        extra=f"""
[imap]
enabled = true
host = "127.0.0.1"
port = {proxy.port}
security = "tls"
ca_file = "{dovecot.ca_file}"
username = "{dovecot.user}"
password = "{dovecot.password}"
ready_grace_seconds = 1
timeout_seconds = 20
""",
    )
    run = GatewayRun(folder)
    try:
        failing = until(lambda: (status(folder)["mailbox"] or {}).get("ok") is False, 30,
                        "the mailbox shown failing", run)  # fmt: skip
        mailbox = status(folder)["mailbox"]
        assert "127.0.0.1" in mailbox["error"] and mailbox["since"], mailbox
        assert failing
        face = face_of(folder)
        ready = until(lambda: face.get("/readyz").status_code == 503, 15, "readyz 503", run)
        body = face.get("/readyz").json()
        assert ready and body["mailbox"]["ok"] is False and body["mailbox"]["error"]
        assert "mailbox cannot be read" in body["problem"]
        assert "gateway_mailbox_up 0" in face.get("/metrics").text
        assert sign_in(face, "ops", "correct horse battery").status_code == 303
        page = face.get("/conversations").text
        assert re.search(r'class="alert down"[^>]*>Not working: the mailbox cannot be read', page)
        table = run_gateway("status", cwd=folder)
        assert "mailbox: failing since" in table.stdout and "problem:" in table.stderr
        time.sleep(3)  # several retries: each the same failure, none of them news
        proxy.open()
        until(lambda: (status(folder)["mailbox"] or {}).get("ok") is True, 90,
              "the mailbox shown working again", run)  # fmt: skip
        assert face.get("/readyz").status_code == 200
        assert "gateway_mailbox_up 1" in face.get("/metrics").text
        assert "Not working" not in face.get("/conversations").text
    finally:
        said = run.stop()
    # Each change of state once: the failure (with the server's words) and the recovery.
    assert said.count("trying again, waiting up to") == 1, said
    assert said.count("reading again") == 1, said
    assert "Traceback" not in said


def test_every_route_failing_shows_everywhere(tmp_path):
    dead = free_port()  # nothing listens: every connection is refused
    folder = gateway_folder(
        tmp_path,
        dead,
        extra=f"""
[relay]
enabled = true
host = "127.0.0.1"
port = {free_port()}
security = "none"
from_address = "Relay <relay@example.net>"
[imap]
ready_grace_seconds = 0
""",
    )
    for n in range(4):  # enough failures to open both breakers
        done = run_gateway("send", "--to", f"+1202555014{n}", "--carrier", "verizon", "--text",
                           f"text {n}", cwd=folder)  # fmt: skip
        assert done.returncode == 0, done.stderr
    run_gateway("run", "--until-idle", cwd=folder)
    report = status(folder)
    routes = {route["name"]: route for route in report["routes"]}
    assert routes["own"]["ok"] is False and "refused" in routes["own"]["error"].lower(), routes
    assert routes["relay"]["ok"] is False and report["sending"]["ok"] is False
    assert any("no route can send" in problem for problem in report["problems"])
    face = face_of(folder)
    ready = face.get("/readyz")
    assert ready.status_code == 503 and ready.json()["sending"]["ok"] is False
    assert "gateway_sending_up 0" in face.get("/metrics").text
    assert sign_in(face, "ops", "correct horse battery").status_code == 303
    assert "Not working: no route can send" in face.get("/failures").text
