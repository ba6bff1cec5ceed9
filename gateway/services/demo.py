"""`gateway demo`: the whole product on embedded defaults, no account and no network.

SQLite in the demo folder; two local SMTP servers, one standing in for the company's own
server (with a small daily limit, so traffic moves to the relay part-way) and one for the hosted
relay, both handing texts to simulated phones; a Maildir as the company mailbox, which the
phones answer into; the sender, the mailbox reader and the dashboard running in this process.
Seeded customers, a driver and an order show every path: answers threaded back, STOP, a number
that does not exist, contacts on retired carriers reached through an email-to-SMS provider (its
delivery report, an answer in its format), a number no gateway reaches texted by the company's
own Android phone (SMS Gate, simulated: its webhooks report deliveries and the answer), a number
nothing reaches, the per-contact cap, the relay.

With `--exit-after SECONDS` it runs unattended, prints a summary, and exits 0 only when every
expected outcome happened; without, it keeps serving the dashboard until Ctrl-C, and the phones
keep answering what a dispatcher sends them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.domain.delivery import State
from gateway.services.carrier_sim import Phone, PhoneNetwork
from gateway.services.channels import smsgate_webhooks
from gateway.services.orders import OrderInput, Orders
from gateway.services.outbound import SendRequest, enqueue
from gateway.services.phone_sim import CompanyPhone
from gateway.services.runtime import Runtime
from gateway.services.worker import Worker
from gateway.store import access
from gateway.store.db import upgrade, utcnow
from gateway.store.tables import contacts, inbound, messages, quarantine

# The company's Android phone (SMS Gate, simulated): user name, password, webhook signing key.
PHONE_LOGIN = ("sms", "demo-phone", "demo-signing-key")
OWN_DAILY_LIMIT = 6  # the own server's quota in the demo: the texts after it go by the relay
PROVIDER_DOMAIN = "sms.provider.example"  # carriers.yaml's `generic` provider, simulated
LOGINS = (("dispatcher", "dispatcher", "demo-dispatcher"), ("admin", "admin", "demo-admin-pw"))

# The demo order's time zone: the first of these where it is daytime now, so its texts are
# not held by quiet hours (a real order has the delivery address's zone).
DAYTIME_ZONES = (
    "America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu",
    "America/Sao_Paulo", "Europe/London", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo",
    "Australia/Sydney",
)  # fmt: skip


@dataclass(frozen=True)
class Person:
    name: str
    phone: str  # E.164
    carrier: str | None
    address: str | None  # the gateway address texts reach; None: none (retired, unknown)
    behaviour: Phone
    expect: str  # what must have happened by the end, in words the summary shows


PEOPLE = (
    Person("Ana", "+12025550143", "verizon", "2025550143@vtext.com",
           Phone("Thanks! I'll be home."), "answered"),
    Person("Ben", "+13125550199", "uscellular", "3125550199@email.uscc.net",
           Phone("Can you leave it with the neighbour at 12?"), "answered"),
    Person("Chloé", "+16045550123", "telus", "6045550123@msg.telus.com",
           Phone("ok merci"), "answered"),
    Person("Sam (driver)", "+16465550188", "boost", "6465550188@sms.myboostmobile.com",
           Phone("Got it, heading to Elm St after A-1001"), "answered"),
    Person("Gus", "+12025550177", "verizon", "2025550177@vtext.com", Phone("STOP"),
           "opted out, and was told so"),
    Person("Hal", "+12025550100", "verizon", "2025550100@vtext.com",
           Phone(unknown_number=True), "bounced"),
    Person("Dan", "+14155550100", "att", f"14155550100@{PROVIDER_DOMAIN}",
           Phone("Thanks, I'll be in"), "AT&T closed: through the provider, answered"),
    Person("Ivy", "+12025550134", "tmobile", f"12025550134@{PROVIDER_DOMAIN}", Phone(),
           "T-Mobile closed: through the provider, delivered"),
    Person("Eve", "+447400123456", None, None, Phone("Cheers, see you then"),
           "no gateway reaches GB: the company's phone, answered"),
    Person("Uma", "+4915123456789", None, None, Phone(),
           "not sent: carrier not known, no channel reaches DE"),
    Person("Fay", "+12025550161", "verizon", "2025550161@vtext.com", Phone("👍"),
           "order W-2001 texts, the fourth held by the hourly cap"),
)  # fmt: skip


def _first_texts() -> list[tuple[Person, SendRequest]]:
    by_name = {person.name: person for person in PEOPLE}

    def to(name: str, template: str, order: str | None = None, **values: str) -> Any:
        person = by_name[name]
        variables = {"customer_name": name, "order_ref": order or "", **values}
        return person, SendRequest(person.phone, person.carrier, template=template,
                                   variables=variables, order_ref=order,
                                   name=name.split(" (")[0])  # fmt: skip

    return [
        to("Ana", "order_confirmed", "A-1001", window="14:00-16:00"),
        to("Ana", "out_for_delivery", "A-1001", driver_name="Sam", eta="14:40"),
        to("Ben", "driver_assigned", "A-1002", driver_name="Rosa"),
        to("Chloé", "delayed", "A-1003", eta="17:15", reason="snow on Highway 1"),
        to("Sam (driver)", "free_text", text=(
            "Sam, three changes to your afternoon route: A-1001 moves to 14:40 because the "
            "customer asked for later; A-1004 is cancelled; and please collect the two returns "
            "waiting at the Elm Street depot before 17:00. Thanks!")),
        to("Gus", "order_confirmed", "A-1007", window="09:00-11:00"),
        to("Hal", "order_confirmed", "A-1008", window="10:00-12:00"),
        to("Dan", "order_confirmed", "A-1005", window="13:00-15:00"),
        to("Ivy", "out_for_delivery", "A-1009", driver_name="Sam", eta="15:10"),
        to("Eve", "order_confirmed", "A-1006", window="10:00-12:00"),
        to("Uma", "order_confirmed", "A-1010"),
    ]  # fmt: skip


# The dashboard and API for a runtime, served on 127.0.0.1 at a port and stopped by the demo
# (no signal handling of its own): given by the caller (the command line composes the web app
# and its server), so that services do not import the web layer above them.
ServerFor = Callable[[Runtime, int], uvicorn.Server]


def run_demo(
    folder: str, exit_after: float | None, out: Console, server_for: ServerFor, port: int = 8025
) -> int:
    """Run the demo; returns the exit code (0 when every expected outcome happened)."""
    return asyncio.run(_Demo(Path(folder), out, server_for, port).run(exit_after))


class _Demo:
    def __init__(self, base: Path, out: Console, server_for: ServerFor, port: int) -> None:
        self.base, self.out, self.server_for, self.port = base, out, server_for, port
        self.started = time.monotonic()

    def _from_thread(self, loop: asyncio.AbstractEventLoop, line: str) -> None:
        loop.call_soon_threadsafe(self.say, line)

    def say(self, line: str) -> None:
        self.out.print(f"[dim]{time.monotonic() - self.started:5.1f}s[/dim] {escape(line)}")

    async def run(self, exit_after: float | None) -> int:
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
            (base / name).unlink(missing_ok=True)
        maildir = base / "Maildir"
        for sub in ("new", "cur", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
            for old in (maildir / sub).iterdir():
                old.unlink()
        loop = asyncio.get_running_loop()
        network = PhoneNetwork(
            maildir=maildir,
            company="dispatch@demo.example",
            provider_domain=PROVIDER_DOMAIN,
            phones={p.address: p.behaviour for p in PEOPLE if p.address},
            on_event=lambda line: self._from_thread(loop, line),
        )
        own, relay = network.listen("own"), network.listen("relay")
        phone = CompanyPhone(*PHONE_LOGIN, people={p.phone: p.behaviour for p in PEOPLE},
                             on_event=lambda line: self._from_thread(loop, line))  # fmt: skip
        web_port = self.port if self.port and _free(self.port) else _any_port()
        try:
            runtime = self._runtime(base, maildir, own, relay, web_port, phone.url)
            await smsgate_webhooks(runtime, "register")  # as `gateway channels webhooks`
            return await self._scenario(runtime, network, phone, maildir, web_port, exit_after)
        finally:
            network.stop()
            phone.stop()

    def _runtime(
        self, base: Path, maildir: Path, own: int, relay: int, web: int, phone: str
    ) -> Runtime:
        db = (base / "gateway.db").resolve()
        # The same file lets `gateway --config demo/gateway.toml …` look at what the demo did.
        (base / "gateway.toml").write_text(
            "# Written by `gateway demo`: two local servers stand in for the own mail server\n"
            "# and the relay, a Maildir for the company mailbox.\n"
            f'[database]\nurl = "sqlite:///{db}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {own}\nsecurity = "none"\n'
            f'from_address = "Dispatch <dispatch@demo.example>"\ndaily_limit = {OWN_DAILY_LIMIT}\n'
            f'[relay]\nenabled = true\nhost = "127.0.0.1"\nport = {relay}\nsecurity = "none"\n'
            'from_address = "Dispatch via relay <relay@relay.demo.example>"\n'
            f'[inbound]\nmaildir = "{maildir.resolve()}"\n'
            '[gateways]\nprovider = "generic"  # texts to closed carriers go through it\n'
            '[channels]\norder = ["email", "smsgate"]  # what email cannot reach: the phone\n'
            f'[smsgate]\nurl = "{phone}"\nusername = "{PHONE_LOGIN[0]}"\n'
            f'password = "{PHONE_LOGIN[1]}"\nsigning_key = "{PHONE_LOGIN[2]}"\n'
            'countries = ["GB"]  # the company phone\'s plan texts the UK\n'
            f'[web]\nport = {web}\npublic_url = "http://127.0.0.1:{web}"\n'
            "[sender]\nidle_poll_seconds = 0.2\n",
            encoding="utf-8",
        )
        runtime = Runtime(load_settings(base / "gateway.toml"))
        upgrade(runtime.engine)
        now = utcnow()
        for name, role, password in LOGINS:
            access.add_user(runtime.engine, name, role, password, now)
        runtime.migrated_engine()
        return runtime

    async def _scenario(
        self,
        runtime: Runtime,
        network: PhoneNetwork,
        phone: CompanyPhone,
        maildir: Path,
        web_port: int,
        exit_after: float | None,
    ) -> int:
        stop = asyncio.Event()
        ended = asyncio.Event()  # Ctrl-C or SIGTERM
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, ended.set)
        server = self.server_for(runtime, web_port)
        # What `gateway run` runs: sender, mailbox reader, scheduler, heartbeat, settings watcher.
        worker = Worker(runtime, say=self.say)
        tasks = [asyncio.create_task(server.serve()), asyncio.create_task(worker.run(stop))]
        user, _, password = LOGINS[0]
        self.out.print(
            f"[bold]gateway demo[/bold]: database {runtime.settings.database.url}, "
            f"mailbox {maildir}\n  dashboard [bold]http://127.0.0.1:{web_port}/[/bold]  sign in as "
            f"[bold]{user}[/bold] / [bold]{password}[/bold] (or {LOGINS[1][0]} / {LOGINS[1][2]})"
        )
        try:
            expected = await self._send_and_walk(runtime)
            deadline = None if exit_after is None else self.started + exit_after
            # Every expected outcome, and everything the phones said stored: the summary counts
            # what happened, not what had happened when the last expected one did.
            while (
                not (
                    self._all_happened(runtime, expected, network)
                    and self._settled(runtime, network, phone)
                )
                and not ended.is_set()
            ):
                if deadline is not None and time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            code = self._summary(runtime, expected, network)
            if exit_after is None and not ended.is_set():
                self.out.print("The dashboard keeps running: text the phones from it. Ctrl-C ends.")
                await ended.wait()
            return code
        finally:
            stop.set()
            server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_and_walk(self, runtime: Runtime) -> dict[str, Any]:
        """Queue the first texts, then walk order W-2001 through its statuses as an order
        system would report them (the rules make its texts)."""
        for person, request in _first_texts():
            queued = enqueue(runtime, request, utcnow())
            note = f" ({queued.reason})" if queued.reason else ""
            self.say(f"queued for {person.name}: {queued.state.value}{note}")
        now = utcnow()
        zone_name = next(
            name for name in DAYTIME_ZONES if 9 <= now.astimezone(ZoneInfo(name)).hour < 18
        )
        local = now.astimezone(ZoneInfo(zone_name)).replace(second=0, microsecond=0, tzinfo=None)
        orders = Orders(runtime)
        orders.upsert(OrderInput(
            ref="W-2001", customer="+1 202 555 0161", carrier="verizon", customer_name="Fay",
            driver="+1 646 555 0188", driver_carrier="boost", driver_name="Sam",
            window_start=local + dt.timedelta(hours=3), window_end=local + dt.timedelta(hours=5),
            timezone=zone_name,
        ), now)  # fmt: skip
        walk: dict[str, int] = {}
        for status in ("confirmed", "driver_assigned", "out_for_delivery", "delivered"):
            await asyncio.sleep(1.0)
            result = orders.record_status("W-2001", status, utcnow(), eta="in 20 minutes")
            made = ", ".join(f"{t['rule']} {t['state']}" for t in result.texts) or "no text"
            self.say(f"order W-2001 {status}: {made}")
            walk.update({t["rule"]: t["id"] for t in result.texts})
        return walk

    # --- what happened --------------------------------------------------------------------

    def _facts(self, runtime: Runtime) -> dict[str, Any]:
        with runtime.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.id, messages.c.to_phone, messages.c.state, messages.c.reason,
                       messages.c.route, messages.c.order_id, messages.c.rule,
                       messages.c.gateway)
            ).all()  # fmt: skip
            replies = conn.execute(
                select(inbound.c.phone, inbound.c.kind, inbound.c.text, inbound.c.keyword)
            ).all()
            opted = set(
                conn.execute(select(contacts.c.phone).where(contacts.c.opted_out)).scalars()
            )
        return {"rows": rows, "replies": replies, "opted": opted}

    def _outcomes(
        self, runtime: Runtime, walk: dict[str, Any], network: PhoneNetwork
    ) -> dict[str, bool]:
        facts = self._facts(runtime)
        rows, opted = facts["rows"], facts["opted"]
        done = (State.SENT.value, State.DELIVERED.value, State.REPLIED.value)
        went = (*done, State.BOUNCED.value)

        def texts(phone: str) -> list[Any]:
            return [r for r in rows if r.to_phone == phone]

        result: dict[str, bool] = {}
        for person in PEOPLE:
            mine = texts(person.phone)
            if person.expect == "answered":
                ok = any(r.state == State.REPLIED.value for r in mine)
            elif person.expect.startswith("opted out"):
                told = [r for r in mine if r.state in done and r.rule is None]
                ok = person.phone in opted and any(
                    "unsubscribed" in x.text for x in network.received(person.address or "")
                ) and len(told) >= 2  # fmt: skip
            elif person.expect == "bounced":
                ok = any(r.state == State.BOUNCED.value for r in mine)
            elif "through the provider" in person.expect:
                reports = [x for x in facts["replies"] if x.phone == person.phone
                           and x.kind == "delivery_report"]  # fmt: skip
                via = [r for r in mine if r.gateway == PROVIDER_DOMAIN]
                final = State.REPLIED if person.expect.endswith("answered") else State.DELIVERED
                ok = bool(via) and bool(reports) and any(r.state == final.value for r in via)
            elif "the company's phone" in person.expect:
                ok = any(r.state == State.REPLIED.value and r.route == "smsgate" for r in mine)
            elif "carrier not known" in person.expect:
                ok = bool(mine) and all(r.reason == "carrier_unknown" for r in mine)
            else:  # Fay's order
                by_id = {r.id: r for r in rows}
                states = {rule: by_id[i].state for rule, i in walk.items() if i in by_id}
                ok = (
                    states.get("confirmed") in done
                    and states.get("out_for_delivery") in done
                    and states.get("window_reminder") == State.CANCELLED.value
                    and states.get("delivered") == State.QUEUED.value
                )
            result[person.name] = ok
        own = sum(1 for r in rows if r.route == "own" and r.state in went)
        relay = sum(1 for r in rows if r.route == "relay" and r.state in went)
        result["own server up to its daily limit"] = own == OWN_DAILY_LIMIT
        result["the relay took over"] = relay >= 1
        return result

    def _settled(self, runtime: Runtime, network: PhoneNetwork, phone: CompanyPhone) -> bool:
        """Nothing more is coming (no phone about to answer or report) and what came is stored."""
        if network.busy() or phone.busy():
            return False
        with runtime.engine.connect() as conn:
            stored = sum(
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (inbound, quarantine)  # what could not be read counts as stored
            )
        return bool(stored >= network.dropped + phone.received_sent)

    def _all_happened(self, runtime: Runtime, walk: dict[str, Any], network: PhoneNetwork) -> bool:
        return all(self._outcomes(runtime, walk, network).values())

    def _summary(self, runtime: Runtime, walk: dict[str, Any], network: PhoneNetwork) -> int:
        outcomes = self._outcomes(runtime, walk, network)
        facts = self._facts(runtime)
        rows, replies = facts["rows"], facts["replies"]
        table = Table(title="What happened", title_justify="left")
        table.add_column("who", no_wrap=True, min_width=15)  # a whole number, never cut
        for column in ("texts", "routes", "answer", "expected", ""):
            table.add_column(column)
        for person in PEOPLE:
            mine = [r for r in rows if r.to_phone == person.phone]
            states = ", ".join(sorted({r.state for r in mine})) or "-"
            routes = ", ".join(sorted({r.route for r in mine if r.route})) or "-"
            theirs = [x for x in replies if x.phone == person.phone]
            answer = next((x.text for x in theirs if x.kind == "reply"), "")
            if not answer and any(r.state == State.BOUNCED.value for r in mine):
                answer = "(its carrier's failure report)"
            if not answer and any(r.state == State.DELIVERED.value for r in mine):
                answer = "(the provider's delivery report)"
            mark = "[green]✓[/green]" if outcomes[person.name] else "[red]✗[/red]"
            shown = answer if len(answer) <= 40 else answer[:39] + "…"  # cut, and says so
            table.add_row(f"{person.name}\n{person.phone}", states, routes, escape(shown),
                          person.expect, mark)  # fmt: skip
        self.out.print(table)
        counts = {
            "sent": sum(1 for r in rows if r.state in ("sent", "delivered", "replied")),
            "replied": sum(1 for r in rows if r.state == "replied"),
            "bounced": sum(1 for r in rows if r.state == "bounced"),
            "suppressed": sum(1 for r in rows if r.state == "suppressed"),
            "by own server": sum(1 for r in rows if r.route == "own"),
            "by relay": sum(1 for r in rows if r.route == "relay"),
            "by the company's phone": sum(1 for r in rows if r.route == "smsgate"),
        }
        self.out.print(", ".join(f"{name} {count}" for name, count in counts.items()))
        for name, note in (("own server up to its daily limit", f" ({OWN_DAILY_LIMIT} here)"),
                           ("the relay took over", "")):  # fmt: skip
            mark = "[green]✓[/green]" if outcomes[name] else "[red]✗[/red]"
            self.out.print(f"{mark} {name}{note}")
        missed = [name for name, ok in outcomes.items() if not ok]
        if missed:
            self.out.print(f"[red]not as expected:[/red] {', '.join(missed)}")
            return 1
        self.out.print(
            "every expected outcome happened. Look around with "
            f"`gateway --config {self.base / 'gateway.toml'} outbox list` (or inbox list)."
        )
        return 0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_port() -> int:
    from gateway.services.carrier_sim import free_port

    return free_port()
