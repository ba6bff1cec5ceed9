"""The inbound worker: each batch from the mailbox is read, threaded and stored in one
transaction with the mailbox position, so a crash re-reads at most the batch in hand and a
message fetched twice is stored once.

A message that cannot be read is quarantined with the error and the batch goes on; only a
database that cannot be written stops the batch (it is read again on the next pass).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.domain.bounces import Recipient
from gateway.domain.inbound import InboundMail, Keyword, Kind, MailError, keyword_of, parse_mail
from gateway.domain.threading import NO_MATCH, Match, Rule, ids_to_look_up, match
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import inbox
from gateway.store.db import utcnow
from gateway.store.outbox import ensure_conversation, upsert_contact
from gateway.transport.mailsource import Batch, Fetched, MailSource

log = logging.getLogger(__name__)


@dataclass
class InboundStats:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    answers: int = 0  # keyword answers queued
    by_kind: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())) or "none"
        return (
            f"inbound {self.stored} stored ({kinds}), {self.duplicates} already stored, "
            f"{self.quarantined} quarantined, {self.answers} keyword answers"
        )


class Ingest:
    """Turns fetched messages into stored, threaded rows and their effects."""

    def __init__(self, runtime: Runtime, engine: Engine) -> None:
        self.runtime = runtime
        self.engine = engine
        self.carriers = runtime.carriers
        self.identity = runtime.identity
        self.settings = runtime.settings.inbound
        self.window = dt.timedelta(hours=self.settings.reply_window_hours)
        self.stats = InboundStats()

    def store(self, batch: Batch, now: dt.datetime) -> None:
        with self.engine.begin() as conn:
            for item in batch.items:
                self._one(conn, batch, item, now)
            if batch.last_uid is not None:
                inbox.save_position(conn, batch.mailbox, batch.uidvalidity, batch.last_uid, now)

    def _one(self, conn: Connection, batch: Batch, item: Fetched, now: dt.datetime) -> None:
        if item.size > self.settings.max_bytes:
            self._quarantine(
                conn,
                batch,
                item,
                f"the message is {item.size:,} bytes, more than inbound.max_bytes "
                f"({self.settings.max_bytes:,}); its first {len(item.raw):,} bytes are kept",
                now,
            )
            return
        try:
            mail = parse_mail(item.raw, self.carriers, self.identity)
        except MailError as exc:
            self._quarantine(conn, batch, item, f"not a readable message: {exc}", now)
            return
        except Exception as exc:  # hostile bytes must never stop the mailbox
            log.exception("reading message %s of %s failed", item.uid or item.name, batch.mailbox)
            self._quarantine(conn, batch, item, f"reading failed: {type(exc).__name__}: {exc}", now)
            return
        key = dedup_key(mail.message_id, item.raw)
        if inbox.is_stored(conn, batch.mailbox, batch.uidvalidity, item.uid, key):
            self.stats.duplicates += 1
            return
        try:
            with conn.begin_nested():
                stored = self._record(conn, batch, item, mail, key, now)
        except DBAPIError:
            raise  # the database, not the message: the batch is read again later
        except Exception as exc:
            log.exception("storing message %s of %s failed", item.uid or item.name, batch.mailbox)
            self._quarantine(conn, batch, item, f"storing failed: {type(exc).__name__}: {exc}", now)
            return
        if stored:
            self.stats.stored += 1
            self.stats.by_kind[mail.kind.value] += 1
        else:
            self.stats.duplicates += 1

    def _quarantine(
        self, conn: Connection, batch: Batch, item: Fetched, error: str, now: dt.datetime
    ) -> None:
        inbox.store_quarantined(
            conn,
            {
                "mailbox": batch.mailbox,
                "uidvalidity": batch.uidvalidity,
                "uid": item.uid,
                "error": error[:2000],
                "size": item.size,
                "raw": item.raw,
                "stored_at": now,
            },
        )
        self.stats.quarantined += 1

    def _record(
        self,
        conn: Connection,
        batch: Batch,
        item: Fetched,
        mail: InboundMail,
        key: str,
        now: dt.datetime,
    ) -> bool:
        domain = self.identity.domain
        latest = None
        if mail.kind is Kind.REPLY and mail.phone is not None:
            latest = inbox.latest_sent_to_phone(conn, mail.phone.e164)
        elif mail.kind is Kind.BOUNCE and mail.recipients:
            latest = inbox.latest_sent_to_address(conn, mail.recipients[0].address)
        by_id = inbox.sent_by_message_id(conn, ids_to_look_up(mail, domain))
        found = match(mail, domain, by_id, latest, now, self.window)

        contact = conversation = order = None
        gateway = None
        if found.sent is not None:
            contact, conversation, order, gateway = inbox.thread_of(conn, found.sent.id)
        keyword = keyword_of(mail.text) if mail.kind is Kind.REPLY else None
        if mail.kind is Kind.REPLY and mail.phone is not None:
            if contact is None:
                contact = upsert_contact(conn, mail.phone.e164, None, "reply", now)[0]
            carrier = self.carriers.find(mail.carrier) if mail.carrier else None
            if carrier is not None and carrier.kind == "carrier":
                inbox.learn_carrier(conn, contact, carrier.id, now)
            if conversation is None:
                conversation = ensure_conversation(conn, contact, None, now)
        if conversation is not None:
            inbox.touch_conversation(conn, conversation, now)

        row_id = inbox.store_inbound(
            conn,
            {
                "mailbox": batch.mailbox,
                "uidvalidity": batch.uidvalidity,
                "uid": item.uid,
                "dedup_key": key,
                "message_id": (mail.message_id or "")[:300] or None,
                "kind": mail.kind.value,
                "from_address": mail.sender[:320] or None,
                "from_domain": mail.sender.rpartition("@")[2][:255] or None,
                "phone": mail.phone.e164 if mail.phone else None,
                "carrier": mail.carrier,
                "subject": mail.subject or None,
                "text": mail.text,
                "in_reply_to": (mail.in_reply_to or "")[:300] or None,
                "original_message_id": (mail.original_message_id or "")[:300] or None,
                "details": _details(mail),
                "keyword": keyword.value if keyword else None,
                "matched_message_id": found.sent.id if found.sent else None,
                "contact_id": contact,
                "conversation_id": conversation,
                "order_id": order,
                "match_rule": found.rule.value,
                "confidence": found.confidence,
                "size": item.size,
                "raw": item.raw,
                "stored_at": now,
            },
        )
        if row_id is None:
            return False
        self._effects(conn, mail, found, contact, gateway, keyword, row_id, now)
        return True

    def _effects(
        self,
        conn: Connection,
        mail: InboundMail,
        found: Match,
        contact: int | None,
        gateway: str | None,
        keyword: Keyword | None,
        row_id: int,
        now: dt.datetime,
    ) -> None:
        sent = found.sent
        if mail.kind is Kind.REPLY and sent is not None:
            inbox.mark_replied(conn, sent.id, now)
        elif mail.kind is Kind.DELIVERY_REPORT and sent is not None:
            inbox.mark_delivered(conn, sent.id, now)
        elif mail.kind is Kind.BOUNCE and sent is not None and mail.recipients:
            failed = mail.recipients[0]
            inbox.mark_bounced(conn, sent.id, bounce_reason(failed), now)
            on_gateway = gateway is not None and failed.address.endswith("@" + gateway)
            if failed.permanent and on_gateway and contact is not None:
                inbox.doubt_carrier(
                    conn, contact, f"{gateway} said the address is bad: {failed.reason}", now
                )
        if keyword is not None and contact is not None and mail.phone is not None:
            self._answer(conn, keyword, contact, mail, row_id, now)

    def _answer(
        self,
        conn: Connection,
        keyword: Keyword,
        contact: int,
        mail: InboundMail,
        row_id: int,
        now: dt.datetime,
    ) -> None:
        settings = self.settings
        if keyword is Keyword.STOP:
            inbox.set_opted_out(conn, contact, True, now)
            text = settings.stop_text
        elif keyword is Keyword.START:
            inbox.set_opted_out(conn, contact, False, now)
            text = settings.start_text
        else:
            text = settings.help_text
        assert mail.phone is not None
        request = SendRequest(
            to=mail.phone.e164,
            text=text,
            idempotency_key=f"keyword-answer-{row_id}",
            answers_keyword=True,
        )
        try:
            enqueue(self.runtime, request, now, conn=conn)
        except EnqueueError as exc:  # the contact's carrier cannot be texted: nothing to send
            log.warning("no answer to %s from %s: %s", keyword.value, mail.phone.e164, exc)
            return
        self.stats.answers += 1


def dedup_key(message_id: str | None, raw: bytes) -> str:
    """A message's identity across mailboxes and UIDVALIDITY changes: its Message-ID, or the
    digest of its bytes when it has none (or one too long to be honest)."""
    if message_id and len(message_id) <= 290:
        return "id:" + message_id
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def bounce_reason(failed: Recipient) -> str:
    code = " ".join(c for c in (failed.status, failed.smtp_code) if c)
    words = failed.diagnostic[:300]
    return (
        f"bounced: {failed.reason}"
        + (f" ({code})" if code else "")
        + (f": {words}" if words else "")
    )


def _details(mail: InboundMail) -> str | None:
    details: dict[str, Any] = {}
    if mail.recipients:
        details["recipients"] = [
            {
                "address": r.address,
                "status": r.status,
                "smtp_code": r.smtp_code,
                "reason": r.reason,
                "permanent": r.permanent,
                "diagnostic": r.diagnostic,
            }
            for r in mail.recipients
        ]
    if mail.attachments:
        details["attachments"] = list(mail.attachments)
    if mail.feedback_type:
        details["feedback_type"] = mail.feedback_type
    return json.dumps(details) if details else None


class Receiver:
    """Runs a mail source into the ingest until stopped (or, `until_idle`, until it is empty)."""

    def __init__(self, ingest: Ingest, source: MailSource) -> None:
        self.ingest = ingest
        self.source = source

    @property
    def stats(self) -> InboundStats:
        return self.ingest.stats

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> InboundStats:
        try:
            async for batch in self.source.batches(stop, drain=until_idle):
                while True:
                    try:
                        await asyncio.to_thread(self.ingest.store, batch, utcnow())
                        break
                    except DBAPIError as exc:
                        # The database is away: hold the batch and try again, never skip it.
                        log.error("cannot store inbound mail (%s); retrying in 5 s", exc.orig)
                        await asyncio.sleep(5)
                        if stop.is_set():
                            return self.stats
                await self.source.done(batch)
        finally:
            await self.source.close()
        return self.stats


def manual_thread(engine: Engine, inbound_id: int, message: int | None, now: dt.datetime) -> None:
    """A dispatcher's decision: this inbound message belongs to outbound text `message` (or, with
    None, to none). Raises LookupError when either does not exist."""
    with engine.begin() as conn:
        if inbox.inbound_row(conn, inbound_id) is None:
            raise LookupError(f"there is no inbound message {inbound_id}")
        contact = conversation = order = None
        if message is not None:
            contact, conversation, order, _ = inbox.thread_of(conn, message)
        inbox.set_thread(
            conn,
            inbound_id,
            message=message,
            contact=contact,
            conversation=conversation,
            order=order,
            rule=Rule.MANUAL.value,
            confidence=1.0 if message is not None else NO_MATCH.confidence,
        )
        if conversation is not None:
            inbox.touch_conversation(conn, conversation, now)
