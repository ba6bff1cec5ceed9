"""Configuration: built-in defaults, then a TOML file, then GATEWAY_<SECTION>__<KEY> variables.

The file is `--config PATH`, else $GATEWAY_CONFIG, else ./gateway.toml when present. Secrets are
SecretStr or indirections (password_env, password_file) and are only resolved when a connection
needs them, so that printing a config can never print a password.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.domain.email_out import AddressError, Mailbox
from gateway.domain.quiet import QuietHours, QuietPolicy, parse_clock, zone

DEFAULT_FILE = "gateway.toml"
_T = TypeVar("_T")
SECRET_MASK = "********"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key, what it was, and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///gateway.db"


# Sending limits of common providers (documented figures; an operator's own daily_limit or
# per_minute wins). Gmail: about 500 a day; Google Workspace: about 2,000 a rolling day;
# Microsoft 365: 30 a minute and 10,000 recipients a day.
PRESETS: dict[str, dict[str, int | None]] = {
    "gmail": {"daily_limit": 500, "per_minute": None},
    "workspace": {"daily_limit": 2000, "per_minute": None},
    "microsoft365": {"daily_limit": 10000, "per_minute": 30},
    "custom": {"daily_limit": None, "per_minute": None},
}


SECRET_SOURCES = (
    "password",
    "password_env",
    "password_file",
    "oauth2_token_file",
    "oauth2_token_command",
)


def check_ca_file(path: Path | None) -> Path | None:
    """`path` when it holds certificates TLS can trust; ValueError saying what is wrong."""
    if path is None:
        return None
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist (a PEM file of the CA's certificates)")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; name the PEM file of the CA's certificates")
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:  # before OSError, of which it is a kind
        raise ValueError(f"{str(path)!r} holds no PEM certificate") from None
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    return path


def check_readable_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    return path


class Endpoint(_Section):
    """A server the gateway signs in to: where it is, how it is secured, which secret to use."""

    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "starttls"
    username: str | None = None  # no username: no sign-in
    # "oauth2": XOAUTH2 with an access token, from oauth2_token_file or oauth2_token_command
    # when given, else from the [oauth2] sign-in (`gateway auth microsoft|google`).
    auth: Literal["password", "oauth2"] = "password"
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None
    # OAuth2 (XOAUTH2) from outside: a file an outside agent keeps fresh, or a command that
    # prints a current access token. Read or run again for every new connection.
    oauth2_token_file: Path | None = None
    oauth2_token_command: str | None = None
    allow_insecure: bool = False
    ca_file: Path | None = None

    _ca_file_holds_certificates = field_validator("ca_file")(check_ca_file)
    _token_file_readable = field_validator("oauth2_token_file")(check_readable_file)

    @model_validator(mode="after")
    def _check_endpoint(self) -> Endpoint:
        sources = [k for k in SECRET_SOURCES if getattr(self, k) is not None]
        if len(sources) > 1:
            raise ValueError(f"give one of {', '.join(sources)}, not several")
        if sources and sources[0].startswith("oauth2") and self.auth == "password":
            self.auth = "oauth2"  # a token source given before `auth` existed still means OAuth2
        if self.auth == "oauth2" and sources and not sources[0].startswith("oauth2"):
            raise ValueError(
                f"auth = 'oauth2' signs in with an access token, not {sources[0]}: remove it"
            )
        if self.auth == "oauth2" and not self.username:
            raise ValueError("auth = 'oauth2' needs a username (the mailbox that signs in)")
        if self.security == "none" and not self.allow_insecure and not is_loopback(self.host):
            raise ValueError(
                f"security = 'none' would send passwords and texts in the clear to {self.host}; "
                "use 'starttls' or 'tls', or set allow_insecure = true if the network is trusted"
            )
        return self

    def resolve_password(self, section: str = "smtp") -> str | None:
        """The password, read from where the config points; raises ConfigError if it is absent."""
        plain = self.password.get_secret_value() if self.password is not None else None
        return read_secret(f"{section}.password", plain, self.password_env, self.password_file)


def read_secret(key: str, plain: str | None, env: str | None, file: Path | None) -> str | None:
    """A secret given one of three ways (`key`, `key_env`, `key_file`), read only when it is
    needed; ConfigError naming the key when the variable is not set or the file is unreadable."""
    if plain is not None:
        return plain
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{key}_env names {env}, but that variable is not set")
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file {str(file)!r} cannot be read: {exc.strerror}") from None
    return None


class ServerSettings(Endpoint):
    """An SMTP server the gateway sends through: the own server or the relay."""

    enabled: bool = True
    from_address: str = "Dispatch <dispatch@example.com>"
    connections: int = Field(4, ge=1, le=64)
    # Servers that cap messages per connection; unset keeps a connection while it works.
    max_messages_per_connection: int | None = Field(None, ge=1)
    preset: Literal["gmail", "workspace", "microsoft365", "custom"] = "custom"
    daily_limit: int | None = Field(None, ge=1)  # most texts in any rolling 24 h; never exceeded
    per_minute: int | None = Field(None, ge=1)
    timeout_seconds: float = Field(30.0, gt=0, le=600)  # one SMTP command
    message_deadline_seconds: float = Field(60.0, gt=0, le=3600)  # one message, all commands

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        for key in self._address_keys:
            value = getattr(self, key)
            if value is not None:
                try:
                    Mailbox.parse(value, key)
                except (AddressError, ValueError) as exc:
                    raise ValueError(str(exc)) from None
        return self

    _address_keys: ClassVar[tuple[str, ...]] = ("from_address",)

    @property
    def sender(self) -> Mailbox:
        return Mailbox.parse(self.from_address, "from_address")

    def limits(self) -> tuple[int | None, int | None]:
        """(daily_limit, per_minute): the operator's values, else the preset's."""
        preset = PRESETS[self.preset]
        daily = self.daily_limit if self.daily_limit is not None else preset["daily_limit"]
        rate = self.per_minute if self.per_minute is not None else preset["per_minute"]
        return daily, rate


class SmtpSettings(ServerSettings):
    """The company's own mail server (route `own`)."""


