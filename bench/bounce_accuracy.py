"""Accuracy of the bounce reader on ../shared/corpus/bounces (real reports from many systems),
measured the way issue 5 states its bar. Last line: one JSON object of the figures."""

from __future__ import annotations

import argparse
import email
import email.policy
import json
from pathlib import Path

from gateway.domain.bounces import read_report

NOT_FAILURES = {"feedback", "vacation", "delivered"}
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus" / "bounces"


def measure(corpus: Path, show: bool = False) -> dict[str, object]:
    expected = json.loads((corpus / "expected.json").read_text())
    failures = detected = rows = hard_right = status_rows = status_right = 0
    others = others_wrong = 0
    for name, truth in sorted(expected.items()):
        raw = (corpus / "mail" / name).read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        report = read_report(message)
        found = list(report.recipients) if report and report.kind == "bounce" else []
        if all(row[2] in NOT_FAILURES for row in truth):
            others += 1
            if found:
                others_wrong += 1
                if show:
                    print(f"{name}: a {truth[0][2]} called a failure")
            continue
        failures += 1
        detected += bool(found)
        if show and not found:
            print(f"{name}: no failed recipient found ({report.kind if report else None})")
        for index, row in enumerate(truth):
            ours = found[index] if index < len(found) else (found[-1] if found else None)
            rows += 1
            if ours is not None and ours.permanent == row[3]:
                hard_right += 1
            elif show and ours is not None:
                print(
                    f"{name}: hard {ours.permanent} ({ours.reason}), expected {row[3]} ({row[2]}) {ours.diagnostic[:90]!r}"
                )
            if row[0]:
                status_rows += 1
                if ours is not None and ours.status == row[0]:
                    status_right += 1
                elif show:
                    print(f"{name}: status {ours.status if ours else None}, expected {row[0]}")
    return {
        "bench": "bounce_accuracy",
        "reports": len(expected),
        "failure_reports": failures,
        "detected": round(detected / failures, 4),
        "hard_soft_right": round(hard_right / rows, 4),
        "status_right": round(status_right / status_rows, 4),
        "non_failures": others,
        "non_failures_called_failures": others_wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--show", action="store_true", help="print every miss")
    args = parser.parse_args()
    print(json.dumps(measure(args.corpus, args.show)))


if __name__ == "__main__":
    main()
