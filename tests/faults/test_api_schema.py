"""The API against its own OpenAPI document (issue 20, point 5): schemathesis drives a real
`gateway serve`, bounded (a fixed number of examples per operation) and seeded (the same
requests every run), and fails on any 5xx, any status code, content type or body the document
does not declare, and any request that breaks the document's constraints yet is accepted.

(Requests that fit the document but break a rule only the server knows, a number that is not a
phone's or a template that does not exist, are refused with 422 as documented; schemathesis's
check that schema-valid data is accepted is left out for that reason.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.store import heartbeats
from gateway.store.access import create_token
from gateway.store.db import make_engine, utcnow
from tests.test_dashboard import Served

pytestmark = pytest.mark.slow
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,negative_data_rejection")  # fmt: skip


def test_the_api_keeps_to_its_openapi_document(tmp_path):
    server = Served(tmp_path)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
        token = create_token(engine, "schemathesis", utcnow())
        heartbeats.beat(engine, "worker-for-readyz", utcnow(), None)  # a live `gateway run`
        engine.dispose()
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run",
             f"http://127.0.0.1:{server.port}/openapi.json",
             "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
             "--max-examples", "25", "--seed", "20261206", "--no-color",
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        said = done.stdout + done.stderr
        assert done.returncode == 0, said[-6000:]
        assert "generated" in said and " passed" in said  # it did run
    finally:
        server.stop()
