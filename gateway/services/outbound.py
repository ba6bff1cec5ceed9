"""Putting a text in the outbox: validate everything first, then write it in one transaction.

Bad input (an invalid number, an unknown carrier or template, a missing variable) raises
EnqueueError and stores nothing. A contact that cannot be reached (retired or unknown carrier)
is stored as `suppressed` with its reason, so it shows among failures and can be released.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from gateway.domain.carriers import GatewayAddress, Unreachable
from gateway.domain.delivery import State
from gateway.domain.email_out import check_field, message_id_for
from gateway.domain.gateways import choose_gateway
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.quiet import next_allowed, recipient_zones, zone
from gateway.domain.routing import Route
from gateway.domain.rules import throttled
from gateway.domain.sms import LongText, fit, measure, normalise
from gateway.domain.templates import TemplateError
from gateway.services.runtime import Runtime
from gateway.store.outbox import (
    NewMessage,
    automated_times,
    ensure_conversation,
    ensure_order,
    find_by_key,
    insert_messages,
    order_zone,
    upsert_contact,
)

MAX_TEXT = 5000  # characters a dispatcher or template may produce before shaping


class EnqueueError(ValueError):
    """The request cannot become a text; nothing was stored. The message says what to fix."""


@dataclass(frozen=True)
class SendRequest:
    to: str
    carrier: str | None = None
    text: str | None = None
    template: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    order_ref: str | None = None
    idempotency_key: str | None = None
    # The answer to a keyword (STOP's confirmation, HELP): sent even to a contact who opted out.
    answers_keyword: bool = False
    send_at: dt.datetime | None = None  # not before this (default: now)
    # Hold to the recipient's allowed hours. Automated texts always are; a person's text only
    # when asked (recorded on the row either way).
    respect_quiet_hours: bool = False
    automated: bool = False  # made by a rule: quiet hours and the per-contact cap apply
    rule: str | None = None
    event_id: int | None = None
    fresh_until: dt.datetime | None = None  # not sent after this
    via: Route | None = None  # only this route may send it (a dispatcher's "re-send by relay")


@dataclass(frozen=True)
class Enqueued:
    ids: list[int]
    state: State
    to_address: str | None
    message_ids: list[str]
    reason: str | None
    warning: str | None
    existing: bool  # the idempotency key was seen before: these are the first request's rows


def enqueue(
    runtime: Runtime, request: SendRequest, now: dt.datetime, conn: Connection | None = None
) -> Enqueued:
    """Validate `request` and store its text; in `conn`'s transaction when one is given."""
    settings = runtime.settings
    try:
        phone = parse_phone(request.to, settings.carriers.default_region)
    except PhoneError as exc:
        raise EnqueueError(exc.reason) from None

    carrier = None
    if request.carrier is not None:
        carrier = runtime.carriers.find(request.carrier)
        if carrier is None:
            raise EnqueueError(
                f"unknown carrier {request.carrier!r}; `gateway carriers list` shows the ids"
            )

    if (request.text is None) == (request.template is None):
        raise EnqueueError("give either a text or a template")
    if request.template is not None:
        variables = dict(request.variables)
        if request.order_ref is not None:
            variables.setdefault("order_ref", request.order_ref)
        try:
            raw = runtime.templates.render(request.template, variables)
        except TemplateError as exc:
            raise EnqueueError(str(exc)) from None
    else:
        raw = request.text or ""
    if len(raw) > MAX_TEXT:
        raise EnqueueError(f"the text is {len(raw)} characters long; the most is {MAX_TEXT}")
    text = normalise(raw)
    if not text:
        raise EnqueueError("the text is empty")

    for label, value in (("order reference", request.order_ref), ("key", request.idempotency_key)):
        if value is not None:
            try:
                check_field(label, value)
            except ValueError as exc:
                raise EnqueueError(str(exc)) from None

    keys = _part_keys(request.idempotency_key)
    transaction = (
        contextlib.nullcontext(conn) if conn is not None else runtime.migrated_engine().begin()
    )
    with transaction as conn:
        existing = find_by_key(conn, keys)
        if existing:
            first = existing[0]
            return Enqueued(
                ids=[row["id"] for row in existing],
                state=State(first["state"]),
                to_address=first["to_address"],
                message_ids=[row["message_id"] for row in existing],
                reason=first["gateway_reason"] if first["reason"] else None,
                warning=None,
                existing=True,
            )

        contact_id, carrier_id, opted_out = upsert_contact(
            conn, phone.e164, carrier.id if carrier else None, "dispatcher", now
        )
        if carrier is None and carrier_id is not None:
            carrier = runtime.carriers.find(carrier_id)
        order_id = (
            ensure_order(conn, request.order_ref, contact_id, now) if request.order_ref else None
        )
        conversation_id = ensure_conversation(conn, contact_id, order_id, now)

        due_at, stale = _when(runtime, conn, request, phone.e164, contact_id, order_id, now)
        target = choose_gateway(phone, carrier, runtime.carriers, runtime.provider_plan, now.date())
        if opted_out and not request.answers_keyword:
            target = Unreachable("opted_out", f"{phone.e164} has opted out of texts")
        if isinstance(target, GatewayAddress):
            mode = LongText(settings.policy.long_text)
            parts = fit(text, target.max_length, mode)
            state, reason = State.QUEUED, None
            address, gateway, why = target.address, target.gateway, target.why
        else:
            parts = [text]
            state, reason = State.SUPPRESSED, target.reason
            address, gateway, why = None, None, target.message
        if stale and state is State.QUEUED:
            # Held past its freshness deadline (quiet hours, the cap): it would arrive as old news.
            state, reason = State.CANCELLED, "stale"

        rows = []
        for index, body in enumerate(parts, 1):
            shape = measure(body)
            rows.append(
                NewMessage(
                    to_phone=phone.e164,
                    carrier=carrier.id if carrier else carrier_id,
                    to_address=address,
                    gateway=gateway,
                    gateway_reason=why,
                    body=body,
                    template=request.template,
                    encoding=shape.encoding.value,
                    segments=shape.segments,
                    part=index,
                    parts=len(parts),
                    message_id=message_id_for(runtime.new_message_token(), runtime.company_domain),
                    idempotency_key=keys[index - 1] if keys else None,
                    state=state,
                    reason=reason,
                    due_at=due_at,
                    contact_id=contact_id,
                    order_id=order_id,
                    conversation_id=conversation_id,
                    automated=request.automated,
                    rule=request.rule,
                    event_id=request.event_id,
                    fresh_until=request.fresh_until,
                    respect_quiet_hours=request.automated or request.respect_quiet_hours,
                    pinned_route=request.via.value if request.via else None,
                )
            )
        ids = insert_messages(conn, rows, now)
    warning = target.warning if isinstance(target, GatewayAddress) else None
    return Enqueued(
        ids=ids,
        state=state,
        to_address=address,
        message_ids=[row.message_id for row in rows],
        reason=why if state is State.SUPPRESSED else None,
        warning=warning,
        existing=False,
    )


