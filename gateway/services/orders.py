"""Orders and their events: a status change is recorded and the texts its rules make are
queued in the same transaction, so an event never exists without its texts nor a text without
its event. The same event reported twice (the order system retrying) is recorded once."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import Connection

from gateway.config import ConfigError
from gateway.domain.carriers import Carrier
from gateway.domain.email_out import check_field
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.quiet import zone
from gateway.domain.rules import (
    STATUSES,
    Event,
    Rule,
    RuleError,
    check_rules,
    load_rules,
    plan,
    superseded,
    variables,
)
from gateway.services.bell import ring
from gateway.services.csv_rows import csv_rows
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import orders as store
from gateway.store.contacts import set_contact_name, upsert_contact


class OrderError(ValueError):
    """The order or event cannot be recorded; nothing was stored. The message says why."""


@dataclass(frozen=True)
class OrderInput:
    ref: str
    customer: str | None = None  # phone
    carrier: str | None = None
    customer_name: str | None = None
    driver: str | None = None
    driver_carrier: str | None = None
    driver_name: str | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class EventResult:
    event_id: int
    existing: bool  # the key was seen before: nothing new was recorded
    texts: list[dict[str, Any]]  # id, rule, to_phone, state, reason, due_at
    skipped: list[str] = field(default_factory=list)
    superseded: int = 0


class Orders:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @cached_property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, checked against the templates; ConfigError naming the rule otherwise."""
        path = self.runtime.rules_path
        try:
            rules = load_rules(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise ConfigError(f"rules file {str(path)!r} cannot be read: {exc.strerror}") from None
        except RuleError as exc:
            raise ConfigError(str(exc)) from None
        problems = check_rules(rules, self.runtime.templates)
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems))
        return rules

    # --- orders ---------------------------------------------------------------------------

    def upsert(self, order: OrderInput, now: dt.datetime, conn: Connection | None = None) -> int:
        values = self._order_values(order)
        if conn is not None:
            return self._upsert_in(conn, order, values, now)
        with self.runtime.migrated_engine().begin() as own:
            return self._upsert_in(own, order, values, now)

    def _order_values(self, order: OrderInput) -> dict[str, Any]:
        _check_text("order reference", order.ref)
        values: dict[str, Any] = {}
        if order.timezone is not None:
            try:
                zone(order.timezone)
            except ValueError as exc:
                raise OrderError(str(exc)) from None
            values["timezone"] = order.timezone
        for key in ("window_start", "window_end"):
            when = getattr(order, key)
            if when is not None:
                if when.tzinfo is None:
                    if not order.timezone:
                        raise OrderError(f"{key} {when:%Y-%m-%d %H:%M} needs a time zone "
                                         "(give --timezone or an offset like +02:00)")  # fmt: skip
                    when = when.replace(tzinfo=zone(order.timezone))
                values[key] = when.astimezone(dt.UTC)
        start, end = values.get("window_start"), values.get("window_end")
        if start is not None and end is not None and end <= start:
            raise OrderError("the delivery window must end after it starts")
        return values

    def _upsert_in(
        self, conn: Connection, order: OrderInput, values: dict[str, Any], now: dt.datetime
    ) -> int:
        for role, phone, carrier, name in (
            ("customer", order.customer, order.carrier, order.customer_name),
            ("driver", order.driver, order.driver_carrier, order.driver_name),
        ):
            if phone is None:
                continue
            contact = self._contact(conn, role, phone, carrier, now)
            values[f"{role}_id"] = contact
            if name:
                _check_text(f"{role} name", name)
                set_contact_name(conn, contact, name.strip()[:200], now)
        return store.upsert_order(conn, order.ref.strip(), values, now)

    def _contact(
        self, conn: Connection, role: str, phone: str, carrier: str | None, now: dt.datetime
    ) -> int:
        try:
            parsed = parse_phone(phone, self.runtime.settings.carriers.default_region)
        except PhoneError as exc:
            raise OrderError(f"{role}: {exc.reason}") from None
        found: Carrier | None = None
        if carrier is not None:
            found = self.runtime.carriers.find(carrier)
            if found is None:
                raise OrderError(
                    f"{role}: unknown carrier {carrier!r}; `gateway carriers list` shows the ids"
                )
        return upsert_contact(conn, parsed.e164, found.id if found else None, "dispatcher", now)[0]

    # --- events ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _storing(self) -> Iterator[Connection]:
        """A transaction whose texts are sent now: waiting senders are rung after it commits."""
        with self.runtime.migrated_engine().begin() as conn:
            yield conn
        ring(self.runtime.engine)

    def record_status(
        self,
        ref: str,
        status: str,
        now: dt.datetime,
        *,
        eta: str | None = None,
        reason: str | None = None,
        key: str | None = None,
        occurred_at: dt.datetime | None = None,
    ) -> EventResult:
        if status not in STATUSES:
            raise OrderError(f"{status!r} is not an order status ({', '.join(STATUSES)})")
        for label, value in (("eta", eta), ("reason", reason), ("key", key)):
            if value is not None:
                _check_text(label, value)
        rules = self.rules
        with self._storing() as conn:
            if key is not None:
                earlier = store.event_by_key(conn, key)
                if earlier is not None:
                    return EventResult(earlier.id, True, store.texts_of_event(conn, earlier.id))
            found = store.order_facts(conn, ref)
            if found is None:
                raise OrderError(
                    f"there is no order {ref!r}; create it with `gateway orders upsert`"
                )
            order_id, facts = found
            at = occurred_at or now
            event_id = store.insert_event(
                conn,
                {
                    "order_id": order_id,
                    "status": status,
                    "eta": eta,
                    "reason": reason,
                    "idempotency_key": key,
                    "occurred_at": at,
                    "created_at": now,
                },
            )
            by_name = {rule.name: rule for rule in rules}
            obsolete_ids = [
                text_id
                for text_id, rule in store.waiting_automated(conn, order_id)
                if rule is not None and superseded(by_name, rule, status)
            ]
            obsolete = store.cancel(conn, obsolete_ids, "superseded", now)
            store.set_status(conn, order_id, status, now)
            made = plan(rules, facts, Event(status, at, eta, reason))
            for text in made.texts:
                request = SendRequest(
                    to=text.phone,
                    template=text.template,
                    variables=text.variables,
                    order_ref=facts.ref,
                    idempotency_key=f"event-{event_id}-{text.rule}-{text.to}",
                    send_at=text.due_at,
                    automated=True,
                    rule=text.rule,
                    event_id=event_id,
                    fresh_until=text.fresh_until,
                )
                try:
                    enqueue(self.runtime, request, now, conn=conn)
                except EnqueueError as exc:
                    # The whole event fails: no event without its texts.
                    raise OrderError(
                        f"rule {text.rule!r} for the {text.to}: {_hint(exc)}"
                    ) from None
            return EventResult(
                event_id,
                False,
                store.texts_of_event(conn, event_id),
                [f"{s.rule}: {s.why}" for s in made.skipped],
                obsolete,
            )

    # --- preview --------------------------------------------------------------------------

    def preview_context(
        self, ref: str, now: dt.datetime, status: str | None = None
    ) -> tuple[dict[str, str], dt.datetime]:
        """The variables an event of `ref` would give a template, and when a text to its
        customer would be sent if queued now (after quiet hours)."""
        policy = self.runtime.settings.policy
        with self.runtime.migrated_engine().connect() as conn:
            found = store.order_facts(conn, ref)
        if found is None:
            raise OrderError(f"there is no order {ref!r}")
        _, facts = found
        values = variables(facts, Event(status or "confirmed", now))
        when = now
        quiet = policy.quiet()
        if quiet is not None and facts.customer_phone:
            when = quiet.first_allowed(now, facts.customer_phone, facts.timezone)
        return values, when

    # --- CSV import -----------------------------------------------------------------------

    def import_csv(
        self,
        text: str,
        now: dt.datetime,
        progress: Callable[[int, int], None] | None = None,
    ) -> ImportReport:
        """Upsert every good row; report each bad one with its line and reason."""
        rows = list(_csv_rows(text))
        report = ImportReport(total=len(rows))
        engine = self.runtime.migrated_engine()
        for index, (line, row) in enumerate(rows, 1):
            try:
                order = _order_from_row(row)
                with engine.begin() as conn:
                    self.upsert(order, now, conn=conn)
                report.imported += 1
            except (OrderError, EnqueueError, ValueError) as exc:
                report.problems.append((line, str(exc)))
            if progress is not None:
                progress(index, len(rows))
        return report


