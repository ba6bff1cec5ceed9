"""The benchmark's figures and the reports behind them: a figure with nothing to judge is shown as
such, never as 0.0 (which reads as "all wrong") or as a blank verdict (which reads as "no
target"); no report is counted twice."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_half_with_no_reports_has_no_figures():
    figures = load("bounce_accuracy").Tally().figures()
    assert figures["reports"] == 0
    for key in (
        "detected",
        "hard_soft_right",
        "status_right",
        "stated_status_right",
        "addresses_right",
    ):
        assert figures[key] is None, key


def test_a_target_with_nothing_measured_says_so():
    verdict = load("run_all").verdict
    key = ("bounce_accuracy", "unseen.hold_out.detected")
    assert verdict(*key, None) == ">= 0.99: not measured"
    assert verdict(*key, 1.0) == ">= 0.99: met"
    assert verdict(*key, 0.5) == ">= 0.99: MISSED"
    assert verdict("bounce_accuracy", "unseen.hold_out.reports", 29) == ""


def anonymised_away(raw: bytes) -> str:
    """A report with every dotted name blanked (hosts, domains, addresses' domains, IP
    addresses): Sisimai's collection publishes some reports twice, under two names, anonymised
    differently."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return re.sub(r"[\w-]+(\.[\w-]+)+", "D", text)


def test_no_report_is_counted_twice():
    """Reports gathered to judge the reader on mail it was not written against must not be the
    corpus's reports (or each other) under another name."""
    module = load("bounce_accuracy")
    sets = [folder / "mail" for folder in (module.DEFAULT_CORPUS, *module.FURTHER.values())]
    first: dict[str, str] = {}
    twice = []
    for index, folder in enumerate(sets):
        for path in sorted(folder.iterdir()):
            key = anonymised_away(path.read_bytes())
            if key in first and index > 0:
                twice.append((first[key], f"{folder.parent.name}/{path.name}"))
            first.setdefault(key, f"{folder.parent.name}/{path.name}")
    assert twice == []
