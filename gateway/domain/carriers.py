"""Carrier gateways: the operator-edited table, and which address a text goes to.

The table comes from `carriers.yaml`. Parsing it is pure (text in, data out), so it lives here
with the rules that read it; the shell only finds and reads the file.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import yaml

from gateway.domain.phone import Phone


class CarrierStatus(StrEnum):
    ACTIVE = "active"
    ENDING = "ending"
    RETIRED = "retired"
    UNKNOWN = "unknown"  # nothing confirms it either way: used, since we do not know it is closed


@dataclass(frozen=True, slots=True)
class Carrier:
    id: str
    name: str
    countries: tuple[str, ...]
    aliases: tuple[str, ...]
    sms: str | None
    mms: str | None
    status: CarrierStatus
    ends_on: dt.date | None
    retired_on: dt.date | None
    max_length: int | None  # in GSM-7 characters; see sms.part_limit for UCS-2
    source: str
    reported: bool  # the dates come from reports, not from the carrier itself
    kind: str = "carrier"
    # Domains its phones' replies come from besides sms and mms (older or MMS-only systems):
    # recognised on inbound mail, never mailed.
    reply_domains: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain a reply from one of its phones may come from."""
        own = tuple(d for d in (self.sms, self.mms) if d)
        return own + tuple(d for d in self.reply_domains if d not in own)

    def status_on(self, today: dt.date) -> CarrierStatus:
        """The status that holds on `today`: a carrier past its closing date is retired."""
        if self.status is CarrierStatus.RETIRED:
            return CarrierStatus.RETIRED
        if self.ends_on is not None:
            return CarrierStatus.RETIRED if today >= self.ends_on else CarrierStatus.ENDING
        return self.status

    def closing_date(self) -> dt.date | None:
        return self.retired_on or self.ends_on


class CarrierFileError(ValueError):
    """carriers.yaml is wrong; the message names the file and line at fault."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


def lookup_key(name: str) -> str:
    """How ids and aliases are compared: case, spaces and punctuation do not matter."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


class CarrierBook:
    """Every carrier by id and alias."""

    def __init__(self, carriers: Iterable[Carrier]) -> None:
        self._carriers = tuple(carriers)
        self._by_key: dict[str, Carrier] = {}
        for carrier in self._carriers:
            for name in (carrier.id, carrier.name, *carrier.aliases):
                self._by_key.setdefault(lookup_key(name), carrier)
        # Several carriers may share a gateway (an MVNO on its host's): the first listed owns it.
        self._by_domain: dict[str, Carrier] = {}
        for carrier in self._carriers:
            for domain in carrier.domains:
                self._by_domain.setdefault(domain, carrier)

    def __iter__(self) -> Iterator[Carrier]:
        return iter(self._carriers)

    def __len__(self) -> int:
        return len(self._carriers)

    def find(self, name: str) -> Carrier | None:
        """The carrier a dispatcher meant by `name` (an id, its name or an alias)."""
        return self._by_key.get(lookup_key(name))

    def by_domain(self, domain: str) -> Carrier | None:
        """The carrier whose phones send mail from `domain`, if it is a known gateway domain."""
        return self._by_domain.get(domain.strip().rstrip(".").lower())


# --- resolving a phone to its gateway address -------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    address: str
    carrier: Carrier
    gateway: str  # the domain mailed
    warning: str | None  # set when the carrier is closing its gateway


@dataclass(frozen=True, slots=True)
class Unreachable:
    reason: str  # machine code stored with a suppressed message, e.g. carrier_retired
    message: str  # the same in words


def describe_status(carrier: Carrier, today: dt.date) -> str:
    """One sentence on a carrier's gateway, as a dispatcher would want it said."""
    status = carrier.status_on(today)
    date = carrier.closing_date()
    hedge = "reportedly " if carrier.reported else ""
    if status is CarrierStatus.RETIRED:
        if date is None:
            return f"{carrier.name} has {hedge}closed its email-to-SMS gateway"
        return f"{carrier.name} {hedge}closed its email-to-SMS gateway on {date.isoformat()}"
    if status is CarrierStatus.ENDING:
        when = f"on {date.isoformat()}" if date else "soon (no date announced)"
        return f"{carrier.name} {hedge}closes its email-to-SMS gateway {when}"
    if status is CarrierStatus.UNKNOWN:
        return f"nothing confirms whether {carrier.name}'s email-to-SMS gateway still works"
    return f"{carrier.name}'s email-to-SMS gateway is active"


