"""Where an OAuth2 access token for SMTP (XOAUTH2) comes from: a file an outside agent keeps
fresh, or a command that prints one. The gateway asks again for every new connection, so a
refreshed token is used as soon as it exists."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path

COMMAND_TIMEOUT = 30.0


class TokenError(Exception):
    """No token could be had; the message says why without showing any secret."""


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