# Relays known to refuse mail to carriers' email-to-SMS gateways, with where that is said: such a
# relay is never given a text to a carrier's gateway unless `delivers_to_gateways = true`.
RELAYS_REFUSING_GATEWAYS: dict[str, str] = {
    "smtp.sendgrid.net": (
        "Twilio SendGrid drops all mail to carrier email-to-SMS gateways since 2024-07-31 "
        "and still counts it against the plan (SendGrid's announcement of that date)"
    ),
}


class RelaySettings(ServerSettings):
    """The hosted relay (route `relay`): used when the own server cannot send."""

    enabled: bool = False
    # Whether the relay delivers mail to carriers' gateways; unset: yes, unless the host is
    # known to refuse it (RELAYS_REFUSING_GATEWAYS). Texts to providers go either way.
    delivers_to_gateways: bool | None = None
    from_address: str = "Dispatch via relay <relay@example.com>"
    reply_to: str | None = None  # default: the own server's from_address, so replies come home
    bcc: str | None = None  # an archive copy to the company mailbox (envelope only)
    return_path: str | None = None  # envelope sender; default: the relay's from_address

    _address_keys: ClassVar[tuple[str, ...]] = ("from_address", "reply_to", "bcc", "return_path")

    @property
    def takes_gateway_mail(self) -> bool:
        if self.delivers_to_gateways is not None:
            return self.delivers_to_gateways
        return self.host.lower().rstrip(".") not in RELAYS_REFUSING_GATEWAYS


