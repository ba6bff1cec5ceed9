"""Reading carriers.yaml: the carriers' gateways and the email-to-SMS providers, validated
with the line at fault named in every error. Parsing is pure (text in, data out); the shell
only finds and reads the file."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import TypeVar

import yaml

from gateway.domain import bounded_yaml
from gateway.domain.carriers import (
    Carrier,
    CarrierBook,
    CarrierFileError,
    CarrierStatus,
    lookup_key,
)
from gateway.domain.providers import (
    PLACEHOLDERS,
    Locator,
    NumberFormat,
    Provider,
    ReplyFormat,
    ReportFormat,
    Where,
)

_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DOMAIN_PATTERN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE
)
# (required, optional) keys of each kind of mapping
_CARRIER_KEYS = ({"id", "name", "country", "status", "source"}, {
    "aliases", "sms", "mms", "reply_domains", "reply_footers", "ends_on", "retired_on",
    "max_length", "reported",
})  # fmt: skip
_PROVIDER_KEYS = ({"id", "name", "country", "address", "source"},
                  {"status", "authorise_sender", "max_length", "replies", "reports"})  # fmt: skip
_REPLIES_KEYS = ({"from", "phone", "text"}, {"subject"})
_REPORTS_KEYS = ({"from", "phone", "status", "delivered", "failed"}, {"subject", "opted_out",
                 "reason"})  # fmt: skip
_LOCATOR_KEYS = ({"in"}, {"label", "until", "pattern", "number"})

T = TypeVar("T")


def load_carriers(text: str, source: str = "carriers.yaml") -> CarrierBook:
    """Parse and validate carriers.yaml; every problem is reported with its line."""
    try:
        root = bounded_yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise CarrierFileError(source, line, f"not valid YAML: {problem}") from None
    if not isinstance(root, yaml.MappingNode):
        raise CarrierFileError(source, _line(root), "expected a mapping with a `carriers:` list")
    top = Fields(root, source, "the file", (set(), {"carriers", "providers"}))
    if "carriers" not in top and "providers" not in top:
        raise CarrierFileError(source, _line(root), "missing the `carriers:` list")
    carriers = top.entries("carriers", _carrier, "carrier", _CARRIER_KEYS)
    providers = top.entries("providers", _provider, "provider", _PROVIDER_KEYS)

    seen_ids: dict[str, int] = {}
    seen_names: dict[str, tuple[str, int]] = {}
    ids = [(c.id, line) for c, line in carriers] + [(p.id, line) for p, line in providers]
    for entry_id, line in ids:
        if entry_id in seen_ids:
            raise CarrierFileError(
                source, line, f"duplicate id {entry_id!r} (first on line {seen_ids[entry_id]})"
            )
        seen_ids[entry_id] = line
    for carrier, line in carriers:
        for name in (carrier.id, *carrier.aliases):
            key = lookup_key(name)
            owner = seen_names.get(key)
            if owner is not None and owner[0] != carrier.id:
                raise CarrierFileError(
                    source,
                    line,
                    f"alias {name!r} of {carrier.id!r} is already a name of {owner[0]!r} "
                    f"(line {owner[1]})",
                )
            seen_names[key] = (carrier.id, line)
    return CarrierBook([c for c, _ in carriers], [p for p, _ in providers])


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


class Fields:
    """One mapping of the file, its keys checked against those allowed; each accessor checks
    its value's type and names the line of a wrong one."""

    def __init__(
        self,
        node: yaml.Node,
        source: str,
        what: str,
        keys: tuple[set[str], set[str]],
    ) -> None:
        if not isinstance(node, yaml.MappingNode):
            raise CarrierFileError(source, _line(node), f"{what} must be a mapping of keys")
        self.node, self.source, self.what = node, source, what
        self.line = _line(node) or 0
        self._fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise CarrierFileError(source, _line(key_node), "keys must be plain words")
            key = str(key_node.value)
            if key in self._fields:
                raise CarrierFileError(source, _line(key_node), f"key {key!r} is given twice")
            self._fields[key] = (key_node, value_node)
        required, optional = keys
        unknown = set(self._fields) - required - optional
        if unknown:
            key = sorted(unknown)[0]
            allowed = ", ".join(sorted(required | optional))
            raise CarrierFileError(
                source, self.key_line(key), f"unknown key {key!r} in {what} (allowed: {allowed})"
            )
        missing = required - set(self._fields)
        if missing:
            raise CarrierFileError(
                source, self.line, f"{what}: missing required key {sorted(missing)[0]!r}"
            )

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def key_line(self, key: str) -> int | None:
        return _line(self._fields[key][0])

    def value_line(self, key: str) -> int | None:
        return _line(self._fields[key][1])

    def fail(self, key: str | None, message: str) -> CarrierFileError:
        line = self.value_line(key) if key is not None and key in self else self.line
        return CarrierFileError(self.source, line, message)

    def scalar(self, key: str) -> object:
        value_node = self._fields[key][1]
        if not isinstance(value_node, yaml.ScalarNode):
            raise self.fail(key, f"{key!r} must be a single value")
        try:
            return yaml.safe_load(yaml.serialize(value_node))
        except (yaml.YAMLError, ValueError) as exc:  # e.g. a date with month 13
            what = "is not a valid date" if key.endswith("_on") else "has an invalid value"
            raise self.fail(key, f"{key!r} {what} ({exc})") from None

    def text(self, key: str) -> str | None:
        if key not in self:
            return None
        value = self.scalar(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"{key!r} must be text")
        return value.strip()

    def texts(self, key: str) -> tuple[str, ...]:
        if key not in self:
            return ()
        value_node = self._fields[key][1]
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        out = []
        for item in items:
            value = yaml.safe_load(yaml.serialize(item)) if isinstance(item, yaml.Node) else None
            if not isinstance(value, str) or not value.strip():
                raise CarrierFileError(self.source, _line(item), f"{key!r} must list text values")
            out.append(value.strip())
        return tuple(out)

    def date(self, key: str) -> dt.date | None:
        if key not in self:
            return None
        value = self.scalar(key)
        if value is None:
            return None
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        raise self.fail(key, f"{key!r} must be a date like 2025-06-17, not {value!r}")

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self:
            return default
        value = self.scalar(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"{key} must be true or false, not {value!r}")
        return value

    def whole_number(self, key: str, low: int, high: int) -> int | None:
        if key not in self:
            return None
        value = self.scalar(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(
                key, f"{key} must be a whole number from {low} to {high}, not {value!r}"
            )
        return value

    def domain(self, key: str) -> str | None:
        value = self.text(key)
        if value is not None and not _DOMAIN_PATTERN.match(value):
            raise self.fail(key, f"{key!r} is not a domain name: {value!r}")
        return value.lower() if value else None

    def domain_list(self, key: str) -> tuple[str, ...]:
        values = self.texts(key)
        for value in values:
            if not _DOMAIN_PATTERN.match(value):
                raise self.fail(key, f"{key!r} lists {value!r}, not a domain name")
        return tuple(value.lower() for value in values)

    def countries(self, key: str) -> tuple[str, ...]:
        countries = tuple(c.upper() for c in self.texts(key))
        for country in countries:
            if not re.fullmatch(r"[A-Z]{2}", country):
                raise self.fail(key, f"country {country!r} is not an ISO code like US")
        return countries

    def identifier(self, key: str) -> str:
        value = self.text(key) or ""
        if not _ID_PATTERN.match(value):
            raise self.fail(key, f"id {value!r} must be lower-case letters, digits and _")
        return value

    def status(self, key: str, default: CarrierStatus | None = None) -> CarrierStatus:
        if key not in self and default is not None:
            return default
        text = self.text(key) or ""
        try:
            return CarrierStatus(text)
        except ValueError:
            allowed = ", ".join(s.value for s in CarrierStatus)
            raise self.fail(key, f"status {text!r} is not one of {allowed}") from None

    def regex(self, key: str, *, group: bool = False) -> re.Pattern[str] | None:
        text = self.text(key)
        if text is None:
            return None
        try:
            pattern = re.compile(text, re.IGNORECASE | re.MULTILINE)
        except re.error as exc:
            raise self.fail(key, f"{key!r} is not a valid regular expression: {exc}") from None
        if group and pattern.groups < 1:
            raise self.fail(key, f"{key!r} must capture the value in a group, e.g. (\\d+)")
        return pattern

    def section(self, key: str, what: str, keys: tuple[set[str], set[str]]) -> Fields | None:
        if key not in self:
            return None
        return Fields(self._fields[key][1], self.source, what, keys)

    def entries(
        self, key: str, parse: Callable[[Fields], T], what: str, keys: tuple[set[str], set[str]]
    ) -> list[tuple[T, int]]:
        """Each entry of the list under `key`, parsed, with its line."""
        if key not in self:
            return []
        node = self._fields[key][1]
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(key, f"`{key}:` must be a list")
        out = []
        for item in node.value:
            fields = Fields(item, self.source, f"each {what}", keys)
            out.append((parse(fields), fields.line))
        return out


# --- carriers ---------------------------------------------------------------------------------


def _footers(fields: Fields) -> tuple[str, ...]:
    footers = tuple(" ".join(text.lower().split()) for text in fields.texts("reply_footers"))
    for footer in footers:
        if not 8 <= len(footer) <= 200:
            raise fields.fail("reply_footers", f"reply footer {footer!r} must be 8-200 characters")
    return footers


def _carrier(fields: Fields) -> Carrier:
    carrier_id = fields.identifier("id")
    carrier = Carrier(
        id=carrier_id,
        name=fields.text("name") or carrier_id,
        countries=fields.countries("country"),
        aliases=fields.texts("aliases"),
        sms=fields.domain("sms"),
        mms=fields.domain("mms"),
        reply_domains=fields.domain_list("reply_domains"),
        reply_footers=_footers(fields),
        status=fields.status("status"),
        ends_on=fields.date("ends_on"),
        retired_on=fields.date("retired_on"),
        max_length=fields.whole_number("max_length", 40, 10_000),
        source=fields.text("source") or "",
        reported=fields.boolean("reported", False),
    )
    if carrier.status is CarrierStatus.RETIRED and carrier.ends_on is not None:
        raise fields.fail(None, f"{carrier_id}: a retired carrier takes retired_on")
    if carrier.retired_on is not None and carrier.status is not CarrierStatus.RETIRED:
        raise fields.fail(
            None, f"{carrier_id}: retired_on is set but status is {carrier.status.value}"
        )
    if carrier.status is not CarrierStatus.RETIRED and not (carrier.sms or carrier.mms):
        raise fields.fail(None, f"{carrier_id}: needs an sms or mms domain")
    return carrier


# --- providers --------------------------------------------------------------------------------


def _provider(fields: Fields) -> Provider:
    provider_id = fields.identifier("id")
    status = fields.status("status", CarrierStatus.ACTIVE)
    if status is CarrierStatus.ENDING:
        raise fields.fail("status", f"{provider_id}: a provider is active, unknown or retired")
    replies = fields.section("replies", f"{provider_id}'s replies", _REPLIES_KEYS)
    reports = fields.section("reports", f"{provider_id}'s reports", _REPORTS_KEYS)
    return Provider(
        id=provider_id,
        name=fields.text("name") or provider_id,
        countries=fields.countries("country"),
        address=_address(fields, provider_id),
        authorise_sender=fields.boolean("authorise_sender", False),
        max_length=fields.whole_number("max_length", 40, 10_000),
        status=status,
        source=fields.text("source") or "",
        replies=_replies(replies) if replies is not None else None,
        reports=_reports(reports) if reports is not None else None,
    )


def _address(fields: Fields, provider_id: str) -> str:
    """The address template: placeholders only in the local part, only known ones, and a
    real domain after the @."""
    template = fields.text("address") or ""
    names = set(re.findall(r"{([^{}]*)}", template))
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise fields.fail("address", f"{provider_id}: unknown placeholder {{{unknown[0]}}} in "
                          f"{template!r} (allowed: {allowed})")  # fmt: skip
    if not names:
        example = "{e164_digits}@sms.example.com"
        raise fields.fail(
            "address", f"{provider_id}: {template!r} needs a placeholder for the number ({example})"
        )
    local, at, domain = template.rpartition("@")
    if not at or not local or not _DOMAIN_PATTERN.match(domain):
        raise fields.fail("address", f"{provider_id}: {template!r} is not local-part@domain")
    try:
        sample = template.format_map({name: "0" for name in PLACEHOLDERS})
    except (ValueError, IndexError) as exc:  # a stray brace
        raise fields.fail("address", f"{provider_id}: {template!r}: {exc}") from None
    if not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=?^_`|~-]+", sample.rpartition("@")[0]):
        raise fields.fail(
            "address", f"{provider_id}: the local part of {template!r} has characters an "
            "address cannot carry"
        )  # fmt: skip
    return template


def _senders(fields: Fields, what: str) -> tuple[str, ...]:
    senders = fields.texts("from")
    for sender in senders:
        if "@" not in sender or any(c.isspace() for c in sender):
            raise fields.fail("from", f"{what}: {sender!r} is not an address pattern "
                              "such as *@sms.example.com")  # fmt: skip
    if not senders:
        raise fields.fail("from", f"{what}: list at least one sender address")
    return tuple(s.lower() for s in senders)


def _locator(parent: Fields, key: str) -> Locator:
    fields = parent.section(key, f"{parent.what}' {key}", _LOCATOR_KEYS)
    assert fields is not None  # required keys are checked before
    where_text = fields.text("in") or ""
    try:
        where = Where(where_text)
    except ValueError:
        raise fields.fail("in", f"{fields.what}: `in` must be from, subject or body, not "
                          f"{where_text!r}") from None  # fmt: skip
    number_text = fields.text("number") or NumberFormat.INTERNATIONAL.value
    try:
        number = NumberFormat(number_text)
    except ValueError:
        raise fields.fail("number", f"{fields.what}: `number` must be international or "
                          f"national, not {number_text!r}") from None  # fmt: skip
    label = fields.text("label")
    pattern = fields.regex("pattern", group=True)
    if label is not None and pattern is not None:
        raise fields.fail("pattern", f"{fields.what}: give a label or a pattern, not both")
    if where is Where.FROM and label is not None:
        raise fields.fail("label", f"{fields.what}: a sender address has no labels")
    return Locator(where, label, fields.texts("until"), pattern, number)


def _replies(fields: Fields) -> ReplyFormat:
    return ReplyFormat(
        senders=_senders(fields, fields.what),
        phone=_locator(fields, "phone"),
        text=_locator(fields, "text"),
        subject=fields.regex("subject"),
    )


def _reports(fields: Fields) -> ReportFormat:
    delivered, failed = fields.texts("delivered"), fields.texts("failed")
    if not delivered or not failed:
        raise fields.fail(None, f"{fields.what}: list the words of `delivered` and `failed`")
    return ReportFormat(
        senders=_senders(fields, fields.what),
        phone=_locator(fields, "phone"),
        status=_locator(fields, "status"),
        delivered=delivered,
        failed=failed,
        opted_out=fields.texts("opted_out"),
        reason=_locator(fields, "reason") if "reason" in fields else None,
        subject=fields.regex("subject"),
    )
