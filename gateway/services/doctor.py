"""`gateway doctor`: the checks a support desk would make by hand, in order, each timed and,
when it fails, followed by the fix in plain words. The dashboard's "test connection" button
runs the same connection checks. Nothing is sent unless a test address is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy.exc import DBAPIError

from gateway.config import ImapSettings, ServerSettings, load_settings
from gateway.domain.delivery import (
    auth_hint,
    no_token_hint,
    password_sign_in_ends,
    password_sign_in_ends_hint,
)
from gateway.domain.phone import PhoneError, parse_phone
from gateway.services.doctor_channels import check_channels
from gateway.services.doctor_steps import Step, StepFailed, Steps, StepWarning
from gateway.store.db import make_engine, require_current, utcnow
from gateway.transport.imap import ImapError, authenticate, connect
from gateway.transport.smtp import NoCredentials
from gateway.transport.smtp import authenticate as smtp_authenticate
from gateway.transport.smtp import connect as smtp_connect
from gateway.transport.tls import tls_context


async def _reach(endpoint: ServerSettings | ImapSettings, steps: Steps, role: str) -> bool:
    host, port, timeout = endpoint.host, endpoint.port, min(endpoint.timeout_seconds, 15.0)

    async def dns() -> str:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise StepFailed(
                f"{host!r} does not resolve ({exc.strerror})",
                f"check the spelling of the {role} host name, and that this machine has DNS",
            ) from None
        return ", ".join(sorted({str(info[4][0]) for info in found}))

    async def connect() -> str:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            raise StepFailed(
                f"no answer from {host}:{port} within {timeout:g} s",
                f"a firewall drops the connection: many networks block port {port} outbound "
                "(port 25 above all); try 587 (STARTTLS) or 465 (TLS), or ask the network's "
                "administrator",
            ) from None
        except OSError as exc:
            raise StepFailed(
                f"{host}:{port} refused the connection ({exc.strerror or exc})",
                f"nothing listens on port {port} there: check the port ({_usual_ports(role)}) "
                "and that the server is running",
            ) from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return f"{host}:{port} answers"

    return await steps.run(f"DNS: {host}", dns) and await steps.run(
        f"TCP connect: {host}:{port}", connect
    )


def _usual_ports(role: str) -> str:
    if role == "IMAP":
        return "993 with TLS"
    return "587 with STARTTLS, 465 with TLS"


async def check_smtp(
    server: ServerSettings,
    section: str,
    send_to: str | None = None,
    token: Callable[[], Awaitable[str]] | None = None,
) -> list[Step]:
    """DNS, TCP, TLS or STARTTLS with EHLO, AUTH when a username is set (XOAUTH2 with a token
    from `token` when auth = "oauth2"), and with `send_to` a test message to that address."""
    from gateway.services.runtime import smtp_server

    steps = Steps()
    if not await _reach(server, steps, "SMTP"):
        return steps.done
    timeout = min(server.timeout_seconds, 15.0)
    # Connected and signed in the sender's way (transport.smtp); the password is read at the
    # sign-in step, so a missing one fails that step, not the greeting.
    where = smtp_server(server, section, token, timeout, read_password=False)
    tls = tls_context(server.ca_file) if server.security != "none" else None
    security = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[server.security]
    client: aiosmtplib.SMTP | None = None
    greeting = ""  # the server's 220 line: whose server it is, behind whatever name

    async def greet() -> str:
        nonlocal client, greeting
        try:
            client, greeting = await smtp_connect(where, tls)
        except (ssl.SSLError, aiosmtplib.SMTPConnectError) as exc:
            if "certificate" in str(exc).lower():
                raise StepFailed(
                    f"the certificate of {server.host} is not trusted: {exc}",
                    f"the name must match the certificate; a private authority needs "
                    f"{section}.ca_file",
                ) from None
            raise StepFailed(f"{security} failed: {exc}", _tls_hint(server)) from None
        except aiosmtplib.SMTPException as exc:
            text = str(exc)
            if "starttls" in text.lower():
                raise StepFailed(
                    f"{server.host}:{server.port} does not offer STARTTLS",
                    "use security = 'tls' on port 465 if the server speaks TLS from the start; "
                    "nothing is ever sent in the clear by default",
                ) from None
            raise StepFailed(f"the greeting failed: {text}", _tls_hint(server)) from None
        offered = sorted(client.esmtp_extensions)
        return f"{security}; the server offers {', '.join(offered) or 'nothing beyond SMTP'}"

    async def auth() -> str:
        assert client is not None
        if not client.supports_extension("auth"):
            raise StepFailed(
                f"{server.host}:{server.port} offers no AUTH (sign-in) on this connection",
                "port 25 rarely offers it: use the submission port (587 with STARTTLS, 465 "
                f"with TLS), or remove {section}.username if the server takes mail unsigned",
            )
        oauth2 = server.auth == "oauth2"
        if oauth2 and token is None:
            raise StepFailed(f"{section}.auth = 'oauth2' but no token source is configured")
        try:
            how = await smtp_authenticate(client, smtp_server(server, section, token, timeout))
        except NoCredentials as exc:
            if oauth2:
                raise StepFailed(str(exc), no_token_hint(section)) from None
            raise StepFailed(
                f"{section}.username is set but no password is",
                f"give {section}.password_env or {section}.password_file (an app password "
                "where two-step sign-in is on)",
            ) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            words = f"{exc.code} {exc.message}"
            refused = "the OAuth2 sign-in" if oauth2 else "the sign-in"
            raise StepFailed(f"the server refused {refused}: {words}", auth_hint(words)) from None
        except aiosmtplib.SMTPException as exc:
            raise StepFailed(f"AUTH failed: {exc}", auth_hint(str(exc))) from None
        if how == "oauth2":
            return f"signed in as {server.username} with OAuth2 (XOAUTH2)"
        if password_sign_in_ends(server.host, greeting):
            raise StepWarning(
                f"signed in as {server.username} with a password, which Microsoft 365 stops "
                "taking for SMTP", password_sign_in_ends_hint(section)
            )  # fmt: skip
        return f"signed in as {server.username}"

    async def test_message() -> str:
        assert send_to is not None and client is not None
        sender = server.sender
        message = EmailMessage()
        message["From"] = sender.header()
        message["To"] = send_to
        message["Subject"] = "gateway doctor: test message"
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=sender.domain)
        message.set_content(f"A test from gateway doctor, sent through {section}.")
        try:
            await client.send_message(message, sender=sender.address, recipients=[send_to])
        except aiosmtplib.SMTPRecipientsRefused as exc:
            words = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            relay = "relay" in words.lower()
            raise StepFailed(
                f"the server refused {send_to}: {words}",
                "the server will not relay for this sender: sign in (username and password), "
                f"and send from the account's own address ({section}.from_address)"
                if relay
                else "check the address; a carrier gateway refuses numbers it does not serve",
            ) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise StepFailed(
                f"the server refused the sender {sender.address}: {exc.code} {exc.message}",
                f"{section}.from_address must be the account's own address or one it may send as",
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise StepFailed(f"the message was refused: {exc.code} {exc.message}") from None
        return f"accepted for {send_to}; check that it arrived"

    try:
        ok = await steps.run(f"{security} and EHLO", greet)
        if ok and server.username:
            ok = await steps.run(f"AUTH as {server.username}", auth)
        if ok and send_to:
            await steps.run(f"test message to {send_to}", test_message)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                if client.is_connected:
                    await client.quit()
            client.close()
    return steps.done


def _refuses_gateways(relay: Any) -> Step:
    from gateway.config import RELAYS_REFUSING_GATEWAYS

    why = RELAYS_REFUSING_GATEWAYS.get(relay.host.lower().rstrip("."), "relay.delivers_to_gateways"
                                       " = false")  # fmt: skip
    return Step(
        "carrier gateways", True, 0.0,
        f"the relay {relay.host} is not given texts to carriers' gateways ({why}); they wait "
        "for the own server, and only texts to an email-to-SMS provider go by the relay",
        "for a fallback that reaches carriers, use another relay or set [gateways] provider",
        warning=True, section="relay",
    )  # fmt: skip


def _tls_hint(server: ServerSettings) -> str:
    if server.security == "tls":
        return "port 465 speaks TLS from the start; port 587 wants security = 'starttls'"
    return "check security and port: 587 with 'starttls', 465 with 'tls'"


async def check_imap(
    imap: ImapSettings, token: Callable[[], Awaitable[str]] | None = None
) -> list[Step]:
    """DNS, TCP, TLS or STARTTLS and the certificate, the sign-in, the folder and its message
    count, IDLE support: the same connection code as the mailbox reader and the Sent copy."""
    from gateway.services.runtime import imap_server

    steps = Steps()
    if not await _reach(imap, steps, "IMAP"):
        return steps.done
    client: Any = None
    server: Any = None
    security = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[imap.security]

    async def secure() -> str:
        nonlocal client, server
        # Without imap.username this refuses (ConfigError, naming the key): the step fails.
        server = imap_server(imap, "imap", timeout=min(imap.timeout_seconds, 15.0), token=token)
        try:
            client = await connect(server)
        except ImapError as exc:
            raise StepFailed(str(exc), exc.hint) from None
        except (OSError, TimeoutError) as exc:
            raise StepFailed(
                f"no IMAP greeting from {imap.host}:{imap.port}: {str(exc) or type(exc).__name__}",
                "993 speaks TLS from the start (security = 'tls'); 143 wants 'starttls'",
            ) from None
        offered = " ".join(sorted(client.protocol.capabilities))
        return f"{security}; the server offers {offered}"

    async def login() -> str:
        try:
            await authenticate(client, server)
        except ImapError as exc:
            raise StepFailed(str(exc), exc.hint) from None
        except TimeoutError:
            raise StepFailed(
                f"no answer to the sign-in within {server.timeout:g} s",
                "servers slow their answers after failed sign-ins from the same address; "
                "try again in a minute",
            ) from None
        except OSError as exc:
            raise StepFailed(f"the sign-in failed: {str(exc) or type(exc).__name__}") from None
        how = "OAuth2 (XOAUTH2)" if imap.auth == "oauth2" else "a password"
        return f"signed in as {imap.username} with {how}"

    async def folder() -> str:
        response = await client.select(imap.folder)
        if response.result != "OK":
            raise StepFailed(
                f"the folder {imap.folder!r} cannot be opened",
                "check imap.folder (INBOX is the usual one)",
            )
        count = next(
            (
                line.split()[0]
                for line in response.lines
                if isinstance(line, bytes) and line.endswith(b"EXISTS")
            ),
            b"?",
        )
        idle = "IDLE" if client.has_capability("IDLE") else "no IDLE (the worker polls)"
        return f"{imap.folder}: {count.decode()} messages; {idle}"

    try:
        if await steps.run(f"{security} and greeting", secure) and await steps.run(
            f"sign in as {imap.username or '?'}", login
        ):
            await steps.run(f"folder {imap.folder}", folder)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 5)
            with contextlib.suppress(Exception):
                client.protocol.transport.close()
    return steps.done


# --- the whole check, as `gateway doctor` runs it ------------------------------------------------


async def diagnose(config: str | Path | None, send_to: str | None = None) -> list[Step]:
    """Every check in order: configuration, database, own server, relay, mailbox, carriers.
    A section whose first step fails stops there; the others still run."""
    from gateway.services.runtime import Runtime

    report: list[Step] = []

    def take(section: str, steps: list[Step]) -> None:
        report.extend(dataclasses.replace(step, section=section) for step in steps)

    steps = Steps()
    loaded: list[Any] = []

    async def configuration() -> str:
        settings = load_settings(config)
        loaded.append(settings)
        return f"from {settings.source_file}" if settings.source_file else "built-in defaults"

    await steps.run("configuration loads", configuration)
    take("config", steps.done)
    if not loaded:
        return report
    runtime = Runtime(loaded[0])
    # --send-to: a phone number tests the SMS channels, an address the mail routes.
    send_to_phone = None
    if send_to is not None and send_to.lstrip().startswith("+"):
        try:
            send_to_phone = parse_phone(send_to, runtime.settings.carriers.default_region).e164
        except PhoneError as exc:
            report.append(Step("--send-to", False, 0.0, exc.reason, "give +COUNTRY NUMBER",
                               section="config"))  # fmt: skip
            return report
        send_to = None
    if send_to is not None:
        from gateway.domain.email_out import AddressError, Mailbox

        try:
            send_to = Mailbox.parse(send_to, "--send-to").address
        except (AddressError, ValueError) as exc:
            report.append(Step("--send-to", False, 0.0, str(exc), "give one plain address",
                               section="config"))  # fmt: skip
            return report

    database = await _check_database(runtime)
    take("database", database)
    settings = runtime.settings
    for section in ("smtp", "relay"):
        server = getattr(settings, section)
        if server.enabled:
            token = runtime.oauth2_token(server)
            take(section, await check_smtp(server, section, send_to, token))
            if section == "relay" and not server.takes_gateway_mail:
                report.append(_refuses_gateways(server))
        else:
            report.append(Step("enabled", True, 0.0, f"{section}.enabled = false: not checked",
                               section=section))  # fmt: skip
    if settings.imap.enabled:
        take("imap", await check_imap(settings.imap, runtime.oauth2_token(settings.imap)))
    elif settings.inbound.maildir:
        report.append(Step("mailbox", True, 0.0, f"a Maildir: {settings.inbound.maildir}",
                           section="imap"))  # fmt: skip
    else:
        report.append(Step("enabled", True, 0.0, "imap.enabled = false: replies are not read",
                           warning=True, section="imap",
                           hint="set [imap] to read replies, bounces and STOP"))  # fmt: skip
    take("carriers", await _check_carriers(runtime, all(step.ok for step in database)))
    for name, checked in await check_channels(runtime, send_to_phone):
        take(name, checked)
    runtime.engine.dispose()
    return report


async def _check_database(runtime: Any) -> list[Step]:
    steps = Steps()
    url = runtime.settings.database.url

    async def reach() -> str:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if file and file != ":memory:" and not await asyncio.to_thread(os.path.exists, file):
            # Opening it would create an empty file: a check must change nothing.
            raise StepFailed(f"there is no database file at {file}", "run `gateway db upgrade`")
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            raise StepFailed(
                f"cannot open {_safe(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                "check database.url; for PostgreSQL, that the server runs and the user may connect",
            ) from None
        finally:
            engine.dispose()
        return _safe(url)

    async def migrations() -> str:
        require_current(runtime.engine)
        return "the schema is current"

    if await steps.run("reachable", reach):
        await steps.run("migrations", migrations)
    return steps.done


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _check_carriers(runtime: Any, database_ok: bool) -> list[Step]:
    steps = Steps()

    async def table() -> str:
        book = runtime.carriers  # loading it checks the file and the [gateways] provider ids
        providers = runtime.settings.gateways.named()
        using = ", ".join(f"{key} = {value}" for key, value in providers) or "no provider set"
        return (
            f"{len(book)} carriers and {len(book.providers)} providers from "
            f"{runtime.carriers_path}; {using}"
        )

    async def contacts() -> str:
        from gateway.services.carrier_report import at_risk

        today = utcnow().date()
        if not database_ok:
            return "contacts not looked at (the database is not ready)"
        try:
            risks = at_risk(runtime, runtime.engine, today)
        except DBAPIError:  # a bug is not the database's fault: only its errors are excused
            return "no contacts to look at (the database is not ready)"
        stranded = [risk for risk in risks if risk.provider is None]
        if stranded:
            count = sum(risk.contacts for risk in stranded)
            raise StepWarning(
                f"{count} contact{'s' if count != 1 else ''} on carriers that closed or close "
                "within 60 days, with no email-to-SMS provider to take them: "
                + "; ".join(risk.describe(today) for risk in stranded),
                "set [gateways] provider to a provider in carriers.yaml (`gateway carriers "
                "list` shows them), or ask these contacts for their carrier again",
            )
        if risks:
            return "; ".join(risk.describe(today) for risk in risks)
        return "no contacts on a retired or closing gateway"

    if await steps.run("carriers.yaml", table):
        await steps.run("contacts' carriers", contacts)
    return steps.done
