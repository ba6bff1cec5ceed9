"""How often the typed text of a carrier reply is read right, on tests/data/corpus/replies, against
a naive reader (the first text part as it is). The corpus is split by a hash of each file's name
into a development half (the one rules may be written against) and a hold-out half (never
looked at while writing them): a rule that helps only the first half is fitting, not reading.
Last line: one JSON object of the figures."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
from pathlib import Path

from gateway.domain.carriers_file import load_carriers
from gateway.domain.inbound import Identity, parse_mail

HERE = Path(__file__).resolve().parents[1]
CORPUS = HERE / "tests" / "data" / "corpus" / "replies"


def half(name: str) -> str:
    """The fixed split: the first hex digit of the name's SHA-256, even or odd."""
    even = int(hashlib.sha256(name.encode()).hexdigest()[0], 16) % 2 == 0
    return "development" if even else "holdout"


def naive(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            try:
                return str(part.get_content())
            except (LookupError, ValueError):
                return ""
    return ""


def measure() -> dict[str, object]:
    expected = json.loads((CORPUS / "expected.json").read_text())
    carriers = load_carriers((HERE / "carriers.yaml").read_text())
    identity = Identity(frozenset({"dispatch@example.com"}), "example.com")
    counts = {h: {"texts": 0, "right": 0, "naive_right": 0} for h in ("development", "holdout")}
    for name, truth in sorted(expected.items()):
        if truth["text"] is None:
            continue  # the corpus does not judge this one's text
        raw = (CORPUS / name).read_bytes()
        ours = " ".join(parse_mail(raw, carriers, identity).text.split())
        theirs = " ".join(naive(raw).split())
        row = counts[half(name)]
        row["texts"] += 1
        row["right"] += ours == truth["text"]
        row["naive_right"] += theirs == truth["text"]
    figures: dict[str, object] = {"bench": "reply_accuracy"}
    for name, row in counts.items():
        figures[f"{name}_texts"] = row["texts"]
        figures[f"{name}_right"] = round(row["right"] / max(row["texts"], 1), 3)
        figures[f"{name}_naive_right"] = round(row["naive_right"] / max(row["texts"], 1), 3)
    return figures


if __name__ == "__main__":
    print(json.dumps(measure()))