class ImapSettings(Endpoint):
    """The company mailbox: watched for replies and bounces, and given a copy of what is sent."""

    enabled: bool = False
    port: int = Field(993, ge=1, le=65535)  # 143 when security = "starttls" and no port is set
    security: Literal["tls", "starttls", "none"] = "tls"
    folder: str = "INBOX"
    idle: bool = True
    poll_seconds: float = Field(30.0, gt=0, le=3600)
    # IDLE is ended and begun again this often: servers and NAT boxes drop quiet connections,
    # and a connection with no answer to that renewal is treated as dead and opened again.
    idle_renew_seconds: float = Field(540.0, ge=1, le=600)
    sent_folder: str = "Sent"
    # For servers that do not keep a copy of what is sent through them (Gmail and Microsoft 365
    # do; plain servers do not): each text sent is also appended to sent_folder.
    save_to_sent: bool = False
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    # A reader failing for longer than this makes /readyz answer 503 (a restart or a blip of
    # the server's is not an outage).
    ready_grace_seconds: float = Field(60.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _check_imap(self) -> ImapSettings:
        if self.security == "starttls" and "port" not in self.model_fields_set:
            self.port = 143
        return self


# What each provider's sign-in asks for, by default: reading the mailbox over IMAP and sending
# over SMTP. (MSAL adds offline_access itself, and refuses it as a scope.)
OAUTH2_SCOPES: dict[str, list[str]] = {
    "microsoft": [
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
    ],
    "google": ["https://mail.google.com/"],
}
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


class OAuth2Settings(_Section):
    """The built-in OAuth2 sign-in (`gateway auth microsoft|google|custom`): the company's own
    app registration, and where the refresh token it yields is kept (a file of mode 0600)."""

    provider: Literal["microsoft", "google", "custom"] | None = None
    client_id: str | None = None
    # Google's "desktop app" clients come with a secret; Microsoft's public clients have none.
    client_secret: SecretStr | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    tenant: str = "organizations"  # Microsoft: the directory (its id or domain), or this
    token_file: Path = Path("oauth2-token.json")
    # Endpoints: the provider's own by default; a custom provider names its own.
    authority: str = MICROSOFT_AUTHORITY  # Microsoft's sign-in host (another cloud's, say)
    authorization_url: str | None = None
    token_url: str | None = None
    device_authorization_url: str | None = None
    scopes: list[str] = []  # default: the provider's IMAP and SMTP scopes

    _token_file_readable = field_validator("token_file")(
        lambda path: check_readable_file(path) if path.exists() else path
    )

    @model_validator(mode="after")
    def _check_oauth2(self) -> OAuth2Settings:
        secrets = [k for k in ("client_secret", "client_secret_env", "client_secret_file")
                   if getattr(self, k) is not None]  # fmt: skip
        if len(secrets) > 1:
            raise ValueError(f"give one of {', '.join(secrets)}, not several")
        if self.provider == "custom":
            missing = [k for k in ("token_url", "device_authorization_url", "scopes")
                       if not getattr(self, k)]  # fmt: skip
            if missing:
                raise ValueError(f"provider = 'custom' needs {', '.join(missing)}")
        for key in ("authority", "authorization_url", "token_url", "device_authorization_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith("https://"):
                raise ValueError(f"{key} must be an https:// URL (tokens never go in the clear)")
        return self

    @property
    def configured(self) -> bool:
        return self.provider is not None and self.client_id is not None

    def scopes_asked(self) -> list[str]:
        return self.scopes or OAUTH2_SCOPES.get(self.provider or "", [])

    def endpoints(self) -> tuple[str, str | None, str | None]:
        """(token URL, device authorization URL, authorization URL) of the provider."""
        if self.provider == "microsoft":
            base = f"{self.authority.rstrip('/')}/{self.tenant}/oauth2/v2.0"
            return (self.token_url or f"{base}/token",
                    self.device_authorization_url or f"{base}/devicecode",
                    self.authorization_url or f"{base}/authorize")  # fmt: skip
        if self.provider == "google":
            return (self.token_url or GOOGLE_TOKEN_URL, None,
                    self.authorization_url or GOOGLE_AUTHORIZATION_URL)  # fmt: skip
        return self.token_url or "", self.device_authorization_url, self.authorization_url

    def resolve_client_secret(self) -> str | None:
        plain = self.client_secret.get_secret_value() if self.client_secret else None
        return read_secret("oauth2.client_secret", plain, self.client_secret_env,
                           self.client_secret_file)  # fmt: skip


class InboundSettings(_Section):
    """Reading the company mailbox: replies, bounces and keywords."""

    maildir: str | None = None  # a Maildir read instead of IMAP (the demo, tests)
    max_bytes: int = Field(10_000_000, ge=10_000, le=200_000_000)  # larger: quarantined
    # Send from dispatch+TOKEN@domain so replies and bounces name the text they answer. Only
    # for servers that accept plus-addresses of the account as sender.
    plus_addressing: bool = False
    reply_window_hours: float = Field(72.0, gt=0, le=24 * 60)  # phone-number matching window
    fetch_chunk: int = Field(100, ge=1, le=1000)  # messages fetched per IMAP command
    # Of several gateway processes, the one holding a mailbox's lease reads it; if it dies,
    # another takes over within this long.
    mailbox_lease_seconds: float = Field(30.0, ge=2, le=600)
    stop_text: str = (
        "You are unsubscribed and will get no more texts from us. Reply START to resubscribe."
    )
    start_text: str = "You are subscribed to delivery texts again. Reply STOP to unsubscribe."
    help_text: str = (
        "Delivery texts from our dispatch team. Reply to this text to reach a dispatcher; "
        "reply STOP to unsubscribe."
    )


class CarrierSettings(_Section):
    file: str = "carriers.yaml"
    default_region: str = "US"

    @model_validator(mode="after")
    def _check(self) -> CarrierSettings:
        region = self.default_region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"default_region {self.default_region!r} is not a region code like US")
        if region != self.default_region:
            self.default_region = region
        return self


class GatewaySettings(_Section):
    """Which email-to-SMS provider (an entry of carriers.yaml's `providers:`) takes texts the
    contact's carrier cannot: unknown, retired, or within `leave_ending_days` of closing."""

    provider: str | None = None
    providers_by_country: dict[str, str] = {}  # {CA = "id"}: wins over `provider` there
    leave_ending_days: int = Field(30, ge=0, le=365)

    @model_validator(mode="after")
    def _check_gateways(self) -> GatewaySettings:
        by_country = {}
        for country, provider in self.providers_by_country.items():
            code = country.upper()
            if code not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"providers_by_country: {country!r} is not a region code like CA")
            by_country[code] = provider
        if by_country != self.providers_by_country:
            self.providers_by_country = by_country
        return self

    def named(self) -> list[tuple[str, str]]:
        """(key, provider id) for every provider these settings name."""
        named = [("gateways.provider", self.provider)] if self.provider else []
        return named + [
            (f"gateways.providers_by_country.{code}", provider)
            for code, provider in self.providers_by_country.items()
        ]


