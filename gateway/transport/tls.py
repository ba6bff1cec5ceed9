"""The TLS every client of the gateway speaks: SMTP, IMAP and the SMS services' HTTPS."""

from __future__ import annotations

import ssl
from pathlib import Path


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later, the server's certificate checked against its name and the system's
    authorities, or `ca_file`'s (a company's private authority)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
