"""Contacts, orders and conversations as texts need them: found or made in the enqueue's
transaction, by driver SQL where every enqueue passes (see store/fastpath.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store.fastpath import driver_style, in_lists, placeholders, select_in
from gateway.store.tables import contacts, orders

# --- enqueue ----------------------------------------------------------------------------------


def upsert_contacts(
    conn: Connection, wanted: dict[str, str | None], carrier_source: str, now: dt.datetime
) -> dict[str, tuple[int, str | None, bool]]:
    """The contacts for the phones of `wanted` (phone -> carrier given, or None), created when
    new, their carrier updated when one is given: phone -> (id, carrier, opted out).

    Every enqueue runs this, so it talks to the driver directly (as record_attempts does):
    building the statements through SQLAlchemy was most of an enqueue's time. Contacts that a
    concurrent writer creates first are found by ON CONFLICT DO NOTHING, with no savepoint."""
    mark, time_param = driver_style(conn)
    at = time_param(now)
    found = _contacts_by_phone(conn, list(wanted), mark)
    missing = [phone for phone in wanted if phone not in found]
    if missing:
        conn.exec_driver_sql(
            placeholders(_CONTACT_INSERT, mark),
            [(p, wanted[p], carrier_source if wanted[p] else None, False, at, at) for p in missing],
        )
        found.update(_contacts_by_phone(conn, missing, mark))
    changed = {
        phone: carrier
        for phone, carrier in wanted.items()
        if carrier is not None and carrier != found[phone][1]
    }
    set_carriers(conn, {found[phone][0]: c for phone, c in changed.items()}, carrier_source, now)
    for phone, carrier in changed.items():
        contact_id, _, opted_out = found[phone]
        found[phone] = (contact_id, carrier, opted_out)
    return found


def set_carriers(
    conn: Connection, carriers: dict[int, str], carrier_source: str, now: dt.datetime
) -> None:
    """Set each contact's carrier (contact id -> carrier id)."""
    if not carriers:
        return
    mark, time_param = driver_style(conn)
    at = time_param(now)
    conn.exec_driver_sql(
        placeholders(_CONTACT_CARRIER, mark),
        [(carrier, carrier_source, at, contact_id) for contact_id, carrier in carriers.items()],
    )


def upsert_contact(
    conn: Connection, phone: str, carrier: str | None, carrier_source: str, now: dt.datetime
) -> tuple[int, str | None, bool]:
    """The contact for `phone`, as upsert_contacts: its id, its carrier, whether it opted out."""
    return upsert_contacts(conn, {phone: carrier}, carrier_source, now)[phone]


def _contacts_by_phone(
    conn: Connection, phones: Sequence[str], mark: str
) -> dict[str, tuple[int, str | None, bool]]:
    return {
        phone: (int(contact_id), carrier, bool(opted_out))
        for phone, contact_id, carrier, opted_out in select_in(conn, _CONTACT_FIND, phones, mark)
    }


_CONTACT_FIND = "SELECT phone, id, carrier, opted_out FROM contacts WHERE phone IN ({marks})"
_CONTACT_INSERT = (
    "INSERT INTO contacts (phone, carrier, carrier_source, opted_out, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (phone) DO NOTHING"
)
_CONTACT_CARRIER = (
    "UPDATE contacts SET carrier = ?, carrier_source = ?, updated_at = ? WHERE id = ?"
)


def set_contact_name(conn: Connection, contact: int, name: str, now: dt.datetime) -> None:
    """The contact's name, as an order or a sender gave it (shown wherever its number is)."""
    conn.execute(update(contacts).where(contacts.c.id == contact).values(name=name, updated_at=now))


def ensure_order(conn: Connection, ref: str, customer_id: int, now: dt.datetime) -> int:
    """The order with reference `ref`, created bare (customer only) when it does not exist."""
    find = select(orders.c.id).where(orders.c.ref == ref)
    found = conn.execute(find).scalar()
    if found is not None:
        return int(found)
    return insert_once(
        conn,
        insert(orders)
        .values(ref=ref, customer_id=customer_id, created_at=now, updated_at=now)
        .returning(orders.c.id),
        find,
    )


def insert_once(conn: Connection, statement: Any, find: Any) -> int:
    """Insert a row that a unique key identifies; when a concurrent writer inserted it first,
    use theirs. Any other integrity error (a foreign key, say) is raised, not retried."""
    try:
        with conn.begin_nested():
            return int(conn.execute(statement).scalar_one())
    except IntegrityError:
        found = conn.execute(find).scalar()
        if found is None:
            raise
        return int(found)


def ensure_conversations(
    conn: Connection, contact_ids: Iterable[int], now: dt.datetime
) -> dict[int, int]:
    """The conversation with each contact (one each, whatever order a text is about), its last
    message time moved to `now`; created where there is none: contact -> id. A conversation a
    concurrent writer creates first is found (ON CONFLICT DO NOTHING). Driver SQL, as in
    upsert_contacts."""
    mark, time_param = driver_style(conn)
    at = time_param(now)
    wanted = list(dict.fromkeys(contact_ids))
    found = _conversations_of(conn, wanted, mark)
    missing = [contact for contact in wanted if contact not in found]
    if missing:
        conn.exec_driver_sql(
            placeholders(_CONVERSATION_NEW, mark),
            [(contact_id, at, at) for contact_id in missing],
        )
        found.update(_conversations_of(conn, missing, mark))
    made = set(missing)
    touched = [found[contact] for contact in wanted if contact not in made]
    for statement, chunk in in_lists(_CONVERSATION_TOUCH, touched, mark):
        conn.exec_driver_sql(statement, (at, *chunk))
    return found


def ensure_conversation(conn: Connection, contact_id: int, now: dt.datetime) -> int:
    """The conversation with the contact, as ensure_conversations."""
    return ensure_conversations(conn, [contact_id], now)[contact_id]


def _conversations_of(conn: Connection, contact_ids: Sequence[int], mark: str) -> dict[int, int]:
    return {
        int(contact_id): int(conversation)
        for contact_id, conversation in select_in(
            conn, _CONVERSATIONS_FIND, sorted(contact_ids), mark
        )
    }


_CONVERSATIONS_FIND = "SELECT contact_id, id FROM conversations WHERE contact_id IN ({marks})"
_CONVERSATION_TOUCH = "UPDATE conversations SET last_message_at = ? WHERE id IN ({marks})"
_CONVERSATION_NEW = (
    "INSERT INTO conversations (contact_id, created_at, last_message_at) "
    "VALUES (?, ?, ?) ON CONFLICT (contact_id) DO NOTHING"
)
