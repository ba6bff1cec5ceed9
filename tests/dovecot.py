"""A real Dovecot IMAP server for tests: a throwaway configuration under a temporary folder,
listening on a loopback port, stopped when the test session ends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.services.carrier_sim import free_port

USER, PASSWORD = "dispatch@example.com", "mailbox-secret"

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  chroot =
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


@dataclass
class Dovecot:
    root: Path
    port: int
    process: subprocess.Popen
    user: str = USER
    password: str = PASSWORD

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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> str | None:
    """None when Dovecot can run here, else why not."""
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        return "Dovecot is not installed (Debian package dovecot-imapd; `make test` installs it)"
    if os.geteuid() != 0:
        return "the Dovecot fixture runs as root"
    return None


def start() -> Dovecot:
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must reach the mail folder
    for folder in ("run", "state", "mail"):
        (root / folder).mkdir()
    shutil.chown(root / "mail", "dovecot", "dovecot")
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    config = root / "dovecot.conf"
    config.write_text(CONFIG.format(root=root, port=port))
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    process = subprocess.Popen(
        [binary, "-F", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"Dovecot exited at start: {output}{_log(root)}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return Dovecot(root, port, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"Dovecot did not listen on {port}: {_log(root)}")


def _log(root: Path) -> str:
    log = root / "dovecot.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""
