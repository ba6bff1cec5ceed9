"""OAuth2 access tokens for XOAUTH2 sign-in to the company's SMTP and IMAP servers.

Two ways to have them:
- from outside: a file an outside agent keeps fresh, or a command that prints one
  (`oauth2_token_file`, `oauth2_token_command`), asked again for every new connection;
- built in: `gateway auth microsoft|google|custom` signs in once, as a person, and keeps the
  refresh token in `[oauth2] token_file` (mode 0600, never printed or logged); every process
  then gets access tokens from the provider's token endpoint by itself and refreshes them before
  they expire. A refresh token the provider no longer takes (revoked, expired, password changed)
  is a failure that says which command to run again.

The sign-in itself: Microsoft's device-code flow through MSAL (a code typed at
microsoft.com/devicelogin on any device), Google's installed-app flow through
google-auth-oauthlib with a loopback redirect (Google refuses mail scopes in its device flow;
on a server without a browser the redirected address is pasted back), and for `custom` the
standard device flow (RFC 8628).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import OAuth2Settings

COMMAND_TIMEOUT = 30.0
HTTP_TIMEOUT = 30.0
# An access token is renewed this long before the provider says it expires (at most half its
# life), so a connection never signs in with one that runs out on the way.
RENEW_MARGIN = 120.0


class TokenError(Exception):
    """No token could be had; the message says why without showing any secret."""


class SignInRevoked(TokenError):
    """The stored refresh token is no longer taken: a person must sign in again."""


def token_source(file: Path | None, command: str | None) -> Callable[[], Awaitable[str]] | None:
    if file is not None:
        return lambda: _read(file)
    if command is not None:
        return lambda: _run(command)
    return None


async def _read(path: Path) -> str:
    try:
        token = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
    except OSError as exc:
        raise TokenError(f"token file {str(path)!r} cannot be read: {exc.strerror}") from None
    if not token:
        raise TokenError(f"token file {str(path)!r} is empty")
    return token


async def _run(command: str) -> str:
    words = shlex.split(command)
    try:
        process = await asyncio.create_subprocess_exec(
            *words, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        raise TokenError(f"token command {words[0]!r} cannot run: {exc.strerror}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        raise TokenError(f"token command gave no token within {COMMAND_TIMEOUT:g} s") from None
    if process.returncode != 0:
        # Its error output may hold secrets, so only the exit status is reported.
        raise TokenError(f"token command exited with status {process.returncode}")
    token = output.decode("utf-8", "replace").strip()
    if not token:
        raise TokenError("token command printed no token")
    return token


# --- the stored sign-in ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSignIn:
    """What `gateway auth` keeps: enough to get access tokens without a person."""

    provider: str
    client_id: str
    token_url: str
    scopes: tuple[str, ...]
    refresh_token: str
    account: str | None = None  # who signed in, as the provider named them

    def __repr__(self) -> str:  # never show the refresh token, whatever logs this
        return f"StoredSignIn({self.provider}, account={self.account!r})"


def save_sign_in(path: Path, sign_in: StoredSignIn) -> None:
    """Write the sign-in where only this user can read it (mode 0600 from the first byte),
    replacing any earlier one at once (a reader never sees half a file)."""
    data = json.dumps({
        "provider": sign_in.provider, "client_id": sign_in.client_id,
        "token_url": sign_in.token_url, "scopes": list(sign_in.scopes),
        "refresh_token": sign_in.refresh_token, "account": sign_in.account,
    })  # fmt: skip
    folder = path.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".oauth2-", dir=folder)
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def load_sign_in(path: Path, command: str) -> StoredSignIn:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return StoredSignIn(
            data["provider"], data["client_id"], data["token_url"], tuple(data["scopes"]),
            data["refresh_token"], data.get("account"),
        )  # fmt: skip
    except FileNotFoundError:
        raise SignInRevoked(
            f"not signed in yet: there is no {str(path)!r}; run `{command}`"
        ) from None
    except OSError as exc:
        raise TokenError(
            f"oauth2.token_file {str(path)!r} cannot be read: {exc.strerror}"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise TokenError(f"oauth2.token_file {str(path)!r} is damaged; run `{command}`") from None


# --- the provider's token endpoint ----------------------------------------------------------


def post_form(url: str, fields: dict[str, str]) -> dict[str, Any]:
    """POST a form to an OAuth2 endpoint; its JSON answer, also for an error (which OAuth2
    endpoints answer with 400 and a JSON body naming it). TokenError when it cannot be asked."""
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, body, {"Accept": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        try:
            return dict(json.loads(exc.read()))
        except ValueError:
            raise TokenError(f"{_host(url)} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TokenError(f"cannot reach {_host(url)}: {reason}") from None
    except ValueError:
        raise TokenError(f"{_host(url)} did not answer with JSON") from None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


class TokenKeeper:
    """Access tokens from the stored sign-in, for every XOAUTH2 connection of this process:
    one kept while it is good, a new one asked for before it runs out. Thread- and task-safe
    (one refresh at a time); other processes keep their own."""

    def __init__(
        self, settings: OAuth2Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.command = f"gateway auth {settings.provider or 'microsoft'}"
        self.refreshes = 0  # for tests and diagnostics
        self._token: str | None = None
        self._good_until = 0.0
        self._lock = threading.Lock()

    async def __call__(self) -> str:
        return await asyncio.to_thread(self.token)

    def token(self) -> str:
        with self._lock:
            if self._token is not None and self.clock() < self._good_until:
                return self._token
            return self._refresh()

    def _refresh(self) -> str:
        stored = load_sign_in(self.settings.token_file, self.command)
        fields = {"grant_type": "refresh_token", "refresh_token": stored.refresh_token,
                  "client_id": stored.client_id}  # fmt: skip
        if stored.provider == "microsoft":
            fields["scope"] = " ".join([*stored.scopes, "offline_access"])
        secret = self.settings.resolve_client_secret()
        if secret:
            fields["client_secret"] = secret
        started = self.clock()
        answer = post_form(stored.token_url, fields)
        self.refreshes += 1
        if "access_token" not in answer:
            error = str(answer.get("error", "no access token"))
            words = str(answer.get("error_description", "")).splitlines()[0:1]
            said = f"{error}: {words[0]}" if words else error
            if error in ("invalid_grant", "interaction_required", "invalid_client"):
                raise SignInRevoked(
                    f"the OAuth2 sign-in of {stored.account or 'the mailbox'} is no longer "
                    f"accepted ({said}); run `{self.command}` again"
                )
            raise TokenError(f"{_host(stored.token_url)} gave no access token ({said})")
        lifetime = float(answer.get("expires_in", 3600))
        self._token = str(answer["access_token"])
        self._good_until = started + lifetime - min(RENEW_MARGIN, lifetime / 2)
        rotated = answer.get("refresh_token")
        if rotated and rotated != stored.refresh_token:
            # Providers that rotate refresh tokens expect the newest one next time.
            save_sign_in(self.settings.token_file, StoredSignIn(
                stored.provider, stored.client_id, stored.token_url, stored.scopes,
                str(rotated), stored.account))  # fmt: skip
        return self._token


# --- signing in, once, as a person ----------------------------------------------------------
#
# Each flow is two steps, so the command line and the dashboard share them: start (which says
# what the person must do: `prompt`, `url`) and finish (which blocks until the provider has the
# person's answer, and returns what to store).


Say = Callable[[str], None]  # tells the person what to do


class MicrosoftDeviceSignIn:
    """Microsoft's device-code flow through MSAL: a code typed at microsoft.com/devicelogin."""

    def __init__(self, settings: OAuth2Settings) -> None:
        import msal

        if settings.client_id is None:
            raise TokenError("oauth2.client_id is not set: the app registration's client id")
        self.settings = settings
        authority = f"{settings.authority.rstrip('/')}/{settings.tenant}"
        known = settings.authority.rstrip("/") == "https://login.microsoftonline.com"
        try:
            self.app = msal.PublicClientApplication(
                settings.client_id, authority=authority, instance_discovery=known or False
            )  # fmt: skip
            self.scopes = settings.scopes_asked()
            self.flow = self.app.initiate_device_flow(scopes=self.scopes)
        except ValueError as exc:  # MSAL's words for an authority or tenant it cannot use
            raise TokenError(f"Microsoft's sign-in cannot start: {exc}") from None
        if "user_code" not in self.flow:
            raise TokenError(f"Microsoft refused to start the sign-in: {_said(self.flow)}")
        self.url = str(self.flow.get("verification_uri"))
        self.code = str(self.flow["user_code"])
        self.prompt = str(self.flow.get("message") or f"Open {self.url} and enter the code "
                          f"{self.code}")  # fmt: skip

    def finish(self) -> StoredSignIn:
        result = self.app.acquire_token_by_device_flow(self.flow)
        if "refresh_token" not in result:
            raise TokenError(f"the sign-in did not complete: {_said(result)}")
        account = (result.get("id_token_claims") or {}).get("preferred_username")
        return StoredSignIn("microsoft", self.settings.client_id or "",
                            self.app.authority.token_endpoint, tuple(self.scopes),
                            result["refresh_token"], account)  # fmt: skip


