"""A real Dovecot IMAP server for tests, configured as company mailboxes are: TLS required
(`ssl = required`, a certificate from the tests' own CA), an implicit-TLS listener (`port`, as
993) and a STARTTLS one (`starttls_port`, as 143), a passwd-file for passwords, an `oauth2`
passdb for XOAUTH2 when given a token server to ask, and an auth socket Postfix's submission
service signs its users in through (Dovecot SASL). A throwaway configuration under a temporary
folder, loopback ports, stopped when the test session ends."""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from gateway.services.carrier_sim import free_port
from tests.servers import listening

USER, PASSWORD = "dispatch@example.com", "mailbox-secret"

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login{oauth2_mechanisms}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}{oauth2_passdb}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {starttls_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
  chroot =
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
}}
"""


# Dovecot's oauth2 passdb asks the token server whether a bearer token is live (RFC 7662
# introspection, POSTed) and takes the mailbox's name from the answer.
OAUTH2 = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
"""


@dataclass
class Dovecot:
    root: Path
    port: int  # implicit TLS, as 993
    starttls_port: int  # STARTTLS, as 143
    process: subprocess.Popen
    ca_file: Path
    user: str = USER
    password: str = PASSWORD

    @property
    def sasl_socket(self) -> Path:
        """Where Postfix's smtpd asks Dovecot to check a sign-in."""
        return self.root / "run" / "auth-postfix"

    def maildir(self, folder: str = "INBOX") -> Path:
        base = self.root / "mail" / self.user
        return base if folder == "INBOX" else base / f".{folder}"

    def messages(self, folder: str) -> list[bytes]:
        found = []
        for sub in ("new", "cur"):
            path = self.maildir(folder) / sub
            if path.is_dir():
                found += [p.read_bytes() for p in sorted(path.iterdir())]
        return found

    def stop(self, keep: bool = False) -> None:
        # Dovecot's master leaves its login and imap processes running when it exits; a real
        # stop (systemd's) ends them all, so this does too. Each tells its client BYE.
        children = _children(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop the server (clients get BYE or a closed connection) and start it again on the
        same port with the same mail."""
        self.stop(keep=True)
        self.process = _launch(self.root, self.port)

    def add_user(self, user: str, password: str) -> None:
        with (self.root / "users").open("a") as users:
            users.write(f"{user}:{{PLAIN}}{password}\n")

    def renumber(self, folder: str = "INBOX") -> None:
        """Make the server give `folder` a new UIDVALIDITY, as after a restore or a migration:
        stopped, its UID list and indexes removed, started again."""
        self.stop(keep=True)
        for path in self.maildir(folder).glob("dovecot*"):
            path.unlink()
        time.sleep(1.1)  # UIDVALIDITY is taken from the clock, in seconds
        self.process = _launch(self.root, self.port)

    def client(self, user: str | None = None, password: str | None = None) -> imaplib.IMAP4:
        """A signed-in client of the standard library's, over TLS (for setting up tests)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        client = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context)
        client.login(user or self.user, password or self.password)
        return client

    def append(self, raw: bytes, folder: str = "INBOX", arrived: float | None = None) -> None:
        """Deliver a message the way a mail client files one: IMAP APPEND (`arrived`: the
        arrival time the server keeps, as a Unix time; now when None)."""
        client = self.client()
        try:
            when = imaplib.Time2Internaldate(arrived) if arrived is not None else None
            status, answer = client.append(folder, None, when, raw)
            assert status == "OK", answer
        finally:
            client.logout()

    def create(self, folder: str) -> None:
        client = self.client()
        try:
            client.create(folder)
        finally:
            client.logout()

    def flags(self, folder: str = "INBOX") -> list[bytes]:
        client = self.client()
        try:
            client.select(folder, readonly=True)
            _status, data = client.fetch("1:*", "(FLAGS)")
            return [line for line in data if isinstance(line, bytes)]
        finally:
            client.logout()


def available() -> str | None:
    """None when Dovecot can run here, else why not."""
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        return "Dovecot is not installed (Debian package dovecot-imapd; `make test` installs it)"
    if os.geteuid() != 0:
        return "the Dovecot fixture runs as root"
    return None


def start(cert: trustme.LeafCert, ca_file: Path, introspection_url: str | None = None) -> Dovecot:
    """A running Dovecot with `cert` for 127.0.0.1 and localhost; with `introspection_url`, it
    also takes XOAUTH2 and OAUTHBEARER sign-ins, asking that URL whether the token is live."""
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must reach the mail folder
    for folder in ("run", "state", "mail"):
        (root / folder).mkdir()
    shutil.chown(root / "mail", "dovecot", "dovecot")
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    port, starttls_port = free_port(), free_port()
    oauth2_passdb = oauth2_mechanisms = ""
    if introspection_url:
        (root / "oauth2.conf").write_text(OAUTH2.format(url=introspection_url))
        oauth2_mechanisms = " xoauth2 oauthbearer"
        oauth2_passdb = (
            "\npassdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {root}/oauth2.conf\n}}"
        )
    (root / "dovecot.conf").write_text(
        CONFIG.format(root=root, port=port, starttls_port=starttls_port,
                      oauth2_passdb=oauth2_passdb, oauth2_mechanisms=oauth2_mechanisms)
    )  # fmt: skip
    return Dovecot(root, port, starttls_port, _launch(root, port), ca_file)


def _launch(root: Path, port: int) -> subprocess.Popen:
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    process = subprocess.Popen(
        [binary, "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if listening((port,), 15, lambda: process.poll() is None):
        return process
    if process.poll() is not None:
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        raise RuntimeError(f"Dovecot exited at start: {output}{_log(root)}")
    process.kill()
    raise RuntimeError(f"Dovecot did not listen on {port}: {_log(root)}")


def _log(root: Path) -> str:
    log = root / "dovecot.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (from /proc: no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # pid (comm) state ppid ...; comm may hold spaces, so split after its ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found
