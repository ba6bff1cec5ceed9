"""The benchmark report's arithmetic: a figure with nothing to judge is shown as such, never as
0.0 (which reads as "all wrong") or as a blank verdict (which reads as "no target")."""

import importlib.util
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
    for key in ("detected", "hard_soft_right", "status_right", "stated_status_right"):
        assert figures[key] is None, key


def test_a_target_with_nothing_measured_says_so():
    verdict = load("run_all").verdict
    key = ("bounce_accuracy", "unseen.hold_out.detected")
    assert verdict(*key, None) == ">= 0.99: not measured"
    assert verdict(*key, 1.0) == ">= 0.99: met"
    assert verdict(*key, 0.5) == ">= 0.99: MISSED"
    assert verdict("bounce_accuracy", "unseen.hold_out.reports", 29) == ""
