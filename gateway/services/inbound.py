"""The inbound worker: each batch from the mailbox is read, threaded and stored in one
transaction with the mailbox position, so a crash re-reads at most the batch in hand and a
message fetched twice is stored once.

A message that cannot be read is quarantined with the error and the batch goes on; only a
database that cannot be written stops the batch (it is read again on the next pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gateway.domain.bounces import Recipient
from gateway.domain.health import Health, backoff
from gateway.domain.inbound import (
    MAX_TEXT,
    InboundMail,
    Keyword,
    Kind,
    MailError,
    keyword_of,
    parse_mail,
    reading_failed,
)
from gateway.domain.phone import Phone
from gateway.domain.providers import ReportStatus as ProviderReport
from gateway.domain.threading import NO_MATCH, Match, Rule, ids_to_look_up, match
from gateway.services.outbound import EnqueueError, SendRequest, enqueue
from gateway.services.runtime import Runtime
from gateway.store import inbox, live
from gateway.store.contacts import ensure_conversation, upsert_contact
from gateway.store.db import database_words, utcnow
from gateway.store.inbox import SentThread
from gateway.transport.mailsource import Batch, Fetched, MailSource

log = logging.getLogger(__name__)
# How often a batch the database refused is tried again (it is held, never skipped).
STORE_RETRY_SECONDS = 5


@dataclass
class InboundStats:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    answers: int = 0  # keyword answers queued
    by_kind: Counter[str] = field(default_factory=Counter)

    def merge(self, other: InboundStats) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.answers += other.answers
        self.by_kind.update(other.by_kind)

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())) or "none"
        return (
            f"inbound {self.stored} stored ({kinds}), {self.duplicates} already stored, "
            f"{self.quarantined} quarantined, {self.answers} keyword answers"
        )


@dataclass(frozen=True, slots=True)
class ReceivedText:
    """A text an SMS channel received (the phone's webhook or inbox, Twilio's webhook)."""

    key: str  # its identity on the channel, e.g. smsgate:ID: the same key is stored once
    phone: Phone
    text: str
    at: dt.datetime | None
    raw: bytes  # what the channel sent, kept as a mail's raw bytes are


@dataclass(frozen=True, slots=True)
class _Read:
    item: Fetched
    mail: InboundMail
    key: str


class Ingest:
    """Turns fetched messages into stored, threaded rows and their effects.

    A batch is handled in a few statements whatever its size (already stored? candidates,
    contacts, one insert, one update per effect): row by row costs a dozen statements a
    message and caps a core near 400 messages a second. When the batch as a whole fails (a
    concurrent reader, a bug on hostile input), each message is tried on its own, and the one
    that fails is quarantined with the error."""

    def __init__(self, runtime: Runtime, engine: Engine) -> None:
        self.runtime = runtime
        self.engine = engine
        self.carriers = runtime.carriers
        self.identity = runtime.identity
        self.settings = runtime.settings.inbound
        self.window = dt.timedelta(hours=self.settings.reply_window_hours)
        self.stats = InboundStats()

    def store(self, batch: Batch, now: dt.datetime, *, history: bool = False) -> None:
        """Store `batch`. With `history` (older mail, `gateway inbox import`) each message is
        threaded as of its own date, sends nothing (no keyword answers) and is marked imported
        (no webhook); what it says still counts (an old STOP opts its contact out)."""
        stats = InboundStats()
        with self.engine.begin() as conn:
            read = [r for item in batch.items if (r := self._read(conn, batch, item, now, stats))]
            try:
                with conn.begin_nested():
                    self._store(conn, batch, read, now, stats, history)
            except (OperationalError, InterfaceError):
                raise  # the database is away: the batch is read again later
            except Exception:
                log.warning("batch of %s failed; storing its messages one by one", batch.mailbox)
                stats = InboundStats(quarantined=stats.quarantined)
                for one in read:
                    try:
                        with conn.begin_nested():
                            self._store(conn, batch, [one], now, stats, history)
                    except (OperationalError, InterfaceError):
                        raise
                    except Exception as exc:
                        log.exception("storing message %s failed", one.item.uid or one.item.name)
                        error = f"storing failed: {type(exc).__name__}: {exc}"
                        self._quarantine(conn, batch, one.item, error, now, stats)
            if batch.last_uid is not None:
                inbox.save_position(conn, batch.mailbox, batch.uidvalidity, batch.last_uid, now)
            live.notify(conn)
        self.stats.merge(stats)

    def store_texts(
        self,
        conn: Connection,
        mailbox: str,
        texts: Sequence[ReceivedText],
        now: dt.datetime,
        *,
        answers: bool = True,
    ) -> InboundStats:
        """Store texts an SMS channel received, in `conn`'s transaction, exactly as replies
        read from the mailbox are: threaded by number, STOP, START and HELP acted on. Without
        `answers` a keyword is recorded and not answered (the channel answers it itself)."""
        stats = InboundStats()
        read = []
        for text in texts:
            mail = InboundMail(
                kind=Kind.REPLY,
                sender="",
                subject="",
                message_id=None,
                phone=text.phone,
                carrier=None,
                text=text.text[:MAX_TEXT],
                in_reply_to=None,
                sent_at=text.at,
            )
            item = Fetched(uid=None, raw=text.raw, size=len(text.raw))
            read.append(_Read(item, mail, text.key))
        batch = Batch(mailbox=mailbox, uidvalidity=None, items=())
        with conn.begin_nested():
            self._store(conn, batch, read, now, stats, answers=answers)
        live.notify(conn)
        self.stats.merge(stats)
        return stats

    def release(self, quarantined: int, now: dt.datetime) -> None:
        """Read a quarantined message again (after the fault that held it was mended): stored
        like new mail, then taken out of quarantine. LookupError when there is no such message;
        ValueError, saying why, when it still cannot be read (nothing changes then)."""
        with self.engine.connect() as conn:
            row = inbox.quarantined(conn, quarantined)
        if row is None:
            raise LookupError(f"there is no quarantined message {quarantined}")
        if row.size > len(row.raw):
            raise ValueError(
                f"only the first {len(row.raw):,} of its {row.size:,} bytes were kept; "
                "it cannot be read again (raise inbound.max_bytes for the next one)"
            )
        try:
            parse_mail(row.raw, self.carriers, self.identity)
        except Exception as exc:  # hostile bytes: the same guard as the mailbox reader's
            raise ValueError(f"it still cannot be read: {exc}") from None
        item = Fetched(uid=None, raw=row.raw, size=row.size)
        self.store(Batch(mailbox=row.mailbox, uidvalidity=None, items=(item,)), now)
        with self.engine.begin() as conn:
            inbox.unquarantine(conn, quarantined)

    def _read(
        self, conn: Connection, batch: Batch, item: Fetched, now: dt.datetime, stats: InboundStats
    ) -> _Read | None:
        """The message understood, or None after quarantining it."""
        limit = self.settings.max_bytes
        if item.size > limit:
            error = (
                f"the message is {item.size:,} bytes, more than inbound.max_bytes ({limit:,}); "
                f"its first {len(item.raw):,} bytes are kept"
            )
            self._quarantine(conn, batch, item, error, now, stats)
            return None
        try:
            mail = parse_mail(item.raw, self.carriers, self.identity)
        except MailError as exc:
            self._quarantine(conn, batch, item, f"not a readable message: {exc}", now, stats)
            return None
        except Exception as exc:  # hostile bytes must never stop the mailbox
            log.exception("reading message %s of %s failed", item.uid or item.name, batch.mailbox)
            self._quarantine(conn, batch, item, reading_failed(exc), now, stats)
            return None
        return _Read(item, mail, dedup_key(mail.message_id, item.raw))

    def _quarantine(
        self,
        conn: Connection,
        batch: Batch,
        item: Fetched,
        error: str,
        now: dt.datetime,
        stats: InboundStats,
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
        stats.quarantined += 1

    def _store(
        self,
        conn: Connection,
        batch: Batch,
        read: list[_Read],
        now: dt.datetime,
        stats: InboundStats,
        history: bool = False,
        answers: bool = True,
    ) -> None:
        keys_in, uids_in = inbox.already_in(
            conn,
            batch.mailbox,
            batch.uidvalidity,
            [r.item.uid for r in read if r.item.uid is not None],
            [r.key for r in read],
        )
        fresh: list[_Read] = []
        for one in read:
            if one.key in keys_in or one.item.uid in uids_in:
                stats.duplicates += 1
                continue
            keys_in.add(one.key)  # the same message twice in one batch
            fresh.append(one)
        if not fresh:
            return

        domain = self.identity.domain
        dates = [one.mail.sent_at for one in fresh if history and one.mail.sent_at]
        since = min([now, *dates]) - self.window
        ids = {ref for one in fresh for ref in ids_to_look_up(one.mail, domain)}
        by_id = inbox.sent_by_message_id(conn, sorted(ids))
        # A reply names its sender's phone; so does a provider's delivery report.
        phones = sorted(
            {one.mail.phone.e164 for one in fresh if one.mail.phone
             and (_by_phone(one.mail) or one.mail.provider)}
        )  # fmt: skip
        to_phone = inbox.latest_sent_to(conn, "to_phone", phones, since)
        addresses = sorted(
            {one.mail.recipients[0].address for one in fresh if one.mail.kind is Kind.BOUNCE
             and one.mail.recipients}
        )  # fmt: skip
        to_address = inbox.latest_sent_to(conn, "to_address", addresses, since)
        contact_of = inbox.contacts_by_phone(conn, phones)
        sents = {thread.sent.message_id: thread.sent for thread in by_id.values()}

        rows: list[dict[str, Any]] = []
        replied: list[int] = []
        touched: set[int] = set()
        learned: dict[str, list[int]] = {}
        after: list[tuple[InboundMail, SentThread | None, int | None, Keyword | None, str]] = []
        for one in fresh:
            mail = one.mail
            latest = None
            if mail.phone is not None and _by_phone(mail):
                latest = to_phone.get(mail.phone.e164)
            elif mail.kind is Kind.BOUNCE and mail.recipients:
                latest = to_address.get(mail.recipients[0].address)
            as_of = mail.sent_at if history and mail.sent_at else now
            found = match(mail, domain, sents, latest.sent if latest else None, as_of, self.window)
            thread = _thread_of(found, by_id, latest)
            contact = thread.contact if thread else None
            if contact is None and mail.provider and mail.phone and mail.kind is not Kind.REPLY:
                contact = contact_of.get(mail.phone.e164)  # a report on a text not matched
            conversation = thread.conversation if thread else None
            keyword = keyword_of(mail.text) if mail.kind is Kind.REPLY else None
            if mail.kind is Kind.REPLY and mail.phone is not None:
                if contact is None:
                    contact = contact_of.get(mail.phone.e164)
                if contact is None:
                    contact = upsert_contact(conn, mail.phone.e164, None, "reply", now)[0]
                    contact_of[mail.phone.e164] = contact
                carrier = self.carriers.find(mail.carrier) if mail.carrier else None
                if carrier is not None and carrier.kind == "carrier":
                    learned.setdefault(carrier.id, []).append(contact)
                if conversation is None:
                    conversation = ensure_conversation(conn, contact, now)
            if mail.kind is Kind.REPLY and found.sent is not None:
                replied.append(found.sent.id)
            if conversation is not None:
                touched.add(conversation)
            rows.append(_row(batch, one, found, contact, conversation, thread, keyword, now,
                             imported=history))  # fmt: skip
            if mail.kind is not Kind.REPLY or keyword is not None:
                after.append((mail, thread if found.sent else None, contact, keyword, one.key))
            stats.stored += 1
            stats.by_kind[mail.kind.value] += 1

        inbox.store_inbound_rows(conn, rows)
        inbox.mark_replied(conn, replied, now)
        inbox.touch_conversations(conn, sorted(touched), now)
        for carrier_id, contacts in learned.items():
            inbox.learn_carrier(conn, sorted(set(contacts)), carrier_id, now)
        for mail, thread, contact, keyword, key in after:
            self._effects(conn, mail, thread, contact, keyword, key, now, stats, history,
                          answers)  # fmt: skip

    @staticmethod
    def _bounced(
        conn: Connection,
        mail: InboundMail,
        thread: SentThread,
        contact: int | None,
        now: dt.datetime,
    ) -> None:
        """A final failure report: the text is bounced, and a bad address at the carrier's own
        gateway puts its carrier in doubt. A delay warning (the reporter still trying) is
        neither: the report is stored and the text stays as it was."""
        failed = mail.recipients[0]
        if not failed.final:
            return
        reason = bounce_reason(failed)
        if mail.provider and mail.provider_report:
            reason = f"bounced: {mail.provider} reported {mail.provider_report.value}"
            reason += f": {mail.text[:300]}" if mail.text else ""
        inbox.mark_bounced(conn, thread.sent.id, reason, now)
        gateway = thread.gateway
        on_gateway = gateway is not None and failed.address.endswith("@" + gateway)
        if failed.permanent and on_gateway and contact is not None and not mail.provider:
            why = f"{gateway} said the address is bad: {failed.reason}"
            inbox.doubt_carrier(conn, contact, why, now)

    def _effects(
        self,
        conn: Connection,
        mail: InboundMail,
        thread: SentThread | None,
        contact: int | None,
        keyword: Keyword | None,
        key: str,
        now: dt.datetime,
        stats: InboundStats,
        history: bool = False,
        answers: bool = True,
    ) -> None:
        """What reports and keywords change beyond their own row (they are few). History
        changes the contact's opt-out but answers nothing: the moment has passed; nor does a
        keyword the channel answered itself (`answers` false)."""
        if mail.kind is Kind.DELIVERY_REPORT and thread is not None:
            inbox.mark_delivered(conn, thread.sent.id, now)
        elif mail.kind is Kind.BOUNCE and thread is not None and mail.recipients:
            self._bounced(conn, mail, thread, contact, now)
        if mail.provider_report is ProviderReport.OPTED_OUT and contact is not None:
            # The provider will refuse this number from now on: record it as an opt-out, so
            # texts are held as `opted_out` instead of failing one by one.
            inbox.set_opted_out(conn, contact, True, now)
        if keyword is not None and contact is not None and mail.phone is not None:
            if history or not answers:
                if keyword in (Keyword.STOP, Keyword.START):
                    inbox.set_opted_out(conn, contact, keyword is Keyword.STOP, now)
                return
            self._answer(conn, keyword, contact, mail.phone.e164, key, now, stats)

    def _answer(
        self,
        conn: Connection,
        keyword: Keyword,
        contact: int,
        phone: str,
        key: str,
        now: dt.datetime,
        stats: InboundStats,
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
        request = SendRequest(
            to=phone,
            text=text,
            # One answer per keyword message, however often it is read.
            idempotency_key="keyword-" + hashlib.sha256(key.encode()).hexdigest()[:32],
            answers_keyword=True,
        )
        try:
            enqueue(self.runtime, request, now, conn=conn)
        except EnqueueError as exc:  # the contact's carrier cannot be texted: nothing to send
            log.warning("no answer to %s from %s: %s", keyword.value, phone, exc)
            return
        stats.answers += 1


def _by_phone(mail: InboundMail) -> bool:
    """Threaded by its phone number: a reply, or a provider's delivery report (a carrier's
    bounce names the address that failed instead)."""
    return mail.kind is Kind.REPLY or (
        mail.provider is not None and mail.kind is Kind.DELIVERY_REPORT
    )


def _thread_of(
    found: Match, by_id: dict[str, SentThread], latest: SentThread | None
) -> SentThread | None:
    if found.sent is None:
        return None
    if latest is not None and latest.sent.id == found.sent.id:
        return latest
    return by_id.get(found.sent.message_id)


def _row(
    batch: Batch,
    one: _Read,
    found: Match,
    contact: int | None,
    conversation: int | None,
    thread: SentThread | None,
    keyword: Keyword | None,
    now: dt.datetime,
    imported: bool = False,
) -> dict[str, Any]:
    mail = one.mail
    row = {
        "mailbox": batch.mailbox,
        "uidvalidity": batch.uidvalidity,
        "uid": one.item.uid,
        "dedup_key": one.key,
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
        "order_id": thread.order if thread else None,
        "match_rule": found.rule.value,
        "confidence": found.confidence,
        "size": one.item.size,
        "raw": one.item.raw,
        "stored_at": now,
        "imported": imported,
    }
    # PostgreSQL text cannot hold NUL, and a stranger's mail may: it goes, the raw bytes keep it.
    return {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in row.items()}


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
        details["recipients"] = [r.as_json() for r in mail.recipients]
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
        self.storing = Health()  # whether the database takes what is read: a refusal said once

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
                        # Said once, in the database's words, not at every try.
                        news = self.storing.failing(database_words(exc), utcnow())
                        log.log(logging.ERROR if news else logging.DEBUG,
                                "cannot store inbound mail (%s); holding it, trying every %s s",
                                database_words(exc), STORE_RETRY_SECONDS)  # fmt: skip
                        await _wait(stop, STORE_RETRY_SECONDS)
                        if stop.is_set():
                            return self.stats
                if self.storing.working(utcnow()):
                    log.warning("inbound mail is stored again")
                await self.source.done(batch)
        finally:
            await self.source.close()
        return self.stats


class MailboxLease:
    """Reads a mailbox only while this process holds its lease, so that of several processes
    on one database exactly one reads each mailbox. The lease is renewed every third of its
    length; a process that dies stops renewing, and within one lease length another takes the
    mailbox over, from the position committed with the last batch."""

    def __init__(
        self, receiver: Receiver, engine: Engine, holder: str, seconds: float = 30.0
    ) -> None:
        self.receiver, self.engine, self.holder = receiver, engine, holder
        self.seconds = seconds
        self.mailbox = receiver.source.mailbox
        self.held = False
        self.leasing = Health()  # whether the database answers for the lease

    async def _take(self) -> str | None:
        now = utcnow()
        until = now + dt.timedelta(seconds=self.seconds)
        other = await asyncio.to_thread(
            inbox.hold_mailbox, self.engine, self.mailbox, self.holder, now, until
        )
        self.held = other is None
        return other

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> InboundStats:
        told = None
        while not stop.is_set():
            try:
                other = await self._take()
            except (OperationalError, InterfaceError) as exc:
                # Said once, in the database's words, not at every look.
                if self.leasing.failing(database_words(exc), utcnow()):
                    log.error(
                        "cannot reach the database for the mailbox lease (%s)", database_words(exc)
                    )
                other = "?"
            else:
                if self.leasing.working(utcnow()):
                    log.warning("the database answers the mailbox lease again")
            if other is not None:
                if until_idle:
                    log.warning("%s is being read by %s; not read here", self.mailbox, other)
                    return self.receiver.stats
                if told != other:
                    log.warning("%s is being read by %s; standing by", self.mailbox, other)
                    told = other
                await _wait(stop, self.seconds / 3)
                continue
            told = None
            reading = asyncio.Event()  # set: stop reading (stopped, or the lease was lost)
            keeper = asyncio.create_task(self._keep(stop, reading))
            try:
                await self.receiver.run(reading, until_idle=until_idle)
            finally:
                reading.set()
                await keeper
            if until_idle:
                break
        if self.held:
            await asyncio.to_thread(inbox.let_go_of_mailbox, self.engine, self.mailbox,
                                    self.holder)  # fmt: skip
            self.held = False
        return self.receiver.stats

    async def _keep(self, stop: asyncio.Event, reading: asyncio.Event) -> None:
        """Renew the lease while reading; end the reading when it cannot be renewed."""
        while not reading.is_set():
            await _wait_any((reading, stop), self.seconds / 3)
            if reading.is_set():
                return
            if stop.is_set():
                reading.set()
                return
            try:
                other = await self._take()
            except (OperationalError, InterfaceError) as exc:
                # Unrenewed, the lease runs out: stop before another process may take over.
                log.error(
                    "cannot renew the lease on %s (%s); stopping reading",
                    self.mailbox,
                    database_words(exc),
                )
                other = "?"
            if other is not None:
                log.warning("%s is now read by %s; stopping here", self.mailbox, other)
                reading.set()
                return


async def keep_reading(lease: MailboxLease, stop: asyncio.Event) -> InboundStats:
    """Read the mailbox until `stop` is set, whatever happens: the source retries what the
    server and the network do by itself; anything else that ends the reader (a fault of the
    gateway's own) is logged once, shown in the source's health, and the reader started again
    after a capped backoff. A dead reader must never pass for a live one."""
    health = lease.receiver.source.health
    failures = 0
    while not stop.is_set():
        try:
            return await lease.run(stop)
        except Exception as exc:
            failures += 1
            error = f"the mailbox reader stopped: {type(exc).__name__}: {exc}"
            if health.failing(error, utcnow()):
                log.exception("%s; starting it again", error)
            await _wait(stop, backoff(failures))
    return lease.receiver.stats


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def manual_thread(engine: Engine, inbound_id: int, message: int | None, now: dt.datetime) -> None:
    """A dispatcher's decision: this inbound message belongs to outbound text `message` (or, with
    None, to none). Raises LookupError when either does not exist."""
    with engine.begin() as conn:
        if inbox.inbound_row(conn, inbound_id) is None:
            raise LookupError(f"there is no inbound message {inbound_id}")
        contact = conversation = order = None
        if message is not None:
            thread = inbox.thread_of(conn, message)
            contact, conversation, order = thread.contact, thread.conversation, thread.order
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
            inbox.touch_conversations(conn, [conversation], now)
