"""Mail written to be expensive to read: bodies of one short unit over and over ("a.a.a...",
blank lines, "a@a@..."), 200 KB, in a reply, a bounce letter and a delivery-status part. The
reader's patterns once tried every position of such a run, so the time grew with the square
of the body: "a.a.a..." alone took minutes. Each is read here within a deadline hundreds of
times what it takes now; how the costs compare with prose is bench/hostile_mail.py's to say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_costly_shape_is_read_within_a_deadline():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "hostile_mail.py")],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=True,
    )  # fmt: skip
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "hostile_mail" and figures["bytes"] == 200_000
