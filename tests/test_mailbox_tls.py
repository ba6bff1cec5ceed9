"""The company mailbox over TLS, as every real company runs it, against a real Dovecot with
`ssl = required`: implicit TLS (993's role) and STARTTLS (143's), certificates validated, a
server that does not offer STARTTLS refused before anything is said in the clear, a connection
cut without a word noticed on a TLS connection, and the Sent copy over both."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.config import ImapSettings
from gateway.services.doctor import check_imap
from gateway.services.runtime import imap_server
from gateway.store.db import utcnow
from gateway.transport.imap import ImapError, SentFolder, connect, sign_in
from tests.test_imap_inbound import (
    Running,
    count,
    drain,
    folder_in,
    mute_server,
    reply,
    runtime_for,
    until,
)


def settings_for(dovecot, **changes) -> ImapSettings:
    return ImapSettings(**{
        "enabled": True, "host": "127.0.0.1", "port": dovecot.port, "security": "tls",
        "ca_file": dovecot.ca_file, "username": dovecot.user, "password": dovecot.password,
        "timeout_seconds": 5, **changes,
    })  # fmt: skip


async def test_implicit_tls_reads_the_mailbox(sqlite_url, smtp_server, dovecot):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder)
    dovecot.append(reply(1), folder)
    assert (await drain(runtime)).stored == 1


async def test_starttls_reads_the_mailbox_and_asks_capabilities_again(
    sqlite_url, smtp_server, dovecot
):
    folder = folder_in(dovecot)
    runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, security="starttls",
                          port=dovecot.starttls_port)  # fmt: skip
    dovecot.append(reply(1), folder)
    assert (await drain(runtime)).stored == 1
    client = await connect(imap_server(settings_for(dovecot, security="starttls",
                                                    port=dovecot.starttls_port), "test"))  # fmt: skip
    try:
        # Over TLS the server no longer offers STARTTLS: the list was asked for again.
        assert not client.has_capability("STARTTLS") and client.has_capability("IDLE")
        assert client.protocol.transport.get_extra_info("sslcontext") is not None
    finally:
        client.protocol.transport.close()


async def test_starttls_defaults_to_port_143():
    assert ImapSettings(security="starttls").port == 143
    assert ImapSettings(security="starttls", port=1143).port == 1143


class NoStartTls:
    """An IMAP server that offers no STARTTLS (a stripped capability list); it records every
    line the client sends."""

    def __init__(self) -> None:
        self.heard: list[bytes] = []

    async def __aenter__(self) -> NoStartTls:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                self.heard.append(line)
                tag = line.split(b" ", 1)[0]
                if b"CAPABILITY" in line.upper():
                    writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
                writer.write(tag + b" OK done\r\n")
                await writer.drain()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def test_a_server_without_starttls_is_refused_and_no_password_goes_in_the_clear():
    async with NoStartTls() as server:
        settings = ImapSettings(host="127.0.0.1", port=server.port, security="starttls",
                                username="dispatch@example.com", password="secret")  # fmt: skip
        with pytest.raises(ImapError, match="does not offer STARTTLS"):
            await sign_in(imap_server(settings, "test"))
        assert not any(b"LOGIN" in line or b"secret" in line for line in server.heard)
        steps = await check_imap(settings.model_copy(update={"enabled": True}))
        assert not steps[-1].ok and "does not offer STARTTLS" in steps[-1].detail
        assert "993" in steps[-1].hint


async def test_an_untrusted_certificate_is_refused_with_the_fix(dovecot):
    settings = settings_for(dovecot, ca_file=None)  # the test CA is not the system's
    with pytest.raises(ImapError, match="not trusted") as refused:
        await sign_in(imap_server(settings, "test"))
    assert "imap.ca_file" in (refused.value.hint or "")
    steps = await check_imap(settings)
    assert not steps[-1].ok and "not trusted" in steps[-1].detail


async def test_doctor_over_tls_and_starttls(dovecot):
    for settings in (settings_for(dovecot),
                     settings_for(dovecot, security="starttls", port=dovecot.starttls_port)):  # fmt: skip
        steps = await check_imap(settings)
        assert all(step.ok for step in steps), steps
        assert [s.name.split()[0] for s in steps] == ["DNS:", "TCP", settings.security.upper()
                                                      if settings.security == "tls" else "STARTTLS",
                                                      "sign", "folder"]  # fmt: skip


class CuttingProxy:
    """A TCP relay to the server whose connections can be cut without a word (no BYE, no TLS
    close): what a dropped NAT mapping or a crashed server looks like from the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(source, sink) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_a_cut_tls_connection_is_noticed_in_idle(sqlite_url, smtp_server, dovecot, security):
    """IDLE is renewed only every 9 minutes: a connection cut in the middle must be noticed by
    the connection-lost signal, on a TLS connection as on any other."""
    folder = folder_in(dovecot)
    target = dovecot.port if security == "tls" else dovecot.starttls_port
    async with CuttingProxy(target) as proxy:
        runtime = runtime_for(sqlite_url, smtp_server, dovecot, folder, port=proxy.port,
                              security=security)  # fmt: skip
        async with Running(runtime) as running:
            await running.idling()
            proxy.cut()
            await until(lambda: running.source.connects == 2, 15, "a new connection")
            await running.idling()
            await asyncio.to_thread(dovecot.append, reply(1), folder)
            await until(lambda: count(runtime) == 1, 10, "the reply after the cut is stored")


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_the_sent_copy_over_tls_and_starttls(dovecot, security):
    port = dovecot.port if security == "tls" else dovecot.starttls_port
    folder = SentFolder(imap_server(settings_for(dovecot, security=security, port=port), "t"),
                        "Sent")  # fmt: skip
    before = len(dovecot.messages("Sent"))
    try:
        await folder.append(reply(1, body=f"copy over {security}"), utcnow())
    finally:
        await folder.close()
    assert len(dovecot.messages("Sent")) == before + 1
    assert any(f"copy over {security}".encode() in m for m in dovecot.messages("Sent"))


