"""A private Postfix instance for tests, set up as a company's mail server is: submission on a
loopback port with STARTTLS required and AUTH checked by Dovecot (SASL), delivering to virtual
mailboxes that Dovecot serves over IMAP. Beside the company's domain, a virtual domain stands
in for a carrier's email-to-SMS gateway (`vtext.com`: what reaches it lands in the phone's
mailbox; a number it does not know comes back as Postfix's own delivery-status report). Nothing
can leave the machine: no relay host, and `default_transport = error`.

Its own main.cf and master.cf in a temporary folder, started with `postfix -c DIR start` (as
root, which a non-default configuration folder needs), stopped when the session ends.
"""

from __future__ import annotations

import contextlib
import pwd
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from gateway.services.carrier_sim import free_port
from tests.dovecot import Dovecot
from tests.servers import listening

GATEWAY_DOMAIN = "vtext.com"  # the stand-in for a carrier's gateway (Verizon's, in carriers.yaml)
PHONE = "2065550143"  # a number the stand-in gateway serves: it has a mailbox
UNKNOWN = "2065550199"  # a number it does not: Postfix bounces it

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
myhostname = mail.example.com
mydomain = example.com
myorigin = example.com
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error:this test server delivers nothing off the machine
relay_transport = error:this test server delivers nothing off the machine
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
virtual_mailbox_domains = example.com {gateway_domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{root}/mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
smtpd_tls_cert_file = {root}/cert.pem
smtpd_tls_key_file = {root}/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl}
smtpd_sasl_auth_enable = no
# Reports come back at once: no waiting out a queue lifetime in a test.
bounce_queue_lifetime = 0
maximal_queue_lifetime = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
127.0.0.1:{submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject{submission_extra}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    root: Path
    smtp_port: int  # port 25's role: mail from the world (the phone's replies come in here)
    submission_port: int  # port 587's role: STARTTLS required, then AUTH through Dovecot
    dovecot: Dovecot
    ca_file: Path

    def phone_mailbox(self, number: str = PHONE) -> list[bytes]:
        """What the stand-in carrier gateway delivered to the phone `number`."""
        found = []
        for sub in ("new", "cur"):
            folder = self.root / "mail" / GATEWAY_DOMAIN / number / sub
            if folder.is_dir():
                found += [p.read_bytes() for p in sorted(folder.iterdir())]
        return found

    def add_phone(self, number: str) -> None:
        """A number the stand-in gateway serves from now on."""
        with (self.root / "mailboxes").open("a") as boxes:
            boxes.write(f"{number}@{GATEWAY_DOMAIN} {GATEWAY_DOMAIN}/{number}/\n")
        _postfix(self.root, "reload")

    def send_from_phone(self, text: str, to: str, number: str = PHONE, **headers: str) -> str:
        """The phone answers: its carrier's gateway hands the text to the company's server,
        unauthenticated, on port 25. Returns the Message-ID."""
        message_id = f"<{time.monotonic_ns()}.{number}@{GATEWAY_DOMAIN}>"
        lines = [f"From: {number}@{GATEWAY_DOMAIN}", f"To: {to}", "Subject: ",
                 f"Message-ID: {message_id}", "MIME-Version: 1.0",
                 "Content-Type: text/plain; charset=utf-8"]  # fmt: skip
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
            client.sendmail(f"{number}@{GATEWAY_DOMAIN}", [to],
                            ("\r\n".join(lines) + "\r\n\r\n" + text + "\r\n").encode())  # fmt: skip
        return message_id

    def log(self) -> str:
        path = self.root / "postfix.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            _postfix(self.root, "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> str | None:
    """None when Postfix can run here, else why not."""
    if not Path("/usr/sbin/postfix").exists():
        return "Postfix is not installed (Debian package postfix; `make test` installs it)"
    if _uid("postfix") is None:
        return "the postfix user is missing (the Debian package makes it)"
    return None


def start(
    cert: trustme.LeafCert, ca_file: Path, dovecot: Dovecot, idle_timeout: str | None = None
) -> Postfix:
    """A running Postfix delivering to `dovecot`'s mailboxes. `idle_timeout` (e.g. "3s"):
    how soon submission drops a client that says nothing (Postfix's default is 300s)."""
    root = Path(tempfile.mkdtemp(prefix="gw-postfix-"))
    root.chmod(0o755)
    for folder in ("data", "spool"):
        (root / folder).mkdir()
    shutil.chown(root / "data", "postfix")
    # Mail lands where Dovecot reads it: the company's mailbox is Dovecot's user's Maildir.
    mail = dovecot.root / "mail"
    (root / "mail").symlink_to(mail)
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    (root / "key.pem").chmod(0o600)
    (root / "mailboxes").write_text(
        f"{dovecot.user} {dovecot.user}/\n{PHONE}@{GATEWAY_DOMAIN} {GATEWAY_DOMAIN}/{PHONE}/\n"
    )
    smtp_port, submission_port = free_port(), free_port()
    uid, gid = _uid("dovecot") or 0, _gid("dovecot")
    (root / "main.cf").write_text(MAIN_CF.format(
        root=root, mail=mail, uid=uid, gid=gid, sasl=dovecot.sasl_socket,
        gateway_domain=GATEWAY_DOMAIN))  # fmt: skip
    extra = f"\n  -o smtpd_timeout={idle_timeout}" if idle_timeout else ""
    (root / "master.cf").write_text(MASTER_CF.format(
        smtp_port=smtp_port, submission_port=submission_port, submission_extra=extra))  # fmt: skip
    _postfix(root, "start")
    server = Postfix(root, smtp_port, submission_port, dovecot, ca_file)
    if listening((smtp_port, submission_port), 20):
        return server
    server.stop()
    raise RuntimeError(f"Postfix did not listen on {smtp_port}/{submission_port}: {server.log()}")


def submission_client(server: Postfix) -> smtplib.SMTP:
    """A client of the standard library's, signed in on the submission port (for set-up)."""
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10)
    client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
    client.login(server.dovecot.user, server.dovecot.password)
    return client


def _postfix(root: Path, command: str) -> None:
    done = subprocess.run(["/usr/sbin/postfix", "-c", str(root), command],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if done.returncode != 0:  # it tells syslog, which a test machine may not run, and its log
        log = root / "postfix.log"
        said = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"postfix {command} failed: {done.stdout}{done.stderr}{said}")


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int:
    return pwd.getpwnam(name).pw_gid
