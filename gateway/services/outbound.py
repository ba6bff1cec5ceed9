"""Putting a text in the outbox: validate everything first, then write it in one transaction.

Bad input (an invalid number, an unknown carrier or template, a missing variable) raises
EnqueueError and stores nothing. A contact that cannot be reached (retired or unknown carrier)
is stored as `suppressed` with its reason, so it shows among failures and can be released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from gateway.domain.carriers import Carrier, GatewayAddress, Unreachable
from gateway.domain.channels import SMS_CHANNEL_MAX_LENGTH, Channel, ChannelChoice, channel_for
from gateway.domain.delivery import State
from gateway.domain.email_out import check_field, message_id_for
from gateway.domain.gateways import choose_gateway
from gateway.domain.phone import Phone, PhoneError, parse_phone
from gateway.domain.routing import Route
from gateway.domain.rules import throttled
from gateway.domain.sms import LongText, fit, measure, normalise
from gateway.domain.smsgate import our_id
from gateway.domain.templates import TemplateError
from gateway.services.bell import ring
from gateway.services.runtime import Runtime
from gateway.store.contacts import (
    ensure_conversations,
    ensure_order,
    set_carriers,
    set_contact_name,
    upsert_contacts,
)
from gateway.store.outbox import (
    NewMessage,
    automated_times,
    find_by_key,
    insert_messages,
    order_zone,
)

MAX_TEXT = 5000  # characters a dispatcher or template may produce before shaping


class EnqueueError(ValueError):
    """The request cannot become a text; nothing was stored. The message says what to fix;
    `missing` names a template variable that was not given (each face says how to give it)."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


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
    name: str | None = None  # the contact's name: recorded, and shown wherever its number is


@dataclass(frozen=True)
class Enqueued:
    ids: list[int]
    state: State
    to_address: str | None
    message_ids: list[str]
    reason: str | None
    warning: str | None
    existing: bool  # the idempotency key was seen before: these are the first request's rows
    channel: str = "email"  # the channel that carries it (gateway_reason says why)


def enqueue(
    runtime: Runtime, request: SendRequest, now: dt.datetime, conn: Connection | None = None
) -> Enqueued:
    """Validate `request` and store its text; in `conn`'s transaction when one is given."""
    [result] = enqueue_many(runtime, [request], now, conn)
    if isinstance(result, EnqueueError):
        raise result
    return result


def enqueue_many(
    runtime: Runtime,
    requests: Sequence[SendRequest],
    now: dt.datetime,
    conn: Connection | None = None,
) -> list[Enqueued | EnqueueError]:
    """Validate each request and store the texts of those that pass, all in one transaction
    (`conn`'s when one is given): a result per request, in order, an EnqueueError in the place
    of one that cannot become a text (it stores nothing; the others are stored).

    One transaction and a few statements for the whole batch, where a request at a time costs a
    commit and half a dozen statements each: the bulk path of the API and of imports."""
    parsed: dict[str, Phone | EnqueueError] = {}
    checked: list[_Checked | EnqueueError] = []
    for request in requests:
        try:
            checked.append(_check(runtime, request, parsed, now))
        except EnqueueError as exc:
            checked.append(exc)
    valid = [item for item in checked if isinstance(item, _Checked)]
    if valid:
        owned = conn is None
        transaction = (
            contextlib.nullcontext(conn) if conn is not None else runtime.migrated_engine().begin()
        )
        with transaction as conn:
            stored = iter(_store(runtime, conn, valid, now))
        if owned:  # committed here: waiting senders look now (else the caller rings)
            ring(runtime.engine)
        return [next(stored) if isinstance(item, _Checked) else item for item in checked]
    return [item for item in checked if isinstance(item, EnqueueError)]


@dataclass(frozen=True, slots=True)
class _Checked:
    request: SendRequest
    phone: Phone
    carrier: Carrier | None
    text: str
    keys: list[str]


def _check(
    runtime: Runtime,
    request: SendRequest,
    parsed: dict[str, Phone | EnqueueError],
    now: dt.datetime,
) -> _Checked:
    """Everything about a request that needs no database, or EnqueueError saying what to fix.
    `parsed` remembers numbers already read: a batch often texts one number several times."""
    phone = parsed.get(request.to)
    if phone is None:
        try:
            phone = parse_phone(request.to, runtime.settings.carriers.default_region)
        except PhoneError as exc:
            phone = EnqueueError(exc.reason)
        parsed[request.to] = phone
    if isinstance(phone, EnqueueError):
        raise EnqueueError(str(phone))
    if request.send_at is not None:
        days = runtime.settings.policy.max_schedule_days
        if request.send_at.tzinfo is None:
            raise EnqueueError("send_at needs a time zone (e.g. 2026-12-24T09:00:00+01:00)")
        if request.send_at - now > dt.timedelta(days=days):
            raise EnqueueError(
                f"send_at {request.send_at:%Y-%m-%d} is more than {days} days ahead "
                "([policy] max_schedule_days); a text that far off would be stale"
            )

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
            raise EnqueueError(str(exc), exc.missing) from None
    else:
        raw = request.text or ""
    if len(raw) > MAX_TEXT:
        raise EnqueueError(f"the text is {len(raw)} characters long; the most is {MAX_TEXT}")
    text = normalise(raw)
    if not text:
        raise EnqueueError("the text is empty")

    labelled = (("order reference", request.order_ref), ("key", request.idempotency_key),
                ("name", request.name))  # fmt: skip
    for label, value in labelled:
        if value is not None:
            try:
                check_field(label, value)
            except ValueError as exc:
                raise EnqueueError(str(exc)) from None
    return _Checked(request, phone, carrier, text, _part_keys(request.idempotency_key))


