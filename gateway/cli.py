"""The command line: thin. Parses arguments, calls services, prints tables or JSON.

Exit codes: 0 ok, 1 a problem the user can fix (the message says what), 2 usage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.config import ConfigError, Settings, load_settings, masked
from gateway.domain.carriers import GatewayAddress
from gateway.domain.channels import CHANNEL_NAMES, Channel, channel_for
from gateway.domain.gateways import choose_gateway
from gateway.domain.phone import PhoneError, parse_phone
from gateway.domain.sms import measure
from gateway.domain.templates import TemplateError
from gateway.services.runtime import Runtime
from gateway.store.db import DatabaseError, utcnow

app = typer.Typer(
    help="Text drivers and customers from the company's own mailbox.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help names settings by section ("[web] host"), which rich markup would take for a style tag
    # and drop; as Markdown the section stays and a paragraph's lines are joined.
    rich_markup_mode="markdown",
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
carriers_app = typer.Typer(help="The carrier gateway table.", no_args_is_help=True)
templates_app = typer.Typer(help="Notification templates.", no_args_is_help=True)
outbox_app = typer.Typer(help="Outbound texts.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(carriers_app, name="carriers")
app.add_typer(templates_app, name="templates")
app.add_typer(outbox_app, name="outbox")
inbox_app = typer.Typer(help="Inbound mail: replies, bounces, reports.", no_args_is_help=True)
app.add_typer(inbox_app, name="inbox")
orders_app = typer.Typer(help="Orders and their status events.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")
rules_app = typer.Typer(help="The rules that turn order events into texts.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
tokens_app = typer.Typer(help="Bearer tokens for the HTTP API.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
users_app = typer.Typer(help="Dashboard users.", no_args_is_help=True)
app.add_typer(users_app, name="users")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"


FormatOption = Annotated[
    Format, typer.Option("--format", help="table for people, json for scripts")
]


class _State:
    config_path: str | None = None
    _runtime: Runtime | None = None

    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(load_settings(self.config_path))
        return self._runtime


state = _State()
log = logging.getLogger("gateway.cli")


@app.callback()
def _main(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="TOML config file (default: $GATEWAY_CONFIG, else ./gateway.toml, else built-in)",
            metavar="PATH",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log details")] = False,
) -> None:
    state.config_path = config
    state._runtime = None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("aiosmtplib").setLevel(logging.WARNING)


def fail(message: str) -> NoReturn:
    # The message is plain text (it may hold [section] names or a stranger's words): escaped.
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one clear line and exit code 1."""
    try:
        yield
    except (ConfigError, DatabaseError) as exc:
        fail(str(exc))


def with_var_hint(message: str, missing: str | None) -> str:
    """A template's complaint with how to give the missing variable on the command line."""
    return f"{message} (pass it with --var {missing}=VALUE)" if missing else message


def emit(rows: Sequence[dict[str, Any]], fmt: Format, columns: Sequence[str], title: str) -> None:
    if fmt is Format.json:
        out.print_json(json.dumps(list(rows), default=_json_default), indent=None)
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(column)) for column in columns])
    out.print(table)


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


# --- config and database ----------------------------------------------------------------------


@config_app.command("check")
def config_check(fmt: FormatOption = Format.table) -> None:
    """Print the effective configuration, secrets masked; exit 1 if it has a problem."""
    with user_errors():
        runtime = state.runtime()
        settings = runtime.settings
        problems = _check_files(runtime, settings)
        data = masked(settings)
        if fmt is Format.json:
            out.print_json(
                json.dumps(
                    {
                        "ok": not problems,
                        "file": _str(settings.source_file),
                        "settings": data,
                        "problems": problems,
                    }
                )
            )
        else:
            source = settings.source_file or "built-in defaults (no gateway.toml found)"
            out.print(f"# from {source}, with GATEWAY_* variables applied")
            for section, values in data.items():
                out.print(f"\n[{section}]", markup=False)
                for key, value in values.items():
                    out.print(f"{key} = {json.dumps(value)}", markup=False)
            for problem in problems:
                err.print(f"problem: {problem}", markup=False)
        if problems:
            raise typer.Exit(1)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _check_files(runtime: Runtime, settings: Settings) -> list[str]:
    problems = []
    for load in (lambda: runtime.carriers, lambda: runtime.templates):
        try:
            load()
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        for problem in runtime.templates.check():
            problems.append(str(problem))
    except ConfigError:
        pass
    if settings.smtp.enabled and settings.smtp.username:
        try:
            settings.smtp.resolve_password()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to this version's."""
    from gateway.store.db import upgrade

    with user_errors():
        runtime = state.runtime()
        try:
            before, after = upgrade(runtime.engine)
        except DatabaseError:
            raise
        except Exception as exc:  # the driver's own words say what is wrong with the database
            fail(f"migration failed: {exc}")
        url = runtime.engine.url.render_as_string(hide_password=True)
        if before == after:
            out.print(f"{url} is up to date (revision {after})", markup=False)
        else:
            out.print(f"{url} migrated from {before or 'empty'} to {after}", markup=False)


