"""`gateway doctor` against local servers that fail each way: the right step fails, with the
right hint, and nothing after it pretends to pass."""

from __future__ import annotations

import json

from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.config import RelaySettings, SmtpSettings, load_settings
from gateway.services.carrier_sim import free_port
from gateway.services.doctor import check_imap, check_smtp
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store.db import utcnow
from tests.conftest import gateway_folder, run_gateway
from tests.servers import SmtpTestServer, microsoft_365_server


def smtp(port: int, **values) -> SmtpSettings:
    return SmtpSettings(**{"host": "127.0.0.1", "port": port, "security": "none", **values})


def names(steps) -> list[tuple[str, bool]]:
    return [(step.name.split(":")[0].split(" as ")[0], step.ok) for step in steps]


def failed(steps):
    bad = [step for step in steps if not step.ok]
    assert len(bad) == 1, steps
    assert steps[-1] is bad[0], "a failed step is the last one run"
    return bad[0]


async def test_a_working_server_passes_every_step(smtp_server):
    steps = await check_smtp(smtp(smtp_server.port), "smtp", "ops@example.com")
    assert names(steps) == [("DNS", True), ("TCP connect", True), ("no TLS and EHLO", True),
                            ("test message to ops@example.com", True)]  # fmt: skip
    assert smtp_server.received[0].rcpt_tos == ["ops@example.com"]


async def test_a_server_that_knows_only_helo_passes_as_the_sender_finds_it():
    """The doctor connects the sender's way (transport.smtp.connect): HELO where EHLO is
    refused, and a message through it."""
    server = SmtpTestServer(helo_only=True)
    server.start()
    try:
        steps = await check_smtp(smtp(server.port), "smtp", "ops@example.com")
        assert all(step.ok for step in steps), steps
        assert server.received[0].rcpt_tos == ["ops@example.com"]
    finally:
        server.stop()


async def test_connection_refused_names_the_port():
    port = free_port()
    step = failed(await check_smtp(smtp(port), "smtp"))
    assert step.name.startswith("TCP connect") and "refused" in step.detail
    assert f"nothing listens on port {port}" in step.hint and "587" in step.hint


async def test_a_host_that_does_not_resolve():
    settings = SmtpSettings(host="no-such-host.invalid", port=587)
    step = failed(await check_smtp(settings, "smtp"))
    assert step.name.startswith("DNS") and "does not resolve" in step.detail


async def test_no_starttls_is_refused_not_downgraded(smtp_server):
    step = failed(await check_smtp(smtp(smtp_server.port, security="starttls"), "smtp"))
    assert step.name == "STARTTLS and EHLO" and "does not offer STARTTLS" in step.detail
    assert "465" in step.hint and not smtp_server.received


async def test_an_untrusted_certificate_names_ca_file(implicit_tls_server, ca_file):
    settings = SmtpSettings(host="127.0.0.1", port=implicit_tls_server.port, security="tls")
    step = failed(await check_smtp(settings, "relay"))
    assert step.name == "TLS and EHLO" and "not trusted" in step.detail
    assert "relay.ca_file" in step.hint
    trusted = settings.model_copy(update={"ca_file": ca_file})
    assert all(step.ok for step in await check_smtp(trusted, "relay"))


async def test_535_explains_app_passwords_and_oauth2(auth_server):
    settings = smtp(auth_server.port, username="dispatch", password="wrong")
    step = failed(await check_smtp(settings, "smtp"))
    assert step.name == "AUTH as dispatch" and "535" in step.detail
    assert "app password" in step.hint and "OAuth2" in step.hint
    assert "wrong" not in step.detail + step.hint
    right = smtp(auth_server.port, username="dispatch", password="right")
    assert all(step.ok for step in await check_smtp(right, "smtp"))


async def test_a_password_that_cannot_be_read_fails_the_sign_in_step_naming_the_key(
    auth_server, monkeypatch
):
    monkeypatch.delenv("GW_TEST_NO_SUCH_PASSWORD", raising=False)
    settings = smtp(auth_server.port, username="dispatch", password_env="GW_TEST_NO_SUCH_PASSWORD")
    steps = await check_smtp(settings, "smtp")
    step = failed(steps)
    assert ("no TLS and EHLO", True) in names(steps)
    assert step.name == "AUTH as dispatch"
    assert "smtp.password_env names GW_TEST_NO_SUCH_PASSWORD" in step.detail
    none = failed(await check_smtp(smtp(auth_server.port, username="dispatch"), "smtp"))
    assert none.name == "AUTH as dispatch" and "no password" in none.detail
    assert "smtp.password_env" in none.hint


