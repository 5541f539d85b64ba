"""Real mail servers on 127.0.0.1 for the tests: Dovecot (IMAP) and aiosmtpd (SMTP).

Both share one user table, so an account that exists logs in to both. SMTP delivers
into the recipient's Dovecot maildir, so a test mail can be found over IMAP.

With a `LocalIdentityProvider` on the user table, both servers also take XOAUTH2 (and
Dovecot OAUTHBEARER) with the provider's access tokens, as Outlook and Gmail do:

* Dovecot asks the provider's ``/introspect`` (its own ``oauth2`` passdb); aiosmtpd asks
  `LocalIdentityProvider.token_info` in this process and wants an SMTP scope (`SMTP_SCOPES`).
  Passwords work as before (the passwd-file passdb only does PLAIN/LOGIN). Dovecot checks no
  scope for a user's own mailbox: this machine's Dovecot (Debian 2.3.19.1+dfsg1-2.1+deb12u7,
  CVE-2026-40205 backport) wants *every* scope listed in the oauth2 ``scope`` setting, so one
  passdb cannot take both Microsoft's IMAP scope and Google's (`IMAP_SCOPES`).
* Shared mailboxes, Microsoft's way: ``user=<shared address>`` with a token of a delegate who
  was granted access (`MailUsers.grant_access`). Dovecot's oauth2 passdb cannot do that (it
  sends only the token to the introspection endpoint and then requires the answer's
  ``username`` to equal the login name), so a third passdb, Dovecot's ``checkpassword`` driver,
  runs a small script (`SHARED_MAILBOX_CHECK`) for what the oauth2 passdb refused: it
  introspects the token at the same provider, looks the grant up in ``ROOT/grants`` and
  wants one of `IMAP_SCOPES`.
* `MailUsers.disable_smtp_auth` answers SMTP AUTH of that mailbox as Exchange Online does
  when SMTP AUTH is off (`SMTP_AUTH_DISABLED`).
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
import pwd
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import TYPE_CHECKING

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailops.localservers import xoauth2
from mailops.localservers.certificates import write_self_signed_certificate

if TYPE_CHECKING:
    from mailops.localservers.idp import LocalIdentityProvider

HOST = "127.0.0.1"

# aiosmtpd warns about what these servers do on purpose (AUTH on a plain port).
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
logging.getLogger("mail.log").setLevel(logging.ERROR)

# The scopes a token needs (any one of them): Microsoft's per-protocol scopes, or Google's one.
GMAIL_SCOPE = "https://mail.google.com/"
IMAP_SCOPES = frozenset({"https://outlook.office.com/IMAP.AccessAsUser.All", GMAIL_SCOPE})
SMTP_SCOPES = frozenset({"https://outlook.office.com/SMTP.Send", GMAIL_SCOPE})

# Exchange Online's SMTP replies.
XOAUTH2_FAILED = xoauth2.REFUSED
SMTP_AUTH_DISABLED = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def write_certificate(directory: Path) -> tuple[Path, Path]:
    return write_self_signed_certificate(directory)


@dataclass
class MailUsers:
    """The user table both servers read: address -> password, plus the maildirs.

    With `identity_provider` set, OAuth users (`add_oauth`), shared mailboxes and their
    delegates (`grant_access`) and the mailboxes whose SMTP AUTH is off (`disable_smtp_auth`)
    live here too. Addresses compare case-insensitively, except the maildir names (Dovecot
    lowercases login names: use lowercase addresses).
    """

    root: Path
    passwords: dict[str, str] = field(default_factory=dict)
    identity_provider: LocalIdentityProvider | None = None
    mailboxes: set[str] = field(default_factory=set)  # every address with a maildir that takes mail
    grants: dict[str, set[str]] = field(default_factory=dict)  # shared mailbox -> delegates (lowercase)
    smtp_auth_disabled: set[str] = field(default_factory=set)  # lowercase

    def add(self, address: str, password: str) -> None:
        self.passwords[address] = password
        # One passwd-file per user: Dovecot reads a new file on first lookup, whereas a
        # shared file changed twice within a second may not be re-read.
        (self.root / "users" / address).write_text(f"{address}:{{PLAIN}}{password}::::::\n", encoding="utf-8")
        self.maildir(address)
        self.mailboxes.add(address)

    def add_oauth(self, address: str) -> None:
        """A mailbox without a password: it logs in with XOAUTH2 only, as a user of the identity provider."""
        if self.identity_provider is None:
            raise RuntimeError("these servers have no identity provider")
        self.identity_provider.add_user(address)
        self.maildir(address)
        self.mailboxes.add(address)

    def add_shared(self, address: str) -> None:
        """A shared mailbox: no password and no sign-in of its own; delegates reach it (`grant_access`)."""
        self.maildir(address)
        self.mailboxes.add(address)
        directory = self.root / "grants" / address.lower()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)  # Dovecot's auth process (user dovecot) reads it
        self.grants.setdefault(address.lower(), set())

    def grant_access(self, shared_address: str, delegate_email: str) -> None:
        """Let the tokens of `delegate_email` log in as ``user=shared_address`` (IMAP and SMTP)."""
        if shared_address.lower() not in self.grants:
            self.add_shared(shared_address)
        self.grants[shared_address.lower()].add(delegate_email.lower())
        grant = self.root / "grants" / shared_address.lower() / delegate_email.lower()
        grant.write_text("", encoding="utf-8")
        grant.chmod(0o644)

    def revoke_access(self, shared_address: str, delegate_email: str) -> None:
        self.grants.get(shared_address.lower(), set()).discard(delegate_email.lower())
        (self.root / "grants" / shared_address.lower() / delegate_email.lower()).unlink(missing_ok=True)

    def disable_smtp_auth(self, address: str) -> None:
        """SMTP AUTH of `address` (any mechanism) then answers `SMTP_AUTH_DISABLED`."""
        self.smtp_auth_disabled.add(address.lower())

    def enable_smtp_auth(self, address: str) -> None:
        self.smtp_auth_disabled.discard(address.lower())

    def smtp_auth_is_disabled(self, address: str) -> bool:
        return address.lower() in {disabled.lower() for disabled in self.smtp_auth_disabled}

    def token_allows(self, login: str, token: str, scopes: frozenset[str]) -> bool:
        """Whether `token` may log in as `login`: active, one of `scopes`, its owner's or delegated."""
        if self.identity_provider is None:
            return False
        info = self.identity_provider.token_info(token)
        if info is None or not info["active"] or not scopes & set(info["scopes"]):
            return False
        owner = info["username"].lower()
        return owner == login.lower() or owner in self.grants.get(login.lower(), set())

    def maildir(self, address: str) -> mailbox.Maildir:
        path = self.root / "mail" / address
        box = mailbox.Maildir(path, create=True)
        _give_to_nobody(path)
        return box

    def deliver(self, address: str, data: bytes) -> None:
        if address not in self.passwords and address not in self.mailboxes:
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
        for entry in (directory, *(os.path.join(directory, name) for name in files)):
            try:
                os.chown(entry, nobody.pw_uid, nobody.pw_gid)
            except FileNotFoundError:  # a delivery on the server's thread renamed its tmp/ file meanwhile
                pass


