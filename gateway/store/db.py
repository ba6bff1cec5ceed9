"""Engines and schema state for SQLite (WAL) and PostgreSQL, through one code path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(Exception):
    """The database cannot be used as it is; the message says what to run or fix."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def database_words(exc: BaseException) -> str:
    """What the database said of a failure: the driver's message, without the statement and
    parameters SQLAlchemy adds (they change at every try, so a repeat would look new)."""
    said = getattr(exc, "orig", None)
    return str(said if said is not None else exc)


def failure_words(exc: BaseException) -> str:
    """What to say of a step that failed: the database's words when the database refused it
    (away, locked, its disk full); otherwise the error's type too, for it is a fault to find."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return database_words(exc)
    return f"{type(exc).__name__}: {database_words(exc)}"


def make_engine(url: str, **kwargs: Any) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"database.url {url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            folder = Path(database).parent
            if not folder.is_dir():
                raise DatabaseError(f"the folder of the database file {database!r} does not exist")
        engine = create_engine(parsed, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_write_lock_first)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


BUSY_MS = 30_000  # how long a statement waits for another writer before the database is "busy"


def write_if_free(engine: Engine, work: Callable[[Connection], None], wait_ms: int = 100) -> bool:
    """Run `work` in a transaction of its own unless another writer holds the database for
    longer than `wait_ms`: for bookkeeping that must never hold up a read (when a thread was
    last read, when a session was last seen). False when it did not happen; the next read
    tries again."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:  # the connection's own setting (SQLAlchemy begins a transaction around it)
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(wait_ms)}")
            conn.commit()
        try:
            with conn.begin():
                if not sqlite:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait_ms)}ms'")
                work(conn)
            return True
        except DBAPIError:  # locked ("database is locked"; LockNotAvailable)
            return False
        finally:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_MS}")
                conn.commit()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the dashboard, `outbox list`) run while a sender writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    cursor.close()


def _sqlite_write_lock_first(conn: Connection, _name: str) -> None:
    """Before a savepoint that would open SQLite's transaction, take the write lock. A
    transaction a SAVEPOINT opens is deferred: its first read fixes a snapshot, and its first
    write then fails at once with "database is locked" if another writer committed in between
    (the busy timeout does not apply, as waiting cannot help). Savepoints here guard writes, so
    taking the lock first makes such a writer wait its turn like any other. (Without a savepoint
    the driver opens the transaction at the first write, which waits as it should.)"""
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise DatabaseError(f"cannot open the database: {exc.orig}") from None


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply every migration; returns the revisions before and after."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is not the one this code expects. A SQLite
    file that does not exist is not made by asking (only `gateway db upgrade` makes it)."""
    url = engine.url
    missing = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if missing and not Path(str(url.database)).exists():
        raise DatabaseError(
            f"there is no database at {url.database}; run `gateway db upgrade` first"
        )
    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return
    if current is None:
        raise DatabaseError(
            f"the database at {engine.url.render_as_string(hide_password=True)} has no tables "
            "yet; run `gateway db upgrade` first"
        )
    script = ScriptDirectory.from_config(alembic_config(engine))
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise DatabaseError(
            f"the database is at revision {current}, which this version of gateway does not "
            "know (it was migrated by a newer version); upgrade gateway"
        )
    raise DatabaseError(
        f"the database is at revision {current}, this version needs {head}; "
        "run `gateway db upgrade`"
    )


def insert_or(bind: Connection | Engine, table: Table) -> PostgresqlInsert | SqliteInsert:
    """An INSERT of the database's own dialect, which takes ON CONFLICT (both have it)."""
    if bind.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)