async def test_an_oauth2_token_that_cannot_be_had_fails_the_sign_in_saying_what_to_run(
    auth_server,
):
    async def expired() -> str:
        raise RuntimeError("the stored sign-in has expired")

    settings = smtp(auth_server.port, username="dispatch@example.com", auth="oauth2")
    step = failed(await check_smtp(settings, "relay", None, expired))
    assert step.name == "AUTH as dispatch@example.com"
    assert step.detail == "no OAuth2 access token: the stored sign-in has expired"
    assert "gateway auth microsoft" in step.hint and "relay.oauth2_token_file" in step.hint


async def refused_with(reply: str):
    """The failed step when a server refuses every sign-in with `reply`."""

    def refuse(server, session, envelope, mechanism, data):
        assert isinstance(data, LoginPassword)
        return AuthResult(success=False, handled=False, message=reply)

    server = SmtpTestServer(authenticator=refuse, auth_require_tls=False)
    server.start()
    try:
        settings = smtp(server.port, username="dispatch@contoso.example", password="pw")
        return failed(await check_smtp(settings, "smtp"))
    finally:
        server.stop()


async def test_smtp_auth_disabled_for_the_mailbox_says_so():
    step = await refused_with("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication "
                              "is disabled for the Mailbox.")  # fmt: skip
    assert "SMTP AUTH is disabled for this mailbox" in step.hint


async def test_basic_auth_switched_off_names_oauth2_and_the_command():
    step = await refused_with(
        "550 5.7.30 Basic authentication is not supported for Client Submission."
    )
    assert "5.7.30" in step.detail
    assert 'auth = "oauth2"' in step.hint and "gateway auth microsoft" in step.hint


async def test_a_password_sign_in_to_microsoft_365_warns_before_it_ends():
    # Greets as Exchange Online does; the company reaches it by a name of its own.
    server = microsoft_365_server("dispatch@contoso.example", "pw")
    server.start()
    try:
        settings = smtp(server.port, username="dispatch@contoso.example", password="pw")
        steps = await check_smtp(settings, "smtp")
    finally:
        server.stop()
    assert all(step.ok for step in steps), steps
    step = steps[-1]
    assert step.name == "AUTH as dispatch@contoso.example" and step.warning, step
    assert "end of December 2026" in step.hint and "gateway auth microsoft" in step.hint
    assert 'auth = "oauth2" in [smtp]' in step.hint


async def test_a_password_sign_in_elsewhere_is_no_warning(auth_server):
    settings = smtp(auth_server.port, username="dispatch", password="right")
    assert not any(step.warning for step in await check_smtp(settings, "smtp"))


async def test_a_server_that_offers_no_auth_is_told_so(smtp_server):
    # The plain test server advertises no AUTH at all (as port 25 of most servers).
    settings = smtp(smtp_server.port, username="dispatch", password="pw")
    step = failed(await check_smtp(settings, "smtp"))
    assert step.name == "AUTH as dispatch" and "offers no AUTH" in step.detail
    assert "587" in step.hint and "app password" not in step.hint


def test_a_relay_that_refuses_carrier_gateways_is_a_warning(tmp_path, smtp_server, relay_server):
    gateway_folder(
        tmp_path,
        smtp_server.port,
        extra=f"""
[relay]
enabled = true
host = "127.0.0.1"
port = {relay_server.port}
security = "none"
from_address = "Relay <relay@example.net>"
delivers_to_gateways = false
""",
    )
    done = run_gateway("doctor", "--format", "json", cwd=tmp_path)
    report = json.loads(done.stdout)
    step = next(c for c in report["checks"] if c["name"] == "carrier gateways")
    assert step["ok"] and step["warning"] and "texts to carriers' gateways" in step["detail"]
    assert done.returncode == 0  # a warning, not a failure