class CustomDeviceSignIn:
    """The standard device flow (RFC 8628) against a custom provider's endpoints."""

    def __init__(self, settings: OAuth2Settings) -> None:
        if settings.client_id is None:
            raise TokenError("oauth2.client_id is not set")
        self.settings = settings
        self.token_url, device_url, _ = settings.endpoints()
        assert device_url is not None
        self.scopes = settings.scopes_asked()
        self.client = {"client_id": settings.client_id}
        secret = settings.resolve_client_secret()
        if secret:
            self.client["client_secret"] = secret
        self.started = post_form(device_url, {**self.client, "scope": " ".join(self.scopes)})
        if "device_code" not in self.started:
            raise TokenError(f"the provider refused to start the sign-in: {_said(self.started)}")
        self.url = str(self.started.get("verification_uri_complete")
                       or self.started.get("verification_uri"))  # fmt: skip
        self.code = str(self.started.get("user_code"))
        self.prompt = f"Open {self.url} and enter the code {self.code}"

    def finish(self) -> StoredSignIn:
        interval = float(self.started.get("interval", 5))
        deadline = time.monotonic() + float(self.started.get("expires_in", 900))
        while time.monotonic() < deadline:
            time.sleep(interval)
            answer = post_form(self.token_url, {
                **self.client, "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": str(self.started["device_code"]),
            })  # fmt: skip
            error = answer.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5
                continue
            if "refresh_token" in answer:
                refresh = str(answer["refresh_token"])
                return StoredSignIn("custom", self.client["client_id"], self.token_url,
                                    tuple(self.scopes), refresh, None)  # fmt: skip
            raise TokenError(f"the sign-in did not complete: {_said(answer)}")
        raise TokenError("the code ran out before the sign-in was done; start again")