class TemplateSettings(_Section):
    folder: str = "templates"


class PolicySettings(_Section):
    long_text: Literal["split", "truncate"] = "split"
    lifetime_hours: float = Field(6.0, gt=0, le=24 * 7)
    # Automated texts reach people only between these local times (their clock: the order's
    # time zone, else the number's, else `timezone`, the company's).
    quiet_hours: bool = True
    allowed_from: str = "08:00"
    allowed_until: str = "21:00"
    timezone: str = "UTC"
    max_per_contact_hour: int | None = Field(3, ge=1, le=100)  # automated texts; None: no cap
    max_schedule_days: int = Field(60, ge=1, le=3650)  # send_at at most this far ahead

    @model_validator(mode="after")
    def _check_policy(self) -> PolicySettings:
        self.hours()
        zone(self.timezone)
        return self

    def quiet(self) -> QuietPolicy | None:
        """The quiet-hours policy; None when quiet_hours is off."""
        return QuietPolicy(self.hours(), zone(self.timezone)) if self.quiet_hours else None

    def hours(self) -> QuietHours:
        return QuietHours(
            parse_clock(self.allowed_from, "allowed_from"),
            parse_clock(self.allowed_until, "allowed_until"),
        )


class RulesSettings(_Section):
    file: str = "rules.yaml"
    # A recurring run missed while no gateway ran still happens if it is no later than this.
    misfire_grace_seconds: int = Field(900, ge=1, le=86_400)


