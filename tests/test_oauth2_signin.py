"""OAuth2 sign-in built in, against real servers: the tests' own OAuth2 server (tests/oauth_server)
issues tokens; Dovecot's `oauth2` passdb checks each bearer token by asking its introspection
endpoint, so IMAP (XOAUTH2 over TLS) and Postfix submission (XOAUTH2 through Dovecot SASL)
really check them.

`gateway auth microsoft` runs MSAL's device-code flow, `gateway auth google` google-auth-oauthlib's
installed-app flow with a loopback redirect (pasted back, as on a server without a browser),
`gateway auth custom` the standard device flow; the refresh token lands in a 0600 file and is
never printed. `gateway doctor` then signs in to both servers with XOAUTH2; `gateway run` sends
and reads with tokens it refreshes itself (they live 3 seconds here, so they run out mid-run); a
refused XOAUTH2 sign-in fails at once with the server's words; a revoked sign-in says which
command to run again."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import dovecot as dovecot_server
from tests import postfix as postfix_server
from tests.conftest import run_gateway
from tests.oauth_server import CLIENT_ID, TENANT, OAuthServer
from tests.test_real_mail import GatewayRun, company_servers, send, state_of, until
from tests.test_real_mail import company as real_mail_company

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oauth(server_cert) -> Iterator[OAuthServer]:
    server = OAuthServer(server_cert, dovecot_server.USER)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mail(server_cert, ca_file, oauth) -> Iterator[postfix_server.Postfix]:
    # Submission drops a silent client after 3 s: the next text opens a new connection, which
    # signs in with a fresh token.
    with company_servers(server_cert, ca_file, oauth.introspection_url, "3s") as postfix:
        yield postfix


def env_for(ca_file: Path) -> dict[str, str]:
    # The tests' CA for the HTTPS sign-in endpoints: MSAL and oauthlib (requests) read the first,
    # the standard library the second.
    return {"REQUESTS_CA_BUNDLE": str(ca_file), "SSL_CERT_FILE": str(ca_file)}


def company(folder: Path, mail: postfix_server.Postfix, oauth: OAuthServer, provider="microsoft",
            imap_extra: str = "") -> Path:  # fmt: skip
    """The README's set-up with OAuth2 for both servers, signed in through `provider`."""
    endpoints = {
        "microsoft": f'authority = "{oauth.url}"\ntenant = "{TENANT}"',
        "google": (f'authorization_url = "{oauth.url}/google/authorize"\n'
                   f'token_url = "{oauth.url}/google/token"\nclient_secret = "not-secret"'),
        "custom": (f'token_url = "{oauth.url}/custom/token"\n'
                   f'device_authorization_url = "{oauth.url}/custom/devicecode"\n'
                   'scopes = ["mail"]'),
    }[provider]  # fmt: skip
    oauth2 = f"""
[oauth2]
provider = "{provider}"
client_id = "{CLIENT_ID}"
token_file = "{folder / "oauth2-token.json"}"
{endpoints}
"""
    return real_mail_company(folder, mail, oauth2, sign_in='auth = "oauth2"', imap_extra=imap_extra)