# Dovecot's checkpassword passdb runs this (as user dovecot) for XOAUTH2/OAUTHBEARER logins the
# oauth2 passdb refused: fd 3 holds "user\0token\0"; success means exec'ing argv[1] (Dovecot's
# checkpassword-reply), exit 1 a failed login, 111 a temporary failure. Standard library only.
SHARED_MAILBOX_CHECK = """#!/usr/bin/python3 -IS
import json, os, ssl, sys, urllib.parse, urllib.request

GRANTS, INTROSPECT, CA = {grants!r}, {introspect!r}, {ca!r}
SCOPES = {scopes!r}


def name_ok(name):
    return bool(name) and "/" not in name and not name.startswith(".")


def main():
    with os.fdopen(3, "rb") as stream:
        user, token = (stream.read(65536).split(b"\\0") + [b"", b""])[:2]
    user = user.decode("utf-8", "replace").lower()
    if not name_ok(user) or not token or not os.path.isdir(os.path.join(GRANTS, user)):
        return 1  # not a shared mailbox: nothing for this passdb to say
    request = urllib.request.Request(INTROSPECT, urllib.parse.urlencode({{"token": token}}).encode(), method="POST")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({{}}), urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=CA))
    )
    try:
        with opener.open(request, timeout=5) as answer:
            info = json.load(answer)
    except Exception as exc:
        print("introspection failed:", exc, file=sys.stderr)
        return 111
    owner = str(info.get("username") or "").lower()
    if info.get("active") is not True or not name_ok(owner):
        return 1
    if not os.path.exists(os.path.join(GRANTS, user, owner)):
        return 1
    if not set(str(info.get("scope") or "").split()) & SCOPES:
        return 1
    os.execv(sys.argv[1], sys.argv[1:])


sys.exit(main())
"""


