"""Carrier gateways: the operator-edited table, and which address a text goes to.

The table comes from `carriers.yaml` (read by carriers_file); the email-to-SMS providers that
take over from closed gateways are in providers, and the choice between them in gateways.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from gateway.domain.phone import Phone

if TYPE_CHECKING:
    from gateway.domain.providers import Provider


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
    # Where a footer the carrier appends to its phones' replies begins (the start of a line,
    # case ignored): from there on it is not what the person typed.
    reply_footers: tuple[str, ...] = ()

    @property
    def brand_words(self) -> tuple[str, ...]:
        """How a footer names the carrier: its name, aliases and domains, lower case."""
        names = (self.name, *self.aliases, *self.domains)
        return tuple(dict.fromkeys(n.lower() for n in names if len(n) >= 3))

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
    """Every carrier by id and alias, and the email-to-SMS providers by id."""

    def __init__(self, carriers: Iterable[Carrier], providers: Iterable[Provider] = ()) -> None:
        self._carriers = tuple(carriers)
        self.providers = tuple(providers)
        self._providers = {provider.id: provider for provider in self.providers}
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

    def provider(self, provider_id: str) -> Provider | None:
        return self._providers.get(provider_id)

    def gateway_of(self, domain: str) -> Carrier | Provider | None:
        """The carrier or provider a gateway domain we mailed belongs to."""
        domain = domain.strip().rstrip(".").lower()
        carrier = self._by_domain.get(domain)
        if carrier is not None:
            return carrier
        return next((p for p in self.providers if p.domain == domain), None)


# --- resolving a phone to its gateway address -------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where a text goes: a carrier's own gateway, or an email-to-SMS provider."""

    address: str
    carrier: Carrier | None  # the contact's carrier, when its own gateway is mailed
    gateway: str  # the domain mailed
    warning: str | None  # set when the carrier is closing its gateway
    provider: Provider | None = None  # set when a provider is mailed instead
    why: str = ""  # the choice in words, stored with the text

    @property
    def gateway_id(self) -> str:
        entry = self.provider or self.carrier
        return entry.id if entry is not None else self.gateway

    @property
    def max_length(self) -> int | None:
        entry = self.provider or self.carrier
        return entry.max_length if entry is not None else None


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
    why = f"contact's carrier {carrier.name} ({carrier.id}): {domain}"
    if warning:
        why += f"; warning: {warning}"
    return GatewayAddress(f"{phone.national}@{domain}", carrier, domain, warning, why=why)
