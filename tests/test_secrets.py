"""No secret leaves the gateway: not in logs at DEBUG, errors, stored replies or printed config."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from gateway.store.db import make_engine
from gateway.store.tables import attempts, messages
from tests.conftest import run_gateway
from tests.servers import SmtpTestServer, password_checker

SECRET = "s3cret-Pa55word-for-tests"


def forms_of(secret: str, user: str) -> list[str]:
    """The secret as it could leak: plain, and as AUTH PLAIN and AUTH LOGIN put it on the wire."""
    return [
        secret,
        base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode(),
    ]


@pytest.mark.parametrize("right", [True, False])
def test_password_never_appears_in_output_logs_or_rows(tmp_path, right):
    password = SECRET if right else SECRET + "-wrong"
    server = SmtpTestServer(
        authenticator=password_checker("dispatch", SECRET), auth_require_tls=False
    )
    server.start()
    try:
        db = tmp_path / "gw.db"
        (tmp_path / "gateway.toml").write_text(
            f'[database]\nurl = "sqlite:///{db}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\nusername = "dispatch"\n'
            'password_env = "SMTP_SECRET_FOR_TEST"\nfrom_address = "Dispatch <dispatch@example.com>"\n'
        )

        def gateway(*args):
            return run_gateway(
                "--verbose", *args, cwd=tmp_path, env={"SMTP_SECRET_FOR_TEST": password}
            )

        outputs = [
            gateway("db", "upgrade"),
            gateway("send", "--to", "+12025550143", "--carrier", "verizon", "--text", "hi"),
            gateway("run", "--until-idle"),
            gateway("routes"),
            gateway("config", "check"),
            gateway("outbox", "list", "--format", "json"),
        ]
    finally:
        server.stop()
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert len(server.received) == (1 if right else 0)
    text = "\n".join(o.stdout + o.stderr for o in outputs)
    assert "DEBUG" in text  # the logs were captured at the most detailed level
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        text += "\n".join(str(tuple(r)) for r in conn.execute(select(messages)))
        text += "\n".join(str(tuple(r)) for r in conn.execute(select(attempts)))
    for form in forms_of(password, "dispatch"):
        assert form not in text
    assert (
        "password_env" in text and "SMTP_SECRET_FOR_TEST" in text
    )  # the name of the variable may show


def test_password_in_the_config_file_is_masked_in_errors_too(tmp_path):
    (tmp_path / "gateway.toml").write_text(
        f'[smtp]\nusername = "u"\npassword = "{SECRET}"\nport = "not a port"\n'
    )
    result = run_gateway("config", "check", cwd=tmp_path)
    assert result.returncode == 1 and "smtp.port" in result.stderr
    assert SECRET not in result.stdout + result.stderr