class GoogleSignIn:
    """Google's installed-app flow through google-auth-oauthlib, redirected to a loopback port of
    this machine (Google refuses mail scopes in its device flow). A browser on another machine
    cannot load that last page; the address it shows is pasted back to `finish`."""

    def __init__(self, settings: OAuth2Settings, port: int) -> None:
        from google_auth_oauthlib.flow import Flow

        if settings.client_id is None:
            raise TokenError("oauth2.client_id is not set: the OAuth client's id")
        self.settings = settings
        self.token_url, _, authorization_url = settings.endpoints()
        self.scopes = settings.scopes_asked()
        redirect = f"http://127.0.0.1:{port}/"
        config = {"installed": {
            "client_id": settings.client_id,
            "client_secret": settings.resolve_client_secret() or "",
            "auth_uri": authorization_url, "token_uri": self.token_url,
            "redirect_uris": [redirect],
        }}  # fmt: skip
        self.flow = Flow.from_client_config(config, scopes=self.scopes, redirect_uri=redirect)
        self.url, _ = self.flow.authorization_url(access_type="offline", prompt="consent")
        self.prompt = (
            f"Open this address in a browser and sign in as the mailbox:\n\n{self.url}\n\n"
            "If the browser is not on this machine, its last page will not load: copy the "
            "address it shows and paste it here."
        )

    def finish(self, answer: str) -> StoredSignIn:
        if "code=" not in answer:
            raise TokenError("that address holds no sign-in code (it has '?code=...' in it)")
        # oauthlib insists on https for the answer; the loopback redirect is http by Google's
        # own rules for installed apps.
        secure = "https://" + answer.strip().split("://", 1)[-1]
        try:
            self.flow.fetch_token(authorization_response=secure)
        except Exception as exc:  # oauthlib's and requests' errors: said, without secrets
            raise TokenError(f"the sign-in did not complete: {type(exc).__name__}: {exc}") from None
        refresh = self.flow.credentials.refresh_token
        if not refresh:
            raise TokenError("Google gave no refresh token; remove the app's access and try again")
        return StoredSignIn("google", self.settings.client_id or "", self.token_url,
                            tuple(self.scopes), refresh, None)  # fmt: skip


def device_sign_in(settings: OAuth2Settings) -> MicrosoftDeviceSignIn | CustomDeviceSignIn:
    if settings.provider == "microsoft":
        return MicrosoftDeviceSignIn(settings)
    return CustomDeviceSignIn(settings)


def sign_in_google(
    settings: OAuth2Settings, say: Say, pasted: Callable[[], str | None]
) -> StoredSignIn:
    """The command line's Google sign-in: a browser on this machine lands on a loopback
    listener and the sign-in completes by itself; otherwise the person pastes the address."""
    landing = _Landing()
    flow = GoogleSignIn(settings, landing.port)
    say(flow.prompt)
    return flow.finish(landing.wait(pasted))


class _Landing:
    """A one-request HTTP listener on loopback, where the browser is sent after the sign-in."""

    def __init__(self) -> None:
        import http.server

        found: list[str] = []
        self.found = found

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found.append(f"http://127.0.0.1{self.path}")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.end_headers()
                self.wfile.write(b"Signed in. You may close this page.")

            def log_message(self, *args: Any) -> None:  # nothing on the terminal
                return

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, pasted: Callable[[], str | None]) -> str:
        """The address the browser came back to: from the listener, or pasted by the person."""
        typed: list[str] = []

        def read() -> None:
            line = pasted()
            if line:
                typed.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            while not self.found and not typed:  # no input left: only the browser answers
                time.sleep(0.1)
            return (self.found or typed)[0]
        finally:
            self.server.shutdown()


def _said(answer: dict[str, Any]) -> str:
    error = answer.get("error", "unknown error")
    description = str(answer.get("error_description", "")).splitlines()
    return f"{error}: {description[0]}" if description else str(error)
