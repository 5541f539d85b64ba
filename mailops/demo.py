"""`mailops demo`: the whole job against an embedded mail server, on a fresh machine.

It starts a local identity provider (standing in for Microsoft Entra ID) and mail-devel
(in-memory IMAP + SMTP, taught XOAUTH2 against that provider) on 127.0.0.1, points a
temporary copy of the example config at them, and runs the real commands one after
another: validate, plan, apply, connect (the first Microsoft account consents by device
code, which the demo approves itself), accounts, a round-trip test mail, check, a mail
sent through a project link, one that fails (its attachment is missing), the outbox log
with both, and a final plan that must say "No changes.". It ends by writing the report of the
demo's outbox (`mailops report`) into ``reports/`` of the directory it was started in, and
printing its path. Nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import io
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.fileio import atomic_write
from mailops.localservers.certificates import write_self_signed_certificate

HOST = "127.0.0.1"
PASSWORD_ENV = "MAILOPS_DEMO_PASSWORD"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EmbeddedMailServer:
    """mail-devel: every address has its own mailbox; all share one password."""

    imap_port: int
    smtp_port: int
    password: str
    cert: Path


@contextmanager
def embedded_mail_server(
    directory: Path, cert: Path, key: Path, introspection_url: str
) -> Iterator[EmbeddedMailServer]:
    """mail-devel with XOAUTH2, checking tokens at ``introspection_url`` (trusting ``cert``)."""
    server = EmbeddedMailServer(free_port(), free_port(), secrets.token_urlsafe(16), cert)
    log = (directory / "mail-devel.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailops.localservers.mailserver",
            "--oauth-introspect",
            introspection_url,
            "--oauth-ca",
            str(cert),
            "--host",
            HOST,
            "--multi-user",
            "--auth-required",
            "--no-http",
            "--imap-port",
            str(server.imap_port),
            "--smtp-port",
            str(server.smtp_port),
            "--smtps-port",
            str(free_port()),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        env={**os.environ, "MAIL_PASSWORD": server.password},  # not on the command line, where ps shows it
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_until_ready(server, process, directory / "mail-devel.log")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_until_ready(server: EmbeddedMailServer, process: subprocess.Popen[bytes], log: Path) -> None:
    from imapclient import IMAPClient

    deadline = time.monotonic() + 30
    while True:
        try:
            client = IMAPClient(HOST, port=server.imap_port, ssl=False, timeout=2)
            client.login("probe@example.com", server.password)
            client.logout()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the embedded mail server did not start:\n{log.read_text(errors='replace')}"
                ) from None
            time.sleep(0.1)


DEMO_CLIENT_ID = "mailops-demo"
CUSTOMER = "kunde@example.org"
ORDER_MAIL = [
    "--project",
    "SHOP",
    "--to",
    CUSTOMER,
    "--subject",
    "Ihre Bestellung 4711",
    "--body",
    "Ihre Bestellung ist unterwegs.",
]
INVOICE_MAIL = ["--project", "SHOP", "--to", CUSTOMER, "--subject", "Rechnung 4711", "--body", "Anbei Ihre Rechnung."]


def point_config_at(source: Path, target: Path, server: EmbeddedMailServer, authority: str) -> tuple[str, list[str]]:
    """Copy the config and point every account at the embedded server.

    The first Microsoft account stays an OAuth account of the app at ``authority`` (the
    local identity provider); the others become manual accounts with the server's
    password. Comments and order survive (ruamel round trip). Returns the OAuth
    account's address and the addresses of all accounts.
    """
    from mailops.spec.yamldoc import round_trip_yaml

    shutil.copytree(source, target)
    yaml = round_trip_yaml()
    accounts_path, defaults_path = target / "accounts.yaml", target / "defaults.yaml"
    accounts = yaml.load(accounts_path.read_text(encoding="utf-8"))
    oauth = next(
        str(a["address"]) for a in accounts["accounts"] if a["provider"] == "microsoft" and "delegate" not in a
    )
    for account in accounts["accounts"]:
        account["imap"] = {"host": HOST, "port": server.imap_port, "encryption": "none"}
        account["smtp"] = {"host": HOST, "port": server.smtp_port, "encryption": "starttls"}
        if str(account["address"]) == oauth:
            continue
        account["provider"] = "manual"
        for oauth_only in ("delegate", "aliases"):
            account.pop(oauth_only, None)
        account.setdefault("display_name", account["address"].split("@")[0])
        account["username"] = account["address"]
        account["password"] = {"env": PASSWORD_ENV}
    _dump(yaml, accounts, accounts_path)
    defaults = yaml.load(defaults_path.read_text(encoding="utf-8"))
    # The embedded server offers no IMAP TLS; SMTP still runs with STARTTLS.
    defaults["policies"]["require_encryption"] = False
    defaults["oauth"]["microsoft"] = {"client_id": DEMO_CLIENT_ID, "tenant": "organizations", "authority": authority}
    _dump(yaml, defaults, defaults_path)
    return oauth, [str(account["address"]) for account in accounts["accounts"]]


def _dump(yaml: Any, document: Any, path: Path) -> None:
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    atomic_write(path, buffer.getvalue())


Echo = Callable[[str], None]


def run_demo(config_dir: Path, echo: Echo = print, reports_dir: Path = Path("reports")) -> int:
    """Run the demo; 0 when every step did what it should. The report is written into ``reports_dir``."""
    from mailops.localservers.idp import LocalIdentityProvider
    from mailops.state.tokens import make_key

    reports_dir = reports_dir.resolve()  # the steps run in the demo's own directory, which goes away

    workdir = Path(tempfile.mkdtemp(prefix="mailops-demo-"))
    workdir.chmod(0o700)
    try:
        cert, key = write_self_signed_certificate(workdir)
        echo(f"Starting a local identity provider and an embedded mail server on {HOST} …")
        with (
            LocalIdentityProvider(cert, key) as identity_provider,
            embedded_mail_server(workdir, cert, key, identity_provider.introspection_url) as server,
        ):
            identity_provider.device_interval = 1
            identity_provider.add_client(DEMO_CLIENT_ID)
            echo(f"  identity provider at {identity_provider.base_url} (standing in for Microsoft Entra ID)")
            echo(f"  IMAP on port {server.imap_port}, SMTP with STARTTLS on port {server.smtp_port}, both with XOAUTH2")
            demo_config = workdir / "config"
            oauth, addresses = point_config_at(config_dir, demo_config, server, identity_provider.base_url)
            identity_provider.add_user(oauth)
            echo(
                f"Copied {config_dir} to {demo_config}: {oauth} connects by OAuth, the other "
                f"{len(addresses) - 1} accounts log in with the server's password.\n"
            )
            env = {
                **os.environ,
                PASSWORD_ENV: server.password,
                "MAILOPS_CONFIG_DIR": str(demo_config),
                "MAILOPS_STATE_URL": f"sqlite:///{workdir / 'state.db'}",
                "MAILOPS_CA_FILE": str(server.cert),
                "MAILOPS_SECRET_KEY": make_key(),
                "COLUMNS": os.environ.get("COLUMNS", "120"),
            }
            steps: list[tuple[list[str], set[int]]] = [
                (["validate"], {0}),
                (["plan", "--detailed-exitcode"], {2}),
                (["apply", "--auto-approve"], {0}),
                (["connect", oauth, "--device-code"], {0}),
                (["accounts"], {0}),
                (["test-mail", oauth, "--wait"], {0}),
                (["check"], {0}),
                # The project SHOP sends from the OAuth account, with alice's signature.
                (["--as", "alice", "send", *ORDER_MAIL, "--explain"], {0}),
                # Its invoice is missing: the seed's "Could not access file", logged, nothing sent.
                (["--as", "alice", "send", *INVOICE_MAIL, "--attach", str(workdir / "Rechnung-4711.pdf")], {1}),
                (["--as", "alice", "outbox", "list"], {0}),
                (["plan", "--detailed-exitcode"], {0}),
                # The outbox as an analyst sees it: a page with charts, kept after the demo.
                (["--as", "alice", "report", "--out", str(reports_dir)], {0}),
            ]
            for arguments, expected in steps:
                echo(f"$ mailops {shlex.join(arguments)}")
                command = [sys.executable, "-m", "mailops", *arguments]
                if arguments[0] == "connect":
                    returncode = _connect_approving(command, env, workdir, identity_provider, oauth, echo)
                else:
                    returncode = subprocess.run(command, env=env, cwd=workdir).returncode
                echo("")
                if returncode not in expected:
                    echo(f"The demo stopped: `mailops {arguments[0]}` exited {returncode}.")
                    return 1
        echo(
            "Demo complete: every account was verified and sent its test mail, the OAuth account logs in "
            "with XOAUTH2, the project SHOP sent through it, the failed mail is in the outbox log with its "
            "class and remedy, the report of the outbox is the page named above, and the final plan has no "
            "changes."
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _connect_approving(
    command: list[str], env: dict[str, str], cwd: Path, identity_provider: Any, address: str, echo: Echo
) -> int:
    """Run `mailops connect` and play the person: approve the device code it shows, as ``address``."""
    import re

    process = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        echo(line.rstrip("\n"))
        code = re.search(r"enter the code (\S+)", line)
        if code:
            echo(f"(The demo approves code {code.group(1)} itself, as {address} signing in at the identity provider.)")
            identity_provider.approve_device_code(code.group(1), address)
            break
    for line in process.stderr:
        echo(line.rstrip("\n"))
    return process.wait()