@dataclass
class ImportReport:
    total: int
    imported: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)


CSV_COLUMNS = (
    "ref", "customer", "carrier", "customer_name", "driver", "driver_carrier", "driver_name",
    "window_start", "window_end", "timezone",
)  # fmt: skip


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    names, rows = csv_rows(text, OrderError)
    if "ref" not in names:
        raise OrderError(
            f"the CSV needs a header line with at least `ref` ({', '.join(CSV_COLUMNS)})"
        )
    unknown = [name for name in names if name not in CSV_COLUMNS]
    if unknown:
        raise OrderError(f"unknown CSV column {unknown[0]!r} (known: {', '.join(CSV_COLUMNS)})")
    yield from rows


def _order_from_row(row: dict[str, str]) -> OrderInput:
    def value(key: str) -> str | None:
        return row.get(key) or None

    ref = value("ref")
    if ref is None:
        raise OrderError("ref is empty")
    return OrderInput(
        ref=ref,
        customer=value("customer"),
        carrier=value("carrier"),
        customer_name=value("customer_name"),
        driver=value("driver"),
        driver_carrier=value("driver_carrier"),
        driver_name=value("driver_name"),
        window_start=parse_when(value("window_start"), "window_start"),
        window_end=parse_when(value("window_end"), "window_end"),
        timezone=value("timezone"),
    )


def parse_when(text: str | None, key: str) -> dt.datetime | None:
    """ISO date and time, with or without an offset: 2026-11-24T14:00 or 2026-11-24 14:00+01:00."""
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise OrderError(f"{key} {text!r} is not a date and time like 2026-11-24T14:00") from None


_HINTS = {
    "eta": "give the event --eta",
    "reason": "give the event --reason",
    "driver_name": "assign a driver: gateway orders upsert --ref REF --driver PHONE",
    "window": "give the order a delivery window (--window-start, --window-end)",
    "window_start": "give the order a delivery window (--window-start, --window-end)",
    "window_end": "give the order a delivery window (--window-start, --window-end)",
}


def _hint(exc: EnqueueError) -> str:
    """The template's complaint, with what to do about it for an order event."""
    hint = _HINTS.get(exc.missing or "")
    if hint is not None:
        return f"{exc} ({hint})"
    return f"{exc} (give it with the event)" if exc.missing else str(exc)


def _check_text(label: str, value: str) -> None:
    try:
        check_field(label, value, 500 if label == "reason" else 100)
    except ValueError as exc:
        raise OrderError(str(exc)) from None