class Dovecot:
    """Dovecot from Debian, configured from a temp dir, with a plain (STARTTLS) and an IMAPS port.

    With an identity provider on the user table: XOAUTH2 and OAUTHBEARER too (see the module doc).
    """

    def __init__(self, root: Path, users: MailUsers, cert: Path, key: Path, *, extra_config: str = ""):
        """``extra_config`` is appended to the generated dovecot.conf (e.g. to change the capabilities)."""
        self.root, self.users = root, users
        self.plain_port, self.tls_port = free_port(), free_port()
        self.config = root / "dovecot.conf"
        for name in ("run", "state", "mail", "users", "grants"):
            (root / name).mkdir(exist_ok=True)
        (root / "grants").chmod(0o755)
        _give_to_nobody(root / "mail")
        mechanisms, oauth_passdbs = "plain login", ""
        provider = users.identity_provider
        if provider is not None:
            mechanisms = "plain login xoauth2 oauthbearer"
            (root / "oauth2.conf.ext").write_text(
                f"""introspection_mode = post
introspection_url = {provider.introspection_url}
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {provider.ca_file}
""",
                encoding="utf-8",
            )
            check = root / "shared-mailbox-check"
            check.write_text(
                SHARED_MAILBOX_CHECK.format(
                    grants=str(root / "grants"),
                    introspect=provider.introspection_url,
                    ca=str(provider.ca_file),
                    scopes=set(IMAP_SCOPES),
                ),
                encoding="utf-8",
            )
            check.chmod(0o755)
            oauth_passdbs = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf.ext
}}
passdb {{
  driver = checkpassword
  mechanisms = xoauth2 oauthbearer
  args = {check}
}}
"""
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
auth_mechanisms = {mechanisms}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
{oauth_passdbs}userdb {{
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
"""
            + (f"{extra_config}\n" if extra_config else ""),
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
    accepted and then dropped, as a server with a silent filter does. ``sender_faults``
    turns on a fault for one sender: ``refuse`` (553 5.1.8), ``defer`` (451 4.7.1 for every
    recipient, every time), and after DATA ``spam`` (554 5.7.1), ``too-large`` (552 5.3.4),
    ``quota`` (550 5.4.5, a daily limit) or ``drop`` (the connection lost). A recipient
    ``greylist*`` gets 451 4.7.1 (``busy*``: 452 4.3.1) the first time a sender offers it a
    mail, and is accepted the next.

    It also adds ``AUTH XOAUTH2`` (aiosmtpd offers a handler's ``auth_<MECHANISM>`` methods):
    a token is checked with `MailUsers.token_allows`. A failure first sends Gmail's ``334``
    challenge (base64 JSON) and answers `XOAUTH2_FAILED` to the client's (empty) reply; with
    `xoauth2_error_challenge` off it answers `XOAUTH2_FAILED` at once.
    """

    def __init__(self, users: MailUsers):
        self.users = users
        self.xoauth2_error_challenge = True
        self.greylisted: set[tuple[str, str]] = set()  # (recipient, sender) offered once already
        # sender -> "refuse" | "defer" | "spam" | "too-large" | "quota" | "drop": faults a test turns on after
        # apply's test mail
        self.sender_faults: dict[str, str] = {}

    async def auth_XOAUTH2(self, server, args: list[str]) -> AuthResult:  # noqa: N802
        async def check(login: str, token: str) -> str | None:
            if not self.users.token_allows(login, token, SMTP_SCOPES):
                return XOAUTH2_FAILED
            if self.users.smtp_auth_is_disabled(login):
                return SMTP_AUTH_DISABLED
            return None

        return await xoauth2.authenticate(
            server, args, check, error_challenge=self.xoauth2_error_challenge, scope=" ".join(sorted(SMTP_SCOPES))
        )

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if address.startswith("refused-sender") or self.sender_faults.get(address) == "refuse":
            return "553 5.1.8 Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.startswith("unknown"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if self.sender_faults.get(envelope.mail_from) == "defer":
            return "451 4.7.1 Try again later"
        busy = address.startswith("busy")
        if (address.startswith("greylist") or busy) and (address, envelope.mail_from) not in self.greylisted:
            self.greylisted.add((address, envelope.mail_from))
            if busy:
                return "452 4.3.1 Insufficient system storage, try again later"
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if envelope.mail_from.startswith("reject-data"):
            return "554 5.6.0 Message content rejected"
        if envelope.mail_from.startswith("slow"):
            await asyncio.sleep(1.5)
        if envelope.mail_from.startswith("discard"):
            return "250 Message accepted for delivery"
        fault = self.sender_faults.get(envelope.mail_from)
        if fault == "spam":
            return "554 5.7.1 Message rejected as spam by Content Filtering"
        if fault == "too-large":
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        if fault == "quota":
            return "550 5.4.5 Daily user sending limit exceeded"
        if fault == "drop":
            server.transport.close()  # the connection is gone before the reply
            return "250 never seen"
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
        self.handler = handler = RejectingHandler(users)
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
                if self.users.smtp_auth_is_disabled(login):
                    return AuthResult(success=False, handled=False, message=SMTP_AUTH_DISABLED)
                return AuthResult(success=True)
        # handled=False makes aiosmtpd answer 535; with True the client would hang.
        return AuthResult(success=False, handled=False)

    @property
    def xoauth2_error_challenge(self) -> bool:
        """Whether a failed XOAUTH2 gets Gmail's 334 JSON challenge before the 535 (the default)."""
        return self.handler.xoauth2_error_challenge

    @xoauth2_error_challenge.setter
    def xoauth2_error_challenge(self, value: bool) -> None:
        self.handler.xoauth2_error_challenge = value

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


class ConnectProxy:
    """An HTTP proxy on 127.0.0.1 that tunnels CONNECT (as a company's proxy does for HTTPS) and remembers
    where each tunnel went; it sees the TLS bytes only."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        proxy = self

        class Tunnel(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.readline(8192).decode("latin-1").split()
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):  # the request's header fields
                    pass
                if len(request) != 3 or request[0] != "CONNECT":
                    self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.targets.append(request[1])
                host, _, port = request[1].rpartition(":")
                try:
                    with socket.create_connection((host, int(port)), timeout=10) as upstream:
                        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        self.wfile.flush()
                        _pipe(self.connection, upstream)
                except OSError:  # either side went away: the tunnel ends, as a proxy's does
                    pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> ConnectProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    while True:
        readable, _, _ = select.select([one, other], [], [], 30)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            (other if source is one else one).sendall(data)
