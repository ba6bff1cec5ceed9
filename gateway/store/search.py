"""Search: conversations by a contact's name or number (in any format a person types), an
order reference, or words in any text or reply. One function for both databases: SQLite's FTS5
and PostgreSQL's full-text search, each kept current by the database in the transaction that
stores a text or a reply (migration 0018). Matches come marked with MARK_START and MARK_END
around the words found; the faces escape the rest and turn the marks into highlighting."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, text

from gateway.store.tables import contacts, conversations, inbound, messages, orders

MARK_START, MARK_END = "\u27e6", "\u27e7"  # ⟦ ⟧: rare in texts, and not HTML

_SOURCES = (("messages", "body", "messages_fts"), ("inbound_messages", "text", "inbound_fts"))

SQLITE_SEARCH: list[str] = []
SQLITE_SEARCH_DROP: list[str] = []
for _table, _column, _fts in _SOURCES:
    SQLITE_SEARCH += [
        f"CREATE VIRTUAL TABLE {_fts} USING fts5({_column}, content='{_table}', "
        "content_rowid='id', tokenize='unicode61 remove_diacritics 2', detail=none, "
        "columnsize=0)",
        f"CREATE TRIGGER {_fts}_insert AFTER INSERT ON {_table} BEGIN "
        f"INSERT INTO {_fts}(rowid, {_column}) VALUES (new.id, new.{_column}); END",
        f"CREATE TRIGGER {_fts}_delete AFTER DELETE ON {_table} BEGIN "
        f"INSERT INTO {_fts}({_fts}, rowid, {_column}) VALUES ('delete', old.id, old.{_column}); "
        "END",
        f"CREATE TRIGGER {_fts}_update AFTER UPDATE OF {_column} ON {_table} BEGIN "
        f"INSERT INTO {_fts}({_fts}, rowid, {_column}) VALUES ('delete', old.id, old.{_column}); "
        f"INSERT INTO {_fts}(rowid, {_column}) VALUES (new.id, new.{_column}); END",
        f"INSERT INTO {_fts}({_fts}) VALUES ('rebuild')",
    ]
    SQLITE_SEARCH_DROP += [
        f"DROP TRIGGER IF EXISTS {_fts}_{event}" for event in ("insert", "delete", "update")
    ] + [f"DROP TABLE IF EXISTS {_fts}"]
POSTGRES_SEARCH = [
    f"CREATE INDEX ix_{_table}_search ON {_table} USING gin (to_tsvector('simple', {_column}))"
    for _table, _column, _ in _SOURCES
]
POSTGRES_SEARCH_DROP = [f"DROP INDEX IF EXISTS ix_{_table}_search" for _table, _, _ in _SOURCES]

# Objects of the search that the table models do not declare (FTS5 tables and their shadow
# tables, triggers, expression indexes): a schema comparison leaves them out.
_UNDECLARED = re.compile(r"^(?:messages_fts|inbound_fts)|_search$")


def declared(name: str | None, kind: str, parents: object) -> bool:
    """For Alembic's include_name: whether `name` is one of the models' own objects."""
    return not (name and _UNDECLARED.search(name))


# A word as the index's tokenizer reads one: letters and digits. Not \w, whose "_" (and
# combining marks) the tokenizer splits on: "a_b" would reach FTS5 as a phrase of two words,
# which an index without positions (detail=none) refuses with an error.
_WORD = re.compile(r"[^\W_]+")


def search(conn: Connection, query: str, limit: int = 30) -> list[dict[str, Any]]:
    """Hits for `query`, newest first within each kind: contacts by name or number, orders by
    reference, texts and replies by their words. Each hit names its conversation, and for a
    text or reply the item, so a face can open the thread at it."""
    query = " ".join(query.split())[:100]
    if not query:
        return []
    hits: list[dict[str, Any]] = []
    hits += _contacts(conn, query, limit)
    hits += _orders(conn, query, limit)
    words = _WORD.findall(query.lower())
    if words:
        hits += _words(conn, words, limit)
    seen: set[tuple[str, int]] = set()
    unique = []
    for hit in hits:
        key = (hit["kind"], hit["item_id"] or hit["conversation_id"])
        if key not in seen:
            seen.add(key)
            unique.append(hit)
    return unique[: limit * 2]


def _head() -> Any:
    return select(
        conversations.c.id.label("conversation_id"), contacts.c.name, contacts.c.phone
    ).select_from(conversations.join(contacts, contacts.c.id == conversations.c.contact_id))


def _mark(value: str, found: str) -> str:
    at = value.lower().find(found.lower())
    if at < 0:
        return value
    end = at + len(found)
    return f"{value[:at]}{MARK_START}{value[at:end]}{MARK_END}{value[end:]}"


def _contacts(conn: Connection, query: str, limit: int) -> list[dict[str, Any]]:
    digits = re.sub(r"\D", "", query)
    conditions = [contacts.c.name.icontains(query, autoescape=True)]
    if len(digits) >= 4:  # a number, as a person types it: (202) 555-0143, 202.555.0143, ...
        conditions.append(contacts.c.phone.like(f"%{digits}%"))
    rows = conn.execute(
        _head()
        .where(or_(*conditions))
        .order_by(conversations.c.last_message_at.desc())
        .limit(limit)
    )
    hits = []
    for row in rows:
        name = row.name or ""
        found_in_name = query.lower() in name.lower()
        snippet = _mark(name, query) if found_in_name else _mark(row.phone, digits)
        hits.append({"kind": "contact", "conversation_id": row.conversation_id, "item_id": None,
                     "name": row.name, "phone": row.phone, "snippet": snippet})  # fmt: skip
    return hits


def _orders(conn: Connection, query: str, limit: int) -> list[dict[str, Any]]:
    ref = query.strip()
    if len(ref) < 2:
        return []
    # The newest orders whose reference starts so, then their texts by the order index, then
    # the conversations: in one statement SQLite read every text to find those few (its plan
    # walks the conversation index for the grouping), most of a search's time on 100,000.
    refs = dict(
        conn.execute(
            select(orders.c.id, orders.c.ref)
            .where(orders.c.ref.istartswith(ref, autoescape=True))
            .order_by(orders.c.id.desc())
            .limit(limit)
        ).all()
    )
    if not refs:
        return []
    latest = {  # (conversation, order) -> its newest text
        (conversation_id, order_id): item_id
        for item_id, conversation_id, order_id in conn.execute(
            select(func.max(messages.c.id), messages.c.conversation_id, messages.c.order_id)
            .where(messages.c.order_id.in_(list(refs)), messages.c.conversation_id.is_not(None))
            .group_by(messages.c.conversation_id, messages.c.order_id)
        )
    }
    heads = {
        row.conversation_id: row
        for row in conn.execute(
            _head().where(conversations.c.id.in_({conversation for conversation, _ in latest}))
        )
    }
    newest = sorted(latest.items(), key=lambda found: found[1], reverse=True)[:limit]
    return [
        {"kind": "order", "conversation_id": conversation_id, "item_id": item_id,
         "name": heads[conversation_id].name, "phone": heads[conversation_id].phone,
         "snippet": _mark(refs[order_id], ref)}
        for (conversation_id, order_id), item_id in newest
        if conversation_id in heads
    ]  # fmt: skip


def _words(conn: Connection, words: list[str], limit: int) -> list[dict[str, Any]]:
    hits = []
    for kind, table, column, fts in (("text", messages, "body", "messages_fts"),
                                     ("reply", inbound, "text", "inbound_fts")):  # fmt: skip
        if conn.dialect.name == "sqlite":
            # Each word as a prefix, quoted: what a person types is never FTS5 syntax.
            match = " ".join('"' + word.replace('"', '""') + '"*' for word in words)
            found = conn.execute(
                text(
                    f"SELECT rowid AS item_id, snippet({fts}, 0, :start, :end, '…', 12) AS snippet "
                    f"FROM {fts} WHERE {fts} MATCH :match ORDER BY rowid DESC LIMIT :limit"
                ),
                {"start": MARK_START, "end": MARK_END, "match": match, "limit": limit},
            ).all()
        else:
            tsquery = func.to_tsquery("simple", " & ".join(f"{word}:*" for word in words))
            vector = func.to_tsvector("simple", table.c[column])
            headline = func.ts_headline(
                "simple", table.c[column], tsquery,
                f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=20, MinWords=6",
            )  # fmt: skip
            found = conn.execute(
                select(table.c.id.label("item_id"), headline.label("snippet"))
                .where(vector.op("@@")(tsquery))
                .order_by(table.c.id.desc())
                .limit(limit)
            ).all()
        if not found:
            continue
        snippets = {row.item_id: row.snippet for row in found}
        rows = conn.execute(
            _head()
            .add_columns(table.c.id.label("item_id"))
            .join(table, table.c.conversation_id == conversations.c.id)
            .where(and_(table.c.id.in_(list(snippets))))
            .order_by(table.c.id.desc())
        )
        hits += [
            {"kind": kind, "conversation_id": row.conversation_id, "item_id": row.item_id,
             "name": row.name, "phone": row.phone, "snippet": snippets[row.item_id]}
            for row in rows
        ]  # fmt: skip
    return hits