def _store(
    runtime: Runtime, conn: Connection, items: Sequence[_Checked], now: dt.datetime
) -> list[Enqueued]:
    """Store the texts of checked requests: contacts, orders and conversations first, for the
    whole batch at once, then every row in one insert."""
    seen = find_by_key(conn, [key for item in items for key in item.keys])
    seen_keys = {row["idempotency_key"] for row in seen}
    # What each request answers with: the rows an earlier request with its key made, or the
    # result of a request of this batch (its own, or the first with its key, as a replay).
    answers: list[Enqueued | tuple[int, bool]] = []
    fresh: list[_Checked] = []  # the requests that make rows
    fresh_by_key: dict[str, int] = {}
    for item in items:
        key = item.keys[0] if item.keys else None
        if key is not None and key in seen_keys:
            answers.append(_replay([row for row in seen if row["idempotency_key"] in item.keys]))
        elif key is not None and key in fresh_by_key:
            answers.append((fresh_by_key[key], True))
        else:
            if key is not None:
                fresh_by_key[key] = len(fresh)
            answers.append((len(fresh), False))
            fresh.append(item)

    # Each text uses the carrier known for its number when its turn comes, as one request at a
    # time would: the first request for a number sets it, a later one naming another changes it
    # from there on, and the contact keeps the last.
    first_given: dict[str, str | None] = {}
    for item in fresh:
        first_given.setdefault(item.phone.e164, item.carrier.id if item.carrier else None)
    contacts = upsert_contacts(conn, first_given, "dispatcher", now) if first_given else {}
    running = {phone: found[1] for phone, found in contacts.items()}
    for item in fresh:
        if item.request.name:  # checked above: one line, 1 to 100 characters
            set_contact_name(conn, contacts[item.phone.e164][0], item.request.name.strip(), now)
    carrier_known: list[str | None] = []  # for each fresh request
    for item in fresh:
        if item.carrier is not None:
            running[item.phone.e164] = item.carrier.id
        carrier_known.append(running[item.phone.e164])
    set_carriers(
        conn,
        {contacts[p][0]: c for p, c in running.items() if c is not None and c != contacts[p][1]},
        "dispatcher",
        now,
    )

    order_ids: dict[str, int] = {}
    for item in fresh:
        ref = item.request.order_ref
        if ref is not None and ref not in order_ids:
            order_ids[ref] = ensure_order(conn, ref, contacts[item.phone.e164][0], now)
    pairs = [
        (
            contacts[item.phone.e164][0],
            None if item.request.order_ref is None else order_ids[item.request.order_ref],
        )
        for item in fresh
    ]
    conversations = ensure_conversations(conn, [contact for contact, _ in pairs], now)

    rows: list[NewMessage] = []
    made: list[tuple[int, Enqueued]] = []  # per fresh request: where its rows start, its result
    pending: dict[int, list[dt.datetime]] = {}  # automated texts of this batch, per contact
    for item, known_carrier, (contact_id, order_id) in zip(
        fresh, carrier_known, pairs, strict=True
    ):
        opted_out = contacts[item.phone.e164][2]
        start = len(rows)
        result = _rows(
            runtime, conn, item, now, contact_id, known_carrier, opted_out, order_id,
            conversations[contact_id], pending, rows,
        )  # fmt: skip
        made.append((start, result))
    ids = insert_messages(conn, rows, now)
    for start, result in made:
        result.ids.extend(ids[start : start + len(result.message_ids)])
    return [
        answer
        if isinstance(answer, Enqueued)
        else (
            dataclasses.replace(made[answer[0]][1], existing=True)
            if answer[1]
            else made[answer[0]][1]
        )
        for answer in answers
    ]


def _replay(rows: list[dict[str, Any]]) -> Enqueued:
    # The rows an earlier request with the same key created: its result again.
    first = rows[0]
    return Enqueued(
        ids=[row["id"] for row in rows],
        state=State(first["state"]),
        to_address=first["to_address"],
        message_ids=[row["message_id"] for row in rows],
        reason=first["gateway_reason"] if first["reason"] else None,
        warning=None,
        existing=True,
        channel=first.get("channel") or "email",
    )


