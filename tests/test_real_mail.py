"""The gateway against a company's mail servers, set up as the README tells a user: a private
Postfix (submission with STARTTLS required, AUTH checked by Dovecot) and Dovecot (TLS required),
certificates from a test CA given as `ca_file`, a virtual domain standing in for a carrier's
email-to-SMS gateway. Real `gateway` processes: `doctor`, `send`, `run`.

What a company sees on its first day: doctor all ✓; a text reaches the phone; the phone's reply
comes back over IMAP (TLS, IDLE) and is threaded; a number the gateway does not serve comes back
as Postfix's own report and the text is bounced; STOP opts out; the mailbox server restarts under
`gateway run` and the next reply still arrives; the Sent copy lands."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import dovecot as dovecot_server
from tests import postfix as postfix_server
from tests.conftest import _dovecot_or_skip, run_gateway
from tests.postfix import GATEWAY_DOMAIN, PHONE, UNKNOWN

pytestmark = pytest.mark.slow

# A carrier table of one: the stand-in gateway, open with no closing date, so the test does
# not depend on the day it runs (the shipped table's carriers close on real dates).
CARRIERS = f"""\
carriers:
  - id: standin
    name: Stand-in carrier
    country: US
    sms: {GATEWAY_DOMAIN}
    status: active
    source: "the tests' own Postfix"
providers: []
"""


@contextlib.contextmanager
def company_servers(cert, ca_file, introspection_url=None, idle_timeout=None):
    """A private Dovecot (with an `oauth2` passdb asking `introspection_url`, when given) and a
    Postfix delivering to it."""
    _dovecot_or_skip()
    reason = postfix_server.available()
    if reason is not None:
        if os.environ.get("GATEWAY_TEST_REQUIRE_DOVECOT") == "1":
            pytest.fail(reason + " (make test installs it, so these tests must run)")
        pytest.skip(reason)
    dovecot = dovecot_server.start(cert, ca_file, introspection_url)
    try:
        postfix = postfix_server.start(cert, ca_file, dovecot, idle_timeout)
        try:
            yield postfix
        finally:
            postfix.stop()
    finally:
        dovecot.stop()


@pytest.fixture(scope="module")
def mail(server_cert, ca_file) -> Iterator[postfix_server.Postfix]:
    """Postfix and Dovecot of this module's own (a test restarts Dovecot)."""
    with company_servers(server_cert, ca_file) as postfix:
        yield postfix


