"""The carrier table as people read it (status on a date, closing dates) and each gateway's
health over the last days: what `gateway carriers`, the API and the dashboard show."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine

from gateway.services.runtime import Runtime
from gateway.store.inbox import gateway_counts


def carrier_rows(runtime: Runtime, today: dt.date) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "name": c.name,
            "kind": c.kind,
            "countries": list(c.countries),
            "sms": c.sms,
            "mms": c.mms,
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


def health_rows(runtime: Runtime, engine: Engine, now: dt.datetime) -> list[dict[str, Any]]:
    """Per gateway domain: sent, bounced and replied over 7 and 30 days; a rising bounce rate
    is how a closing gateway shows before anyone announces it."""
    week = gateway_counts(engine, now - dt.timedelta(days=7))
    month = gateway_counts(engine, now - dt.timedelta(days=30))
    rows = []
    for domain in sorted(month):
        carrier = runtime.carriers.by_domain(domain)
        row: dict[str, Any] = {"gateway": domain, "carrier": carrier.id if carrier else None}
        for label, counts in (("7d", week.get(domain, {})), ("30d", month[domain])):
            sent, bounced = counts.get("sent", 0), counts.get("bounced", 0)
            row[f"sent_{label}"] = sent
            row[f"bounced_{label}"] = bounced
            row[f"replied_{label}"] = counts.get("replied", 0)
            row[f"bounce_rate_{label}"] = round(bounced / sent, 4) if sent else None
        rows.append(row)
    return rows
