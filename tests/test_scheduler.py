"""Recurring texts: the route summary each driver gets, the job-run lock, and the scheduler in
real processes on a real job store (SQLite and PostgreSQL): restarted before the job was due,
and two at once."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import func, select

from gateway.services.orders import OrderInput, Orders
from gateway.services.scheduler import RecurringTexts, due_slot, trigger_for
from gateway.store.tables import job_runs, messages
from tests.conftest import REPO, gateway_folder, make_runtime

TODAY_10 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)


def add_orders(orders: Orders, day: dt.datetime) -> None:
    for ref, hour in (("R-1", 15), ("R-2", 13)):
        orders.upsert(
            OrderInput(
                ref=ref,
                customer="+12125550143",
                carrier="verizon",
                driver="+12125550199",
                driver_carrier="verizon",
                driver_name="Sam",
                window_start=day.replace(hour=hour),
                window_end=day.replace(hour=hour + 2),
            ),
            day,
        )
    orders.upsert(OrderInput(ref="R-3", customer="+12125550144", carrier="verizon",
                             driver="+12125550198", driver_carrier="verizon",
                             window_start=day + dt.timedelta(days=1, hours=5),
                             window_end=day + dt.timedelta(days=1, hours=6)), day)  # fmt: skip


def summaries(runtime) -> list:
    with runtime.engine.connect() as conn:
        return conn.execute(
            select(messages.c.to_phone, messages.c.body).where(messages.c.rule == "route_summary")
        ).all()


def test_each_driver_gets_their_day_once_per_slot(db_url, smtp_server):
    runtime = make_runtime(db_url, smtp_server.port)
    orders = Orders(runtime)
    add_orders(orders, TODAY_10)
    recurring = RecurringTexts(runtime, runtime.engine, orders.rules)
    assert recurring.run("route_summary", TODAY_10, TODAY_10) == 1
    assert recurring.run("route_summary", TODAY_10, TODAY_10) is None  # another process's run
    ((phone, body),) = summaries(runtime)
    assert phone == "+12125550199"  # R-3's driver has nothing today
    assert body == (
        "Good morning Sam: 2 deliveries today, the first window opens at 13:00. Orders: R-2, R-1."
    )


def test_the_slot_is_when_the_job_was_due_not_when_it_ran():
    from gateway.domain.rules import Rule

    rule = Rule("r", None, "t", ("driver",), every="0 8 * * *")
    trigger = trigger_for(rule, "UTC")
    late = dt.datetime(2026, 11, 24, 8, 6, 30, tzinfo=dt.UTC)
    assert due_slot(trigger, late, dt.timedelta(minutes=15)) == late.replace(minute=0, second=0)
    assert due_slot(trigger, late, dt.timedelta(minutes=5)) is None


PROCESS = textwrap.dedent(
    """
    import asyncio, datetime as dt, sys
    from apscheduler.triggers.date import DateTrigger
    from gateway.config import load_settings
    from gateway.services.orders import Orders
    from gateway.services.runtime import Runtime
    from gateway.services.scheduler import Scheduler

    run_at = dt.datetime.fromisoformat(sys.argv[1])
    seconds = float(sys.argv[2])

    async def main():
        runtime = Runtime(load_settings("gateway.toml"))
        rules = Orders(runtime).rules
        scheduler = Scheduler(runtime, runtime.engine, rules,
                              triggers={"route_summary": DateTrigger(run_date=run_at)})
        scheduler.start()
        print("started", flush=True)
        await asyncio.sleep(seconds)
        scheduler.shutdown()

    asyncio.run(main())
    """
)


@pytest.fixture
def workdir(tmp_path, smtp_server, db_url):
    """A working folder on SQLite, and on PostgreSQL (several processes, one database)."""
    gateway_folder(tmp_path, smtp_server.port, db_url=db_url)
    runtime = make_runtime(db_url, smtp_server.port)
    now = dt.datetime.now(dt.UTC).replace(hour=1, minute=0, second=0, microsecond=0)
    add_orders(Orders(runtime), now)
    return tmp_path, runtime


def start(workdir, run_at: dt.datetime, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", PROCESS, run_at.isoformat(), str(seconds)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started", process.stderr.read()
    return process


def runs(runtime) -> int:
    with runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(job_runs)).scalar()


def test_a_job_stored_before_a_restart_fires_once_after_it(workdir):
    folder, runtime = workdir
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)
    first = start(folder, run_at, 60)
    first.kill()  # dies before the job is due
    first.wait()
    assert runs(runtime) == 0
    second = start(folder, run_at, 60)
    deadline = time.monotonic() + 20
    while runs(runtime) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    second.kill()
    second.wait()
    third = start(folder, run_at, 3)  # started after: the run is there, nothing is sent again
    third.wait(20)
    assert runs(runtime) == 1 and len(summaries(runtime)) == 1


def test_two_schedulers_on_one_database_fire_each_job_once(workdir):
    folder, runtime = workdir
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    processes = [start(folder, run_at, 9) for _ in range(2)]
    for process in processes:
        assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    assert runs(runtime) == 1 and len(summaries(runtime)) == 1


def test_gateways_starting_together_on_a_new_database_all_start(db_url, smtp_server):
    """APScheduler creates its job table when it starts; several `gateway run` at once on a new
    database all tried, and on PostgreSQL the slower ones died ("duplicate key ... pg_type")."""
    import asyncio
    import threading

    from gateway.services.scheduler import Scheduler

    runtime = make_runtime(db_url, smtp_server.port)
    rules = Orders(runtime).rules
    together = threading.Barrier(6)
    failures: list[BaseException] = []

    def one() -> None:
        async def main() -> None:
            scheduler = Scheduler(runtime, runtime.engine, rules)
            together.wait()
            scheduler.start()
            scheduler.shutdown()

        try:
            asyncio.run(main())
        except BaseException as exc:  # whatever escaped, reported below
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