def start_auth(folder: Path, provider: str, ca_file: Path) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "auth", provider], cwd=folder,
        env={**environment, **env_for(ca_file)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def read_until(process: subprocess.Popen, pattern: str, seconds: float = 30) -> re.Match:
    said = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        said += line
        if found := re.search(pattern, said):
            return found
    raise AssertionError(f"the sign-in never said {pattern!r}: {said}")


def signed_in_with_microsoft(folder: Path, oauth: OAuthServer, ca_file: Path) -> str:
    process = start_auth(folder, "microsoft", ca_file)
    code = read_until(process, r"enter ([0-9A-F]{8})").group(1)
    oauth.approve(code)  # the person types the code on their phone and signs in
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    return out + err


def refresh_tokens_in(text: str, oauth: OAuthServer) -> list[str]:
    return [token for token in oauth.grants.refresh if token in text]


def test_microsoft_device_code_sign_in_then_doctor_signs_in_with_xoauth2(
    tmp_path, mail, oauth, ca_file
):
    folder = company(tmp_path, mail, oauth)
    said = signed_in_with_microsoft(folder, oauth, ca_file)
    token_file = folder / "oauth2-token.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    stored = json.loads(token_file.read_text())
    assert (
        stored["refresh_token"] in oauth.grants.refresh and stored["account"] == mail.dovecot.user
    )
    assert not refresh_tokens_in(said, oauth)  # never printed
    # MSAL asked for the mail scopes and added offline access itself.
    assert "IMAP.AccessAsUser.All" in oauth.grants.scopes_asked[-1]
    assert "offline_access" in oauth.grants.scopes_asked[-1]
    before = oauth.grants.counts["introspect"]
    doctor = run_gateway("doctor", "--format", "json", cwd=folder, env=env_for(ca_file))
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and report["ok"], doctor.stdout + doctor.stderr
    signed = [c["section"] for c in report["checks"] if "with OAuth2 (XOAUTH2)" in c["detail"]]
    assert signed == ["smtp", "imap"]  # SMTP through Dovecot SASL, and IMAP
    assert oauth.grants.counts["introspect"] >= before + 2  # Dovecot checked both tokens
    assert not refresh_tokens_in(doctor.stdout + doctor.stderr, oauth)


def test_tokens_that_run_out_mid_run_are_refreshed_and_work_goes_on(tmp_path, mail, oauth, ca_file):
    folder = company(tmp_path, mail, oauth)
    signed_in_with_microsoft(folder, oauth, ca_file)
    oauth.grants.lifetime = 3.0  # every access token runs out within the test
    run = GatewayRun(folder, env_for(ca_file))
    try:
        mail.add_phone("2065550181")
        first = send(folder, "2065550181", "First text")
        until(lambda: state_of(folder, first["id"]) == "sent", 30, "sent with XOAUTH2", run)
        refreshed = oauth.grants.counts["refresh_token"]
        time.sleep(4)  # the token runs out, and submission drops the idle connection
        second = send(folder, "2065550181", "Second text")
        until(lambda: state_of(folder, second["id"]) == "sent", 30, "sent with a new token", run)
        assert oauth.grants.counts["refresh_token"] > refreshed
        mail.dovecot.restart()  # the reader signs in again, with a token refreshed for it
        mail.send_from_phone("Both arrived", mail.dovecot.user, number="2065550181")
        until(lambda: state_of(folder, second["id"]) == "replied", 60, "the reply read", run)
    finally:
        said = run.stop()
        oauth.grants.lifetime = 3600.0
    assert not refresh_tokens_in(said, oauth) and "Traceback" not in said


def test_a_refused_xoauth2_sign_in_fails_at_once_with_the_servers_words(
    tmp_path, mail, oauth, ca_file
):
    # A token Dovecot's introspection calls inactive: Dovecot answers AUTHENTICATE with a
    # continuation holding its error and waits for an empty line before its NO.
    (tmp_path / "stale-token").write_text("at-no-such-token")
    folder = company(tmp_path, mail, oauth,
                     imap_extra=f'oauth2_token_file = "{tmp_path / "stale-token"}"')  # fmt: skip
    doctor = run_gateway("doctor", "--format", "json", cwd=folder, env=env_for(ca_file))
    step = next(c for c in json.loads(doctor.stdout)["checks"]
                if c["section"] == "imap" and not c["ok"])  # fmt: skip
    assert step["name"].startswith("sign in")
    assert "refused the sign-in" in step["detail"] and "NO" in step["detail"]
    assert '"status"' in step["detail"]  # the server's JSON error from the continuation line
    assert "Timeout" not in step["detail"]
    assert "gateway auth" in step["hint"]


def test_a_revoked_sign_in_says_to_sign_in_again_everywhere(tmp_path, mail, oauth, ca_file):
    folder = company(tmp_path, mail, oauth)
    signed_in_with_microsoft(folder, oauth, ca_file)
    oauth.revoke_all()
    doctor = run_gateway("doctor", cwd=folder, env=env_for(ca_file))
    assert doctor.returncode == 1
    assert "no longer accepted" in doctor.stdout and "gateway auth microsoft" in doctor.stdout
    run = GatewayRun(folder, env_for(ca_file))
    try:

        def failing() -> bool:
            done = run_gateway("status", "--format", "json", cwd=folder)
            mailbox = json.loads(done.stdout)["mailbox"] or {}
            return mailbox.get("ok") is False and "gateway auth microsoft" in mailbox["error"]

        until(failing, 30, "the mailbox failing with the command to run", run)
    finally:
        said = run.stop()
    assert "run `gateway auth microsoft` again" in said


def test_google_installed_app_sign_in_pasted_back_on_a_headless_server(
    tmp_path, mail, oauth, ca_file
):
    folder = company(tmp_path, mail, oauth, provider="google")
    process = start_auth(folder, "google", ca_file)
    url = read_until(process, r"(https://\S+/authorize\?\S+)").group(1)
    assert "access_type=offline" in url and "mail.google.com" in urllib.request.unquote(url)
    # The browser (on another machine) signs in and is sent to the loopback address, which
    # does not load there; the person copies that address back.
    answer = _no_follow(url, ca_file)
    assert answer.startswith("http://127.0.0.1:") and "code=" in answer
    out, err = process.communicate(answer + "\n", timeout=60)
    assert process.returncode == 0, out + err
    stored = json.loads((folder / "oauth2-token.json").read_text())
    assert stored["provider"] == "google" and stored["refresh_token"] in oauth.grants.refresh
    assert stat.S_IMODE((folder / "oauth2-token.json").stat().st_mode) == 0o600
    doctor = run_gateway("doctor", "--format", "json", cwd=folder, env=env_for(ca_file))
    assert doctor.returncode == 0, doctor.stdout


def test_custom_device_flow(tmp_path, mail, oauth, ca_file):
    folder = company(tmp_path, mail, oauth, provider="custom")
    process = start_auth(folder, "custom", ca_file)
    code = read_until(process, r"enter the code ([0-9A-F]{8})").group(1)
    oauth.approve(code)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    doctor = run_gateway("doctor", "--format", "json", cwd=folder, env=env_for(ca_file))
    assert doctor.returncode == 0, doctor.stdout


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _no_follow(url: str, ca_file: Path) -> str:
    """Where the sign-in page sends the browser (its Location), without going there."""
    import ssl
    import urllib.error

    opener = urllib.request.build_opener(
        NoRedirect,
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca_file))),
    )
    try:
        opener.open(url)
    except urllib.error.HTTPError as exc:
        assert exc.code == 302
        return exc.headers["Location"]
    raise AssertionError("the sign-in page did not redirect")


