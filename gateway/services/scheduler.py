"""Recurring texts on a schedule: APScheduler 3 (the stable series) with its SQLAlchemy job
store in the gateway's own database, so the schedule survives restarts.

Several gateway processes may run the scheduler on one database. Each fires the job; the first
to write its (job, minute) row in `job_runs` does the work and the others see the row and stand
down. That is a lock in the database, not a hope that clocks differ.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Iterable

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from gateway.config import ConfigError
from gateway.domain.quiet import zone
from gateway.domain.rules import Rule, summary_variables
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import orders as store
from gateway.store.db import utcnow

log = logging.getLogger(__name__)

JOB_TABLE = "scheduler_jobs"
JOB_PREFIX = "rule:"

# The scheduler's jobs are stored by reference to `fire`, which finds the running gateway here.
_running: dict[str, RecurringTexts] = {}


def trigger_for(rule: Rule, timezone: str) -> CronTrigger:
    """The rule's crontab as a trigger; ConfigError naming the rule when it is not one."""
    assert rule.every is not None
    try:
        return CronTrigger.from_crontab(rule.every, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"rule {rule.name!r}: every {rule.every!r}: {exc}") from None


class RecurringTexts:
    """What a recurring rule does when it fires: one text to each driver about their day."""

    def __init__(self, runtime: Runtime, engine: Engine, rules: Iterable[Rule]) -> None:
        self.runtime = runtime
        self.engine = engine
        self.rules = {rule.name: rule for rule in rules if rule.every}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.triggers: dict[str, BaseTrigger] = {}
        self.grace = dt.timedelta(minutes=15)

    def run(self, rule_name: str, slot: dt.datetime, now: dt.datetime) -> int | None:
        """Queue the rule's texts for `slot`; None when another process already did."""
        rule = self.rules.get(rule_name)
        if rule is None:
            return None
        policy = self.runtime.settings.policy
        company = zone(policy.timezone)
        local = slot.astimezone(company)
        day_start = dt.datetime.combine(local.date(), dt.time(0), tzinfo=company)
        day_end = day_start + dt.timedelta(days=1)
        with self.engine.begin() as conn:
            run = store.claim_job_run(conn, JOB_PREFIX + rule_name, slot, self.worker, now)
            if run is None:
                return None
            count = 0
            for day in store.driver_days(conn, day_start, day_end):
                request = SendRequest(
                    to=day.phone,
                    template=rule.template,
                    variables=summary_variables(day, policy.timezone),
                    idempotency_key=f"{JOB_PREFIX}{rule_name}:{slot:%Y%m%dT%H%M}:{day.phone}",
                    automated=True,
                    rule=rule.name,
                    fresh_until=slot + rule.fresh_for if rule.fresh_for else None,
                )
                try:
                    enqueue(self.runtime, request, now, conn=conn)
                except EnqueueError as exc:
                    log.warning("rule %s: no text to %s: %s", rule_name, day.phone, exc)
                    continue
                count += 1
            store.finish_job_run(conn, run, count)
            return count


async def fire(rule_name: str) -> None:
    """The job APScheduler stores and calls (by reference, so it survives restarts)."""
    recurring = _running.get("current")
    if recurring is None:
        return
    now = utcnow()
    trigger = recurring.triggers.get(rule_name)
    slot = due_slot(trigger, now, recurring.grace) if trigger else None
    # The time it was due (not when this process got to it) is the lock's key, so a process
    # that fires late still finds the run another process made.
    slot = slot or now.replace(second=0, microsecond=0)
    try:
        count = await asyncio.to_thread(recurring.run, rule_name, slot, now)
    except Exception:  # one bad run must not stop the schedule
        log.exception("recurring rule %s failed at %s", rule_name, slot)
        return
    if count is not None:
        log.info("recurring rule %s: %d texts queued for %s", rule_name, count, slot)


def due_slot(trigger: BaseTrigger, now: dt.datetime, grace: dt.timedelta) -> dt.datetime | None:
    """The latest time the trigger was due at or before `now` (within `grace`)."""
    latest = None
    fire_time = trigger.get_next_fire_time(None, now - grace)
    for _ in range(10_000):
        if fire_time is None or fire_time > now:
            break
        latest = fire_time
        fire_time = trigger.get_next_fire_time(fire_time, fire_time + dt.timedelta(seconds=1))
    return latest.astimezone(dt.UTC) if latest else None


class Scheduler:
    def __init__(
        self,
        runtime: Runtime,
        engine: Engine,
        rules: Iterable[Rule],
        *,
        misfire_grace_seconds: int = 900,
        triggers: dict[str, BaseTrigger] | None = None,
    ) -> None:
        self.recurring = RecurringTexts(runtime, engine, rules)
        self.recurring.grace = dt.timedelta(seconds=misfire_grace_seconds)
        self.timezone = runtime.settings.policy.timezone
        # Tests and tools may give a rule another trigger (a date, seconds); the crontab
        # otherwise.
        self.triggers = triggers or {}
        self._store = SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)
        self._engine = engine
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": self._store},
            job_defaults={
                # A job missed while no gateway ran still fires if this little late, once.
                "misfire_grace_time": misfire_grace_seconds,
                "coalesce": True,
                "max_instances": 1,
            },
            timezone=self.timezone,
        )

    def start(self) -> None:
        _running["current"] = self.recurring
        self._create_job_table()
        self._scheduler.start()
        wanted = set()
        for name, rule in self.recurring.rules.items():
            job_id = JOB_PREFIX + name
            wanted.add(job_id)
            trigger = self.triggers.get(name) or trigger_for(rule, self.timezone)
            self.recurring.triggers[name] = trigger
            existing = self._scheduler.get_job(job_id)
            if existing is not None and str(existing.trigger) == str(trigger):
                continue  # keep its stored next run time across restarts
            self._scheduler.add_job(
                fire, trigger, id=job_id, args=[name], replace_existing=True, name=name
            )
        for job in self._scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX) and job.id not in wanted:
                job.remove()  # its rule was deleted from rules.yaml

    def _create_job_table(self) -> None:
        """APScheduler creates its job table when it starts, if the table is missing. Several
        gateways starting at once on a new database all try; on PostgreSQL all but one then
        fail ("duplicate key ... pg_type"). Whoever made it, the table is there: that is all
        that start needs."""
        try:
            self._store.jobs_t.create(self._engine, checkfirst=True)
        except (IntegrityError, ProgrammingError, OperationalError):  # SQLite: "already exists"
            if not inspect(self._engine).has_table(JOB_TABLE):
                raise

    def jobs(self) -> list[tuple[str, dt.datetime | None]]:
        return [(job.id, job.next_run_time) for job in self._scheduler.get_jobs()]

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        _running.pop("current", None)
