"""What every command needs, loaded once: settings, the carrier table, templates, the database."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import secrets
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.config import (
    ConfigError,
    Endpoint,
    ImapSettings,
    ServerSettings,
    Settings,
    SmsChannelSettings,
    locate,
    with_changes,
)
from gateway.domain.carriers import CarrierBook, CarrierFileError
from gateway.domain.carriers_file import load_carriers
from gateway.domain.channels import Channel, ChannelPlan
from gateway.domain.delivery import RetryPolicy
from gateway.domain.email_out import Mailbox
from gateway.domain.gateways import ProviderPlan
from gateway.domain.inbound import Identity
from gateway.domain.quiet import QuietPolicy
from gateway.domain.routing import Route
from gateway.domain.templates import SUFFIX, TemplateBook
from gateway.services.oauth2 import TokenKeeper, token_source
from gateway.services.routes import Lane, RouteBook, TextClient
from gateway.store import overrides
from gateway.store.db import make_engine, require_current
from gateway.store.inbox import read_position
from gateway.transport.http import Service
from gateway.transport.imap import ImapServer, SentFolder
from gateway.transport.imap_source import ImapSource
from gateway.transport.mailsource import MaildirSource, MailSource
from gateway.transport.smsgate import SmsGateClient
from gateway.transport.smtp import SmtpPool, SmtpServer
from gateway.transport.twilio import TwilioClient

TokenSource = Callable[[], Awaitable[str]]


@dataclasses.dataclass
class Runtime:
    settings: Settings
    _schema_checked: bool = dataclasses.field(default=False, repr=False)
    _tokens: tuple[int, list[str]] = dataclasses.field(default_factory=lambda: (0, []), repr=False)
    # The settings from the file and the environment, before the dashboard's changes.
    _base: Settings | None = dataclasses.field(default=None, repr=False)
    _overrides_seen: tuple[int, Any] = dataclasses.field(default=(0, None), repr=False)
    _keeper: TokenKeeper | None = dataclasses.field(default=None, repr=False)

    @cached_property
    def carriers_path(self) -> Path:
        return locate(self.settings.carriers.file, "carriers.yaml")

    @cached_property
    def carriers(self) -> CarrierBook:
        path = self.carriers_path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"carriers file {str(path)!r} cannot be read: {exc.strerror}"
            ) from None
        try:
            book = load_carriers(text, str(path))
        except CarrierFileError as exc:
            raise ConfigError(str(exc)) from None
        for key, provider_id in self.settings.gateways.named():
            if book.provider(provider_id) is None:
                known = ", ".join(p.id for p in book.providers) or "none"
                raise ConfigError(
                    f"{key} = {provider_id!r} is not a provider in {path} (providers: {known})"
                )
        return book

    @property
    def provider_plan(self) -> ProviderPlan:
        gateways = self.settings.gateways
        return ProviderPlan(
            gateways.provider, dict(gateways.providers_by_country), gateways.leave_ending_days
        )

    @cached_property
    def channel_plan(self) -> ChannelPlan:
        """`[channels] order`, and the countries each configured SMS channel is limited to:
        made once per settings, not for each text of a bulk enqueue."""
        settings = self.settings
        countries = {
            channel: frozenset(section.countries)
            for channel, section in (
                (Channel.SMSGATE, settings.smsgate), (Channel.TWILIO, settings.twilio)
            )
            if section.configured
        }  # fmt: skip
        return ChannelPlan(tuple(Channel(name) for name in settings.channels.order), countries)

    @cached_property
    def templates_path(self) -> Path:
        return locate(self.settings.templates.folder, "templates")

    @cached_property
    def templates(self) -> TemplateBook:
        folder = self.templates_path
        if not folder.is_dir():
            raise ConfigError(f"templates folder {str(folder)!r} does not exist")
        sources = {}
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            try:
                sources[path.name[: -len(SUFFIX)]] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"template {str(path)!r} cannot be read: {exc}") from None
        return TemplateBook(sources)

    @cached_property
    def rules_path(self) -> Path:
        return locate(self.settings.rules.file, "rules.yaml")

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database.url)

    def migrated_engine(self) -> Engine:
        """The engine, after checking the schema is current (raises DatabaseError if not).
        Checked once per process: reading the migration scripts costs milliseconds, which on
        every enqueue was most of its time."""
        if not self._schema_checked:
            require_current(self.engine)
            self._schema_checked = True
            self.refresh()
        return self.engine

    def refresh(self) -> bool:
        """Take up settings changed in the dashboard since the last look (by any process).
        True when they changed. Raises ConfigError when the saved changes no longer fit."""
        seen = overrides.version(self.engine)
        if seen == self._overrides_seen:
            return False
        with self.engine.connect() as conn:
            changes = overrides.read(conn)
        # Seen even when they do not fit: reported once, not every few seconds.
        self._overrides_seen = seen
        self.use(with_changes(self.base_settings, changes, "the settings saved in the dashboard"))
        return True

    @property
    def base_settings(self) -> Settings:
        return self._base or self.settings

    def use(self, settings: Settings) -> None:
        """Run on `settings` from now on: what was derived from the old ones is derived again
        (the database connection stays: its URL is not a setting one can change running)."""
        if self._base is None:
            self._base = self.settings
        self.settings = settings
        for name in ("carriers_path", "carriers", "templates_path", "templates", "rules_path",
                     "company_domain", "identity", "channel_plan"):  # fmt: skip
            self.__dict__.pop(name, None)

    def quiet(self) -> QuietPolicy | None:
        """The quiet-hours policy (None when quiet_hours is off)."""
        return self.settings.policy.quiet()

    @property
    def retry_policy(self) -> RetryPolicy:
        sender = self.settings.sender
        return RetryPolicy(
            base_seconds=sender.retry_base_seconds,
            cap_seconds=sender.retry_cap_seconds,
            lifetime=dt.timedelta(hours=self.settings.policy.lifetime_hours),
        )

    def route_book(self) -> RouteBook:
        """Both routes as configured, each with its own connection pool."""
        smtp, relay = self.settings.smtp, self.settings.relay
        own_daily, own_rate = smtp.limits()
        relay_daily, relay_rate = relay.limits()
        lanes = {
            Route.OWN: Lane(
                route=Route.OWN,
                pool=SmtpPool(self._server(smtp, "smtp")) if smtp.enabled else None,
                sender=smtp.sender,
                envelope_sender=smtp.sender.address,
                daily_limit=own_daily,
                per_minute=own_rate,
                plus_addressing=self.settings.inbound.plus_addressing,
            ),
            Route.RELAY: Lane(
                route=Route.RELAY,
                pool=SmtpPool(self._server(relay, "relay")) if relay.enabled else None,
                sender=relay.sender,
                # Replies must come home to the company mailbox, not to the relay.
                envelope_sender=(
                    Mailbox.parse(relay.return_path, "return_path").address
                    if relay.return_path
                    else relay.sender.address
                ),
                reply_to=Mailbox.parse(relay.reply_to or smtp.from_address, "reply_to"),
                copies=(Mailbox.parse(relay.bcc, "bcc").address,) if relay.bcc else (),
                daily_limit=relay_daily,
                per_minute=relay_rate,
                plus_addressing=self.settings.inbound.plus_addressing,
                carrier_gateways=relay.takes_gateway_mail,
            ),
        }
        # An SMS channel gets its client only when `[channels] order` names it (then the
        # settings have made sure it is configured).
        sms: list[tuple[Route, SmsChannelSettings, Callable[[], TextClient]]] = [
            (Route.SMSGATE, self.settings.smsgate, self.smsgate_client),
            (Route.TWILIO, self.settings.twilio, self.twilio_client),
        ]
        for route, section, client in sms:
            used = route.value in self.settings.channels.order
            lanes[route] = Lane(
                route=route,
                pool=None,
                client=client() if used else None,
                daily_limit=section.daily_limit,
                per_minute=section.per_minute,
            )
        providers = frozenset(provider.domain for provider in self.carriers.providers)
        return RouteBook(lanes, provider_domains=providers, plan=self.channel_plan)

    def smsgate_client(self) -> SmsGateClient:
        """The company's phone, as [smsgate] describes it (ConfigError when its password
        cannot be read)."""
        gate = self.settings.smsgate
        assert gate.url is not None and gate.username is not None
        return SmsGateClient(
            Service(gate.url, gate.timeout_seconds, gate.ca_file),
            gate.username,
            gate.resolve_password(),
            device_id=gate.device_id,
            sim=gate.sim,
        )

    def twilio_client(self) -> TwilioClient:
        """Twilio, as [twilio] describes it (ConfigError when its token cannot be read)."""
        twilio = self.settings.twilio
        assert twilio.account_sid is not None and self.settings.web.public_url is not None
        return TwilioClient(
            Service(twilio.api_url, twilio.timeout_seconds, twilio.ca_file),
            twilio.account_sid,
            twilio.resolve_auth_token(),
            twilio.from_number,
            twilio.messaging_service_sid,
            status_url=self.settings.web.public_url + "/hooks/twilio/status",
        )

    def sent_folder(self) -> SentFolder | None:
        """Where copies of sent texts go, when imap.save_to_sent asks for them."""
        imap = self.settings.imap
        if not imap.save_to_sent:
            return None
        return SentFolder(self._imap_server("imap.save_to_sent"), imap.sent_folder)

    def mail_source(self, engine: Engine) -> MailSource | None:
        """The mailbox the inbound worker reads: inbound.maildir, else IMAP when enabled."""
        inbound, imap = self.settings.inbound, self.settings.imap
        if inbound.maildir:
            return MaildirSource(
                Path(inbound.maildir),
                max_bytes=inbound.max_bytes,
                poll_seconds=min(imap.poll_seconds, 1.0),
                chunk=inbound.fetch_chunk,
            )
        if not imap.enabled:
            return None

        async def where_was_i(mailbox: str) -> tuple[int | None, int]:
            found = await asyncio.to_thread(read_position, engine, mailbox)
            return found.uidvalidity, found.last_uid

        return ImapSource(
            self._imap_server("imap.enabled"),
            imap.folder,
            where_was_i,
            idle=imap.idle,
            poll_seconds=imap.poll_seconds,
            renew_seconds=imap.idle_renew_seconds,
            chunk=inbound.fetch_chunk,
            max_bytes=inbound.max_bytes,
        )

    def _imap_server(self, needed_by: str) -> ImapServer:
        return imap_server(
            self.settings.imap, needed_by, token=self.oauth2_token(self.settings.imap)
        )

    def oauth2_token(self, section: Endpoint) -> TokenSource | None:
        """Where `section`'s XOAUTH2 access tokens come from: its own token file or command,
        else the built-in sign-in (one keeper per process, shared by every connection)."""
        if section.auth != "oauth2":
            return None
        external = token_source(section.oauth2_token_file, section.oauth2_token_command)
        if external is not None:
            return external
        if self._keeper is None:
            self._keeper = TokenKeeper(self.settings.oauth2)
        return self._keeper

    def _server(self, server: ServerSettings, section: str) -> SmtpServer:
        return smtp_server(server, section, self.oauth2_token(server))

    @cached_property
    def company_domain(self) -> str:
        return self.settings.smtp.sender.domain

    @cached_property
    def identity(self) -> Identity:
        """Who we are in the mailbox: our From addresses and the domain of our ids."""
        settings = self.settings
        addresses = {settings.smtp.sender.address, settings.relay.sender.address}
        return Identity(
            addresses=frozenset(a.lower() for a in addresses),
            domain=self.company_domain,
            default_region=settings.carriers.default_region,
        )

    def new_message_token(self) -> str:
        """96 random bits for a Message-ID. Drawn from the system's generator 256 at a time: one
        call for each was a twentieth of a bulk enqueue. A token is handed out once, whichever
        thread asks, and a forked process draws its own (it would otherwise hand out the
        parent's, and the two would make the same Message-IDs)."""
        pid, tokens = self._tokens
        if not tokens or pid != os.getpid():
            raw = secrets.token_bytes(12 * 256)
            tokens = [raw[i : i + 12].hex() for i in range(0, len(raw), 12)]
            self._tokens = (os.getpid(), tokens)
        try:
            return tokens.pop()
        except IndexError:  # another thread took the last one
            return secrets.token_hex(12)


def smtp_server(
    server: ServerSettings,
    section: str,
    token: TokenSource | None,
    timeout: float | None = None,
    read_password: bool = True,
) -> SmtpServer:
    """`[smtp]` or `[relay]` (`section`) as the transport connects and signs in to it: the
    sender's pool and `gateway doctor` are both described by this one function. `token`: where
    OAuth2 access tokens come from (auth = "oauth2"). The password is read here (ConfigError
    naming the key when it cannot be), unless `read_password` is False (the doctor connects
    first and reads it in its sign-in step)."""
    oauth2 = server.auth == "oauth2"
    password = None
    if read_password and server.username and not oauth2:
        password = server.resolve_password(section)
    return SmtpServer(
        host=server.host,
        port=server.port,
        security=server.security,
        username=server.username,
        password=password,
        oauth2_token=token if oauth2 else None,
        ca_file=server.ca_file,
        connections=server.connections,
        timeout=timeout or server.timeout_seconds,
        deadline=server.message_deadline_seconds,
        max_messages_per_connection=server.max_messages_per_connection,
    )


def imap_server(
    imap: ImapSettings,
    needed_by: str,
    timeout: float | None = None,
    token: TokenSource | None = None,
) -> ImapServer:
    """The mailbox as the transport signs in to it, from `[imap]`: every IMAP connection (the
    reader, the Sent copy, the doctor) is described by this one function. `token`: where
    OAuth2 access tokens come from (auth = "oauth2")."""
    if not imap.username:
        raise ConfigError(f"{needed_by} needs imap.username and its password")
    oauth2 = imap.auth == "oauth2"
    if oauth2 and token is None:
        token = token_source(imap.oauth2_token_file, imap.oauth2_token_command)
    return ImapServer(
        host=imap.host,
        port=imap.port,
        security=imap.security,
        username=imap.username,
        password=None if oauth2 else imap.resolve_password("imap") or "",
        oauth2_token=token if oauth2 else None,
        ca_file=imap.ca_file,
        timeout=timeout or imap.timeout_seconds,
    )
