"""A short coverage-guided fuzz run (atheris) over the parsers that take strangers' input:
inbound mail, phone numbers, SMS text shaping, and every field that reaches an email header.
Each target runs in its own process for a bounded number of inputs; a crash (any exception
but a rejection with a reason) fails the test with the input atheris found.

The seed is fixed, so CI explores the same inputs every run and a landing is never failed by
a crash unrelated to it; `GATEWAY_FUZZ_SEED=N make test` (or a longer `-runs`) explores others,
and what it finds becomes a regression test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has no wheel for this platform")
pytestmark = pytest.mark.slow

HARNESS = Path(__file__).with_name("fuzz_targets.py")
REPO = HARNESS.parents[2]


@pytest.mark.parametrize("target", ["inbound_mail", "phone_number", "sms_text", "email_headers"])
def test_fuzz(target, tmp_path):
    seeds = tmp_path / "corpus"
    seeds.mkdir()
    if target == "inbound_mail":  # start from real mail so the fuzzer reaches deep quickly
        for path in sorted((REPO / "tests/data/corpus/replies").glob("*.eml"))[:12]:
            (seeds / path.name).write_bytes(path.read_bytes())
    done = subprocess.run(
        [sys.executable, str(HARNESS), target, str(seeds), "-runs=4000",
         f"-seed={os.environ.get('GATEWAY_FUZZ_SEED', '1')}",
         "-max_total_time=25", "-max_len=4096", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # with the seed: the same inputs each run
    )  # fmt: skip
    crashes = list(tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, done.stderr[-3000:]
    assert "Done" in done.stderr or "INFO: " in done.stderr  # it did run
