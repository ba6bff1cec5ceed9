"""Which gateway a text goes through: the contact's carrier while its gateway is open, else the
email-to-SMS provider configured for the recipient's country, else nowhere (with the reason).

A carrier that announced its closing date is left for the provider `leave_ending_days` before
it, so texts do not start vanishing on the day itself; one with no date announced is left at
once when a provider can take it. Without a provider an ending carrier is still mailed, with a
warning, because until the date it still works.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.domain.carriers import (
    Carrier,
    CarrierBook,
    CarrierStatus,
    GatewayAddress,
    Unreachable,
    describe_status,
    resolve_gateway,
)
from gateway.domain.phone import Phone
from gateway.domain.providers import Provider

NO_PROVIDER_HINT = "configure an email-to-SMS provider ([gateways] provider) to reach it"


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """The `[gateways]` settings."""

    default: str | None = None  # provider id for every country
    by_country: Mapping[str, str] = field(default_factory=dict)  # {"CA": "id"}
    leave_ending_days: int = 30

    def provider_id(self, region: str | None) -> str | None:
        return self.by_country.get(region or "", self.default)


def provider_for(
    region: str | None, book: CarrierBook, plan: ProviderPlan
) -> tuple[Provider | None, str]:
    """The provider configured for `region`, or (None, why there is none, in words)."""
    provider_id = plan.provider_id(region)
    if provider_id is None:
        return None, NO_PROVIDER_HINT
    provider = book.provider(provider_id)
    if provider is None:
        return None, f"the configured provider {provider_id!r} is not in carriers.yaml"
    if not provider.is_open():
        return None, f"the configured provider {provider.name} is retired"
    if not provider.serves(region):
        return None, f"the configured provider {provider.name} does not serve {region}"
    return provider, ""


def leaving(carrier: Carrier, today: dt.date, days: int) -> str | None:
    """Why texts should leave an ending carrier now (in words), or None while it may be used."""
    if carrier.status_on(today) is not CarrierStatus.ENDING:
        return None
    date = carrier.closing_date()
    if date is not None and (date - today).days > days:
        return None
    return describe_status(carrier, today)


def choose_gateway(
    phone: Phone, carrier: Carrier | None, book: CarrierBook, plan: ProviderPlan, today: dt.date
) -> GatewayAddress | Unreachable:
    """Where a text to `phone` goes on `today`, and why; or why it cannot go."""
    direct = resolve_gateway(phone, carrier, today)
    provider, none_because = provider_for(phone.region, book, plan)
    if isinstance(direct, GatewayAddress):
        assert direct.carrier is not None
        left = leaving(direct.carrier, today, plan.leave_ending_days)
        if left is None or provider is None:
            date = direct.carrier.closing_date()
            if provider is not None and direct.warning and date is not None:
                move = date - dt.timedelta(days=plan.leave_ending_days)
                warning = f"{direct.warning}; texts move to {provider.name} from {move}"
                return GatewayAddress(
                    direct.address, direct.carrier, direct.gateway, warning,
                    why=f"{direct.why}; moves to {provider.name} from {move}",
                )  # fmt: skip
            return direct
        return _via(provider, phone, f"{left}, so texts go through {provider.name}")
    if provider is not None:
        return _via(provider, phone, f"{direct.message}; sent through {provider.name}")
    return Unreachable(direct.reason, f"{direct.message}; {none_because}")


def _via(provider: Provider, phone: Phone, why: str) -> GatewayAddress:
    return GatewayAddress(
        provider.address_for(phone),
        None,
        provider.domain,
        None,
        provider=provider,
        why=f"{why} ({provider.id}): {provider.domain}",
    )


WARN_BEFORE = dt.timedelta(days=60)  # how far ahead a closing gateway is worth a warning


@dataclass(frozen=True, slots=True)
class AtRisk:
    """Contacts whose carrier's gateway is closed or closes within WARN_BEFORE."""

    carrier: Carrier
    contacts: int
    provider: Provider | None  # who takes their texts over; None: nobody, they go unsent

    def describe(self, today: dt.date) -> str:
        who = f"{self.contacts} contact{'s' if self.contacts != 1 else ''}"
        status = describe_status(self.carrier, today)
        if self.provider is not None:
            return f"{who}: {status}; their texts go through {self.provider.name}"
        return f"{who}: {status}"


def contacts_at_risk(
    counts: Mapping[str, int], book: CarrierBook, plan: ProviderPlan, today: dt.date
) -> list[AtRisk]:
    """From contacts per carrier id, those on a retired gateway or one closing within
    WARN_BEFORE, with the provider that reaches them (the carrier's first country decides)."""
    found = []
    for carrier_id, count in sorted(counts.items()):
        carrier = book.find(carrier_id)
        if carrier is None or count <= 0:
            continue
        status = carrier.status_on(today)
        closing = carrier.closing_date()
        ending_soon = status is CarrierStatus.ENDING and (
            closing is None or closing - today <= WARN_BEFORE
        )
        if status is not CarrierStatus.RETIRED and not ending_soon:
            continue
        region = carrier.countries[0] if carrier.countries else None
        provider, _ = provider_for(region, book, plan)
        found.append(AtRisk(carrier, count, provider))
    return found
