"""`gateway outbox import FILE.csv`: a text a row, in batches, bad rows reported with their
line and nothing of theirs stored, a key making a second import of the same file send nothing
twice."""

from __future__ import annotations

import json

import pytest

from gateway.services import texts_import
from gateway.services.texts_import import TextsFileError, import_texts
from gateway.store.db import utcnow
from tests.conftest import gateway_folder, make_runtime, run_gateway
from tests.test_outbox import rows

TEXTS = """to,carrier,text,template,var.customer_name,var.order_ref,key
+12025550143,verizon,Your driver is 10 minutes away,,,,k1
+12025550144,verizon,,delivered,Ana,A-7,k2
not a number,verizon,hello,,,,k3
+12025550145,att,closed gateway,,,,k4
+12025550146,verizon,,delivered,,A-8,k5
"""


def test_each_row_becomes_a_text_and_each_bad_row_is_reported_with_its_line(tmp_path, smtp_server):
    gateway_folder(tmp_path, smtp_server.port)
    (tmp_path / "texts.csv").write_text(TEXTS)
    done = run_gateway("outbox", "import", "texts.csv", cwd=tmp_path)
    assert done.returncode == 1  # some rows were not sent
    assert "texts.csv:4: 'not a number' is not a phone number" in done.stderr
    assert "texts.csv:5: stored, not sent: AT&T closed its email-to-SMS gateway" in done.stderr
    assert "texts.csv:6: " in done.stderr and "customer_name" in done.stderr
    assert "queued 2 of 5 rows" in done.stderr
    listed = json.loads(run_gateway("outbox", "list", "--format", "json", cwd=tmp_path).stdout)
    assert sorted((r["to"], r["state"]) for r in listed) == [
        ("+12025550143", "queued"), ("+12025550144", "queued"), ("+12025550145", "suppressed"),
    ]  # fmt: skip
    assert any(r["body"].startswith("Hi Ana") or "A-7" in r["body"] for r in listed)
    again = run_gateway("outbox", "import", "texts.csv", cwd=tmp_path)
    assert "queued 0 of 5 rows (3 already queued by an earlier import" in again.stderr
    assert (
        len(json.loads(run_gateway("outbox", "list", "--format", "json", cwd=tmp_path).stdout)) == 3
    )


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("phone,text", "needs a header line with `to`"),
        ("to,text,colour", "unknown CSV column 'colour'"),
    ],
)
def test_a_file_whose_header_is_wrong_stores_nothing(tmp_path, smtp_server, header, words):
    gateway_folder(tmp_path, smtp_server.port)
    (tmp_path / "texts.csv").write_text(f"{header}\n+12025550143,hi,x\n")
    done = run_gateway("outbox", "import", "texts.csv", cwd=tmp_path)
    assert done.returncode == 1 and words in done.stderr
    assert json.loads(run_gateway("outbox", "list", "--format", "json", cwd=tmp_path).stdout) == []


def test_a_large_file_goes_in_batches_with_progress(sqlite_url, smtp_server, monkeypatch):
    monkeypatch.setattr(texts_import, "BATCH", 40)
    runtime = make_runtime(sqlite_url, smtp_server.port)
    lines = ["to,carrier,text"] + [f"+1202555{i:04d},verizon,text {i}" for i in range(100)]
    lines[57] = "+1202,verizon,too short"
    seen = []
    report = import_texts(
        runtime, "\n".join(lines) + "\n", utcnow(), lambda d, t: seen.append((d, t))
    )
    assert seen == [(40, 100), (80, 100), (100, 100)]
    assert (report.total, report.queued) == (100, 99)
    assert [line for line, _ in report.problems] == [58]
    assert len(rows(runtime)) == 99
    with pytest.raises(TextsFileError):
        import_texts(runtime, "", utcnow())


def test_a_cell_too_big_for_the_csv_reader_is_a_clear_error_not_a_crash(sqlite_url, smtp_server):
    runtime = make_runtime(sqlite_url, smtp_server.port)
    huge = 'to,text\n+12025550143,"' + "a" * 200_000 + '"\n'
    with pytest.raises(TextsFileError, match="line 2: field larger than field limit"):
        import_texts(runtime, huge, utcnow())
    from gateway.services.orders import OrderError, Orders

    with pytest.raises(OrderError, match="line 2: field larger than field limit"):
        Orders(runtime).import_csv('ref,customer\nA-1,"' + "a" * 200_000 + '"\n', utcnow())
    assert rows(runtime) == []