# --- carriers and addresses -------------------------------------------------------------------


@carriers_app.command("list")
def carriers_list(fmt: FormatOption = Format.table) -> None:
    """Every carrier with its gateway domains, status and dates, and every email-to-SMS
    provider with its address."""
    from gateway.services.carrier_report import carrier_rows

    with user_errors():
        runtime = state.runtime()
        rows = carrier_rows(runtime, utcnow().date())
        columns = ["id", "name", "kind", "countries", "sms", "address", "status", "ends_on",
                   "retired_on"]  # fmt: skip
        if fmt is Format.table:  # four columns that fit 80: the JSON keeps every field
            for row in rows:
                row["gateway"] = row["sms"] or str(row["address"] or "").rpartition("@")[2]
                date = row["ends_on"] or row["retired_on"]
                status = f"{row['status']} {date}" if date else row["status"]
                row["status"] = status if row["kind"] == "carrier" else f"provider, {status}"
            columns = ["id", "countries", "gateway", "status"]
        emit(rows, fmt, columns, f"Carriers and providers ({runtime.carriers_path})")


@carriers_app.command("health")
def carriers_health(fmt: FormatOption = Format.table) -> None:
    """Per gateway domain: texts sent, bounced, and replies received over 7 and 30 days."""
    from gateway.services.carrier_report import health_rows

    with user_errors():
        runtime = state.runtime()
        rows = health_rows(runtime, runtime.migrated_engine(), utcnow())
        columns = [
            "gateway", "carrier", "kind", "sent_7d", "bounced_7d", "replied_7d", "bounce_rate_7d",
            "sent_30d", "bounced_30d", "replied_30d",
        ]  # fmt: skip
        emit(
            rows, fmt, columns, "Gateway health (a rising bounce rate: the gateway may be closing)"
        )


def _rule_problems(runtime: Runtime) -> list[tuple[str, str]]:
    """(template, problem) for every rule whose template does not fit it."""
    from gateway.domain.rules import RuleError, load_rules, rule_problems

    try:
        rules = load_rules(runtime.rules_path.read_text(encoding="utf-8"), str(runtime.rules_path))
    except (OSError, RuleError):
        return []  # `gateway rules check` reports a broken rules file
    return [(rule.template, problem) for rule, problem in rule_problems(rules, runtime.templates)]


