"""A copy of each sent text in the company mailbox's Sent folder (IMAP APPEND, aioimaplib),
for servers that do not keep one themselves. One connection, opened when first needed and
opened again after it fails."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aioimaplib


class ImapError(Exception):
    """The copy could not be made; the message says why (never with a secret in it)."""


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    security: Literal["tls", "none"]
    username: str
    password: str
    ca_file: Path | None = None
    timeout: float = 30.0

    def __repr__(self) -> str:  # never show the password, whatever logs this
        return (
            f"ImapServer({self.host}:{self.port}, security={self.security}, user={self.username!r})"
        )


async def sign_in(
    server: ImapServer, on_lost: Callable[[Exception | None], None] | None = None
) -> aioimaplib.IMAP4:
    """A signed-in connection to `server`; ImapError when it refuses the sign-in."""
    if server.security == "tls":
        context = ssl.create_default_context(cafile=str(server.ca_file) if server.ca_file else None)
        client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
            server.host, server.port, timeout=server.timeout, ssl_context=context,
            conn_lost_cb=on_lost,
        )  # fmt: skip
    else:
        client = aioimaplib.IMAP4(
            server.host, server.port, timeout=server.timeout, conn_lost_cb=on_lost
        )
    await client.wait_hello_from_server()
    response = await client.login(server.username, server.password)
    if response.result != "OK":
        with contextlib.suppress(Exception):
            await client.logout()
        raise ImapError(
            f"the mailbox at {server.host}:{server.port} refused the sign-in of "
            f"{server.username!r}; check imap.username and its password (an app password "
            "where two-step sign-in is on)"
        )
    return client


class SentFolder:
    def __init__(self, server: ImapServer, folder: str) -> None:
        self.server = server
        self.folder = folder
        self._client: aioimaplib.IMAP4 | None = None

    async def append(self, message: bytes, when: dt.datetime) -> None:
        """Store `message` in the folder, marked as read. One retry on a new connection."""
        for last_try in (False, True):
            try:
                client = await self._connection()
                response = await client.append(
                    message, mailbox=self.folder, flags=r"(\Seen)", date=when
                )
            except (OSError, TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout) as exc:
                await self.close()
                if last_try:
                    reason = str(exc) or type(exc).__name__
                    raise ImapError(f"cannot reach {self._where()}: {reason}") from None
                continue
            if response.result != "OK":
                words = b" ".join(response.lines).decode("utf-8", "replace")[:300]
                raise ImapError(f"{self._where()} refused the copy: {response.result} {words}")
            return

    async def _connection(self) -> aioimaplib.IMAP4:
        if self._client is not None and self._client.get_state() == "AUTH":
            return self._client
        await self.close()
        self._client = await sign_in(self.server)
        return self._client

    def _where(self) -> str:
        return f"the mailbox at {self.server.host}:{self.server.port}"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 5)
