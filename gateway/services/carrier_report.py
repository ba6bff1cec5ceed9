"""The gateway table as people read it (carriers' status on a date and closing dates, the
providers), each gateway's health over the last days, and the contacts whose carrier is closing:
what `gateway carriers`, `gateway doctor`, the API and the dashboard show."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine

from gateway.domain.gateways import AtRisk, contacts_at_risk
from gateway.services.runtime import Runtime
from gateway.store.inbox import contacts_per_carrier, gateway_counts


def carrier_rows(runtime: Runtime, today: dt.date) -> list[dict[str, Any]]:
    """Every carrier, then every provider, with the same keys (a provider has `address` and no
    sms/mms; `configured` says where the settings use it)."""
    rows: list[dict[str, Any]] = [
        {
            "id": c.id,
            "name": c.name,
            "kind": c.kind,
            "countries": list(c.countries),
            "sms": c.sms,
            "mms": c.mms,
            "address": None,
            "status": c.status_on(today).value,
            "ends_on": c.ends_on.isoformat() if c.ends_on else None,
            "retired_on": c.retired_on.isoformat() if c.retired_on else None,
            "reported": c.reported,
            "max_length": c.max_length,
            "aliases": list(c.aliases),
            "source": c.source,
        }
        for c in runtime.carriers
    ]
    gateways = runtime.settings.gateways
    for p in runtime.carriers.providers:
        configured = ["default"] if gateways.provider == p.id else []
        configured += sorted(c for c, i in gateways.providers_by_country.items() if i == p.id)
        rows.append(
            {
                "id": p.id,
                "name": p.name,
                "kind": p.kind,
                "countries": list(p.countries),
                "sms": None,
                "mms": None,
                "address": p.address,
                "status": p.status.value,
                "ends_on": None,
                "retired_on": None,
                "reported": False,
                "max_length": p.max_length,
                "aliases": [],
                "source": p.source,
                "authorise_sender": p.authorise_sender,
                "reads_replies": p.replies is not None,
                "reads_reports": p.reports is not None,
                "configured": configured,
            }
        )
    return rows


def at_risk(runtime: Runtime, engine: Engine, today: dt.date) -> list[AtRisk]:
    """Contacts on carriers that are closed or close within 60 days, and who reaches them."""
    counts = contacts_per_carrier(engine)
    return contacts_at_risk(counts, runtime.carriers, runtime.provider_plan, today)


def health_rows(runtime: Runtime, engine: Engine, now: dt.datetime) -> list[dict[str, Any]]:
    """Per gateway domain: sent, bounced and replied over 7 and 30 days; a rising bounce rate
    is how a closing gateway shows before anyone announces it."""
    week = gateway_counts(engine, now - dt.timedelta(days=7))
    month = gateway_counts(engine, now - dt.timedelta(days=30))
    rows = []
    for domain in sorted(month):
        entry = runtime.carriers.gateway_of(domain)
        row: dict[str, Any] = {
            "gateway": domain,
            "carrier": entry.id if entry else None,  # the carrier's or the provider's id
            "kind": entry.kind if entry else None,
        }
        for label, counts in (("7d", week.get(domain, {})), ("30d", month[domain])):
            sent, bounced = counts.get("sent", 0), counts.get("bounced", 0)
            row[f"sent_{label}"] = sent
            row[f"bounced_{label}"] = bounced
            row[f"replied_{label}"] = counts.get("replied", 0)
            row[f"bounce_rate_{label}"] = round(bounced / sent, 4) if sent else None
        rows.append(row)
    return rows
