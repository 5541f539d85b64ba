"""Real mail servers on 127.0.0.1 for the tests: Dovecot (IMAP) and aiosmtpd (SMTP).

Both share one user table, so an account that exists logs in to both. SMTP delivers
into the recipient's Dovecot maildir, so a test mail can be found over IMAP.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailops.demo import write_self_signed_certificate

HOST = "127.0.0.1"

# aiosmtpd warns about what these servers do on purpose (AUTH on a plain port).
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
logging.getLogger("mail.log").setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def write_certificate(directory: Path) -> tuple[Path, Path]:
    return write_self_signed_certificate(directory)


@dataclass
class MailUsers:
    """The user table both servers read: address -> password, plus the maildirs."""

    root: Path
    passwords: dict[str, str] = field(default_factory=dict)

    def add(self, address: str, password: str) -> None:
        self.passwords[address] = password
        # One passwd-file per user: Dovecot reads a new file on first lookup, whereas a
        # shared file changed twice within a second may not be re-read.
        (self.root / "users" / address).write_text(f"{address}:{{PLAIN}}{password}::::::\n", encoding="utf-8")
        self.maildir(address)

    def maildir(self, address: str) -> mailbox.Maildir:
        path = self.root / "mail" / address
        box = mailbox.Maildir(path, create=True)
        _give_to_nobody(path)
        return box

    def deliver(self, address: str, data: bytes) -> None:
        if address not in self.passwords:
            return  # no such mailbox: silently dropped, like a catch-nothing relay
        box = self.maildir(address)
        box.add(message_from_bytes(data))
        _give_to_nobody(self.root / "mail" / address)

    def messages(self, address: str) -> list:
        return list(self.maildir(address))


def _give_to_nobody(path: Path) -> None:
    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    for directory, _dirs, files in os.walk(path):
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), nobody.pw_uid, nobody.pw_gid)


class Dovecot:
    """Dovecot from Debian, configured from a temp dir, with a plain (STARTTLS) and an IMAPS port."""

    def __init__(self, root: Path, users: MailUsers, cert: Path, key: Path):
        self.root, self.users = root, users
        self.plain_port, self.tls_port = free_port(), free_port()
        self.config = root / "dovecot.conf"
        for name in ("run", "state", "mail", "users"):
            (root / name).mkdir(exist_ok=True)
        _give_to_nobody(root / "mail")
        self.config.write_text(
            f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailops-test-{self.plain_port}
log_path = {root}/dovecot.log
protocols = imap
listen = {HOST}
default_internal_user = dovecot
default_login_user = dovenull
auth_failure_delay = 0
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.plain_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.tls_port}
    ssl = yes
  }}
}}
""",
            encoding="utf-8",
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.process = subprocess.Popen([binary, "-F", "-c", str(self.config)], start_new_session=True)
        probe = "probe@example.com"
        self.users.add(probe, "probe-password")
        deadline = time.monotonic() + 15
        from imapclient import IMAPClient

        while True:  # auth is ready some time after the port opens: poll a real login
            try:
                client = IMAPClient(HOST, port=self.plain_port, ssl=False, timeout=2)
                client.login(probe, "probe-password")
                client.logout()
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.root / "dovecot.log").read_text() if (self.root / "dovecot.log").exists() else ""
                    raise RuntimeError(f"dovecot did not come up:\n{log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class RejectingHandler:
    """Delivers into Dovecot's maildirs, and refuses on purpose by the address's local part.

    ``refused-sender*`` as sender gets 553 5.1.8, ``unknown*`` as recipient gets 550 5.1.1,
    and mail from ``reject-data*`` gets 554 5.6.0 after DATA. Mail from ``discard*`` is
    accepted and then dropped, as a server with a silent filter does.
    """

    def __init__(self, users: MailUsers):
        self.users = users

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if address.startswith("refused-sender"):
            return "553 5.1.8 Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if envelope.mail_from.startswith("reject-data"):
            return "554 5.6.0 Message content rejected"
        if envelope.mail_from.startswith("slow"):
            await asyncio.sleep(1.5)
        if envelope.mail_from.startswith("discard"):
            return "250 Message accepted for delivery"
        for recipient in envelope.rcpt_tos:
            self.users.deliver(recipient, envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


class Smtp:
    """aiosmtpd with AUTH on three ports: STARTTLS (required), implicit TLS, and plain."""

    def __init__(self, users: MailUsers, cert: Path, key: Path):
        self.users = users
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.starttls_port, self.tls_port, self.plain_port = free_port(), free_port(), free_port()
        handler = RejectingHandler(users)
        common = {"hostname": HOST, "authenticator": self._authenticate, "auth_required": True}
        self.controllers = [
            Controller(handler, port=self.starttls_port, tls_context=context, require_starttls=True, **common),
            Controller(handler, port=self.tls_port, ssl_context=context, auth_require_tls=False, **common),
            Controller(handler, port=self.plain_port, auth_require_tls=False, **common),
        ]

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.passwords.get(login) == password:
                return AuthResult(success=True)
        # handled=False makes aiosmtpd answer 535; with True the client would hang.
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        for controller in self.controllers:
            controller.start()

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server binaries), trust auth."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.data, self.sockets = root / "data", root / "sockets"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + list(command), check=True, capture_output=True, cwd=self.root)

    @staticmethod
    def binaries() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        return found[-1].parent if found else None

    def start(self) -> str:
        bin_dir = self.binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries are missing; `make test` installs Debian's postgresql")
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.user)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(str(bin_dir / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "mailops", "--no-sync")
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses={HOST} -c fsync=off"
        self._run(
            str(bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l", str(self.root / "pg.log"), "start"
        )
        return f"postgresql+psycopg://mailops@{HOST}:{self.port}/postgres"

    def stop(self) -> None:
        bin_dir = self.binaries()
        if bin_dir is not None and self.data.exists():
            self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