def resolve_gateway(
    phone: Phone, carrier: Carrier | None, today: dt.date
) -> GatewayAddress | Unreachable:
    """Where a text to `phone` goes on `today`, or why it cannot go anywhere.

    The carrier is the contact's, never guessed from the number: numbers move between carriers,
    and mailing every gateway in the hope one delivers is how a sender gets blocked.
    """
    if carrier is None:
        return Unreachable(
            "carrier_unknown",
            f"the carrier of {phone.e164} is not known; set it on the contact (--carrier)",
        )
    status = carrier.status_on(today)
    if status is CarrierStatus.RETIRED:
        return Unreachable("carrier_retired", describe_status(carrier, today))
    domain = carrier.sms or carrier.mms
    if domain is None:
        return Unreachable("carrier_no_gateway", f"{carrier.name} has no email-to-SMS gateway")
    if phone.region is not None and carrier.countries and phone.region not in carrier.countries:
        return Unreachable(
            "carrier_country",
            f"{carrier.name} serves {', '.join(carrier.countries)}, "
            f"but {phone.e164} is a number of {phone.region}",
        )
    warning = describe_status(carrier, today) if status is CarrierStatus.ENDING else None
    return GatewayAddress(f"{phone.national}@{domain}", carrier, domain, warning)


# --- loading carriers.yaml --------------------------------------------------------------------

_REQUIRED = {"id", "name", "country", "status", "source"}
_OPTIONAL = {
    "aliases", "sms", "mms", "reply_domains", "ends_on", "retired_on", "max_length", "reported",
}  # fmt: skip
_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DOMAIN_PATTERN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE
)


