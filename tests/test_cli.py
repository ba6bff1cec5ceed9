"""The command line as a user runs it: a separate process, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import click
import pytest
import typer.main

from gateway.cli import app
from tests.conftest import REPO, gateway_folder, run_gateway


def gw(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check_code: int | None = None
) -> subprocess.CompletedProcess:
    result = run_gateway(*args, cwd=cwd, env=env)
    if check_code is not None:
        assert result.returncode == check_code, (result.stdout, result.stderr)
    return result


@pytest.fixture
def workdir(tmp_path, smtp_server) -> Path:
    extra = 'from_address = "Dispatch <dispatch@example.com>"\n'
    return gateway_folder(tmp_path, smtp_server.port, extra, migrate=False)


# --- help ---------------------------------------------------------------------------------------


def test_help_keeps_the_settings_sections_it_names(tmp_path):
    """Help names a setting by its section ("[web] host"); read as rich markup, "[web]" was taken
    for a style tag and dropped ("on  host and port")."""
    root = typer.main.get_command(app)
    commands: list[tuple[list[str], click.Command]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        commands.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    named = 0
    for path, command in commands:
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        sections = set(re.findall(r"\[[a-z_]+\]", " ".join(texts)))
        if not sections:
            continue
        named += 1
        shown = gw(*path, "--help", cwd=tmp_path, env={"COLUMNS": "300"}, check_code=0).stdout
        assert all(section in shown for section in sections), (path, sections, shown)
    assert named >= 3  # serve, auth, channels list at least


# --- addresses and carriers ---------------------------------------------------------------------


def test_address_prints_the_gateway_address(tmp_path):
    result = gw("address", "+12025550143", "--carrier", "verizon", cwd=tmp_path, check_code=0)
    assert result.stdout.strip() == "2025550143@vtext.com"
    assert "2027-03-31" in result.stderr  # the reported closing date is said
    assert result.stderr.count("closes its email-to-SMS gateway") == 1  # once, not twice


def test_carriers_list_fits_80_columns(tmp_path):
    result = gw("carriers", "list", cwd=tmp_path, env={"COLUMNS": "80"}, check_code=0)
    assert "…" not in result.stdout, result.stdout  # no column cut short
    assert "retired 2025-06-17" in result.stdout and "vtext.com" in result.stdout


def test_a_command_before_db_upgrade_makes_no_database(workdir):
    for args in (("outbox", "list"), ("inbox", "list"), ("status",)):
        result = gw(*args, cwd=workdir, check_code=1)
        assert "run `gateway db upgrade` first" in result.stderr
        assert not (workdir / "gw.db").exists(), args  # asking made nothing
    gw("db", "upgrade", cwd=workdir, check_code=0)
    assert (workdir / "gw.db").exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (
            ["+12025550143", "--carrier", "att"],
            1,
            "AT&T closed its email-to-SMS gateway on 2025-06-17",
        ),
        (["+12025550143"], 1, "carrier_unknown"),
        (["+1 900 555 0123", "--carrier", "verizon"], 1, "premium-rate"),
        (["+12025550143", "--carrier", "acme"], 1, "unknown carrier"),
        (["+12025550143", "--no-such-option"], 2, "No such option"),
    ],
)
def test_address_errors(tmp_path, args, code, words):
    result = gw("address", *args, cwd=tmp_path, check_code=code)
    assert words in result.stderr


def test_carriers_list_json(tmp_path):
    rows = json.loads(gw("carriers", "list", "--format", "json", cwd=tmp_path, check_code=0).stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id["att"]["status"] == "retired" and by_id["att"]["retired_on"] == "2025-06-17"
    assert by_id["verizon"]["sms"] == "vtext.com" and by_id["verizon"]["ends_on"] == "2027-03-31"
    assert set(rows[0]) >= {
        "id",
        "name",
        "kind",
        "countries",
        "sms",
        "mms",
        "status",
        "ends_on",
        "retired_on",
        "source",
    }


def test_broken_carriers_file_is_reported_with_its_line(tmp_path):
    (tmp_path / "carriers.yaml").write_text(
        "carriers:\n  - id: x\n    name: X\n    status: active\n"
    )
    result = gw("carriers", "list", cwd=tmp_path, check_code=1)
    assert "carriers.yaml:2:" in result.stderr and "missing required key" in result.stderr


# --- templates ------------------------------------------------------------------------------------


def test_templates_check_and_preview(tmp_path):
    gw("templates", "check", cwd=tmp_path, check_code=0)
    result = gw(
        "templates",
        "preview",
        "out_for_delivery",
        "--var",
        "customer_name=Ana",
        "--var",
        "order_ref=A-1",
        "--var",
        "driver_name=Sam",
        "--var",
        "eta=14:30",
        cwd=tmp_path,
        check_code=0,
    )
    assert (
        result.stdout.strip() == "Hi Ana, your order A-1 is out for delivery with Sam. ETA 14:30."
    )
    assert "GSM-7" in result.stderr and "1 segment" in result.stderr
    preview = json.loads(
        gw(
            "templates",
            "preview",
            "free_text",
            "--var",
            "text=Привет",
            "--format",
            "json",
            cwd=tmp_path,
            check_code=0,
        ).stdout
    )
    assert preview["encoding"] == "UCS-2" and preview["segments"] == 1


def test_templates_errors_name_the_template_and_line(tmp_path):
    result = gw(
        "templates", "preview", "delivered", "--var", "order_ref=A", cwd=tmp_path, check_code=1
    )
    assert "delivered.txt.j2, line 2" in result.stderr and "customer_name" in result.stderr
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "broken.txt.j2").write_text("fine\n{% if %}\n")
    result = gw("templates", "check", cwd=tmp_path, check_code=1)
    assert "broken.txt.j2, line 2" in result.stdout


# --- config ---------------------------------------------------------------------------------------


def test_config_check_masks_secrets(tmp_path):
    (tmp_path / "gateway.toml").write_text(
        '[smtp]\nhost = "smtp.example.com"\nusername = "u"\npassword = "hunter2-secret"\n'
    )
    result = gw("config", "check", cwd=tmp_path, check_code=0)
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert 'password = "********"' in result.stdout


def test_env_overrides_the_file(tmp_path):
    (tmp_path / "gateway.toml").write_text('[smtp]\nhost = "smtp.example.com"\n')
    data = json.loads(
        gw(
            "config",
            "check",
            "--format",
            "json",
            cwd=tmp_path,
            env={"GATEWAY_SMTP__PORT": "465", "GATEWAY_SMTP__SECURITY": "tls"},
            check_code=0,
        ).stdout
    )
    smtp = data["settings"]["smtp"]
    assert (smtp["host"], smtp["port"], smtp["security"]) == ("smtp.example.com", 465, "tls")


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[smtp]\nsecurity = "ssl"\n', "smtp.security = 'ssl'"),
        ("[smtp]\nport = 70000\n", "smtp.port = 70000"),
        ('[smtp]\nhots = "x"\n', "smtp.hots: unknown key"),
        ('[smtp]\nsecurity = "none"\nhost = "smtp.example.com"\n', "allow_insecure"),
        ('[smtp]\nusername = "u"\npassword_env = "NOT_SET_ANYWHERE"\n', "NOT_SET_ANYWHERE"),
        ("[smtp\n", "not valid TOML"),
        (f'[smtp]\nfrom_address = "{"(" * 5000}x <d@example.com>"\n', "too deeply nested"),
        # tomllib reads an array in an array by calling itself: thousands deep ran out of stack.
        ("[smtp]\nhost = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_config_errors_name_key_value_and_fix(tmp_path, toml, words):
    (tmp_path / "gateway.toml").write_text(toml)
    result = gw("config", "check", cwd=tmp_path, check_code=1)
    assert words in result.stderr


def test_insecure_loopback_is_allowed_and_explicit_insecure_too(tmp_path):
    (tmp_path / "gateway.toml").write_text(
        '[smtp]\nsecurity = "none"\nhost = "smtp.example.com"\nallow_insecure = true\n'
    )
    gw("config", "check", cwd=tmp_path, check_code=0)


def test_missing_explicit_config_is_an_error(tmp_path):
    result = gw("--config", "nope.toml", "config", "check", cwd=tmp_path, check_code=1)
    assert "nope.toml" in result.stderr


# --- send, run, outbox ---------------------------------------------------------------------------------


def test_send_before_upgrade_says_which_command_to_run(workdir):
    result = gw(
        "send",
        "--to",
        "+12025550143",
        "--carrier",
        "verizon",
        "--text",
        "hi",
        cwd=workdir,
        check_code=1,
    )
    assert "gateway db upgrade" in result.stderr


def test_send_run_and_list(workdir, smtp_server):
    gw("db", "upgrade", cwd=workdir, check_code=0)
    sent = json.loads(
        gw(
            "send",
            "--to",
            "(202) 555-0143",
            "--carrier",
            "verizon",
            "--template",
            "delivered",
            "--var",
            "customer_name=Ana",
            "--order",
            "A-1",
            "--format",
            "json",
            cwd=workdir,
            check_code=0,
        ).stdout
    )
    assert sent["state"] == "queued" and sent["to_address"] == "2025550143@vtext.com"
    assert sent["message_id"].startswith("<") and sent["message_id"].endswith("@example.com>")
    plain = gw(
        "send",
        "--to",
        "+13125550199",
        "--carrier",
        "uscellular",
        "--text",
        "Running late",
        cwd=workdir,
        check_code=0,
    )
    assert plain.stdout.strip().isdigit()

    gw("run", "--until-idle", cwd=workdir, check_code=0)
    rows = json.loads(gw("outbox", "list", "--format", "json", cwd=workdir, check_code=0).stdout)
    assert {r["state"] for r in rows} == {"sent"} and len(rows) == 2
    first = next(r for r in rows if r["id"] == sent["id"])
    assert first["order_ref"] == "A-1" and first["route"] == "own" and first["attempts"] == 1
    assert first["last_reply"].startswith("250") and first["to"] == "+12025550143"
    assert set(first) >= {
        "id",
        "to",
        "to_address",
        "carrier",
        "gateway",
        "gateway_reason",
        "state",
        "route",
        "attempts",
        "last_reply",
        "message_id",
        "reason",
        "order_ref",
        "due_at",
    }
    assert len(smtp_server.received) == 2
    assert (
        "Your order A-1 was delivered. Thank you, Ana!"
        in smtp_server.received[0].content.decode() + smtp_server.received[1].content.decode()
    )
    table = gw("outbox", "list", "--state", "sent", cwd=workdir, check_code=0)
    assert "2025550143" not in table.stderr and "sent" in table.stdout


def test_send_errors(workdir):
    gw("db", "upgrade", cwd=workdir, check_code=0)
    bad = gw(
        "send", "--to", "12", "--carrier", "verizon", "--text", "hi", cwd=workdir, check_code=1
    )
    assert "not" in bad.stderr
    missing = gw(
        "send",
        "--to",
        "+12025550143",
        "--carrier",
        "verizon",
        "--template",
        "delayed",
        cwd=workdir,
        check_code=1,
    )
    assert "delayed.txt.j2" in missing.stderr
    assert "is missing (pass it with --var customer_name=VALUE)" in missing.stderr
    assert (
        json.loads(gw("outbox", "list", "--format", "json", cwd=workdir, check_code=0).stdout) == []
    )

    retired = gw(
        "send",
        "--to",
        "+12025550143",
        "--carrier",
        "att",
        "--text",
        "hi",
        cwd=workdir,
        check_code=1,
    )
    assert "AT&T closed" in retired.stderr
    [row] = json.loads(gw("outbox", "list", "--format", "json", cwd=workdir, check_code=0).stdout)
    assert row["state"] == "suppressed" and row["reason"] == "carrier_retired"

    gw(
        "send", "--to", "+12025550143", "--carrier", "verizon", cwd=workdir, check_code=2
    )  # neither --text nor --template
    gw("outbox", "list", "--state", "nonsense", cwd=workdir, check_code=2)


def test_idempotency_key_on_the_command_line(workdir):
    gw("db", "upgrade", cwd=workdir, check_code=0)
    send = (
        "send",
        "--to",
        "+12025550143",
        "--carrier",
        "verizon",
        "--text",
        "hi",
        "--key",
        "evt-9",
    )
    one = gw(*send, cwd=workdir, check_code=0)
    two = gw(*send, cwd=workdir, check_code=0)
    assert one.stdout == two.stdout and "used before" in two.stderr


def test_db_upgrade_is_repeatable(workdir):
    assert "migrated" in gw("db", "upgrade", cwd=workdir, check_code=0).stdout
    assert "up to date" in gw("db", "upgrade", cwd=workdir, check_code=0).stdout


@pytest.mark.slow
def test_demo_runs_unattended(tmp_path):
    result = gw("demo", "--exit-after", "30", "--port", "0", cwd=tmp_path, check_code=0)
    assert "every expected outcome happened" in result.stdout
    assert "sign in as dispatcher / demo-dispatcher" in result.stdout
    assert "✗" not in result.stdout
    # Numbers are shown whole; an answer too long for the table is cut with an ellipsis.
    assert "+4915123456789" in result.stdout and "…" in result.stdout
    # Answers came back through the Maildir and were threaded; STOP and a bounce were read.
    inbox = json.loads(gw("--config", "demo/gateway.toml", "inbox", "list", "--format", "json",
                          cwd=tmp_path, check_code=0).stdout)  # fmt: skip
    kinds = sorted(row["kind"] for row in inbox)
    assert kinds.count("bounce") == 1 and kinds.count("reply") >= 5
    assert any(row["keyword"] == "stop" for row in inbox)
    outbox = json.loads(gw("--config", "demo/gateway.toml", "outbox", "list", "--format", "json",
                           cwd=tmp_path, check_code=0).stdout)  # fmt: skip
    routes = {row["route"] for row in outbox if row["route"]}
    # The own server's daily limit moved traffic to the relay; the company's phone took the
    # number no gateway reaches.
    assert routes == {"own", "relay", "smsgate"}
    # The demo order's walk: each customer text once, at its time.
    walk = sorted((r["reason"] or "", r["state"]) for r in outbox if r["order_ref"] == "W-2001")
    assert [state for _, state in walk].count("queued") == 1  # the fourth in an hour: capped
    assert ("superseded", "cancelled") in walk


@pytest.mark.slow
def test_demo_serves_the_dashboard_with_the_printed_login_until_ctrl_c(tmp_path):
    import os
    import re
    import signal
    import sys

    import httpx2

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    demo = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", "0"], cwd=tmp_path,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = []
        while not any("Ctrl-C" in line for line in lines):
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        url = re.search(r"(http://127\.0\.0\.1:\d+)/", text).group(1)
        name, password = re.search(r"sign in as (\S+) / (\S+)", text).groups()
        client = httpx2.Client(base_url=url, timeout=10)
        token = re.search(r'name="login_token" value="([^"]+)"', client.get("/login").text)
        signed = client.post("/login", data={"login_token": token.group(1), "name": name,
                                             "password": password, "next": "/"})  # fmt: skip
        assert signed.status_code == 303
        assert "Thanks! I&#39;ll be home." in client.get("/conversations").text
        assert client.get("/readyz").json()["ok"] is True
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0  # it stops by itself (a hang is a TimeoutExpired here)
        assert "Traceback" not in demo.stdout.read() + demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()


def test_serve_on_a_port_that_is_taken_says_what_to_do(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway_folder(tmp_path, extra=f'[web]\nhost = "127.0.0.1"\nport = {port}\n')
        result = run_gateway("serve", cwd=tmp_path)
    # The contract's exit code for a problem the user can fix (uvicorn's own would be 3).
    assert result.returncode == 1, result.stderr
    assert "address already in use" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "[web] host and port" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_work_from_any_directory(tmp_path):
    # No carriers.yaml or templates/ here: the shipped copies are used.
    assert not (tmp_path / "carriers.yaml").exists() and Path.cwd() != REPO
    gw("templates", "check", cwd=tmp_path, check_code=0)


# --- parse ----------------------------------------------------------------------------------------

CORPUS = REPO / "tests" / "data" / "corpus"


def test_parse_prints_one_json_object_per_file_from_any_directory(tmp_path):
    bounce = CORPUS / "bounces" / "mail" / "lhost-opensmtpd-02.eml"
    reply = CORPUS / "replies" / "verizon-1.eml"
    result = gw("parse", str(reply), str(bounce), cwd=tmp_path, check_code=0)
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["kind"] == "reply" and first["phone"] == "+12068675309"
    assert (first["carrier"], first["text"]) == ("verizon", "hello world")
    assert set(first) == {
        "file", "kind", "from", "phone", "carrier", "provider", "provider_report", "text",
        "in_reply_to", "original_message_id", "recipients",
    }  # fmt: skip
    assert first["provider"] is None and first["provider_report"] is None
    assert second["kind"] == "bounce"
    statuses = {r["status"]: r for r in second["recipients"]}
    assert statuses["5.1.1"]["smtp_code"] == "550" and statuses["5.1.1"]["permanent"]
    assert set(statuses["5.1.1"]) == {
        "address", "status", "smtp_code", "permanent", "reason", "diagnostic", "final",
    }  # fmt: skip
    assert statuses["5.1.1"]["final"] is True  # false only for a delay warning


def test_parse_reports_unreadable_files_and_exits_1(tmp_path):
    (tmp_path / "junk.eml").write_bytes(b"\x00\x01 not mail")
    result = gw("parse", "junk.eml", "missing.eml", cwd=tmp_path, check_code=1)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["file"] for row in rows] == ["junk.eml", "missing.eml"]
    assert "header" in rows[0]["error"] and "No such file" in rows[1]["error"]


def test_the_demo_sums_up_only_once_everything_the_phones_said_is_stored(tmp_path, sqlite_url):
    """The summary once said "replied 6" with a seventh answer on its way: it now waits until no
    phone is about to answer and every answer is stored."""
    from pathlib import Path

    from rich.console import Console

    from gateway.services.carrier_sim import PhoneNetwork
    from gateway.services.demo import _Demo
    from gateway.services.phone_sim import CompanyPhone
    from gateway.store.db import utcnow
    from gateway.store.inbox import store_inbound_rows
    from tests.conftest import make_runtime

    runtime = make_runtime(sqlite_url, 25)
    demo = _Demo(Path(tmp_path), Console(), lambda runtime: None, 0)
    network = PhoneNetwork(maildir=None)
    phone = CompanyPhone("sms", "pw", "key", people={})
    try:
        assert demo._settled(runtime, network, phone)
        network._later(60, lambda: None)  # a phone about to answer
        assert not demo._settled(runtime, network, phone)
        network.stop()
        network._timers.clear()
        network.dropped = 1  # an answer in the mailbox, not yet read
        assert not demo._settled(runtime, network, phone)
        with runtime.engine.begin() as conn:
            store_inbound_rows(conn, [{
                "mailbox": "maildir:x", "uidvalidity": None, "uid": None, "dedup_key": "k",
                "kind": "reply", "match_rule": "none", "confidence": 0.0, "size": 1,
                "raw": b"x", "text": "Thanks", "stored_at": utcnow(), "imported": False}])  # fmt: skip
        assert demo._settled(runtime, network, phone)
    finally:
        phone.stop()
        network.stop()


def test_parse_says_a_readers_own_failure_and_goes_on(tmp_path, monkeypatch, capsys):
    """A message that makes a reader fail (a bug, as the fuzzer finds them) is one error line
    for its file, as the mailbox reader quarantines it, not a traceback that ends the run."""
    import gateway.domain.inbound as inbound
    from gateway.cli import main

    real = inbound.parse_mail

    def parse_mail(raw, *args):
        if raw.startswith(b"BOOM"):
            raise RuntimeError("a reader's bug")
        return real(raw, *args)

    monkeypatch.setattr(inbound, "parse_mail", parse_mail)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.eml").write_bytes(b"BOOM: 1\n\nx\n")
    (tmp_path / "good.eml").write_bytes(b"From: 2025550143@vtext.com\nSubject: hi\n\nOn my way\n")
    with pytest.raises(SystemExit) as exit_:
        main(["parse", "bad.eml", "good.eml"])
    assert exit_.value.code == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == {"file": "bad.eml", "error": "reading failed: RuntimeError: a reader's bug"}
    assert rows[1]["file"] == "good.eml" and rows[1]["phone"] == "+12025550143"