@app.command("address")
def address(
    phone: Annotated[str, typer.Argument(help="the phone number, e.g. +12025550143")],
    carrier: Annotated[str | None, typer.Option("--carrier", help="carrier id or name")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Print the gateway address a text to PHONE would go to, and why."""
    with user_errors():
        runtime = state.runtime()
        try:
            number = parse_phone(phone, runtime.settings.carriers.default_region)
        except PhoneError as exc:
            fail(exc.reason)
        found = None
        if carrier is not None:
            found = runtime.carriers.find(carrier)
            if found is None:
                fail(f"unknown carrier {carrier!r}; `gateway carriers list` shows the ids")
        today = utcnow().date()
        target = choose_gateway(number, found, runtime.carriers, runtime.provider_plan, today)
        choice = channel_for(runtime.channel_plan, number.region, target)
        if choice.channel not in (None, Channel.EMAIL):
            assert choice.channel is not None
            if fmt is Format.json:
                out.print_json(json.dumps({
                    "phone": number.e164, "channel": choice.channel.value, "address": None,
                    "carrier": found.id if found else None, "why": choice.why}))  # fmt: skip
            else:
                out.print(f"{number.e164} by {CHANNEL_NAMES[choice.channel]}", markup=False)
                err.print(f"why: {choice.why}", markup=False)
            return
        if isinstance(target, GatewayAddress):
            if fmt is Format.json:
                out.print_json(
                    json.dumps(
                        {
                            "phone": number.e164,
                            "channel": "email",
                            "address": target.address,
                            "carrier": found.id if found else None,
                            "kind": "provider" if target.provider else "carrier",
                            "gateway": target.gateway_id,
                            "gateway_domain": target.gateway,
                            "why": target.why,
                            "warning": target.warning,
                        }
                    )
                )
            else:
                out.print(target.address, markup=False)
                err.print(f"why: {target.why}", markup=False)
                if target.warning and target.warning not in target.why:  # said once
                    err.print(f"warning: {target.warning}", markup=False)
            return
        fail(f"{choice.why} ({target.reason})")


# --- templates --------------------------------------------------------------------------------


def _parse_vars(pairs: list[str] | None) -> dict[str, str]:
    variables: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--var")
        variables[name.strip()] = value
    return variables


VarOption = Annotated[
    list[str] | None, typer.Option("--var", help="a template variable, NAME=VALUE (repeat)")
]


@templates_app.command("check")
def templates_check(fmt: FormatOption = Format.table) -> None:
    """Check that every template compiles and fits every rule that uses it; exit 1 naming
    each one that does not."""
    with user_errors():
        runtime = state.runtime()
        book = runtime.templates
        problems: dict[str, object] = {p.template: p for p in book.check()}
        for rule_problem in _rule_problems(runtime):
            problems.setdefault(rule_problem[0], rule_problem[1])
        rows = []
        for name in book.names():
            problem = problems.get(name)
            info = None if problem else book.info(name)
            rows.append(
                {
                    "name": name,
                    "ok": problem is None,
                    "variables": sorted(info.variables) if info else [],
                    "problem": str(problem) if problem else None,
                }
            )
        emit(
            rows,
            fmt,
            ["name", "ok", "variables", "problem"],
            f"Templates ({runtime.templates_path})",
        )
        if problems:
            raise typer.Exit(1)


@templates_app.command("preview")
def templates_preview(
    name: Annotated[str, typer.Argument(help="template name, e.g. out_for_delivery")],
    var: VarOption = None,
    order: Annotated[
        str | None, typer.Option("--order", help="fill it from this order (--var still wins)")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Render a template with the given variables (or a real order's) and show its encoding,
    SMS segments and, for an order, when it would be sent after quiet hours."""
    from gateway.domain.sms import normalise
    from gateway.services.orders import OrderError, Orders

    with user_errors():
        runtime = state.runtime()
        variables: dict[str, str] = {}
        send_at = None
        if order is not None:
            status = name if name in STATUS_TEMPLATES else None
            try:
                variables, send_at = Orders(runtime).preview_context(order, utcnow(), status)
            except OrderError as exc:
                fail(str(exc))
        variables.update(_parse_vars(var))
        try:
            text = normalise(runtime.templates.render(name.removesuffix(".txt.j2"), variables))
        except TemplateError as exc:
            fail(with_var_hint(str(exc), exc.missing))
        shape = measure(text)
        if fmt is Format.json:
            out.print_json(
                json.dumps(
                    {
                        "name": name,
                        "text": text,
                        "encoding": shape.encoding.value,
                        "units": shape.units,
                        "segments": shape.segments,
                        "send_at": send_at.isoformat() if send_at else None,
                    }
                )
            )
            return
        out.print(text, markup=False)
        when = f"; would be sent at {send_at:%Y-%m-%d %H:%M} UTC" if send_at else ""
        err.print(
            f"-- {shape.encoding.value}, {shape.units} units, {shape.segments} segment(s){when}",
            markup=False,
        )


# --- sending ----------------------------------------------------------------------------------


# Templates named after a status preview that status's event.
STATUS_TEMPLATES = (
    "driver_assigned", "out_for_delivery", "delivered", "delayed", "attempt_failed", "cancelled",
)  # fmt: skip


@app.command("send")
def send(
    to: Annotated[str, typer.Option("--to", help="phone number")],
    carrier: Annotated[str | None, typer.Option("--carrier", help="carrier id or name")] = None,
    text: Annotated[str | None, typer.Option("--text", help="the text to send")] = None,
    template: Annotated[str | None, typer.Option("--template", help="template name")] = None,
    var: VarOption = None,
    order: Annotated[str | None, typer.Option("--order", help="order reference")] = None,
    key: Annotated[str | None, typer.Option("--key", help="idempotency key")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="the contact's name, shown beside the number")
    ] = None,
    respect_quiet_hours: Annotated[
        bool,
        typer.Option(
            "--respect-quiet-hours", help="hold it to the recipient's allowed hours, as rules do"
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Put a text in the outbox and print its id; `gateway run` sends it."""
    from gateway.domain.delivery import State
    from gateway.services.outbound import EnqueueError, SendRequest, enqueue

    if (text is None) == (template is None):
        raise typer.BadParameter("give exactly one of --text and --template")
    with user_errors():
        runtime = state.runtime()
        request = SendRequest(
            to=to,
            carrier=carrier,
            text=text,
            template=template,
            variables=_parse_vars(var),
            order_ref=order,
            idempotency_key=key,
            respect_quiet_hours=respect_quiet_hours,
            name=name,
        )
        try:
            result = enqueue(runtime, request, utcnow())
        except EnqueueError as exc:
            fail(with_var_hint(str(exc), exc.missing))
        if fmt is Format.json:
            out.print_json(
                json.dumps(
                    {
                        "id": result.ids[0],
                        "state": result.state.value,
                        "to_address": result.to_address,
                        "message_id": result.message_ids[0],
                        "parts": result.ids,
                        "existing": result.existing,
                        "reason": result.reason,
                        "warning": result.warning,
                    }
                )
            )
        else:
            for message in result.ids:
                out.print(str(message))
            if result.existing:
                err.print("note: this key was used before; these are the first request's texts")
            if result.warning:
                err.print(f"warning: {result.warning}", markup=False)
        if result.state is State.SUPPRESSED:
            err.print(f"[red]not sent:[/red] {escape(result.reason or '')}", markup=True)
            raise typer.Exit(1)


@app.command("run")
def run(
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="exit once nothing is due (0 even if some failed)")
    ] = False,
) -> None:
    """Run the workers until stopped (SIGTERM or Ctrl-C finish what is in flight, then exit):
    the sender, and the inbound worker when a mailbox is configured."""
    from gateway.services.worker import RunResult, Worker, WorkerError

    def say(line: str) -> None:
        err.print(line, markup=False)

    with user_errors():
        try:
            worker = Worker(state.runtime(), until_idle=until_idle, say=say)
        except WorkerError as exc:
            fail(str(exc))

        async def main() -> RunResult:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            return await worker.run(stop)

        result = run_async(main)
        say(f"done: {result.describe()}")
        if result.problems:
            fail("; ".join(result.problems))


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


@app.command("routes")
def routes(fmt: FormatOption = Format.table) -> None:
    """Each route (own server, relay): enabled, circuit breaker, sends in the last 24 h, limits,
    last error."""
    from gateway.domain.routing import Route, explain_route_error

    with user_errors():
        runtime = state.runtime()
        engine = runtime.migrated_engine()
        now = utcnow()
        book = runtime.route_book()
        book.load(engine, now)
        # Where a switched-off email route would send; an SMS channel not set has no place.
        servers = {Route.OWN: runtime.settings.smtp, Route.RELAY: runtime.settings.relay}
        rows = []
        for route in Route:
            server = servers.get(route)
            status = book.status(route, now)
            lane = book.lanes[route]
            if server is None and not lane.enabled:
                continue  # an SMS channel not in [channels] order
            breaker = book.breakers.get(route)
            rows.append(
                {
                    "name": route.value,
                    "enabled": status.enabled,
                    "server": lane.where or (f"{server.host}:{server.port}" if server else ""),
                    "breaker": status.breaker.value,
                    "failures": breaker.failures if breaker else 0,
                    "sent_today": status.sent_24h,
                    "daily_limit": lane.daily_limit,
                    "per_minute": lane.per_minute,
                    "last_error": explain_route_error(breaker.last_error if breaker else None),
                }
            )
        columns = [
            "name",
            "enabled",
            "server",
            "breaker",
            "sent_today",
            "daily_limit",
            "last_error",
        ]
        emit(rows, fmt, columns, "Routes (sent_today: rolling 24 hours)")


@outbox_app.command("list")
def outbox_list(
    state_: Annotated[str | None, typer.Option("--state", help="only rows in this state")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest rows shown")] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """The newest outbox rows with their state, route and the server's last reply."""
    from gateway.domain.delivery import State
    from gateway.store.views import list_messages

    if state_ is not None and state_ not in {s.value for s in State}:
        raise typer.BadParameter(
            f"{state_!r} is not a state ({', '.join(s.value for s in State)})", param_hint="--state"
        )
    with user_errors():
        engine = state.runtime().migrated_engine()
        rows = list_messages(engine, state_, limit)
        if fmt is Format.table:
            for row in rows:
                row["to"] = row["to"] + (
                    f" ({row['part']}/{row['parts']})" if row["parts"] > 1 else ""
                )
        columns = ["id", "to", "carrier", "channel", "state", "route", "attempts", "last_reply",
                   "reason"]  # fmt: skip
        emit(rows, fmt, columns, "Outbox (newest first)")


@orders_app.command("upsert")
def orders_upsert(
    ref: Annotated[str, typer.Option("--ref", help="the order's reference")],
    customer: Annotated[str | None, typer.Option("--customer", help="customer phone")] = None,
    carrier: Annotated[str | None, typer.Option("--carrier", help="customer's carrier")] = None,
    customer_name: Annotated[str | None, typer.Option("--customer-name")] = None,
    driver: Annotated[str | None, typer.Option("--driver", help="driver phone")] = None,
    driver_carrier: Annotated[str | None, typer.Option("--driver-carrier")] = None,
    driver_name: Annotated[str | None, typer.Option("--driver-name")] = None,
    window_start: Annotated[
        str | None, typer.Option("--window-start", help="e.g. 2026-11-24T14:00")
    ] = None,
    window_end: Annotated[str | None, typer.Option("--window-end")] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="the delivery address's, e.g. America/Chicago")
    ] = None,
) -> None:
    """Create or update an order; sends nothing."""
    from gateway.services.orders import OrderError, OrderInput, Orders, parse_when

    with user_errors():
        runtime = state.runtime()
        try:
            order = OrderInput(
                ref=ref,
                customer=customer,
                carrier=carrier,
                customer_name=customer_name,
                driver=driver,
                driver_carrier=driver_carrier,
                driver_name=driver_name,
                window_start=parse_when(window_start, "--window-start"),
                window_end=parse_when(window_end, "--window-end"),
                timezone=timezone,
            )
            order_id = Orders(runtime).upsert(order, utcnow())
        except OrderError as exc:
            fail(str(exc))
    out.print(str(order_id))


@orders_app.command("status")
def orders_status(
    ref: Annotated[str, typer.Argument(help="the order's reference")],
    status: Annotated[str, typer.Argument(help="confirmed, driver_assigned, out_for_delivery, …")],
    eta: Annotated[str | None, typer.Option("--eta", help="e.g. 14:30")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    key: Annotated[str | None, typer.Option("--key", help="idempotency key of the event")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Record a status event; the rules decide which texts it queues, and when."""
    from gateway.services.orders import OrderError, Orders

    with user_errors():
        runtime = state.runtime()
        try:
            result = Orders(runtime).record_status(
                ref, status, utcnow(), eta=eta, reason=reason, key=key
            )
        except OrderError as exc:
            fail(str(exc))
    if fmt is Format.json:
        data = {
            "event_id": result.event_id,
            "existing": result.existing,
            "texts": result.texts,
            "skipped": result.skipped,
            "superseded": result.superseded,
        }
        out.print_json(json.dumps(data, default=_json_default))
        return
    if result.existing:
        err.print("note: this key was used before; nothing new was recorded")
    emit(result.texts, fmt, ["id", "rule", "to_phone", "state", "reason", "due_at"],
         f"Event {result.event_id}: texts")  # fmt: skip
    for why in result.skipped:
        err.print(f"skipped {why}", markup=False)
    if result.superseded:
        err.print(f"cancelled {result.superseded} waiting text(s) this event makes obsolete")


@orders_app.command("import")
def orders_import(
    file: Annotated[Path, typer.Argument(help="CSV with a header: ref, customer, carrier, …")],
) -> None:
    """Create or update orders from a CSV file; bad rows are reported, good rows kept."""
    from gateway.services.orders import OrderError, Orders

    with user_errors():
        runtime = state.runtime()
        try:
            report = _with_progress(
                "importing",
                lambda progress: Orders(runtime).import_csv(_csv_text(file), utcnow(), progress),
            )
        except OrderError as exc:
            fail(str(exc))
    for line, why in report.problems:
        err.print(f"{file}:{line}: {why}", markup=False)
    err.print(f"imported {report.imported} of {report.total} rows", markup=False)
    if report.problems:
        raise typer.Exit(1)


T = TypeVar("T")


def _csv_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark, if any
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {str(file)!r}: {exc}")


def _with_progress(label: str, work: Callable[[Callable[[int, int], None]], T]) -> T:
    """`work(progress)` under a progress bar on stderr; progress(done, total) moves it."""
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


@rules_app.command("check")
def rules_check() -> None:
    """Validate rules.yaml against the templates."""
    from gateway.services.orders import Orders

    with user_errors():
        rules = Orders(state.runtime()).rules
    err.print(f"{len(rules)} rules fit their templates", markup=False)


@inbox_app.command("list")
def inbox_list(
    kind: Annotated[str | None, typer.Option("--kind", help="only this kind")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest rows shown")] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """Stored inbound mail, newest first: kind, sender, text and what it was threaded to."""
    from gateway.domain.inbound import Kind
    from gateway.store.inbox import list_inbound

    kinds = [k.value for k in Kind]
    if kind is not None and kind not in kinds:
        raise typer.BadParameter(f"{kind!r} is not one of {', '.join(kinds)}", param_hint="--kind")
    with user_errors():
        rows = list_inbound(state.runtime().migrated_engine(), kind, limit)
    for row in rows:
        details = json.loads(row.pop("details") or "{}")
        row["recipients"] = details.get("recipients", [])
    columns = ["id", "kind", "phone", "text", "matched_message_id", "order_ref", "match_rule",
               "confidence"]  # fmt: skip
    emit(rows, fmt, columns, "Inbox (newest first)")


@inbox_app.command("thread")
def inbox_thread(
    inbound_id: Annotated[int, typer.Argument(help="the inbound message (its id in inbox list)")],
    message: Annotated[
        int | None, typer.Option("--message", help="the outbound text it answers (outbox id)")
    ] = None,
    none: Annotated[bool, typer.Option("--none", help="it answers none of our texts")] = False,
) -> None:
    """Thread an inbound message by hand, when the automatic match is wrong or missing."""
    from gateway.services.inbound import manual_thread

    if (message is None) == (not none):
        raise typer.BadParameter("give either --message ID or --none")
    with user_errors():
        engine = state.runtime().migrated_engine()
        try:
            manual_thread(engine, inbound_id, message, utcnow())
        except LookupError as exc:
            fail(str(exc))
    err.print(f"inbound {inbound_id} threaded to " + (f"text {message}" if message else "none"))


@inbox_app.command("quarantine")
def inbox_quarantine(
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """Messages that could not be read (or were too large), with the reason."""
    from gateway.store.inbox import list_quarantine

    with user_errors():
        rows = list_quarantine(state.runtime().migrated_engine(), limit)
    emit(rows, fmt, ["id", "mailbox", "uid", "size", "error"], "Quarantine (newest first)")


@inbox_app.command("import")
def inbox_import(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="only mail dated from this day on (YYYY-MM-DD)", metavar="DATE"
        ),
    ] = None,
) -> None:
    """Read the mail the mailbox held before the gateway first looked at it: stored, classified
    and threaded like new mail, but nothing is sent (no STOP, START or HELP answers) and no
    webhook is called. An old STOP still opts its contact out."""
    from gateway.services.inbound import Ingest
    from gateway.transport.imap import ImapError
    from gateway.transport.imap_source import ImapSource

    day = None
    if since is not None:
        try:
            day = dt.date.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not a date like 2026-11-30")
    with user_errors():
        runtime = state.runtime()
        engine = runtime.migrated_engine()
        source = runtime.mail_source(engine)
        if not isinstance(source, ImapSource):
            fail("inbox import reads an IMAP mailbox: set [imap] enabled = true (a Maildir's "
                 "old mail is read by `gateway run` itself)")  # fmt: skip
        ingest = Ingest(runtime, engine)

    async def main() -> None:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("importing", total=None)
            async for batch in source.history(day):
                await asyncio.to_thread(ingest.store, batch, utcnow(), history=True)
                bar.advance(task, len(batch.items))

    try:
        run_async(main)
    except ImapError as exc:
        fail(str(exc))
    err.print(f"done: {ingest.stats.describe()}; nothing was sent", markup=False)


@app.command("auth")
def auth(
    provider: Annotated[str, typer.Argument(help="microsoft, google or custom")],
) -> None:
    """Sign in to the company mailbox with OAuth2, once, as a person: Microsoft's device code
    (type a code on any device), Google's sign-in page (paste the address it ends on back here
    when the browser is on another machine), or a custom provider's device code. The refresh
    token is kept in [oauth2] token_file (mode 0600) and never shown; `gateway run` and
    `gateway serve` then get access tokens by themselves."""
    from gateway.services.oauth2 import TokenError, device_sign_in, save_sign_in, sign_in_google

    if provider not in ("microsoft", "google", "custom"):
        fail(f"no such provider {provider!r}: microsoft, google or custom")
    with user_errors():
        settings = state.runtime().settings.oauth2
        if settings.provider not in (None, provider):
            fail(f"[oauth2] provider is {settings.provider!r}, not {provider!r}")
        settings = settings.model_copy(update={"provider": provider})
        if settings.client_id is None:
            fail("set [oauth2] client_id: the app registration's client id (the README's "
                 "\"Connect your mailbox\" says how to make one)")  # fmt: skip

    def say(text: str) -> None:
        err.print(text, markup=False, soft_wrap=True)

    def pasted() -> str | None:
        try:
            return input()
        except EOFError:
            return None

    try:
        if provider == "google":
            signed = sign_in_google(settings, say, pasted)
        else:
            flow = device_sign_in(settings)
            say(flow.prompt)
            signed = flow.finish()
        save_sign_in(settings.token_file, signed)
    except (TokenError, ConfigError) as exc:
        fail(str(exc))
    who = f" as {signed.account}" if signed.account else ""
    err.print(f"signed in{who}; the refresh token is in {settings.token_file} (mode 0600). "
              "`gateway doctor` checks the mailbox with it.", markup=False)  # fmt: skip


@app.command("parse")
def parse(
    files: Annotated[list[Path], typer.Argument(help="message files (.eml), one message each")],
) -> None:
    """Classify mail files as the inbound worker would, without a database: one JSON a line."""
    from gateway.domain.inbound import MailError, parse_mail, reading_failed

    with user_errors():
        runtime = state.runtime()
        carriers, identity = runtime.carriers, runtime.identity
    failed = False
    for path in files:
        try:
            raw = path.read_bytes()
            mail = parse_mail(raw, carriers, identity)
        except Exception as exc:  # a reader's own bug too: told as the quarantine tells it
            failed = True
            if isinstance(exc, OSError):
                reason = exc.strerror
            elif isinstance(exc, MailError):
                reason = str(exc)
            else:
                reason = reading_failed(exc)
            print(json.dumps({"file": str(path), "error": reason}), flush=True)
            continue
        print(json.dumps(_mail_row(str(path), mail), ensure_ascii=False), flush=True)
    if failed:
        raise typer.Exit(1)


def _mail_row(file: str, mail: Any) -> dict[str, Any]:
    return {
        "file": file,
        "kind": mail.kind.value,
        "from": mail.sender or None,
        "phone": mail.phone.e164 if mail.phone else None,
        "carrier": mail.carrier,
        "provider": mail.provider,
        "provider_report": mail.provider_report.value if mail.provider_report else None,
        "text": mail.text,
        "in_reply_to": mail.in_reply_to,
        "original_message_id": mail.original_message_id,
        "recipients": [r.as_json() for r in mail.recipients],
    }


@outbox_app.command("import")
def outbox_import(
    file: Annotated[
        Path, typer.Argument(help="CSV with a header: to, carrier, text or template, var.NAME, …")
    ],
) -> None:
    """Put a text in the outbox for each row of a CSV file, 500 a transaction; rows that cannot
    be sent are reported with their line, the others kept. A `key` column makes re-importing
    the same file safe."""
    from gateway.services.texts_import import TextsFileError, import_texts

    with user_errors():
        runtime = state.runtime()
        try:
            report = _with_progress(
                "queueing",
                lambda progress: import_texts(runtime, _csv_text(file), utcnow(), progress),
            )
        except TextsFileError as exc:
            fail(str(exc))
    for line, why in report.problems:
        err.print(f"{file}:{line}: {why}", markup=False)
    for line, why in report.not_sent:
        err.print(f"{file}:{line}: stored, not sent: {why}", markup=False)
    summary = f"queued {report.queued} of {report.total} rows"
    if report.repeated:
        summary += f" ({report.repeated} already queued by an earlier import: their key was seen)"
    err.print(summary, markup=False)
    if report.problems or report.not_sent:
        raise typer.Exit(1)


@outbox_app.command("cancel")
def outbox_cancel(
    ids: Annotated[list[int], typer.Argument(help="outbox ids (gateway outbox list)")],
    reason: Annotated[str, typer.Option("--reason", help="recorded with the text")] = "dispatcher",
) -> None:
    """Cancel texts that have not gone yet (queued, deferred or suppressed)."""
    from gateway.store.outbox import cancel_waiting

    if not reason.strip() or len(reason) > 200 or any(c in reason for c in "\r\n"):
        raise typer.BadParameter("give a reason of one line, at most 200 characters")
    with user_errors():
        done = cancel_waiting(state.runtime().migrated_engine(), ids, reason.strip(), utcnow())
    missing = sorted(set(ids) - set(done))
    for message in done:
        out.print(str(message))
    if missing:
        fail(f"not cancelled (gone already, or no such text): {', '.join(map(str, missing))}")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="who or what uses it, e.g. order-system")],
    fmt: FormatOption = Format.table,
) -> None:
    """Create an API token; it is printed once and kept only as a digest."""
    from gateway.store.access import AccessError, create_token

    _check_name(name)
    with user_errors():
        try:
            token = create_token(state.runtime().migrated_engine(), name, utcnow())
        except AccessError as exc:
            fail(str(exc))
    if fmt is Format.json:
        out.print_json(json.dumps({"name": name, "token": token}))
    else:
        out.print(token, markup=False)
        err.print("keep it now: it cannot be shown again", markup=False)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="sign-in name")],
    role: Annotated[str, typer.Option("--role", help="dispatcher or admin")] = "dispatcher",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Add a dashboard user (the password is asked for, or read with --password-stdin)."""
    from gateway.store.access import AccessError, add_user

    _check_name(name)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with user_errors():
        try:
            add_user(state.runtime().migrated_engine(), name, role, password, utcnow())
        except AccessError as exc:
            fail(str(exc))
    err.print(f"user {name} ({role}) added", markup=False)


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > 100 or any(c in name for c in "\r\n\x00"):
        raise typer.BadParameter("a name is one line of 1 to 100 characters")


@app.command("serve")
def serve() -> None:
    """The dashboard and the HTTP API on [web] host and port."""
    from gateway.web.app import create_app
    from gateway.web.server import WebServer

    with user_errors():
        runtime = state.runtime()
        runtime.migrated_engine()
        web = runtime.settings.web
        app_ = create_app(runtime)
    # On SIGTERM the open dashboards' event streams end at once (the browsers reconnect to the
    # next process); a request still running gets a few seconds.
    server = WebServer(
        app_, host=web.host, port=web.port, log_level="warning", timeout_graceful_shutdown=3,
        # uvicorn believes X-Forwarded-* from loopback by default; only [web] trusted_proxies.
        proxy_headers=bool(web.trusted_proxies),
        forwarded_allow_ips=",".join(web.trusted_proxies) or "",
    )  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn raises it again once it has stopped
        pass
    except SystemExit:
        if server.started:
            raise
        # uvicorn has logged the system's words (address in use, permission denied) and would
        # exit 3; what to do is the user's to fix.
        fail(
            f"gateway serve could not listen on {web.host}:{web.port} (the line above says "
            "why): stop whatever holds that port, or set [web] host and port"
        )


@app.command("status")
def status(fmt: FormatOption = Format.table) -> None:
    """The gateway processes alive (several may share one database), what each holds, whether
    the mailbox is read and the routes send, and the texts due now."""
    from gateway.services.health import overview
    from gateway.store import heartbeats
    from gateway.store.sending import count_due

    with user_errors():
        runtime = state.runtime()
        engine = runtime.migrated_engine()
        now = utcnow()
        with engine.connect() as conn:
            rows = heartbeats.processes(conn, now)
            seen = overview(conn, runtime.settings, now)
        due = count_due(engine, now)
    sending = seen.sending
    if fmt is Format.json:
        report = {
            "processes": rows, "queue_depth": due,
            "mailbox": seen.mailbox.as_json() if seen.mailbox else None,
            "sending": sending.as_json() if sending else None,
            "routes": [{"name": name, **part.as_json()} for name, part in seen.routes.items()],
            "problems": seen.problems(now),
        }  # fmt: skip
        out.print_json(json.dumps(report, default=_json_default))
        return
    emit(rows, fmt, ["process", "started_at", "seen_at", "texts_leased", "mailboxes",
                     "mailbox_lag_seconds"], "gateway run processes alive")  # fmt: skip
    out.print(f"texts due now: {due}" + ("" if rows else " (no process is running to send them)"))
    parts = [("mailbox", seen.mailbox)] + [(f"route {n}", p) for n, p in seen.routes.items()]
    for name, part in parts:
        if part is None:
            out.print(f"{name}: not read by any running process", markup=False)
        elif part.ok:
            out.print(f"{name}: ok", markup=False)
        else:
            since = f" since {part.since:%Y-%m-%d %H:%M:%S} UTC" if part.since else ""
            out.print(f"{name}: failing{since}: {part.error}", markup=False)
    for problem in seen.problems(now):
        err.print(f"problem: {problem}", markup=False)


@app.command("doctor")
def doctor(
    send_to: Annotated[
        str | None,
        typer.Option(
            "--send-to",
            help="also send a test: by mail to this address, or by each SMS channel to +NUMBER",
            metavar="ADDR|+NUMBER",
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Check everything in order and say how to fix what fails: configuration, database, the
    own server and the relay (DNS, TCP, TLS, EHLO, AUTH), the mailbox, carriers. Exit 0 only
    when every check passes."""
    from gateway.services.doctor import diagnose

    report = asyncio.run(diagnose(state.config_path, send_to))
    failed = [step for step in report if not step.ok]
    if fmt is Format.json:
        rows = [
            {"section": s.section, "name": s.name, "check": s.name, "ok": s.ok,
             "warning": s.warning,
             "seconds": round(s.seconds, 3), "detail": s.detail, "hint": s.hint}
            for s in report
        ]  # fmt: skip
        out.print_json(json.dumps({"ok": not failed, "checks": rows}))
    else:
        for step in report:
            mark = (
                "[red]✗[/red]"
                if not step.ok
                else "[yellow]![/yellow]"
                if step.warning
                else "[green]✓[/green]"
            )
            took = f"[dim]({step.seconds:.2f} s)[/dim]"
            out.print(f"{mark} {step.section}: {escape(step.name)} {took} {escape(step.detail)}")
            if step.hint and (not step.ok or step.warning):
                out.print(f"    [bold]fix:[/bold] {escape(step.hint)}")
        out.print(f"{len(report) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


webhooks_app = typer.Typer(help="Calls to the order system.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("log")
def webhooks_log(
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """Each webhook delivery: event, URL, attempts, the last answer."""
    from gateway.services.webhooks import delivery_log

    with user_errors():
        rows = delivery_log(state.runtime().migrated_engine(), limit)
    columns = ["id", "event", "url", "attempts", "last_status", "last_error", "delivered_at",
               "gave_up"]  # fmt: skip
    emit(rows, fmt, columns, "Webhook deliveries (newest first)")


channels_app = typer.Typer(
    help="The channels texts leave by: email, the company's phone (SMS Gate), Twilio.",
    no_args_is_help=True,
)
app.add_typer(channels_app, name="channels")


@channels_app.command("list")
def channels_list(fmt: FormatOption = Format.table) -> None:
    """Each channel in [channels] order: where it sends, its state, sends in the last 24 h,
    limits, the countries it reaches, its last error."""
    from gateway.services.channels import channel_rows

    with user_errors():
        rows = channel_rows(state.runtime())
    columns = ["position", "channel", "where", "state", "sent_today", "daily_limit", "countries",
               "last_error"]  # fmt: skip
    emit(rows, fmt, columns, "Channels (in the order texts try them; sent_today: rolling 24 h)")


@channels_app.command("webhooks")
def channels_webhooks(
    register: Annotated[
        bool, typer.Option("--register", help="register ours on the phone (one per event)")
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="remove ours from the phone")] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """The webhooks on the company's phone (SMS Gate): received texts and delivery reports
    reach gateway serve at [web] public_url + /hooks/smsgate."""
    import asyncio

    from gateway.services.channels import smsgate_webhooks
    from gateway.transport.smsgate import SmsGateError

    if register and remove:
        raise typer.BadParameter("give --register or --remove, not both")
    action = "register" if register else "remove" if remove else "list"
    with user_errors():
        try:
            rows = asyncio.run(smsgate_webhooks(state.runtime(), action))
        except SmsGateError as exc:
            fail(f"the phone: {exc}")
    emit(rows, fmt, ["id", "event", "url", "ours"], "Webhooks on the phone")


@app.command("demo")
def demo(
    folder: Annotated[str, typer.Option("--dir", help="where the demo keeps its files")] = "demo",
    exit_after: Annotated[
        float | None, typer.Option("--exit-after", help="run unattended; give up after SECONDS")
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="the dashboard's port (another if it is taken)")
    ] = 8025,
) -> None:
    """Run the whole product on embedded defaults: simulated carriers and phones, a relay, a
    Maildir mailbox, SQLite, the workers and the dashboard."""
    from gateway.services.demo import run_demo
    from gateway.web.app import create_app
    from gateway.web.server import WebServer

    def server_for(runtime: Runtime, web_port: int) -> WebServer:
        return WebServer(
            create_app(runtime), signals=False, host="127.0.0.1", port=web_port,
            log_level="warning", timeout_graceful_shutdown=1, proxy_headers=False,
        )  # fmt: skip

    with user_errors():
        try:
            code = run_demo(folder, exit_after, out, server_for, port)
        except KeyboardInterrupt:
            code = 0
    raise typer.Exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        app(args=list(argv) if argv is not None else None, prog_name="gateway")
    except KeyboardInterrupt:
        sys.exit(130)