class SenderSettings(_Section):
    """How the sender worker takes rows from the outbox."""

    batch_size: int = Field(200, ge=1, le=5000)
    lease_seconds: float = Field(120.0, ge=1, le=3600)
    retry_base_seconds: float = Field(30.0, gt=0)
    retry_cap_seconds: float = Field(1800.0, gt=0)
    idle_poll_seconds: float = Field(1.0, gt=0, le=60)


class WebhookSettings(_Section):
    """Calls to the order system on replies, bounces and state changes, signed with HMAC-SHA256."""

    urls: list[str] = []
    secret: str | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    events: list[Literal["reply", "bounce", "state"]] = ["reply", "bounce", "state"]
    timeout_seconds: float = Field(10.0, gt=0, le=120)
    max_attempts: int = Field(10, ge=1, le=50)

    @model_validator(mode="after")
    def _check_webhooks(self) -> WebhookSettings:
        for url in self.urls:
            if not url.startswith(("https://", "http://")) or any(c in url for c in " \r\n"):
                raise ValueError(f"webhook url {url!r} must be an http(s) URL")
        return self

    def resolve_secret(self) -> str:
        found = read_secret("webhooks.secret", self.secret, self.secret_env, self.secret_file)
        if not found:
            raise ConfigError("webhooks.urls is set: give webhooks.secret_env (or secret_file)")
        return found


class ChannelsSettings(_Section):
    """Which channels carry texts, in preference: each text goes by the first that reaches its
    number (email: while the carrier's gateway is open or a provider serves it)."""

    order: list[Literal["email", "smsgate", "twilio"]] = ["email"]

    @field_validator("order")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one channel (email, smsgate, twilio)")
        if len(set(value)) != len(value):
            raise ValueError("name each channel once")
        return value


def check_countries(value: list[str]) -> list[str]:
    codes = [code.strip().upper() for code in value]
    for code in codes:
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise ValueError(f"{code!r} is not a two-letter country code (e.g. US)")
    return codes


def check_service_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not value.startswith(("https://", "http://")) or any(c in value for c in " \r\n"):
        raise ValueError(f"{value!r} must be an http(s) URL")
    return value


