"""Accuracy of the bounce reader on ../shared/corpus/bounces (real reports from many systems),
measured the way issue 5 states its bar, on a fixed split of the corpus: a development half
that rules may be written against, and a hold-out half that they must not be (issue 23). A
change is kept only if the hold-out figures improve too. The same figures follow for
bench/data/bounces-unseen ("unseen"), reports from the same collection gathered after the
corpus's hold-out had been read. Its split is by what has been read: the reports listed in its
read.txt (whose misses someone has looked at) are its development half, the rest its hold-out.
The same again for bench/data/bounces-bounceparser ("bounceparser"), reports from another
collection (Mail::DeliveryStatus::BounceParser's tests), labelled by other people: it judges
hard/soft and finding the failed recipient, not status (its labels state none). And for
bench/data/bounces-mailman ("mailman"), a third collection (GNU Mailman's bounce tests): its
labels name the failed addresses, so it judges whether the reader found those addresses, and
hard/soft only where they say it (a delay warning is not a bad address). And for
bench/data/bounces-bounce-email ("bounce_email"), a fourth (the bounce_email library's tests),
whose labels say only which reports are failures: it judges detection, and non-failures called
failures. Last line: one JSON object.

The split is by a hash of the file name, so it never changes and no one chooses it.

The corpus's expectations use Sisimai's vocabulary, which gives a report that states no status
an invented one in the x.0.9NN range (one per reason). The product never invents a code (a
report that states none gives none); to compare with the expectations, this benchmark maps the
reader's reason to Sisimai's code where the reader gives no status. That mapping lives here
and nowhere else.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from gateway.domain.bounces import Recipient, read_report

# "not_a_bounce": bounceparser's and mailman's label for notices that are no failure.
NOT_FAILURES = {"feedback", "vacation", "delivered", "not_a_bounce"}
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus" / "bounces"
# Reports from the same collection that no rule was written against (see its README): measured
# apart, with its own halves.
UNSEEN = Path(__file__).resolve().parent / "data" / "bounces-unseen"
# Reports from a second collection, with its maintainers' labels (see its README).
BOUNCEPARSER = Path(__file__).resolve().parent / "data" / "bounces-bounceparser"
# A third, whose labels name the failed addresses (see its README).
MAILMAN = Path(__file__).resolve().parent / "data" / "bounces-mailman"
# A fourth, whose labels say only which are failure reports and which are not (see its README).
BOUNCE_EMAIL = Path(__file__).resolve().parent / "data" / "bounces-bounce-email"
# The sets measured beside the corpus, each with its own halves, by the name the output uses.
FURTHER = {
    "unseen": UNSEEN,
    "bounceparser": BOUNCEPARSER,
    "mailman": MAILMAN,
    "bounce_email": BOUNCE_EMAIL,
}
HALVES = ("development", "hold_out")

# Sisimai's invented status for each reason, where a report states none: x.0.9NN.
SISIMAI_STATUS = {
    "undefined": "900", "blocked": "901", "onhold": "901", "norelaying": "909",
    "filtered": "910", "userunknown": "911", "hostunknown": "912", "rejected": "918",
    "suspend": "921", "mailboxfull": "922", "systemerror": "930", "notaccept": "932",
    "mesgtoobig": "934", "mailererror": "939", "networkerror": "944", "expired": "947",
    "spamdetected": "980",
}  # fmt: skip
# Sisimai keeps the class of temporary failures given up on (4.0.947) from these words.
INVENTED = re.compile(r"[45]\.0\.9\d\d")
TEMPORARY_WORDS = ("has been delayed", "warning message only", "retry timeout exceeded")


def half_of(name: str) -> str:
    """The half a corpus file belongs to: fixed by its name."""
    return HALVES[hashlib.sha256(name.encode()).digest()[0] & 1]


def sisimai_status(found: Recipient) -> str:
    """The reader's status in the corpus's vocabulary: its own where the report stated one."""
    if found.status or found.reason not in SISIMAI_STATUS:
        return found.status
    lowered = found.diagnostic.lower()
    temporary = found.smtp_code.startswith("4") or any(w in lowered for w in TEMPORARY_WORDS)
    return f"{'4' if temporary else '5'}.0.{SISIMAI_STATUS[found.reason]}"


def _share(right: int, rows: int) -> float | None:
    return round(right / rows, 4) if rows else None


class Tally:
    def __init__(self) -> None:
        self.reports = self.failures = self.detected = self.rows = self.hard_right = 0
        self.status_rows = self.status_right = self.others = self.others_wrong = 0
        self.stated_rows = self.stated_right = 0
        self.named = self.named_right = 0
        self.good_called_bad = self.bad_called_good = 0

    def figures(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "failure_reports": self.failures,
            # None where there is nothing to judge: a half with no failure reports, a set whose
            # labels state no status.
            "detected": _share(self.detected, self.failures),
            "hard_soft_right": _share(self.hard_right, self.rows),
            "status_right": _share(self.status_right, self.status_rows),
            # Of the rows whose report states a code (not one of Sisimai's x.0.9NN): the
            # reader's own code, with no mapping.
            "stated_status_right": _share(self.stated_right, self.stated_rows),
            # Of the failure reports whose labels name the failed addresses: the reader found
            # exactly those (case aside).
            "addresses_right": _share(self.named_right, self.named),
            # The two ways hard/soft goes wrong, which do not cost the same: an address called
            # bad that is fine stops texts to a working number (and sends a dispatcher to mend
            # it); a bad one called fine costs retries until it fails again.
            "good_called_bad": self.good_called_bad,
            "bad_called_good": self.bad_called_good,
            "non_failures": self.others,
            "non_failures_called_failures": self.others_wrong,
        }


def read_list(corpus: Path) -> frozenset[str] | None:
    """The reports of `corpus` whose misses have been read, when it keeps that list."""
    listed = corpus / "read.txt"
    if not listed.exists():
        return None
    lines = (line.split("#")[0].strip() for line in listed.read_text().splitlines())
    return frozenset(line for line in lines if line)


def measure(corpus: Path, show: bool = False, only: str | None = None) -> dict[str, Any]:
    """The figures on each half and on the whole corpus. `show` prints every miss (of the
    half `only`, when given: read the development half's misses, never the hold-out's)."""
    expected = json.loads((corpus / "expected.json").read_text())
    read = read_list(corpus)
    tallies = {half: Tally() for half in HALVES}
    for name, truth in sorted(expected.items()):
        half = half_of(name) if read is None else HALVES[name not in read]
        tally = tallies[half]
        say = show and (only is None or only == half)
        tally.reports += 1
        raw = (corpus / "mail" / name).read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        report = read_report(message)
        found = list(report.recipients) if report and report.kind == "bounce" else []
        if all(row[2] in NOT_FAILURES for row in truth):
            tally.others += 1
            if found:
                tally.others_wrong += 1
                if say:
                    print(f"{name}: a {truth[0][2]} called a failure")
            continue
        tally.failures += 1
        tally.detected += bool(found)
        if say and not found:
            print(f"{name}: no failed recipient found ({report.kind if report else None})")
        # A row's fifth field, where a set has it, is the failed address its labeller named.
        named = {row[4].lower() for row in truth if len(row) > 4 and row[4]}
        if named:
            tally.named += 1
            ours_named = {r.address.lower() for r in found}
            tally.named_right += ours_named == named
            if say and ours_named != named:
                print(f"{name}: addresses {sorted(ours_named)}, expected {sorted(named)}")
        for index, row in enumerate(truth):
            ours = found[index] if index < len(found) else (found[-1] if found else None)
            # None: the labels do not say whether the address is bad.
            if row[3] is not None:
                tally.rows += 1
                if ours is not None and ours.permanent == row[3]:
                    tally.hard_right += 1
                elif ours is not None:
                    tally.good_called_bad += ours.permanent
                    tally.bad_called_good += not ours.permanent
                    if say:
                        print(
                            f"{name}: hard {ours.permanent} ({ours.reason}), expected {row[3]} "
                            f"({row[2]}) {ours.diagnostic[:90]!r}"
                        )
            if row[0]:
                tally.status_rows += 1
                status = sisimai_status(ours) if ours is not None else None
                if status == row[0]:
                    tally.status_right += 1
                elif say:
                    print(f"{name}: status {status}, expected {row[0]} ({row[2]})")
                if not INVENTED.fullmatch(row[0]):
                    tally.stated_rows += 1
                    tally.stated_right += ours is not None and ours.status == row[0]
    whole = Tally()
    for tally in tallies.values():
        for key, value in vars(tally).items():
            setattr(whole, key, getattr(whole, key) + value)
    return {
        "bench": "bounce_accuracy",
        **{half: tallies[half].figures() for half in HALVES},
        "all": whole.figures(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--show", action="store_true", help="print the development half's misses")
    for name, folder in FURTHER.items():
        parser.add_argument(
            f"--{name}", type=Path, default=folder, help=f"see bench/data/{folder.name}/README.md"
        )
    args = parser.parse_args()
    figures = measure(args.corpus, args.show, only="development")
    for name in FURTHER:
        measured = measure(getattr(args, name), args.show, only="development")
        figures[name] = {half: measured[half] for half in (*HALVES, "all")}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
