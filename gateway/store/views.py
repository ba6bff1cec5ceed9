"""The reads the faces need (the API, the dashboard, the command line): a text and its attempts,
the outbox list, conversations, a thread, the counts /metrics exports; and the dashboard's own
bookkeeping on them (read marks, dismissals)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, literal, not_, or_, select, update

from gateway.domain.delivery import DUE_STATES
from gateway.store.inbox import final_failure
from gateway.store.tables import (
    attempts,
    audit,
    contacts,
    conversation_reads,
    conversations,
    inbound,
    messages,
    order_events,
    orders,
    quarantine,
    users,
)
from gateway.store.threads import newest_reply

# The contact a name is read from, apart from any contacts a query joins itself.
_named = contacts.alias("named")

MESSAGE_FIELDS = (
    messages.c.id,
    messages.c.to_phone.label("to"),
    messages.c.to_address,
    messages.c.carrier,
    messages.c.gateway,
    messages.c.channel,
    messages.c.state,
    messages.c.reason,
    messages.c.route,
    messages.c.attempts,
    messages.c.last_reply,
    messages.c.message_id,
    messages.c.body.label("text"),
    messages.c.segments,
    messages.c.part,
    messages.c.parts,
    messages.c.rule,
    messages.c.due_at,
    messages.c.sent_at,
    messages.c.created_at,
    messages.c.conversation_id,
    orders.c.ref.label("order_ref"),
    # The contact's name, shown beside the number wherever a text is.
    select(_named.c.name)
    .where(_named.c.id == messages.c.contact_id)
    .scalar_subquery()
    .label("name"),
)


def message(conn: Connection, message_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(*MESSAGE_FIELDS)
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .where(messages.c.id == message_id)
    ).first()
    return dict(row._mapping) if row else None


def _latest_order(column: Any) -> Any:
    """`column` of the order of the thread's newest text that is about one: the order a
    template in the thread fills from, and its label in the list."""
    return (
        select(column)
        .select_from(messages.join(orders, orders.c.id == messages.c.order_id))
        .where(messages.c.conversation_id == conversations.c.id)
        .order_by(messages.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _conversations(*more: Any) -> Any:
    """Conversations with their contact and latest order."""
    return select(
        conversations.c.id,
        contacts.c.phone,
        contacts.c.name,
        _latest_order(orders.c.ref).label("order_ref"),
        conversations.c.last_message_at,
        *more,
    ).select_from(conversations.join(contacts, contacts.c.id == conversations.c.contact_id))


def conversation_list(
    conn: Connection, limit: int = 50, before: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Conversations, the most recently active first."""
    query = (
        _conversations()
        .order_by(conversations.c.last_message_at.desc(), conversations.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(conversations.c.last_message_at < before)
    return [dict(row._mapping) for row in conn.execute(query)]


def conversation(conn: Connection, conversation_id: int) -> dict[str, Any] | None:
    head = conn.execute(
        _conversations(
            contacts.c.carrier,
            contacts.c.opted_out,
            contacts.c.carrier_source,
            contacts.c.id.label("contact_id"),
            _latest_order(orders.c.timezone).label("order_timezone"),
            conversations.c.assigned_to,
            not_(_is_open()).label("done"),
        ).where(conversations.c.id == conversation_id)
    ).first()
    if head is None:
        return None
    items: list[dict[str, Any]] = []
    for row in conn.execute(
        select(*MESSAGE_FIELDS)
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .where(messages.c.conversation_id == conversation_id)
        .order_by(messages.c.id)
    ):
        items.append({"direction": "out", "at": row.sent_at or row.created_at, **row._mapping})
    places = _places_of_parts(items)
    for reply in conn.execute(
        select(
            inbound.c.id,
            inbound.c.kind,
            inbound.c.text,
            inbound.c.phone,
            inbound.c.match_rule,
            inbound.c.confidence,
            inbound.c.matched_message_id,
            inbound.c.stored_at,
            inbound.c.details,
        ).where(inbound.c.conversation_id == conversation_id)
    ):
        item = {"direction": "in", "at": reply.stored_at, **reply._mapping}
        details = item.pop("details")
        # A delay warning is stored as a bounce; the thread says what it is.
        warning = reply.kind == "bounce" and not final_failure(details)
        item["label"] = "delay warning" if warning else reply.kind
        items.append(item)
    items.sort(
        key=lambda item: (
            places[item["id"]] if item["direction"] == "out" else (item["at"], "in", item["id"], 1)
        )
    )
    return {**head._mapping, "messages": items}


def _places_of_parts(texts: list[dict[str, Any]]) -> dict[int, tuple[Any, str, int, int]]:
    """Where each outgoing row sorts in a thread (`texts` in id order): the parts of a split
    text together and in order, at the moment the earliest of them went, since pooled
    connections can hand part 2 over before part 1. A text's parts are stored together: one
    enqueue, one created_at, ids in part order."""
    groups: list[list[dict[str, Any]]] = []
    for text in texts:
        head = groups[-1][0] if groups else None
        if (
            text["part"] > 1
            and head is not None
            and head["parts"] == text["parts"]
            and head["created_at"] == text["created_at"]
        ):
            groups[-1].append(text)
        else:
            groups.append([text])
    places = {}
    for group in groups:
        at = min(text["at"] for text in group)
        for text in group:
            places[text["id"]] = (at, "out", group[0]["id"], text["part"])
    return places


def counts(conn: Connection, now: dt.datetime) -> dict[str, Any]:
    by_state: dict[str, int] = dict(
        conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)).all()
    )
    by_kind: dict[str, int] = dict(
        conn.execute(select(inbound.c.kind, func.count()).group_by(inbound.c.kind)).all()
    )
    due = conn.execute(
        select(func.count()).where(
            messages.c.state.in_([s.value for s in DUE_STATES]), messages.c.due_at <= now
        )
    ).scalar()
    return {"messages": by_state, "inbound": by_kind, "due": due or 0}