async def test_a_sent_copy_to_a_server_that_never_greets_says_how_long_it_was_given():
    async with mute_server() as port:
        settings = ImapSettings(enabled=True, host="127.0.0.1", port=port, security="none",
                                username="dispatch", password="x", timeout_seconds=1)  # fmt: skip
        folder = SentFolder(imap_server(settings, "t"), "Sent")
        try:
            with pytest.raises(ImapError) as refused:
                await folder.append(reply(1), utcnow())
        finally:
            await folder.close()
    assert str(refused.value) == (
        f"cannot reach the mailbox at 127.0.0.1:{port}: no answer in time "
        "(imap.timeout_seconds = 1)"
    )


@pytest.mark.parametrize(
    ("ca_file", "says"),
    [("missing.pem", "does not exist"), (".", "is a folder"), ("gateway.toml", "no PEM")],
)
def test_a_ca_file_that_cannot_work_is_refused_by_every_command(tmp_path, ca_file, says):
    from tests.conftest import gateway_folder, run_gateway

    folder = gateway_folder(tmp_path, 2525, extra=f"""
[imap]
enabled = true
host = "127.0.0.1"
username = "dispatch@example.com"
password = "x"
ca_file = "{tmp_path / ca_file}"
""")  # fmt: skip
    for command in (["config", "check"], ["doctor"], ["run", "--until-idle"], ["status"]):
        done = run_gateway(*command, cwd=folder)
        said = done.stdout + done.stderr
        assert done.returncode == 1, (command, said)
        assert "imap.ca_file" in said and says in said, (command, said)
        assert "Traceback" not in said, (command, said)


def test_a_token_file_that_cannot_be_read_is_refused(tmp_path):
    from tests.conftest import gateway_folder, run_gateway

    folder = gateway_folder(tmp_path, 2525, extra=f"""
[imap]
enabled = true
username = "dispatch@example.com"
oauth2_token_file = "{tmp_path}"
""")  # fmt: skip
    done = run_gateway("config", "check", cwd=folder)
    assert done.returncode == 1 and "imap.oauth2_token_file" in done.stderr
    assert "is a folder" in done.stderr and "Traceback" not in done.stderr
