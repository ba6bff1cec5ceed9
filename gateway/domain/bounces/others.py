"""Reports that are not failures: feedback reports (RFC 5965 complaints) and auto-replies
(RFC 3834, out-of-office notices)."""

from __future__ import annotations

import email.message
import email.policy

from gateway.domain.bounces.dsn import status_blocks
from gateway.domain.bounces.mime import find_part, header_text
from gateway.domain.bounces.recipient import Report


def feedback(message: email.message.Message) -> Report:
    part = find_part(message, "message/feedback-report")
    blocks = status_blocks(part) if part is not None else []
    kind = next((b["feedback-type"] for b in blocks if b.get("feedback-type")), None)
    return Report("feedback", feedback_type=kind.lower() if kind else None)


def is_auto_reply(message: email.message.Message) -> bool:
    auto = str(message.get("Auto-Submitted", "")).lower()
    if auto.startswith("auto-replied"):
        return True
    subject = header_text(message, "Subject").lower()
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    return any(
        word in subject
        for word in ("out of office", "out of the office", "automatic reply", "auto-reply",
                     "autoreply", "vacation", "abwesenheit", "absence")
    )  # fmt: skip