async def test_relay_denied_on_the_test_message(smtp_server):
    smtp_server.faults.rcpt_reply = "550 5.7.1 Relaying denied"
    settings = RelaySettings(host="127.0.0.1", port=smtp_server.port, security="none",
                             enabled=True)  # fmt: skip
    step = failed(await check_smtp(settings, "relay", "someone@elsewhere.example"))
    assert step.name.startswith("test message") and "Relaying denied" in step.detail
    assert "will not relay" in step.hint and "relay.from_address" in step.hint


async def test_imap_sign_in_folder_and_idle(dovecot):
    from gateway.config import ImapSettings

    good = ImapSettings(enabled=True, host="127.0.0.1", port=dovecot.port, security="tls",
                        ca_file=dovecot.ca_file, username=dovecot.user,
                        password=dovecot.password)  # fmt: skip
    steps = await check_imap(good)
    assert all(step.ok for step in steps) and "IDLE" in steps[-1].detail
    assert "messages" in steps[-1].detail
    bad = ImapSettings(**{**good.model_dump(), "password": "wrong"})
    step = failed(await check_imap(bad))
    assert step.name.startswith("sign in") and "AUTHENTICATIONFAILED" in step.detail
    # IMAP advice for an IMAP refusal: nothing about SMTP AUTH being disabled.
    assert "imap.username" in step.hint and "app password" in step.hint
    assert "SMTP" not in step.hint


# --- the command ----------------------------------------------------------------------------


def test_doctor_command_passes_on_a_working_setup(tmp_path, smtp_server):
    gateway_folder(tmp_path, smtp_server.port)
    done = run_gateway("doctor", "--send-to", "ops@example.com", "--format", "json", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] is True
    sections = {row["section"] for row in report["checks"]}
    assert sections == {"config", "database", "smtp", "relay", "imap", "carriers"}
    assert smtp_server.received  # the test message went


def test_doctor_command_fails_with_the_fix_and_changes_nothing(tmp_path):
    port = free_port()
    (tmp_path / "gateway.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "none.db"}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
    )
    done = run_gateway("doctor", cwd=tmp_path)
    assert done.returncode == 1
    assert "✗ database: reachable" in done.stdout and "gateway db upgrade" in done.stdout
    assert "✗ smtp: TCP connect" in done.stdout and f"nothing listens on port {port}" in done.stdout
    assert not (tmp_path / "none.db").exists()  # looking created nothing
    broken = run_gateway("doctor", "--send-to", "a@b.example\r\nBcc: x@y.example", cwd=tmp_path)
    assert broken.returncode == 1 and "--send-to" in broken.stdout


def test_doctor_warns_of_contacts_on_retired_carriers(tmp_path, smtp_server):
    gateway_folder(tmp_path, smtp_server.port)
    runtime = Runtime(load_settings(tmp_path / "gateway.toml"))
    enqueue(runtime, SendRequest(to="+12025550143", carrier="sprint", text="hi"), utcnow())
    runtime.engine.dispose()
    done = run_gateway("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert "! carriers: contacts' carriers" in done.stdout
    assert "1 contact on carriers that closed or close within 60 days" in done.stdout
    assert "no email-to-SMS provider" in done.stdout and "Sprint" in done.stdout
    assert "[gateways] provider" in done.stdout  # the fix, in words

    # With a provider for the US the same contact is reached: said, not warned.
    with (tmp_path / "gateway.toml").open("a") as config:
        config.write('[gateways]\nprovider = "generic"\n')
    covered = run_gateway("doctor", cwd=tmp_path)
    assert "✓ carriers: contacts' carriers" in covered.stdout, covered.stdout
    assert "their texts go through Example provider" in covered.stdout
    assert "gateways.provider = generic" in covered.stdout


def test_doctor_refuses_a_provider_that_is_not_in_carriers_yaml(tmp_path):
    gateway_folder(tmp_path, extra='[gateways]\nproviders_by_country = {CA = "nosuch"}\n')
    done = run_gateway("doctor", cwd=tmp_path)
    assert done.returncode == 1
    assert "gateways.providers_by_country.CA = 'nosuch' is not a provider" in done.stdout
    assert "textapp" in done.stdout  # the ids one may use
