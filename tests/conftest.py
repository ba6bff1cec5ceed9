from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
import trustme
from hypothesis import HealthCheck, settings

from gateway.config import load_settings
from gateway.services.runtime import Runtime
from gateway.store.db import make_engine, upgrade
from tests.servers import SmtpTestServer, password_checker, server_tls_context

# Shared, noisy machines: a property test must fail on its property, never on a slow example.
settings.register_profile("gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gateway")

PG_ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parents[1]

# `make test-quick`: the rules and the core paths against in-process servers (aiosmtpd, a SQLite
# file), no Debian server, browser or PostgreSQL (tests that spawn a `gateway` are marked slow);
# under a minute. `make test` runs all.
QUICK = (
    "tests/domain/",
    "tests/faults/test_fuzz.py",
    "tests/faults/test_clock_faults.py",
    "tests/faults/test_hostile_requests.py",
    "tests/test_smtp_transport.py",
    "tests/test_sender.py",
    "tests/test_outbox.py",
    "tests/test_inbound.py",
    "tests/test_providers.py",
    "tests/test_layers.py",
    "tests/test_store_fastpath.py",
    "tests/test_threads.py",
    "tests/test_teamwork.py",
    "tests/test_search.py",
    "tests/test_quick_replies.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(item.fspath).relative_to(REPO).as_posix()
        if where.startswith(QUICK):
            item.add_marker(pytest.mark.quick)


def _postgres_or_skip() -> None:
    try:
        engine = sqlalchemy.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}"
        if os.environ.get("GATEWAY_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (this machine runs PostgreSQL, so these tests must run)")
        pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test."""
    _postgres_or_skip()
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = (
        sqlalchemy.engine.make_url(PG_ADMIN_URL)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def _running_smtp(**kwargs: object) -> Iterator[SmtpTestServer]:
    server = SmtpTestServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """The own route's server."""
    yield from _running_smtp()


@pytest.fixture
def relay_server() -> Iterator[SmtpTestServer]:
    """A second server, standing in for the hosted relay."""
    yield from _running_smtp()


@pytest.fixture
def auth_server() -> Iterator[SmtpTestServer]:
    """A server that signs in user "dispatch" with password "right" (no TLS needed)."""
    yield from _running_smtp(
        authenticator=password_checker("dispatch", "right"), auth_require_tls=False
    )


@pytest.fixture
def implicit_tls_server(server_cert: trustme.LeafCert) -> Iterator[SmtpTestServer]:
    """A server speaking TLS from the start, with a certificate from the test CA."""
    yield from _running_smtp(ssl_context=server_tls_context(server_cert))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def make_runtime(
    db_url: str,
    port: int,
    *,
    relay: dict | None = None,
    imap: dict | None = None,
    inbound: dict | None = None,
    gateways: dict | None = None,
    **smtp: object,
) -> Runtime:
    """A migrated Runtime whose own server is the test SMTP server on `port` (plain, loopback);
    `relay`, `imap`, `inbound` and `gateways` add those sections, keyword arguments change
    [smtp]."""
    sections: dict[str, dict] = {
        "database": {"url": db_url},
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from_address": "Dispatch <dispatch@example.com>",
            **smtp,
        },
        "sender": {"retry_base_seconds": 30, "idle_poll_seconds": 0.05},
    }
    if relay is not None:
        sections["relay"] = relay
    if imap is not None:
        sections["imap"] = imap
    if inbound is not None:
        sections["inbound"] = inbound
    if gateways is not None:
        sections["gateways"] = gateways
    settings = load_settings(None, **sections)
    from_template(db_url)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    return runtime


@functools.cache
def _migrated_sqlite() -> Path:
    """A SQLite file every migration has run on, made once a test process (by the same
    `upgrade` that `gateway db upgrade` runs)."""
    folder = Path(tempfile.mkdtemp(prefix="gw-migrated-"))
    atexit.register(shutil.rmtree, folder, True)
    engine = make_engine(f"sqlite:///{folder / 'gateway.db'}")
    upgrade(engine)
    engine.dispose()  # its last connection closed: the write-ahead log is in the file
    assert not (folder / "gateway.db-wal").exists()
    return folder / "gateway.db"


def from_template(db_url: str) -> None:
    """Where `db_url` names a SQLite file not yet made, start it as a copy of the migrated one:
    migrating takes a quarter of a second a test, a copy a millisecond. The `upgrade` after
    it then finds the schema current. Migrations themselves are tested from empty files."""
    url = sqlalchemy.make_url(db_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    target = Path(str(url.database))
    if not target.exists():
        shutil.copyfile(_migrated_sqlite(), target)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read a gateway.toml or GATEWAY_* variables from the machine."""
    for key in list(os.environ):
        if key.startswith("GATEWAY_") and not key.startswith("GATEWAY_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def gateway_folder(
    folder: Path,
    smtp_port: int | None = None,
    extra: str = "",
    migrate: bool = True,
    db_url: str | None = None,
) -> Path:
    """A working folder as an operator keeps one: gateway.toml naming a SQLite file there and,
    with `smtp_port`, the test SMTP server as the own route; the database migrated. `extra` is
    appended as it is (right after the [smtp] keys, so it may add to them, or new sections)."""
    url = db_url or f"sqlite:///{folder / 'gw.db'}"
    config = f'[database]\nurl = "{url}"\n'
    if smtp_port is not None:
        config += f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n'
    (folder / "gateway.toml").write_text(config + extra)
    if migrate:
        from_template(url)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    return folder


def run_gateway(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`python -m gateway ARGS` as a user runs it: its own process, no GATEWAY_* variables from
    this machine, no standard input."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _dovecot_or_skip() -> None:
    from tests import dovecot as server

    reason = server.available()
    if reason is not None:
        if os.environ.get("GATEWAY_TEST_REQUIRE_DOVECOT") == "1":
            pytest.fail(reason + " (make test installs it, so these tests must run)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def dovecot(server_cert, ca_file):
    """The company mailbox: Dovecot with TLS required, shared by the session's tests (each
    works in a folder of its own)."""
    from tests import dovecot as server

    _dovecot_or_skip()
    running = server.start(server_cert, ca_file)
    yield running
    running.stop()


@pytest.fixture
def own_dovecot(server_cert, ca_file):
    """A Dovecot of the test's own, for tests that stop, restart or renumber it."""
    from tests import dovecot as server

    _dovecot_or_skip()
    running = server.start(server_cert, ca_file)
    yield running
    running.stop()


async def send_due(runtime: Runtime) -> None:
    """Send what is due, as `gateway run --until-idle` would, in this process."""
    import asyncio

    from gateway.services.sender import Sender

    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    await sender.run(asyncio.Event(), until_idle=True)


def message_row(runtime: Runtime, message: int):  # type: ignore[no-untyped-def]
    from gateway.store.tables import messages

    with runtime.engine.connect() as conn:
        return conn.execute(sqlalchemy.select(messages).where(messages.c.id == message)).one()


def rows_in(runtime: Runtime, table: sqlalchemy.Table) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(table)).scalar_one()
        )
