"""The database in trouble: locked for longer than the busy timeout, and a disk that fills up
(a small tmpfs). The API answers 503 and writes nothing; the sender backs off and resumes when
the database is writable again; no text is lost, sent twice, or left half-written (a text is
`sent` exactly when its attempt is stored)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from gateway.services.outbound import SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.services.sender import Sender
from gateway.store.access import create_token
from gateway.store.db import utcnow
from gateway.store.tables import attempts, messages
from gateway.web.app import create_app
from tests.conftest import make_runtime

MESSAGE = {"to": "+12025550199", "carrier": "verizon", "text": "Your order is on its way"}


def fill(runtime: Runtime, count: int) -> list[int]:
    return [
        enqueue(runtime, SendRequest(f"+1202555{n:04d}", "verizon", text=f"Order {n}"),
                utcnow()).ids[0]
        for n in range(count)
    ]  # fmt: skip


def consistent(runtime: Runtime) -> dict[str, int]:
    """The states, after checking nothing is half-written: every text `sent` has its attempt
    stored, and no attempt belongs to a text still waiting."""
    with runtime.engine.connect() as conn:
        rows = conn.execute(select(messages.c.id, messages.c.state, messages.c.attempts)).all()
        tried = dict(
            conn.execute(
                select(attempts.c.message_id, func.count()).group_by(attempts.c.message_id)
            ).all()
        )
    for row in rows:
        assert tried.get(row.id, 0) == row.attempts, row
        assert (row.state == "sent") == (row.attempts == 1), row
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    return states


async def until(predicate, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_locked_past_the_busy_timeout_the_sender_backs_off_and_resumes(
    tmp_path, smtp_server, caplog
):
    caplog.set_level(logging.INFO, logger="gateway.sender")
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    runtime = make_runtime(url, smtp_server.port)
    fill(runtime, 20)
    # A sender whose database gives up on a lock after 0.2 s, while another writer holds it 3 s.
    impatient = create_engine(url, connect_args={"timeout": 0.2})
    sender = Sender(impatient, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    holder = sqlite3.connect(tmp_path / "gw.db", timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await asyncio.sleep(3)
        assert not task.done(), "the sender gave up on a locked database"
        assert not smtp_server.received  # it could claim nothing, so it sent nothing
    finally:
        holder.rollback()
        holder.close()
    try:
        assert await until(lambda: consistent(runtime) == {"sent": 20}, 30)
    finally:
        stop.set()
        await task
        impatient.dispose()
    assert len(smtp_server.received) == 20  # each once
    # Said once, in the database's words, however many tries it took; and its return.
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    refused = [m for m in said if "database is locked" in m]
    assert len(refused) == 1, said
    assert sum("the database answers again" in m for m in said) == 1, said


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m"):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_the_disk(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_a_full_disk_gives_503_and_the_sender_resumes_when_there_is_room(
    tmp_path, smtp_server, caplog
):
    with small_disk(tmp_path / "small") as disk:
        url = f"sqlite:///{disk / 'gw.db'}"
        runtime = make_runtime(url, smtp_server.port)
        token = create_token(runtime.engine, "erp", utcnow())
        fill(runtime, 20)
        with runtime.engine.connect() as conn:  # the WAL emptied: every write now needs room
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill_the_disk(disk)

        api = TestClient(create_app(runtime), raise_server_exceptions=False)
        api.headers["Authorization"] = f"Bearer {token}"
        answer = api.post("/api/v1/messages", json=MESSAGE)
        assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
        assert consistent(runtime) == {"queued": 20}  # the API wrote nothing, not even a part

        sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy,
                        idle_poll=0.05, lease=dt.timedelta(seconds=120))  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        try:
            await asyncio.sleep(2)
            assert not task.done(), "the sender gave up on a full disk"
            assert set(consistent(runtime)) <= {"queued", "sent"}
            filler.unlink()  # room again
            assert await until(lambda: consistent(runtime) == {"sent": 20}, 30)
        finally:
            stop.set()
            await task
        assert len(smtp_server.received) == 20  # none twice, none lost
        # The refusal in the database's words once (it was tried again and again), its end once.
        said = [r.getMessage() for r in caplog.records if r.name == "gateway.sender"]
        assert sum("database or disk is full" in m for m in said) == 1, said
        assert sum("the database answers again" in m for m in said) == 1, said
        assert api.post("/api/v1/messages", json=MESSAGE).status_code == 201
        runtime.engine.dispose()


async def test_a_full_disk_holds_inbound_mail_until_there_is_room(
    tmp_path, smtp_server, caplog, monkeypatch
):
    """The mailbox reader cannot store: it keeps the batch (nothing marked done, nothing
    quarantined) and stores each message once when the disk has room again. It says so once,
    not at every try."""
    from gateway.services import inbound as inbound_service
    from gateway.services.inbound import Ingest, Receiver
    from gateway.store.tables import inbound, quarantine
    from gateway.transport.mailsource import deliver_to_maildir

    maildir = tmp_path / "Maildir"
    for n in range(5):
        raw = (f"From: 202555010{n}@vtext.com\r\nTo: dispatch@example.com\r\nSubject: \r\n"
               f"Message-ID: <full{n}@vtext.com>\r\n\r\nreply {n}\r\n").encode()  # fmt: skip
        deliver_to_maildir(maildir, raw, f"full{n}.host")
    with small_disk(tmp_path / "small") as disk:
        runtime = make_runtime(f"sqlite:///{disk / 'gw.db'}", smtp_server.port,
                               inbound={"maildir": str(maildir)})  # fmt: skip
        with runtime.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill_the_disk(disk)

        def stored() -> int:
            with runtime.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(inbound)).scalar_one()

        receiver = Receiver(Ingest(runtime, runtime.engine), runtime.mail_source(runtime.engine))
        monkeypatch.setattr(inbound_service, "STORE_RETRY_SECONDS", 0.1)
        caplog.set_level(logging.INFO, logger="gateway.services.inbound")
        stop = asyncio.Event()
        task = asyncio.create_task(receiver.run(stop))
        try:
            await asyncio.sleep(1.5)
            assert not task.done() and stored() == 0
            assert len(list((maildir / "new").iterdir())) == 5  # still waiting, none taken
            filler.unlink()
            assert await until(lambda: stored() == 5, 20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        with runtime.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(quarantine)).scalar_one() == 0
        runtime.engine.dispose()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("cannot store inbound mail" in m for m in said) == 1, said
    assert sum("stored again" in m for m in said) == 1, said


async def test_loops_on_a_timer_say_a_refusing_database_once(
    tmp_path, smtp_server, caplog, monkeypatch
):
    """The heartbeat, the mailbox lease and the settings watcher each try again every few
    seconds: a database that refuses them is said once by each, and its return once, however
    many tries fail in between."""
    from gateway.services import worker as worker_service
    from gateway.services.heartbeat import pulse
    from gateway.services.inbound import Ingest, MailboxLease, Receiver
    from gateway.store import heartbeats, inbox

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    runtime = make_runtime(url, smtp_server.port, inbound={"maildir": str(tmp_path / "Maildir")})
    impatient = create_engine(url, connect_args={"timeout": 0.05})
    tries = {"beat": 0, "lease": 0, "settings": 0}

    def counted(name, work):
        def counting(*args, **kwargs):
            tries[name] += 1
            return work(*args, **kwargs)

        return counting

    def refresh():  # the saved settings cannot be read five times, then can
        tries["settings"] += 1
        if tries["settings"] <= 5:
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))
        return False

    worker = worker_service.Worker(runtime)
    monkeypatch.setattr(heartbeats, "BEAT_SECONDS", 0.02)
    monkeypatch.setattr(heartbeats, "beat", counted("beat", heartbeats.beat))
    monkeypatch.setattr(inbox, "hold_mailbox", counted("lease", inbox.hold_mailbox))
    monkeypatch.setattr(worker_service, "SETTINGS_CHECK_SECONDS", 0.02)
    monkeypatch.setattr(runtime, "refresh", refresh)
    caplog.set_level(logging.INFO)
    source = runtime.mail_source(impatient)
    lease = MailboxLease(Receiver(Ingest(runtime, impatient), source), impatient, "t", seconds=0.06)
    holder = sqlite3.connect(tmp_path / "gw.db", timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    stop, ending = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(pulse(impatient, "t", None, ending)),
        asyncio.create_task(lease.run(stop)),
        asyncio.create_task(worker._watch_settings(stop, ending)),
    ]
    try:
        assert await until(lambda: min(tries.values()) >= 6, 30), tries  # each failed often
    finally:
        holder.rollback()
        holder.close()

    def said(words: str) -> int:
        return sum(words in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)

    try:
        assert await until(lambda: said("written again") and said("lease again"), 30)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        impatient.dispose()
    assert said("heartbeat not written") == 1
    assert said("cannot reach the database for the mailbox lease") == 1
    assert said("reading the saved settings failed") == 1
    assert (said("written again"), said("lease again"), said("settings are read again")) == (
        1, 1, 1)  # fmt: skip


async def test_outcomes_the_database_refuses_are_said_once_and_written_later(
    tmp_path, smtp_server, caplog, monkeypatch
):
    """The database refuses the sender's record of what it sent, three times: the outcomes wait
    and are written once it takes them (every text `sent`, none sent twice; `--until-idle` is
    not done before, even while a batch is in flight as it counts what is due),
    and the log says the refusal in a line, with no traceback."""
    from gateway.services import sender as sender_module

    runtime = make_runtime(f"sqlite:///{tmp_path / 'gw.db'}", smtp_server.port)
    fill(runtime, 5)
    real, refusals = sender_module.record_attempts, [3]

    def refusing(engine, items):
        if refusals[0]:
            refusals[0] -= 1
            time.sleep(0.3)  # a slow refusal: the batch is in flight, in neither list, meanwhile
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("disk I/O error"))
        return real(engine, items)

    monkeypatch.setattr(sender_module, "record_attempts", refusing)
    sender = Sender(runtime.engine, runtime.route_book(), runtime.retry_policy, idle_poll=0.05)
    await asyncio.wait_for(sender.run(asyncio.Event(), until_idle=True), 60)
    assert refusals == [0] and consistent(runtime) == {"sent": 5}
    assert len(smtp_server.received) == 5
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    refused = [r.getMessage() for r in said if "disk I/O error" in r.getMessage()]
    # Said again only after a write in between worked (its claims did).
    assert len(refused) <= 1 + sum("answers again" in r.getMessage() for r in said) <= 3, said
    assert refused[0] == "writing 5 outcomes failed (disk I/O error); trying again in 1 s"
    assert not any(r.exc_info for r in said)
