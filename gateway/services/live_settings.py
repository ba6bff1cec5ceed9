"""Settings an admin changes in the dashboard while the gateway runs.

A change is checked as a whole against the rest of the settings, saved as an override in the
database with an audit entry (one transaction), and taken up by every process within seconds
(`Runtime.refresh`). The file stays as the operator wrote it; a saved key wins over the file
and the environment for that key only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretStr
from sqlalchemy import Engine

from gateway.config import SECRET_SOURCES, ConfigError, Settings, with_changes
from gateway.services.runtime import Runtime
from gateway.store import overrides

Kind = Literal[
    "bool", "int", "optional_int", "float", "text", "optional_text", "secret", "choice", "list"
]


@dataclass(frozen=True, slots=True)
class Editable:
    key: str  # section.key
    label: str
    kind: Kind
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


def _server(section: str) -> list[Editable]:
    return [
        Editable(f"{section}.enabled", "Enabled", "bool"),
        Editable(f"{section}.host", "Host", "text"),
        Editable(f"{section}.port", "Port", "int", help="587 with STARTTLS, 465 with TLS"),
        Editable(f"{section}.security", "Security", "choice", ("starttls", "tls", "none")),
        Editable(f"{section}.username", "User name", "optional_text", help="empty: no sign-in"),
        Editable(f"{section}.auth", "Sign-in", "choice", ("password", "oauth2"),
                 help="oauth2: XOAUTH2 with the sign-in below"),
        Editable(f"{section}.password", "Password", "secret",
                 help="an app password where two-step sign-in is on; empty keeps the current"),
        Editable(f"{section}.from_address", "From", "text"),
        Editable(f"{section}.preset", "Provider preset", "choice",
                 ("custom", "gmail", "workspace", "microsoft365")),
        Editable(f"{section}.daily_limit", "Texts a day (rolling 24 h)", "optional_int"),
        Editable(f"{section}.per_minute", "Texts a minute", "optional_int"),
    ]  # fmt: skip


GROUPS: dict[str, tuple[str, list[Editable]]] = {
    "smtp": ("Own mail server (SMTP)", _server("smtp")),
    "relay": ("Hosted relay", _server("relay")),
    "imap": ("Company mailbox (IMAP)", [
        Editable("imap.enabled", "Enabled", "bool"),
        Editable("imap.host", "Host", "text"),
        Editable("imap.port", "Port", "int", help="993 with TLS, 143 with STARTTLS"),
        Editable("imap.security", "Security", "choice", ("tls", "starttls", "none")),
        Editable("imap.username", "User name", "optional_text"),
        Editable("imap.auth", "Sign-in", "choice", ("password", "oauth2"),
                 help="oauth2: XOAUTH2 with the sign-in below (Microsoft 365 reads IMAP only so)"),
        Editable("imap.password", "Password", "secret", help="empty keeps the current"),
        Editable("imap.folder", "Folder", "text"),
        Editable("imap.idle", "Use IDLE", "bool"),
        Editable("imap.poll_seconds", "Poll every (seconds)", "float"),
    ]),
    "quiet": ("Quiet hours", [
        Editable("policy.quiet_hours", "Hold automated texts outside the hours", "bool"),
        Editable("policy.allowed_from", "From (HH:MM, their clock)", "text"),
        Editable("policy.allowed_until", "Until (HH:MM)", "text"),
        Editable("policy.timezone", "Company time zone", "text", help="e.g. America/Chicago"),
    ]),
    "channels": ("Channels", [
        Editable("channels.order", "Channels, in preference", "list",
                 help="comma-separated: email, smsgate, twilio; each text takes the first that "
                      "reaches its number"),
        Editable("web.public_url", "Public address of gateway serve", "optional_text",
                 help="https://…: where the phone and Twilio send their reports"),
    ]),
    "smsgate": ("The company's phone (SMS Gate)", [
        Editable("smsgate.url", "Phone's address", "optional_text",
                 help="http://PHONE:8080, or https://api.sms-gate.app/3rdparty/v1"),
        Editable("smsgate.username", "User name", "optional_text", help="as the app shows it"),
        Editable("smsgate.password", "Password", "secret", help="empty keeps the current"),
        Editable("smsgate.signing_key", "Webhook signing key", "secret",
                 help="the app's; empty keeps the current"),
        Editable("smsgate.device_id", "Device id", "optional_text", help="cloud: which phone"),
        Editable("smsgate.sim", "SIM (1-3)", "optional_int"),
        Editable("smsgate.countries", "Countries", "list", help="e.g. US, CA; empty: all"),
        Editable("smsgate.daily_limit", "Texts a day", "optional_int"),
        Editable("smsgate.per_minute", "Texts a minute", "optional_int"),
        Editable("smsgate.poll_seconds", "Read the phone every (seconds)", "optional_int",
                 help="only where the phone cannot reach gateway serve"),
    ]),
    "twilio": ("Twilio", [
        Editable("twilio.account_sid", "Account SID", "optional_text"),
        Editable("twilio.auth_token", "Auth Token", "secret", help="empty keeps the current"),
        Editable("twilio.from_number", "From (your Twilio number)", "optional_text"),
        Editable("twilio.messaging_service_sid", "Messaging Service SID", "optional_text",
                 help="instead of From"),
        Editable("twilio.countries", "Countries", "list", help="e.g. US, CA; empty: all"),
        Editable("twilio.daily_limit", "Texts a day", "optional_int"),
        Editable("twilio.per_minute", "Texts a minute", "optional_int"),
    ]),
    "limits": ("Limits", [
        Editable("policy.max_per_contact_hour", "Automated texts per contact an hour",
                 "optional_int"),
        Editable("policy.lifetime_hours", "Give up on a text after (hours)", "float"),
        Editable("policy.long_text", "Long texts", "choice", ("split", "truncate")),
    ]),
}  # fmt: skip

BY_KEY = {field.key: field for _, fields in GROUPS.values() for field in fields}


class SettingsError(ValueError):
    """The change does not fit; the message names the key and the fix. Nothing was saved."""


def secret_sources(section: Any, name: str) -> list[str]:
    """The keys a secret may be given by: itself, KEY_env, KEY_file (and a mail server's
    password, its OAuth2 token sources)."""
    extra = SECRET_SOURCES if name == "password" else ()
    keys = (name, f"{name}_env", f"{name}_file", *extra)
    return [key for key in dict.fromkeys(keys) if key in type(section).model_fields]


def current_value(settings: Settings, field: Editable) -> Any:
    """What the form shows: never a secret, only whether one is set."""
    section = getattr(settings, field.section)
    value = getattr(section, field.name)
    if field.kind == "secret":
        return any(getattr(section, k) is not None for k in secret_sources(section, field.name))
    if field.kind == "list":
        return ", ".join(value)
    return value


def parse_form(group: str, form: dict[str, str]) -> dict[str, Any]:
    """The group's fields as values; a secret left empty is no change."""
    if group not in GROUPS:
        raise SettingsError(f"there is no settings group {group!r}")
    values: dict[str, Any] = {}
    for field in GROUPS[group][1]:
        raw = form.get(field.key, "")
        if any(c in raw for c in "\r\n\x00"):
            raise SettingsError(f"{field.label}: one line, please")
        raw = raw.strip()
        if field.kind == "bool":
            values[field.key] = raw in ("on", "true", "1")
        elif field.kind == "secret":
            if raw:
                values[field.key] = raw
        elif field.kind in ("int", "optional_int", "float"):
            if not raw and field.kind == "optional_int":
                values[field.key] = None
                continue
            try:
                values[field.key] = float(raw) if field.kind == "float" else int(raw)
            except ValueError:
                raise SettingsError(f"{field.label}: {raw!r} is not a number") from None
        elif field.kind == "optional_text":
            values[field.key] = raw or None
        elif field.kind == "list":
            values[field.key] = [item.strip() for item in raw.split(",") if item.strip()]
        elif field.kind == "choice" and raw not in field.choices:
            raise SettingsError(f"{field.label}: choose one of {', '.join(field.choices)}")
        else:
            values[field.key] = raw
    return values