@pytest.mark.parametrize("provider", ["microsoft", "google"])
def test_an_admin_signs_the_mailbox_in_from_the_dashboard(
    tmp_path, oauth, ca_file, monkeypatch, provider
):
    from fastapi.testclient import TestClient

    from gateway.config import load_settings
    from gateway.services.runtime import Runtime
    from gateway.store import access
    from gateway.store.db import upgrade, utcnow
    from gateway.web.app import create_app
    from tests.test_dashboard import csrf_of, sign_in

    for key, value in env_for(ca_file).items():
        monkeypatch.setenv(key, value)
    endpoints = (
        {"authority": oauth.url, "tenant": TENANT} if provider == "microsoft" else
        {"authorization_url": f"{oauth.url}/g/authorize", "token_url": f"{oauth.url}/g/token",
         "client_secret": "not-secret"}
    )  # fmt: skip
    settings = load_settings(None, database={"url": f"sqlite:///{tmp_path / 'gw.db'}"},
                             oauth2={"provider": provider, "client_id": CLIENT_ID,
                                     "token_file": tmp_path / "token.json", **endpoints})  # fmt: skip
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    access.add_user(runtime.engine, "ada", "admin", "correct horse battery", utcnow())
    access.add_user(runtime.engine, "dana", "dispatcher", "correct horse battery", utcnow())
    client = TestClient(create_app(runtime), follow_redirects=False)
    assert sign_in(client, "dana", "correct horse battery").status_code == 303
    token = csrf_of(client)
    assert client.post("/settings/oauth2/start", data={"csrf": token}).status_code == 403
    client = TestClient(create_app(runtime), follow_redirects=False)
    assert sign_in(client, "ada", "correct horse battery").status_code == 303
    page = client.get("/settings").text
    button = {"microsoft": "Sign in with Microsoft", "google": "Sign in with Google"}[provider]
    assert button in page and "Not signed in" in page
    token = csrf_of(client, "/settings")
    started = client.post("/settings/oauth2/start", data={"csrf": token})
    assert started.status_code == 200, started.text
    if provider == "microsoft":
        code = re.search(r'class="code">([0-9A-F]{8})<', started.text).group(1)
        oauth.approve(code)
        until(lambda: "Signed in as" in client.get("/settings/oauth2").text, 30, "signed in")
    else:
        url = re.search(r'href="(https://[^"]+/authorize[^"]+)"', started.text).group(1)
        answer = _no_follow(url.replace("&amp;", "&"), ca_file)
        done = client.post("/settings/oauth2/finish", data={"csrf": token, "answer": answer})
        assert "Signed in as" in done.text, done.text
    stored = json.loads((tmp_path / "token.json").read_text())
    assert stored["refresh_token"] in oauth.grants.refresh
    assert stat.S_IMODE((tmp_path / "token.json").stat().st_mode) == 0o600
    page = client.get("/settings").text
    assert "Signed in as" in page and stored["refresh_token"] not in page
    assert "oauth2 sign-in" in page  # in the audit log