# --- the dashboard ----------------------------------------------------------------------------

# The list's filters; the first is the default. Open: not marked done, or a reply came since.
FILTERS = ("open", "mine", "unassigned", "unread", "unanswered", "failed", "driver", "customer",
           "done", "all")  # fmt: skip
PROBLEM_STATES = ("failed", "bounced")


def _role() -> Any:
    """A driver if the contact drives any order, else a customer if they ordered any."""
    contact = conversations.c.contact_id
    drives = select(orders.c.id).where(orders.c.driver_id == contact).exists()
    ordered = select(orders.c.id).where(orders.c.customer_id == contact).exists()
    return case((drives, "driver"), (ordered, "customer"), else_=None)


def _read_mark(user_id: int | None) -> Any:
    """How far `user_id` has read the conversation: their own mark, else where they started."""
    if user_id is None:
        return literal(0)
    own = (
        select(conversation_reads.c.read_inbound_id)
        .where(conversation_reads.c.conversation_id == conversations.c.id,
               conversation_reads.c.user_id == user_id)
        .scalar_subquery()
    )  # fmt: skip
    start = select(users.c.unread_after).where(users.c.id == user_id).scalar_subquery()
    return func.coalesce(own, start, 0)


def _is_open() -> Any:
    """Not marked done, or a reply came after."""
    return or_(
        conversations.c.done_through.is_(None), newest_reply() > conversations.c.done_through
    )