def save_changes(
    runtime: Runtime, engine: Engine, values: dict[str, Any], actor: str, now: dt.datetime
) -> list[str]:
    """Apply `values` (from parse_form) over the saved overrides; returns the keys that changed.
    Raises SettingsError when the result does not fit, saving nothing."""
    settings = runtime.settings
    changed = {k: v for k, v in values.items() if _differs(settings, BY_KEY[k], v)}
    if not changed:
        return []
    with engine.begin() as conn:
        saved = overrides.read(conn)
        updated = {**saved, **changed}
        for key in changed:
            field = BY_KEY[key]
            if field.kind == "secret":  # a typed secret replaces any other source of it
                section = getattr(settings, field.section)
                for source in secret_sources(section, field.name):
                    if source != field.name:
                        updated[f"{field.section}.{source}"] = None
        try:
            effective = with_changes(runtime.base_settings, updated, "this change")
        except ConfigError as exc:
            raise SettingsError(str(exc).replace("this change has", "the change has")) from None
        overrides.save(conn, {k: v for k, v in updated.items() if saved.get(k) != v}, actor, now)
        shown = {k: "(changed)" if BY_KEY[k].kind == "secret" else v for k, v in changed.items()}
        overrides.record(conn, actor, "settings", shown, now)
    runtime.use(effective)
    return sorted(changed)


def _differs(settings: Settings, field: Editable, value: Any) -> bool:
    current = getattr(getattr(settings, field.section), field.name)
    if isinstance(current, SecretStr):
        return bool(current.get_secret_value() != value)
    return bool(current != value)
