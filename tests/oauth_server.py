"""A small OAuth2 server for the tests, standing in for Microsoft's and Google's sign-in:
OpenID discovery (as MSAL asks it), the device-code flow (RFC 8628), the authorization-code flow
with a redirect (Google's installed-app flow), the token endpoint (device code, authorization
code, refresh token) and, for Dovecot's `oauth2` passdb, token introspection (RFC 7662).

Clients reach it over HTTPS with the tests' CA (MSAL and oauthlib insist on it); Dovecot asks
the introspection endpoint over plain HTTP on loopback. Access tokens live `lifetime` seconds;
refresh tokens can be revoked. Every grant and introspection is counted, for the tests."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

CLIENT_ID = "00000000-test-4ca1-b0b0-gateway00001"
TENANT = "contoso.example"


@dataclass
class Grants:
    user: str
    lifetime: float = 3600.0
    access: dict[str, float] = field(default_factory=dict)  # access token -> expiry (monotonic)
    refresh: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # device_code -> state
    codes: set[str] = field(default_factory=set)  # authorization codes handed out
    counts: Counter[str] = field(default_factory=Counter)
    scopes_asked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tokens(self) -> dict[str, Any]:
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access[access] = time.monotonic() + self.lifetime
            self.refresh.add(refresh)
        claims = {"aud": CLIENT_ID, "iss": "test", "sub": "mailbox", "tid": TENANT,
                  "preferred_username": self.user, "exp": int(time.time()) + 3600,
                  "iat": int(time.time())}  # fmt: skip
        info = {"uid": "mailbox", "utid": TENANT}
        return {
            "token_type": "Bearer", "expires_in": int(self.lifetime), "access_token": access,
            "refresh_token": refresh, "id_token": f"{_b64({'alg': 'none'})}.{_b64(claims)}.",
            "client_info": _b64(info), "scope": " ".join(self.scopes_asked[-1:]),
        }  # fmt: skip

    def live(self, token: str) -> bool:
        with self.lock:
            return self.access.get(token, 0) > time.monotonic()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class OAuthServer:
    def __init__(self, cert: trustme.LeafCert, user: str) -> None:
        self.grants = Grants(user)
        grants = self.grants
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _form(self) -> dict[str, str]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                return {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path.endswith("/.well-known/openid-configuration"):
                    base = f"{outer.url}/{TENANT}"
                    return self._json(200, {
                        "issuer": f"{base}/v2.0",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    })  # fmt: skip
                if url.path.endswith("/authorize"):
                    # The person signs in and consents at once; the browser is sent back.
                    query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                    grants.scopes_asked.append(query.get("scope", ""))
                    code = "code-" + secrets.token_urlsafe(12)
                    grants.codes.add(code)
                    back = urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
                    self.send_response(302)
                    self.send_header("Location", f"{query['redirect_uri']}?{back}")
                    self.end_headers()
                    return None
                return self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                form = self._form()
                path = urllib.parse.urlsplit(self.path).path
                if path.endswith("/introspect"):
                    grants.counts["introspect"] += 1
                    token = form.get("token", "")
                    if grants.live(token):
                        return self._json(200, {"active": True, "username": grants.user})
                    return self._json(200, {"active": False})
                if path.endswith("/devicecode"):
                    grants.scopes_asked.append(form.get("scope", ""))
                    device = "dc-" + secrets.token_urlsafe(12)
                    user_code = secrets.token_hex(4).upper()
                    grants.devices[device] = {"user_code": user_code, "approved": False}
                    return self._json(200, {
                        "device_code": device, "user_code": user_code,
                        "verification_uri": f"{outer.url}/device", "expires_in": 60,
                        "interval": 1,
                        "message": f"To sign in, open {outer.url}/device and enter {user_code}.",
                    })  # fmt: skip
                if path.endswith("/token"):
                    return self._token(form)
                return self._json(404, {"error": "not_found"})

            def _token(self, form: dict[str, str]) -> None:
                grant = form.get("grant_type", "")
                grants.counts[grant] += 1
                client = form.get("client_id")
                basic = self.headers.get("Authorization", "")
                if basic.startswith("Basic "):  # RFC 6749 2.3.1: the client may sign in so
                    client = base64.b64decode(basic[6:]).decode().partition(":")[0]
                if client != CLIENT_ID:
                    return self._json(400, {"error": "invalid_client",
                                            "error_description": "unknown client"})  # fmt: skip
                if grant == "refresh_token":
                    token = form.get("refresh_token", "")
                    if token in grants.revoked or token not in grants.refresh:
                        return self._json(400, {
                            "error": "invalid_grant",
                            "error_description": "AADSTS70008: The refresh token was revoked.",
                        })  # fmt: skip
                    return self._json(200, grants.tokens())
                if grant == "urn:ietf:params:oauth:grant-type:device_code":
                    state = grants.devices.get(form.get("device_code", ""))
                    if state is None:
                        return self._json(400, {"error": "expired_token"})
                    if not state["approved"]:
                        return self._json(400, {"error": "authorization_pending"})
                    return self._json(200, grants.tokens())
                if grant == "authorization_code":
                    if form.get("code") not in grants.codes:
                        return self._json(400, {"error": "invalid_grant"})
                    grants.codes.discard(form["code"])
                    return self._json(200, grants.tokens())
                return self._json(400, {"error": "unsupported_grant_type"})

        self.https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # introspection only
        self.url = f"https://127.0.0.1:{self.https.server_address[1]}"
        self.introspection_url = f"http://127.0.0.1:{self.http.server_address[1]}/introspect"
        for server in (self.https, self.http):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    # --- what the person and the provider's admin do ------------------------------------------

    def approve(self, user_code: str) -> None:
        """The person types the code at the verification page and signs in."""
        for state in self.grants.devices.values():
            if state["user_code"] == user_code:
                state["approved"] = True
                return
        raise AssertionError(f"no device sign-in with code {user_code}")

    def revoke_all(self) -> None:
        """An admin revokes the sessions (or the password changed): refresh tokens die."""
        with self.grants.lock:
            self.grants.revoked |= self.grants.refresh
            self.grants.access.clear()

    def stop(self) -> None:
        for server in (self.https, self.http):
            server.shutdown()
