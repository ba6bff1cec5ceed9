"""Who may use the gateway: API tokens (kept as SHA-256), dashboard users (argon2), and the
record of each Idempotency-Key the API has seen."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store.models import ApiRequest, ApiToken, User

tokens = ApiToken.__table__  # type: ignore[attr-defined]
users = User.__table__  # type: ignore[attr-defined]
api_requests = ApiRequest.__table__  # type: ignore[attr-defined]

ROLES = ("dispatcher", "admin")
TOKEN_PREFIX = "gw_"


class AccessError(ValueError):
    """A name is taken or a value is not allowed; the message says which."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, name: str, now: dt.datetime) -> str:
    """A new bearer token named `name`; returned once, kept only as its digest."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(tokens).values(name=name, token_hash=_digest(token), created_at=now)
            )
    except IntegrityError:
        raise AccessError(f"a token named {name!r} exists already") from None
    return token


@dataclass(frozen=True, slots=True)
class TokenHolder:
    id: int
    name: str


def token_holder(conn: Connection, token: str, now: dt.datetime) -> TokenHolder | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        select(tokens.c.id, tokens.c.name, tokens.c.last_used_at).where(
            tokens.c.token_hash == _digest(token), tokens.c.revoked.is_(False)
        )
    ).first()
    if row is None:
        return None
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):
        conn.execute(update(tokens).where(tokens.c.id == row.id).values(last_used_at=now))
    return TokenHolder(row.id, row.name)


def add_user(engine: Engine, name: str, role: str, password: str, now: dt.datetime) -> None:
    from argon2 import PasswordHasher

    if role not in ROLES:
        raise AccessError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise AccessError("the password must be at least 10 characters")
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(users).values(
                    name=name, role=role, password_hash=PasswordHasher().hash(password),
                    created_at=now,
                )
            )  # fmt: skip
    except IntegrityError:
        raise AccessError(f"a user named {name!r} exists already") from None


# --- idempotency keys -------------------------------------------------------------------------

# A request marked as running this long ago died with its process: its key may be used again.
ABANDONED_AFTER = dt.timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class Seen:
    body_hash: str
    status_code: int | None  # None: still running
    response: str | None


def begin_request(
    engine: Engine,
    token: int,
    key: str,
    endpoint: str,
    body_hash: str,
    now: dt.datetime,
) -> Seen | None:
    """Mark `key` as running for this body, committed at once so a second request sees it.
    Returns what was recorded before when the key is not new (None when it is)."""
    values = {
        "token_id": token,
        "idempotency_key": key,
        "endpoint": endpoint,
        "body_hash": body_hash,
        "created_at": now,
    }
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                conn.execute(insert(api_requests).values(**values))
            return None
        except IntegrityError:
            pass
        row = conn.execute(
            select(api_requests).where(
                api_requests.c.token_id == token, api_requests.c.idempotency_key == key
            )
        ).one()
        if row.status_code is None and now - row.created_at > ABANDONED_AFTER:
            conn.execute(delete(api_requests).where(api_requests.c.id == row.id))
            conn.execute(insert(api_requests).values(**values))
            return None
        return Seen(row.body_hash, row.status_code, row.response)


def finish_request(
    conn: Connection, token: int, key: str, status_code: int, response: str, now: dt.datetime
) -> None:
    conn.execute(
        update(api_requests)
        .where(api_requests.c.token_id == token, api_requests.c.idempotency_key == key)
        .values(status_code=status_code, response=response, completed_at=now)
    )


def forget_request(engine: Engine, token: int, key: str) -> None:
    """The request failed before it changed anything: its key may be used again."""
    with engine.begin() as conn:
        conn.execute(
            delete(api_requests).where(
                api_requests.c.token_id == token,
                api_requests.c.idempotency_key == key,
                api_requests.c.status_code.is_(None),
            )
        )


def body_digest(body: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
