"""Who may use the gateway: API tokens (kept as SHA-256), dashboard users (argon2), and the
record of each Idempotency-Key the API has seen."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store.tables import api_requests, inbound, login_failures, sessions, tokens, users

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


def token_holder(conn: Connection, token: str) -> TokenHolder | None:
    """Who holds `token`: a read only, so checking a token never waits for a writer (its
    last use is written apart, by `note_token_use`)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        select(tokens.c.id, tokens.c.name).where(
            tokens.c.token_hash == _digest(token), tokens.c.revoked.is_(False)
        )
    ).first()
    return TokenHolder(row.id, row.name) if row is not None else None


def note_token_use(engine: Engine, token_id: int, now: dt.datetime) -> None:
    """Bookkeeping: when the token was last used (to the minute)."""
    with engine.begin() as conn:
        conn.execute(
            update(tokens)
            .where(tokens.c.id == token_id,
                   (tokens.c.last_used_at.is_(None))
                   | (tokens.c.last_used_at < now - dt.timedelta(minutes=1)))
            .values(last_used_at=now)
        )  # fmt: skip


def add_user(engine: Engine, name: str, role: str, password: str, now: dt.datetime) -> None:
    with engine.begin() as conn:
        insert_user(conn, name, role, password, now)


def insert_user(conn: Connection, name: str, role: str, password: str, now: dt.datetime) -> None:
    from argon2 import PasswordHasher

    if role not in ROLES:
        raise AccessError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise AccessError("the password must be at least 10 characters")
    if not name or len(name) > 100 or any(c in name for c in "\r\n\t"):
        raise AccessError("a user name is 1 to 100 characters on one line")
    try:
        with conn.begin_nested():
            conn.execute(
                insert(users).values(
                    name=name, role=role, password_hash=PasswordHasher().hash(password),
                    created_at=now,
                    # What was received before they joined is not unread to them.
                    unread_after=select(func.coalesce(func.max(inbound.c.id), 0))
                    .scalar_subquery(),
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


# --- dashboard users and their sessions -------------------------------------------------------


SESSION_IDLE = dt.timedelta(hours=12)  # signed out after this long without a request
SESSION_MAX = dt.timedelta(days=7)  # and after this long whatever happens
# Sign-in throttle: this many failures in the window, for one name or from one address, and
# further tries are refused until the oldest failure leaves the window.
FAILURE_WINDOW = dt.timedelta(minutes=15)
FAILURES_PER_NAME = 5
FAILURES_PER_ADDRESS = 20


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: int
    name: str
    role: str
    csrf: str
    # Set when the session's last-seen time is over a minute old and should be written again.
    stale_seen: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def throttled(conn: Connection, name: str, address: str, now: dt.datetime) -> dt.timedelta | None:
    """How long until `name` from `address` may try again (None: now)."""
    since = now - FAILURE_WINDOW
    waits = []
    for column, value, limit in (
        (login_failures.c.name, name, FAILURES_PER_NAME),
        (login_failures.c.address, address, FAILURES_PER_ADDRESS),
    ):
        times = conn.execute(
            select(login_failures.c.at)
            .where(column == value, login_failures.c.at > since)
            .order_by(login_failures.c.at.desc())
            .limit(limit)
        ).scalars().all()  # fmt: skip
        if len(times) >= limit:
            waits.append(times[-1] + FAILURE_WINDOW - now)
    return max(waits) if waits else None


def sign_in(
    engine: Engine, name: str, password: str, address: str, now: dt.datetime
) -> tuple[str, SignedIn] | None:
    """A new session token for `name` when the password is right (None when not, and the
    failure is counted). Raises Throttled when too many tries failed lately."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    name = name[:100]
    with engine.begin() as conn:
        wait = throttled(conn, name, address, now)
        if wait is not None:
            raise Throttled(wait)
        user = conn.execute(
            select(users).where(users.c.name == name, users.c.disabled.is_(False))
        ).first()
        hasher = PasswordHasher()
        try:
            # An unknown name costs the same time as a wrong password: names are not revealed.
            hasher.verify(user.password_hash if user else _DUMMY_HASH.value(hasher), password)
            ok = user is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None:
            conn.execute(insert(login_failures).values(name=name, address=address, at=now))
            return None
        conn.execute(delete(login_failures).where(login_failures.c.name == name))
        conn.execute(delete(sessions).where(sessions.c.expires_at < now))
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        conn.execute(
            insert(sessions).values(
                token_hash=_digest(token), user_id=user.id, csrf=csrf, created_at=now,
                seen_at=now, expires_at=now + SESSION_MAX,
            )
        )  # fmt: skip
        return token, SignedIn(user.id, user.name, user.role, csrf)


class Throttled(Exception):
    def __init__(self, wait: dt.timedelta) -> None:
        super().__init__(f"too many failed sign-ins; try again in {_minutes(wait)}")
        self.wait = wait


def _minutes(wait: dt.timedelta) -> str:
    minutes = max(1, -(-int(wait.total_seconds()) // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class _DummyHash:
    """A hash to verify against when the name is unknown, made once."""

    _value: str | None = None

    def value(self, hasher: Any) -> str:
        if self._value is None:
            self._value = hasher.hash(secrets.token_hex(16))
        return self._value


_DUMMY_HASH = _DummyHash()


def session_user(conn: Connection, token: str, now: dt.datetime) -> SignedIn | None:
    if not token or len(token) > 100:
        return None
    row = conn.execute(
        select(sessions.c.token_hash, sessions.c.seen_at, sessions.c.csrf, users.c.id,
               users.c.name, users.c.role)
        .select_from(sessions.join(users, users.c.id == sessions.c.user_id))
        .where(sessions.c.token_hash == _digest(token), sessions.c.expires_at > now,
               sessions.c.seen_at > now - SESSION_IDLE, users.c.disabled.is_(False))
    ).first()  # fmt: skip
    if row is None:
        return None
    stale = now - row.seen_at > dt.timedelta(minutes=1)
    return SignedIn(row.id, row.name, row.role, row.csrf, row.token_hash if stale else None)


def note_session_seen(conn: Connection, token_hash: str, now: dt.datetime) -> None:
    """Bookkeeping for the idle limit: the session was used now (done apart from the read,
    so that it never holds one up)."""
    conn.execute(update(sessions).where(sessions.c.token_hash == token_hash).values(seen_at=now))


def sign_out(engine: Engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(sessions).where(sessions.c.token_hash == _digest(token)))


def list_users(conn: Connection) -> list[dict[str, Any]]:
    return [
        dict(row._mapping)
        for row in conn.execute(
            select(
                users.c.id, users.c.name, users.c.role, users.c.disabled, users.c.created_at
            ).order_by(users.c.name)
        )
    ]


def set_user(conn: Connection, user: int, *, role: str | None = None,
             disabled: bool | None = None) -> None:  # fmt: skip
    values: dict[str, Any] = {}
    if role is not None:
        if role not in ROLES:
            raise AccessError(f"role {role!r} is not one of {', '.join(ROLES)}")
        values["role"] = role
    if disabled is not None:
        values["disabled"] = disabled
    if conn.execute(update(users).where(users.c.id == user).values(**values)).rowcount == 0:
        raise AccessError(f"there is no user {user}")
    if disabled:
        conn.execute(delete(sessions).where(sessions.c.user_id == user))