def load_carriers(text: str, source: str = "carriers.yaml") -> CarrierBook:
    """Parse and validate carriers.yaml; every problem is reported with its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise CarrierFileError(source, line, f"not valid YAML: {problem}") from None
    if not isinstance(root, yaml.MappingNode):
        raise CarrierFileError(source, _line(root), "expected a mapping with a `carriers:` list")
    top = _mapping(root, source)
    unknown = set(top) - {"carriers"}
    if unknown:
        key = sorted(unknown)[0]
        raise CarrierFileError(source, _line(top[key][0]), f"unknown top-level key {key!r}")
    if "carriers" not in top:
        raise CarrierFileError(source, _line(root), "missing the `carriers:` list")
    entries = top["carriers"][1]
    if not isinstance(entries, yaml.SequenceNode):
        raise CarrierFileError(source, _line(entries), "`carriers:` must be a list")

    carriers: list[Carrier] = []
    seen_ids: dict[str, int] = {}
    seen_names: dict[str, tuple[str, int]] = {}
    for node in entries.value:
        carrier = _carrier(node, source)
        line = _line(node) or 0
        if carrier.id in seen_ids:
            raise CarrierFileError(
                source, line, f"duplicate id {carrier.id!r} (first on line {seen_ids[carrier.id]})"
            )
        seen_ids[carrier.id] = line
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
        carriers.append(carrier)
    return CarrierBook(carriers)


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _mapping(node: yaml.MappingNode, source: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise CarrierFileError(source, _line(key_node), "keys must be plain words")
        key = str(key_node.value)
        if key in out:
            raise CarrierFileError(source, _line(key_node), f"key {key!r} is given twice")
        out[key] = (key_node, value_node)
    return out


def _carrier(node: yaml.Node, source: str) -> Carrier:
    if not isinstance(node, yaml.MappingNode):
        raise CarrierFileError(source, _line(node), "each carrier must be a mapping of keys")
    fields = _mapping(node, source)
    unknown = set(fields) - _REQUIRED - _OPTIONAL
    if unknown:
        key = sorted(unknown)[0]
        allowed = ", ".join(sorted(_REQUIRED | _OPTIONAL))
        raise CarrierFileError(
            source, _line(fields[key][0]), f"unknown key {key!r} (allowed: {allowed})"
        )
    missing = _REQUIRED - set(fields)
    if missing:
        raise CarrierFileError(source, _line(node), f"missing required key {sorted(missing)[0]!r}")

    def scalar(key: str) -> tuple[object, int | None]:
        value_node = fields[key][1]
        if not isinstance(value_node, yaml.ScalarNode):
            raise CarrierFileError(source, _line(value_node), f"{key!r} must be a single value")
        try:
            value = yaml.safe_load(yaml.serialize(value_node))
        except (yaml.YAMLError, ValueError) as exc:  # e.g. a date with month 13
            what = "is not a valid date" if key.endswith("_on") else "has an invalid value"
            raise CarrierFileError(source, _line(value_node), f"{key!r} {what} ({exc})") from None
        return value, _line(value_node)

    def text(key: str, *, optional: bool = False) -> str | None:
        if key not in fields:
            return None
        value, line = scalar(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise CarrierFileError(source, line, f"{key!r} must be text")
        return value.strip()

    def texts(key: str) -> tuple[str, ...]:
        if key not in fields:
            return ()
        value_node = fields[key][1]
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        out = []
        for item in items:
            value = yaml.safe_load(yaml.serialize(item)) if isinstance(item, yaml.Node) else None
            if not isinstance(value, str) or not value.strip():
                raise CarrierFileError(source, _line(item), f"{key!r} must list text values")
            out.append(value.strip())
        return tuple(out)

    def date(key: str) -> dt.date | None:
        if key not in fields:
            return None
        value, line = scalar(key)
        if value is None:
            return None
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        raise CarrierFileError(
            source, line, f"{key!r} must be a date like 2025-06-17, not {value!r}"
        )

    def domain(key: str) -> str | None:
        value = text(key, optional=True)
        if value is not None and not _DOMAIN_PATTERN.match(value):
            raise CarrierFileError(
                source, _line(fields[key][1]), f"{key!r} is not a domain name: {value!r}"
            )
        return value.lower() if value else None

    def domain_list(key: str) -> tuple[str, ...]:
        values = texts(key)
        for value in values:
            if not _DOMAIN_PATTERN.match(value):
                raise CarrierFileError(
                    source, _line(fields[key][1]), f"{key!r} lists {value!r}, not a domain name"
                )
        return tuple(value.lower() for value in values)

    carrier_id = text("id")
    assert carrier_id is not None
    if not _ID_PATTERN.match(carrier_id):
        raise CarrierFileError(
            source,
            _line(fields["id"][1]),
            f"id {carrier_id!r} must be lower-case letters, digits and _",
        )
    status_text = text("status") or ""
    try:
        status = CarrierStatus(status_text)
    except ValueError:
        allowed = ", ".join(s.value for s in CarrierStatus)
        raise CarrierFileError(
            source, _line(fields["status"][1]), f"status {status_text!r} is not one of {allowed}"
        ) from None
    max_length: int | None = None
    if "max_length" in fields:
        value, line = scalar("max_length")
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or not 40 <= value <= 10_000:
                raise CarrierFileError(
                    source,
                    line,
                    f"max_length must be a whole number from 40 to 10000, not {value!r}",
                )
            max_length = value
    reported = False
    if "reported" in fields:
        value, line = scalar("reported")
        if not isinstance(value, bool):
            raise CarrierFileError(source, line, f"reported must be true or false, not {value!r}")
        reported = value
    countries = tuple(c.upper() for c in texts("country"))
    for country in countries:
        if not re.fullmatch(r"[A-Z]{2}", country):
            raise CarrierFileError(
                source,
                _line(fields["country"][1]),
                f"country {country!r} is not an ISO code like US",
            )

    carrier = Carrier(
        id=carrier_id,
        name=text("name") or carrier_id,
        countries=countries,
        aliases=texts("aliases"),
        sms=domain("sms"),
        mms=domain("mms"),
        reply_domains=domain_list("reply_domains"),
        status=status,
        ends_on=date("ends_on"),
        retired_on=date("retired_on"),
        max_length=max_length,
        source=text("source") or "",
        reported=reported,
    )
    line = _line(node)
    if carrier.status is CarrierStatus.RETIRED and carrier.ends_on is not None:
        raise CarrierFileError(source, line, f"{carrier_id}: a retired carrier takes retired_on")
    if carrier.retired_on is not None and carrier.status is not CarrierStatus.RETIRED:
        raise CarrierFileError(
            source, line, f"{carrier_id}: retired_on is set but status is {status.value}"
        )
    if carrier.status is not CarrierStatus.RETIRED and not (carrier.sms or carrier.mms):
        raise CarrierFileError(source, line, f"{carrier_id}: needs an sms or mms domain")
    return carrier