def company(folder: Path, mail: postfix_server.Postfix, extra: str = "",
            sign_in: str | None = None, imap_extra: str = "") -> Path:  # fmt: skip
    """A working folder as the README's "From the demo to your own mailbox" leaves it:
    gateway.toml for the own server and the mailbox, passwords in files (or `sign_in` lines
    for both, such as OAuth2's), `db upgrade` run. `extra` adds sections."""
    dovecot = mail.dovecot
    (folder / "smtp-password").write_text(dovecot.password)
    (folder / "imap-password").write_text(dovecot.password)
    (folder / "carriers.yaml").write_text(CARRIERS)
    smtp_sign_in = sign_in or f'password_file = "{folder / "smtp-password"}"'
    imap_sign_in = sign_in or f'password_file = "{folder / "imap-password"}"'
    (folder / "gateway.toml").write_text(f"""\
[database]
url = "sqlite:///{folder / "gateway.db"}"

[smtp]
host = "127.0.0.1"
port = {mail.submission_port}
security = "starttls"
username = "{dovecot.user}"
{smtp_sign_in}
from_address = "Dispatch <{dovecot.user}>"
ca_file = "{mail.ca_file}"

[imap]
enabled = true
host = "127.0.0.1"
port = {dovecot.port}
security = "tls"
username = "{dovecot.user}"
{imap_sign_in}
ca_file = "{mail.ca_file}"
sent_folder = "Sent"
save_to_sent = true
{imap_extra}
[carriers]
file = "carriers.yaml"

[policy]
quiet_hours = false

[sender]
idle_poll_seconds = 0.2
{extra}""")
    done = run_gateway("db", "upgrade", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


class GatewayRun:
    """`gateway run` in the background, as the systemd unit runs it."""

    def __init__(self, folder: Path, extra_env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.log = folder / "run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"], cwd=folder, env=env,
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.output()


@pytest.fixture
def running(tmp_path) -> Iterator[Callable[[Path], GatewayRun]]:
    started: list[GatewayRun] = []

    def start(folder: Path) -> GatewayRun:
        started.append(GatewayRun(folder))
        return started[-1]

    yield start
    for run in started:
        run.stop()


def until(
    condition: Callable[[], object], seconds: float, what: str, run: GatewayRun | None = None
):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    said = f"\n--- gateway run said:\n{run.output()[-3000:]}" if run else ""
    raise AssertionError(f"not within {seconds} s: {what}{said}")


def outbox(folder: Path) -> list[dict]:
    done = run_gateway("outbox", "list", "--format", "json", cwd=folder)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def state_of(folder: Path, text_id: int) -> str | None:
    return next((row["state"] for row in outbox(folder) if row["id"] == text_id), None)


def send(folder: Path, number: str, text: str) -> dict:
    done = run_gateway("send", "--to", f"+1{number}", "--carrier", "standin", "--text", text,
                       "--format", "json", cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_doctor_passes_every_check_against_the_real_servers(tmp_path, mail):
    folder = company(tmp_path, mail)
    done = run_gateway("doctor", "--format", "json", cwd=folder)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], done.stdout + done.stderr
    names = [check["name"] for check in report["checks"]]
    assert any(name.startswith("STARTTLS") for name in names)  # the own server's submission
    assert any(name.startswith("TLS and greeting") for name in names)  # the mailbox
    assert any(name.startswith("AUTH as") for name in names)
    assert any(name.startswith("sign in as") for name in names)
    table = run_gateway("doctor", cwd=folder)
    assert table.returncode == 0 and "✗" not in table.stdout, table.stdout


def test_a_text_reaches_the_phone_and_its_reply_is_threaded(tmp_path, mail, running):
    folder = company(tmp_path, mail)
    run = running(folder)
    before = len(mail.phone_mailbox())
    sent = send(folder, PHONE, "Your order A-1 is out for delivery")
    # Through Postfix's submission port (STARTTLS, AUTH) into the phone's mailbox.
    arrived = until(lambda: mail.phone_mailbox()[before:], 30, "the text at the phone", run)
    message = email.message_from_bytes(arrived[0], policy=email.policy.default)
    assert message["From"].addresses[0].addr_spec == mail.dovecot.user
    assert message["Message-ID"] == sent["message_id"]
    assert message.get_content().strip() == "Your order A-1 is out for delivery"
    assert until(lambda: state_of(folder, sent["id"]) == "sent", 30, "sent", run)
    # The phone answers through its carrier; the reply reaches the company mailbox and is read
    # over IMAP with TLS, in IDLE.
    mail.send_from_phone("On my way home, leave it at the door", mail.dovecot.user)
    until(lambda: state_of(folder, sent["id"]) == "replied", 30, "the text replied", run)
    inbox = run_gateway("inbox", "list", "--format", "json", cwd=folder)
    rows = json.loads(inbox.stdout)
    reply = next(row for row in rows if row["kind"] == "reply")
    assert reply["matched_message_id"] == sent["id"] and reply["match_rule"] == "phone"
    assert reply["text"] == "On my way home, leave it at the door"
    # The own server keeps no copy of what it sends: the gateway's lands in Sent, marked read.
    copies = until(lambda: [m for m in mail.dovecot.messages("Sent")
                            if sent["message_id"].encode() in m], 30, "the Sent copy", run)  # fmt: skip
    assert b"Your order A-1 is out for delivery" in copies[0]


def test_an_unknown_number_comes_back_as_postfix_report_and_bounces(tmp_path, mail, running):
    folder = company(tmp_path, mail)
    run = running(folder)
    sent = send(folder, UNKNOWN, "Your driver is 5 minutes away")
    until(lambda: state_of(folder, sent["id"]) == "bounced", 45, "the text bounced", run)
    row = next(row for row in outbox(folder) if row["id"] == sent["id"])
    assert "5.1.1" in row["reason"] and "userunknown" in row["reason"], row


def test_stop_opts_the_contact_out_and_is_confirmed(tmp_path, mail, running):
    folder = company(tmp_path, mail)
    mail.add_phone("2065550177")
    run = running(folder)
    sent = send(folder, "2065550177", "Your order A-2 is confirmed")
    until(lambda: state_of(folder, sent["id"]) == "sent", 30, "sent", run)
    mail.send_from_phone("STOP", mail.dovecot.user, number="2065550177")
    until(lambda: [m for m in mail.phone_mailbox("2065550177") if b"unsubscribed" in m], 45,
          "the stop confirmation at the phone", run)  # fmt: skip
    refused = run_gateway("send", "--to", "+12065550177", "--carrier", "standin", "--text",
                          "one more", cwd=folder)  # fmt: skip
    assert refused.returncode == 1 and "opted out" in refused.stderr


def test_the_mailbox_server_restarts_under_gateway_run(tmp_path, mail, running):
    folder = company(tmp_path, mail)
    mail.add_phone("2065550178")
    run = running(folder)
    first = send(folder, "2065550178", "Text one")
    until(lambda: state_of(folder, first["id"]) == "sent", 30, "sent", run)
    mail.dovecot.restart()
    second = send(folder, "2065550178", "Text two")
    until(lambda: state_of(folder, second["id"]) == "sent", 30, "sent after the restart", run)
    mail.send_from_phone("Got both", mail.dovecot.user, number="2065550178")
    until(lambda: state_of(folder, second["id"]) == "replied", 60,
          "the reply after the restart threaded", run)  # fmt: skip