def conversation_page(
    conn: Connection,
    show: str = "all",
    order_ref: str | None = None,
    limit: int = 50,
    before: tuple[dt.datetime, int] | None = None,
    user_id: int | None = None,
) -> list[dict[str, Any]]:
    """A page of the conversation list, newest activity first, each with its last message,
    its unread count for `user_id`, whom it is left to, whether it is done, and problem marks.
    Only the page's rows are looked into, so the cost does not grow with the number of
    conversations."""
    assignee = users.alias("assignee")
    query = (
        _conversations(
            _role().label("role"),
            _read_mark(user_id).label("read_mark"),
            conversations.c.assigned_to,
            assignee.c.name.label("assigned"),
            not_(_is_open()).label("done"),
        )
        .outerjoin(assignee, assignee.c.id == conversations.c.assigned_to)
        .order_by(conversations.c.last_message_at.desc(), conversations.c.id.desc())
    )
    if show in ("open", "mine", "unassigned"):
        query = query.where(_is_open())
    if show == "mine":
        query = query.where(conversations.c.assigned_to == (user_id or 0))
    elif show == "unassigned":
        query = query.where(conversations.c.assigned_to.is_(None))
    elif show == "done":
        query = query.where(not_(_is_open()))
    if order_ref:  # threads with a text about that order
        query = query.where(
            conversations.c.id.in_(
                select(messages.c.conversation_id)
                .join(orders, orders.c.id == messages.c.order_id)
                .where(orders.c.ref == order_ref)
            )
        )
    if show in ("driver", "customer"):
        query = query.where(_role() == show)
    elif show == "failed":
        query = query.where(
            select(messages.c.id)
            .where(messages.c.conversation_id == conversations.c.id,
                   messages.c.state.in_(PROBLEM_STATES))
            .exists()
        )  # fmt: skip
    elif show == "unread":
        query = query.where(newest_reply() > _read_mark(user_id))
    elif show == "unanswered":
        last_reply = (
            select(inbound.c.stored_at)
            .where(inbound.c.conversation_id == conversations.c.id, inbound.c.kind == "reply")
            .order_by(inbound.c.id.desc()).limit(1).scalar_subquery()
        )  # fmt: skip
        last_text = (
            select(messages.c.created_at)
            .where(messages.c.conversation_id == conversations.c.id)
            .order_by(messages.c.id.desc()).limit(1).scalar_subquery()
        )  # fmt: skip
        query = query.where(
            last_reply.is_not(None), or_(last_text.is_(None), last_reply > last_text)
        )
    if before is not None:
        at, below = before
        query = query.where(
            (conversations.c.last_message_at < at)
            | ((conversations.c.last_message_at == at) & (conversations.c.id < below))
        )
    rows = [dict(row._mapping) for row in conn.execute(query.limit(limit))]
    if not rows:
        return rows
    ids = [row["id"] for row in rows]
    outs = _latest(conn, messages, ids, messages.c.body, messages.c.state,
                   messages.c.created_at)  # fmt: skip
    ins = _latest(conn, inbound, ids, inbound.c.text, inbound.c.kind, inbound.c.stored_at)
    unread: dict[int, int] = {}
    marks = {row["id"]: int(row["read_mark"] or 0) for row in rows}
    for conversation_id, reply_id in conn.execute(
        select(inbound.c.conversation_id, inbound.c.id).where(
            inbound.c.conversation_id.in_(ids),
            inbound.c.kind == "reply",
            inbound.c.id > min(marks.values()),
        )
    ):
        if reply_id > marks[conversation_id]:
            unread[conversation_id] = unread.get(conversation_id, 0) + 1
    problems = set(
        conn.execute(
            select(messages.c.conversation_id)
            .where(messages.c.conversation_id.in_(ids), messages.c.state.in_(PROBLEM_STATES))
            .distinct()
        ).scalars()
    )
    for row in rows:
        out, reply = outs.get(row["id"]), ins.get(row["id"])
        if reply is not None and (out is None or reply.stored_at >= out.created_at):
            row["last"] = {"direction": "in", "text": reply.text, "kind": reply.kind,
                           "at": reply.stored_at}  # fmt: skip
        elif out is not None:
            row["last"] = {"direction": "out", "text": out.body, "state": out.state,
                           "at": out.created_at}  # fmt: skip
        else:
            row["last"] = None
        row["unread"] = unread.get(row["id"], 0)
        row["has_problem"] = row["id"] in problems
    return rows


def _latest(conn: Connection, table: Any, ids: list[int], *columns: Any) -> dict[int, Any]:
    """The newest row of `table` in each of the conversations `ids` (two indexed lookups)."""
    newest = conn.execute(
        select(func.max(table.c.id))
        .where(table.c.conversation_id.in_(ids))
        .group_by(table.c.conversation_id)
    ).scalars()
    return {
        row.conversation_id: row
        for row in conn.execute(
            select(table.c.conversation_id, *columns).where(table.c.id.in_(list(newest)))
        )
    }