def _rows(
    runtime: Runtime,
    conn: Connection,
    item: _Checked,
    now: dt.datetime,
    contact_id: int,
    known_carrier: str | None,
    opted_out: bool,
    order_id: int | None,
    conversation_id: int,
    pending: dict[int, list[dt.datetime]],
    rows: list[NewMessage],
) -> Enqueued:
    """The rows of one request appended to `rows`, and its result (ids filled in later)."""
    request, phone = item.request, item.phone
    carrier = item.carrier
    if carrier is None and known_carrier is not None:
        carrier = runtime.carriers.find(known_carrier)
    due_at, stale = _when(
        runtime, conn, request, phone.e164, contact_id, order_id, now, pending.get(contact_id, [])
    )
    target = choose_gateway(phone, carrier, runtime.carriers, runtime.provider_plan, now.date())
    choice = channel_for(runtime.channel_plan, phone.region, target)
    if opted_out and not request.answers_keyword:
        target = Unreachable("opted_out", f"{phone.e164} has opted out of texts")
        choice = ChannelChoice(None, target.message)
    mode = LongText(runtime.settings.policy.long_text)
    channel = choice.channel or Channel.EMAIL
    address = gateway = None
    if isinstance(target, GatewayAddress):
        # Kept on a text an SMS channel carries too: email may take it if that channel is down
        # before it was ever handed over.
        address = target.address
        gateway = target.gateway if channel is Channel.EMAIL else None
    if choice.channel is Channel.EMAIL and isinstance(target, GatewayAddress):
        parts = fit(item.text, target.max_length, mode)
        state, reason = State.QUEUED, None
    elif choice.channel is not None:
        parts = fit(item.text, SMS_CHANNEL_MAX_LENGTH, mode)
        state, reason = State.QUEUED, None
    else:
        parts = [item.text]
        state = State.SUPPRESSED
        reason = target.reason if isinstance(target, Unreachable) else "no_channel"
    why = choice.why
    # Any text may end on an SMS channel when one is in the order (its own channel down): it
    # carries the id that channel's events will name it by.
    sms_channels = any(c is not Channel.EMAIL for c in runtime.channel_plan.order)
    if stale and state is State.QUEUED:
        # Held past its freshness deadline (quiet hours, the cap): it would arrive as old news.
        state, reason = State.CANCELLED, "stale"
    if request.automated and state is State.QUEUED:
        pending.setdefault(contact_id, []).extend([due_at] * len(parts))

    message_ids = []
    for index, body in enumerate(parts, 1):
        shape = measure(body)
        message_ids.append(message_id_for(runtime.new_message_token(), runtime.company_domain))
        rows.append(
            NewMessage(
                to_phone=phone.e164,
                carrier=carrier.id if carrier else known_carrier,
                to_address=address,
                gateway=gateway,
                gateway_reason=why,
                body=body,
                template=request.template,
                encoding=shape.encoding.value,
                segments=shape.segments,
                part=index,
                parts=len(parts),
                message_id=message_ids[-1],
                idempotency_key=item.keys[index - 1] if item.keys else None,
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
                channel=channel.value,
                channel_ref=our_id(message_ids[-1]) if sms_channels else None,
            )
        )
    return Enqueued(
        ids=[],
        state=state,
        to_address=address if channel is Channel.EMAIL else None,
        message_ids=message_ids,
        reason=why if state is State.SUPPRESSED else None,
        warning=(
            target.warning
            if channel is Channel.EMAIL and isinstance(target, GatewayAddress)
            else None
        ),
        existing=False,
        channel=channel.value,
    )


def _when(
    runtime: Runtime,
    conn: Connection,
    request: SendRequest,
    e164: str,
    contact_id: int,
    order_id: int | None,
    now: dt.datetime,
    batch: Sequence[dt.datetime] = (),
) -> tuple[dt.datetime, bool]:
    """When the text may go (after send_at, the recipient's quiet hours and the per-contact
    cap, counting the contact's automated texts stored and those earlier in this `batch`),
    and whether that is past its freshness deadline."""
    policy = runtime.settings.policy
    due = max(request.send_at or now, now)
    quiet = policy.quiet() if request.automated or request.respect_quiet_hours else None
    order_tz = order_zone(conn, order_id) if quiet and order_id is not None else None
    cap = policy.max_per_contact_hour if request.automated else None
    others = [*automated_times(conn, contact_id, due, dt.timedelta(hours=1)), *batch] if cap else []
    for _ in range(10):  # each step only moves later; both settle within a step or two
        held = quiet.first_allowed(due, e164, order_tz) if quiet else due
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
