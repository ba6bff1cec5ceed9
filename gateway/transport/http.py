"""One HTTP request to an SMS service, told apart the way the sender needs: the request never
reached the service (safe to send again, by any channel), or it was sent and the answer was lost
(the service may have acted on it), or the service answered.

The standard library's http.client, run in a thread: it separates sending the request from
reading the answer, which a higher-level client hides, and it adds no dependency.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from gateway.transport.tls import tls_context

MAX_ANSWER = 1_000_000  # bytes of an answer read at most


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]


class NotSent(Exception):
    """The request did not reach the service (no connection, TLS refused): it did nothing."""


class AnswerLost(Exception):
    """The request was sent and no answer came: the service may have acted on it."""


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass(frozen=True)
class Service:
    """A service's base URL (scheme, host, port and path prefix) and how to reach it."""

    base_url: str
    timeout: float = 15.0
    ca_file: Path | None = None

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(self.base_url)
        host = parts.hostname or ""
        if parts.scheme == "https":
            context = tls_context(self.ca_file)
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=self.timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=self.timeout)
        return connection, parts.path.rstrip("/")

    def request_sync(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Answer:
        connection, prefix = self._connection()
        try:
            try:
                connection.connect()
                connection.request(method, prefix + path, body=body, headers=headers)
            except ssl.SSLError as exc:
                raise NotSent(f"TLS failed: {exc.reason or exc}") from None
            except OSError as exc:
                raise NotSent(f"{self.base_url}: {exc.strerror or exc}") from None
            try:
                response = connection.getresponse()
                data = response.read(MAX_ANSWER)
            except (OSError, http.client.HTTPException) as exc:
                why = str(exc) or type(exc).__name__
                raise AnswerLost(f"no answer from {self.base_url}: {why}") from None
            return Answer(
                response.status,
                data.decode("utf-8", "replace"),
                {k.lower(): v for k, v in response.getheaders()},
            )
        finally:
            connection.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        return await asyncio.to_thread(self.request_sync, method, path, body, headers or {})