def mark_resent(conn: Connection, original: int, new: int) -> None:
    conn.execute(update(messages).where(messages.c.id == original).values(resent_as=new))


def dismiss(conn: Connection, message: int, who: str, now: dt.datetime) -> bool:
    """A dispatcher's word that failure `message` needs nothing more; False when there is no
    such failure."""
    done = conn.execute(
        update(messages)
        .where(messages.c.id == message, messages.c.state.in_(FAILED_STATES))
        .values(dismissed_at=now, dismissed_by=who[:100])
    ).rowcount
    return bool(done)


FAILED_STATES = ("failed", "bounced", "suppressed")
WENT = ("sent", "delivered", "replied")


def failures(
    conn: Connection, limit: int = 200, resolved: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """What needs a dispatcher: texts that failed, bounced or were not sent, replies that found
    no text, and mail that could not be read. A failure that was re-sent and went, or that a
    dispatcher dismissed, is resolved: listed only with `resolved` (the history)."""
    resent = messages.alias("resent")
    went = and_(messages.c.resent_as.is_not(None), resent.c.state.in_(WENT))
    done = or_(messages.c.dismissed_at.is_not(None), went)
    texts = [
        dict(row._mapping)
        for row in conn.execute(
            select(*MESSAGE_FIELDS, messages.c.contact_id, messages.c.updated_at,
                   messages.c.gateway_reason, messages.c.resent_as, messages.c.dismissed_at,
                   messages.c.dismissed_by, resent.c.state.label("resent_state"),
                   contacts.c.carrier_doubt, contacts.c.opted_out)
            .select_from(
                messages.outerjoin(orders, orders.c.id == messages.c.order_id)
                .outerjoin(contacts, contacts.c.id == messages.c.contact_id)
                .outerjoin(resent, resent.c.id == messages.c.resent_as)
            )
            .where(messages.c.state.in_(FAILED_STATES), done if resolved else not_(done))
            .order_by(messages.c.updated_at.desc(), messages.c.id.desc())
            .limit(limit)
        )
    ]  # fmt: skip
    unmatched = [
        dict(row._mapping)
        for row in conn.execute(
            select(inbound.c.id, inbound.c.kind, inbound.c.phone, inbound.c.from_address,
                   select(_named.c.name).where(_named.c.phone == inbound.c.phone)
                   .scalar_subquery().label("name"),
                   inbound.c.text, inbound.c.stored_at)
            .where(inbound.c.matched_message_id.is_(None), inbound.c.kind.in_(("reply", "bounce")))
            .order_by(inbound.c.id.desc())
            .limit(limit)
        )
    ]  # fmt: skip
    held = [
        dict(row._mapping)
        for row in conn.execute(
            select(quarantine.c.id, quarantine.c.mailbox, quarantine.c.uid, quarantine.c.size,
                   quarantine.c.error, quarantine.c.stored_at)
            .order_by(quarantine.c.id.desc())
            .limit(limit)
        )
    ]  # fmt: skip
    return {"texts": texts, "unmatched": unmatched, "quarantine": held}


def order_list(
    conn: Connection, limit: int = 200, ref: str | None = None, *, exact: bool = False
) -> list[dict[str, Any]]:
    customer, driver = contacts.alias("customer"), contacts.alias("driver")
    query = (
        select(orders.c.id, orders.c.ref, orders.c.status, orders.c.window_start,
               orders.c.window_end, orders.c.updated_at, customer.c.name.label("customer_name"),
               customer.c.phone.label("customer_phone"), driver.c.name.label("driver_name"),
               driver.c.phone.label("driver_phone"))
        .select_from(
            orders.outerjoin(customer, customer.c.id == orders.c.customer_id)
            .outerjoin(driver, driver.c.id == orders.c.driver_id)
        )
        .order_by(orders.c.updated_at.desc(), orders.c.id.desc())
        .limit(limit)
    )  # fmt: skip
    if ref and exact:
        query = query.where(orders.c.ref == ref)
    elif ref:
        query = query.where(orders.c.ref.startswith(ref, autoescape=True))
    return [dict(row._mapping) for row in conn.execute(query)]


def order_detail(conn: Connection, ref: str) -> dict[str, Any] | None:
    """An order, its events and its texts in time order, and the texts still waiting."""
    head = next((row for row in order_list(conn, 1, ref, exact=True)), None)
    if head is None:
        return None
    found = head["id"]
    events = [
        {"kind": "event", "at": row.occurred_at, **row._mapping}
        for row in conn.execute(
            select(order_events.c.id, order_events.c.status, order_events.c.eta,
                   order_events.c.reason, order_events.c.occurred_at)
            .where(order_events.c.order_id == found)
        )
    ]  # fmt: skip
    texts = [
        {"kind": "text", "at": row.created_at, **row._mapping}
        for row in conn.execute(
            select(*MESSAGE_FIELDS)
            .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
            .where(messages.c.order_id == found)
        )
    ]
    timeline = sorted(events + texts, key=lambda item: (item["at"], item["kind"], item["id"]))
    waiting = [t for t in texts if t["state"] in [s.value for s in DUE_STATES]]
    return {**head, "timeline": timeline, "waiting": waiting}


def contact_list(
    conn: Connection, limit: int = 200, phone: str | None = None
) -> list[dict[str, Any]]:
    query = (
        select(contacts).order_by(contacts.c.updated_at.desc(), contacts.c.id.desc()).limit(limit)
    )
    if phone:
        query = query.where(
            contacts.c.phone.contains(phone, autoescape=True)
            | contacts.c.name.contains(phone, autoescape=True)
        )
    return [dict(row._mapping) for row in conn.execute(query)]


def contact_detail(conn: Connection, contact_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(contacts).where(contacts.c.id == contact_id)).first()
    if row is None:
        return None
    threads = [
        dict(r._mapping)
        for r in conn.execute(
            _conversations()
            .where(conversations.c.contact_id == contact_id)
            .order_by(conversations.c.last_message_at.desc())
            .limit(100)
        )
    ]
    recent = [
        dict(r._mapping)
        for r in conn.execute(
            select(*MESSAGE_FIELDS)
            .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
            .where(messages.c.contact_id == contact_id)
            .order_by(messages.c.id.desc())
            .limit(50)
        )
    ]
    return {**row._mapping, "conversations": threads, "messages": recent}


# --- live updates -----------------------------------------------------------------------------


# Where the append-only logs stand: the last inbound id, delivery attempt id, audit entry id.
Position = tuple[int, int, int]
# What dispatchers do to a conversation that the others' pages show at once (audit actions).
TEAM_ACTIONS = ("assign", "done", "reopen")


def positions(conn: Connection) -> Position:
    """Where the append-only logs stand now."""
    last_in = conn.execute(select(func.max(inbound.c.id))).scalar() or 0
    last_try = conn.execute(select(func.max(attempts.c.id))).scalar() or 0
    last_entry = conn.execute(select(func.max(audit.c.id))).scalar() or 0
    return int(last_in), int(last_try), int(last_entry)


def changes_since(
    conn: Connection,
    inbound_after: int,
    attempt_after: int,
    audit_after: int | None = None,
    limit: int = 200,
) -> tuple[list[dict[str, Any]], Position]:
    """What happened after the given positions: mail stored (replies, bounces), texts
    attempted, and conversations assigned, done or reopened, each with its conversation; and
    the new positions. Read by id from append-only tables, like the webhooks: no clock skew
    between processes can hide an event. No audit position (a page from before it was kept):
    from now."""
    if audit_after is None:
        audit_after = int(conn.execute(select(func.max(audit.c.id))).scalar() or 0)
    events: list[dict[str, Any]] = []
    for mail in conn.execute(
        select(inbound.c.id, inbound.c.kind, inbound.c.conversation_id,
               inbound.c.matched_message_id, inbound.c.text, conversations.c.assigned_to)
        .select_from(inbound.outerjoin(conversations,
                                       conversations.c.id == inbound.c.conversation_id))
        .where(inbound.c.id > inbound_after)
        .order_by(inbound.c.id)
        .limit(limit)
    ):  # fmt: skip
        inbound_after = mail.id
        # Whom the conversation is left to and the first words: a page tells its dispatcher
        # of a reply that is theirs (or everyone's) with them.
        events.append({
            "type": mail.kind, "conversation_id": mail.conversation_id, "inbound_id": mail.id,
            "message_id": mail.matched_message_id, "assigned_to": mail.assigned_to,
            "text": (mail.text or "")[:140],
        })  # fmt: skip
    for row in conn.execute(
        select(attempts.c.id, messages.c.id.label("message_id"), messages.c.state,
               messages.c.conversation_id)
        .select_from(attempts.join(messages, messages.c.id == attempts.c.message_id))
        .where(attempts.c.id > attempt_after)
        .order_by(attempts.c.id)
        .limit(limit)
    ):  # fmt: skip
        attempt_after = row.id
        events.append({"type": "state", "conversation_id": row.conversation_id,
                       "message_id": row.message_id, "state": row.state})  # fmt: skip
    for entry in conn.execute(
        select(audit.c.id, audit.c.action, audit.c.actor, audit.c.detail)
        .where(audit.c.id > audit_after, audit.c.action.in_(TEAM_ACTIONS))
        .order_by(audit.c.id)
        .limit(limit)
    ):
        audit_after = entry.id
        detail = json.loads(entry.detail)
        events.append({
            "type": "conversation", "conversation_id": detail.get("conversation"),
            "action": entry.action, "by": entry.actor, "to": detail.get("to"),
        })  # fmt: skip
    return events, (inbound_after, attempt_after, audit_after)


def unread_conversations(conn: Connection, user_id: int) -> int:
    """How many conversations have a reply `user_id` has not read: the tab title's count."""
    reads = conversation_reads.alias("mine")
    start = select(users.c.unread_after).where(users.c.id == user_id).scalar_subquery()
    query = (
        select(func.count(func.distinct(inbound.c.conversation_id)))
        .select_from(
            inbound.outerjoin(
                reads,
                and_(reads.c.conversation_id == inbound.c.conversation_id,
                     reads.c.user_id == user_id),
            )
        )
        .where(inbound.c.kind == "reply", inbound.c.conversation_id.is_not(None),
               inbound.c.id > func.coalesce(reads.c.read_inbound_id, start, 0))
    )  # fmt: skip
    return int(conn.execute(query).scalar() or 0)


def active_users(conn: Connection) -> list[dict[str, Any]]:
    """The users a conversation can be left to."""
    query = (
        select(users.c.id, users.c.name).where(users.c.disabled.is_(False)).order_by(users.c.name)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def contact_conversation(conn: Connection, phone: str) -> int | None:
    """The conversation with the contact at `phone` (one a contact)."""
    query = (
        select(conversations.c.id)
        .select_from(conversations.join(contacts, contacts.c.id == conversations.c.contact_id))
        .where(contacts.c.phone == phone)
    )
    found = conn.execute(query).scalar()
    return int(found) if found is not None else None


def clear_doubt(conn: Connection, contact_id: int) -> None:
    """A dispatcher set the carrier: the doubt a bounce raised is answered."""
    conn.execute(update(contacts).where(contacts.c.id == contact_id).values(carrier_doubt=None))


# --- reading --------------------------------------------------------------------------------


def list_messages(
    engine: Engine, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Outbox rows, newest first, with the fields `gateway outbox list` shows."""
    query = (
        select(
            messages.c.id,
            messages.c.to_phone.label("to"),
            messages.c.to_address,
            messages.c.carrier,
            messages.c.gateway,
            messages.c.gateway_reason,
            messages.c.channel,
            messages.c.state,
            messages.c.route,
            messages.c.attempts,
            messages.c.last_reply,
            messages.c.message_id,
            messages.c.reason,
            orders.c.ref.label("order_ref"),
            messages.c.due_at,
            messages.c.part,
            messages.c.parts,
            messages.c.segments,
            messages.c.body,
        )
        .select_from(messages.outerjoin(orders, orders.c.id == messages.c.order_id))
        .order_by(messages.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(messages.c.state == state)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def attempts_of(engine: Engine, message: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                select(attempts).where(attempts.c.message_id == message).order_by(attempts.c.id)
            )
        ]