def _when(
    runtime: Runtime,
    conn: Connection,
    request: SendRequest,
    e164: str,
    contact_id: int,
    order_id: int | None,
    now: dt.datetime,
) -> tuple[dt.datetime, bool]:
    """When the text may go (after send_at, the recipient's quiet hours and the per-contact
    cap), and whether that is past its freshness deadline."""
    policy = runtime.settings.policy
    due = max(request.send_at or now, now)
    quiet = policy.quiet_hours and (request.automated or request.respect_quiet_hours)
    zones: tuple[ZoneInfo, ...] = ()
    if quiet:
        order_tz = order_zone(conn, order_id) if order_id is not None else None
        zones = recipient_zones(order_tz, e164, zone(policy.timezone))
    hours = policy.hours()
    cap = policy.max_per_contact_hour if request.automated else None
    others = automated_times(conn, contact_id, due, dt.timedelta(hours=1)) if cap else []
    for _ in range(10):  # each step only moves later; both settle within a step or two
        held = next_allowed(due, zones, hours) if quiet else due
        held = throttled(others, held, cap)
        if held == due:
            break
        due = held
    return due, request.fresh_until is not None and due > request.fresh_until


def _part_keys(key: str | None) -> list[str]:
    # Each part of a split text is its own row; the key of the request names the first.
    if key is None:
        return []
    return [key] + [f"{key}#{index}" for index in range(2, 10)]