class SmsChannelSettings(_Section):
    """What every SMS channel has: the countries it is limited to, its limits, how long a
    request may take, and a CA to trust for its certificate."""

    countries: list[str] = []  # empty: every country
    daily_limit: int | None = Field(None, ge=1)
    per_minute: int | None = Field(None, ge=1)
    timeout_seconds: float = Field(15.0, gt=0, le=120)
    ca_file: Path | None = None

    _countries = field_validator("countries")(check_countries)
    _ca_file_holds_certificates = field_validator("ca_file")(check_ca_file)

    def _one_source(self, key: str) -> None:
        given = [k for k in (key, f"{key}_env", f"{key}_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(given)}, not several")

    def _secret(self, section: str, key: str) -> str | None:
        """The secret `key` as given (itself, `key_env` or `key_file`), read now."""
        given: SecretStr | None = getattr(self, key)
        plain = given.get_secret_value() if given is not None else None
        env, file = getattr(self, f"{key}_env"), getattr(self, f"{key}_file")
        return read_secret(f"{section}.{key}", plain, env, file)


class SmsGateSettings(SmsChannelSettings):
    """The company's Android phone running SMS Gate (channel `smsgate`)."""

    # The phone's local server (http://PHONE:8080), the cloud (https://api.sms-gate.app/3rdparty/v1)
    # or a private server's /3rdparty/v1. Unset: the channel is not configured.
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None
    # The app's webhook signing key: calls to /hooks/smsgate without its signature are refused.
    signing_key: SecretStr | None = None
    signing_key_env: str | None = None
    signing_key_file: Path | None = None
    device_id: str | None = Field(None, max_length=21)
    sim: int | None = Field(None, ge=1, le=3)
    # Where the phone cannot reach `gateway serve`: read its inbox and the states of texts in
    # flight every so many seconds instead of waiting for its webhooks.
    poll_seconds: float | None = Field(None, ge=5, le=3600)

    _url = field_validator("url")(check_service_url)

    @property
    def configured(self) -> bool:
        return self.url is not None

    @model_validator(mode="after")
    def _check_smsgate(self) -> SmsGateSettings:
        self._one_source("password")
        self._one_source("signing_key")
        if self.url is not None and not self.username:
            raise ValueError("smsgate.url is set: give the username the app shows")
        return self

    def resolve_password(self) -> str:
        found = self._secret("smsgate", "password")
        if not found:
            raise ConfigError("smsgate.url is set: give smsgate.password_env (or password_file)")
        return found

    def resolve_signing_key(self) -> str | None:
        return self._secret("smsgate", "signing_key")


class TwilioSettings(SmsChannelSettings):
    """Twilio Programmable Messaging (channel `twilio`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    account_sid: str | None = None  # AC..., unset: the channel is not configured
    auth_token: SecretStr | None = None
    auth_token_env: str | None = None
    auth_token_file: Path | None = None
    from_number: str | None = Field(None, alias="from")  # the company's Twilio number, E.164
    messaging_service_sid: str | None = None  # MG..., instead of `from`
    # Twilio's API; changed only to point at a stand-in in tests.
    api_url: str = "https://api.twilio.com"

    _url = field_validator("api_url")(check_service_url)

    @property
    def configured(self) -> bool:
        return self.account_sid is not None

    @model_validator(mode="after")
    def _check_twilio(self) -> TwilioSettings:
        self._one_source("auth_token")
        if self.account_sid is None:
            return self
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", self.account_sid):
            raise ValueError("twilio.account_sid is AC followed by 32 hex digits (the Console)")
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("give twilio.from (the number) or twilio.messaging_service_sid")
        return self

    def resolve_auth_token(self) -> str:
        found = self._secret("twilio", "auth_token")
        if not found:
            raise ConfigError("twilio.account_sid is set: give twilio.auth_token_env (or _file)")
        return found


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=1, le=65535)
    base_url: str | None = None
    # How outside services (Twilio, the company's phone) reach `gateway serve`, e.g.
    # https://gateway.example.com: their webhooks are this plus /hooks/... .
    public_url: str | None = None
    # Addresses (or networks) of the reverse proxies in front of `gateway serve`: only their
    # X-Forwarded-For and X-Forwarded-Proto are believed (the sign-in lockout, logs, the Secure
    # cookie). None by default: a header anyone can send is believed from no one.
    trusted_proxies: list[str] = []
    # A request body larger than this is refused (413) before it is read; the batch endpoint
    # takes ten times as much (up to 1,000 texts).
    max_body_bytes: int = Field(1_000_000, ge=1_000, le=100_000_000)

    _public_url = field_validator("public_url")(check_service_url)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    relay: RelaySettings = RelaySettings()
    imap: ImapSettings = ImapSettings()
    inbound: InboundSettings = InboundSettings()
    carriers: CarrierSettings = CarrierSettings()
    gateways: GatewaySettings = GatewaySettings()
    templates: TemplateSettings = TemplateSettings()
    policy: PolicySettings = PolicySettings()
    rules: RulesSettings = RulesSettings()
    webhooks: WebhookSettings = WebhookSettings()
    sender: SenderSettings = SenderSettings()
    web: WebSettings = WebSettings()
    oauth2: OAuth2Settings = OAuth2Settings()
    channels: ChannelsSettings = ChannelsSettings()
    smsgate: SmsGateSettings = SmsGateSettings()
    twilio: TwilioSettings = TwilioSettings()

    # Where the settings came from, for `config check`; not a key.
    source_file: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _sections_agree(self) -> Settings:
        check_across(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)


def check_across(settings: Settings) -> None:
    """The rules that tie sections together; ValueError naming the keys when one is broken.
    Run when the settings load, and on a change saved in the dashboard (which validates the
    changed sections alone)."""
    for name in settings.channels.order:
        if name != "email" and not getattr(settings, name).configured:
            raise ValueError(
                f"channels.order names {name}, but [{name}] is not configured "
                f"(`gateway config check` shows the keys; the README's \"Texting without "
                f'carrier gateways" the setup)'
            )
    if settings.twilio.configured and settings.web.public_url is None:
        raise ValueError(
            "[twilio] needs web.public_url: the https address Twilio reaches gateway serve "
            "at (its status and incoming-text webhooks are under /hooks/twilio/)"
        )
    for server in ("smtp", "relay", "imap"):
        section: Endpoint = getattr(settings, server)
        external = section.oauth2_token_file or section.oauth2_token_command
        enabled = getattr(section, "enabled", True)
        if enabled and section.auth == "oauth2" and not external and not settings.oauth2.configured:
            raise ValueError(
                f"{server}.auth = 'oauth2' needs the [oauth2] section (provider and client_id, "
                f"then `gateway auth ...`) or {server}.oauth2_token_command"
            )


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def find_config_file(explicit: str | Path | None) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return path
    from_env = os.environ.get("GATEWAY_CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"GATEWAY_CONFIG names {from_env!r}, which does not exist")
        return path
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_settings(explicit: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file (if any) and the environment; raises ConfigError with every fault."""
    path = find_config_file(explicit)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            # tomllib reads an array or inline table inside another by calling itself, so a
            # file nesting hundreds of them runs out of stack: a mistake to name like any other.
            raise ConfigError(
                f"{path}: not valid TOML: arrays or tables nested too deeply to read"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read: {exc}") from None
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    settings = _checked(lambda: Settings(**data), f"{path}" if path else "configuration")
    settings.source_file = path
    return settings


def with_changes(base: Settings, changes: dict[str, Any], where: str) -> Settings:
    """`base` with `{"section.key": value}` applied; the environment is already in `base` and
    is not read again. Raises ConfigError naming every key that does not fit."""
    by_section: dict[str, dict[str, Any]] = {}
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        by_section.setdefault(section, {})[key] = value
    sections: dict[str, BaseModel] = {}
    for section, values in by_section.items():
        current = getattr(base, section)
        # Each section alone: validating the whole Settings would read the environment again.
        data = {**current.model_dump(), **values}
        model: type[BaseModel] = type(current)
        sections[section] = _checked(partial(model.model_validate, data), where, section)
    changed = base.model_copy(update=sections)
    try:
        check_across(changed)
    except ValueError as exc:
        raise ConfigError(f"{where} has 1 problem(s):\n  {exc}") from None
    return changed


def _checked(build: Callable[[], _T], where: str, prefix: str = "") -> _T:
    try:
        return build()
    except ValidationError as exc:
        lines = [f"{where} has {exc.error_count()} problem(s):"]
        lines += [f"  {prefix + '.' if prefix else ''}{_describe(error)}" for error in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not key:  # a rule across sections: its words name the keys
        return message
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check its spelling; `gateway config check` lists the keys)"
    value = error.get("input")
    if kind == "missing" or isinstance(value, dict):
        return f"{key}: {message}"
    if "password" in key or "signing_key" in key or "token" in key:
        value = SECRET_MASK
    return f"{key} = {value!r}: {message}"


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by a mask."""
    data = settings.model_dump(mode="json")
    for section in ("smtp", "relay", "imap"):
        if data[section].get("password") is not None:
            data[section]["password"] = SECRET_MASK
    if data["webhooks"].get("secret") is not None:
        data["webhooks"]["secret"] = SECRET_MASK
    if data["oauth2"].get("client_secret") is not None:
        data["oauth2"]["client_secret"] = SECRET_MASK
    for section, key in (("smsgate", "password"), ("smsgate", "signing_key"),
                         ("twilio", "auth_token")):  # fmt: skip
        if data[section].get(key) is not None:
            data[section][key] = SECRET_MASK
    return data


def package_copy(name: str) -> Path:
    """A file or folder shipped with the package: in a wheel under gateway/_shipped, in a source
    checkout at the top of the repository."""
    shipped = resources.files("gateway") / "_shipped" / name
    if shipped.is_file() or shipped.is_dir():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / name


def locate(configured: str, default: str) -> Path:
    """A relative path resolves against the working directory; when the operator kept the
    default and has no copy here, the shipped copy is used."""
    path = Path(configured)
    if path.exists() or configured != default:
        return path
    return package_copy(default)
