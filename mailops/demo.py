"""`mailops demo`: the whole job against an embedded mail server, on a fresh machine.

It starts a local identity provider (standing in for Microsoft Entra ID) and mail-devel
(in-memory IMAP + SMTP, taught XOAUTH2 against that provider) on 127.0.0.1, points a
temporary copy of the example config at them, and runs the real commands one after
another: validate, plan, apply, connect (the first Microsoft account consents by device
code, which the demo approves itself), accounts, a round-trip test mail, check, a mail
sent through a project link, one that fails (its attachment is missing), the outbox log
with both. Then mail arrives at the OAuth account (delivered into the server by IMAP APPEND): a
customer's mail, the customer's reply in its thread, an out-of-office answer (automatic mail,
which gets no auto-reply), and a delivery status notification for the project's mail, as
Postfix writes one. `mailops run --once` imports it, and the demo shows the tickets, the outbox
(the auto-reply sent, the project's mail bounced) and the archive, and checks them. A final plan
must say "No changes.". It ends by writing the report of the demo's outbox (`mailops report`)
into ``reports/`` of the directory it was started in, and printing its path. Nothing outside
127.0.0.1 is contacted.
"""

from __future__ import annotations

import datetime as dt
import io
import json
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
ORDER_SUBJECT = "Ihre Bestellung 4711"
ORDER_MAIL = [
    "--project",
    "SHOP",
    "--to",
    CUSTOMER,
    "--subject",
    ORDER_SUBJECT,
    "--body",
    "Ihre Bestellung ist unterwegs.",
]
INVOICE_MAIL = ["--project", "SHOP", "--to", CUSTOMER, "--subject", "Rechnung 4711", "--body", "Anbei Ihre Rechnung."]


def point_config_at(
    source: Path, target: Path, server: EmbeddedMailServer, authority: str
) -> tuple[str, list[str], str]:
    """Copy the config and point every account at the embedded server.

    The first Microsoft account stays an OAuth account of the app at ``authority`` (the
    local identity provider); the others become manual accounts with the server's
    password. Comments and order survive (ruamel round trip). Returns the OAuth
    account's address, the addresses of all accounts, and the subject of the OAuth
    account's auto-reply.
    """
    from mailops.spec.yamldoc import round_trip_yaml

    shutil.copytree(source, target)
    yaml = round_trip_yaml()
    accounts_path, defaults_path = target / "accounts.yaml", target / "defaults.yaml"
    accounts = yaml.load(accounts_path.read_text(encoding="utf-8"))
    oauth = next(
        str(a["address"]) for a in accounts["accounts"] if a["provider"] == "microsoft" and "delegate" not in a
    )
    today = dt.date.today()
    for account in accounts["accounts"]:
        account["imap"] = {"host": HOST, "port": server.imap_port, "encryption": "none"}
        ticket = account.get("ticket")
        since = ticket.get("import_since") if ticket is not None else None
        if isinstance(since, dt.date) and since > today:  # the demo's mail arrives today: import it
            ticket["import_since"] = today
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
    answering = next(a for a in accounts["accounts"] if str(a["address"]) == oauth).get("autoreply") or {}
    return oauth, [str(account["address"]) for account in accounts["accounts"]], str(answering.get("subject", ""))


def _dump(yaml: Any, document: Any, path: Path) -> None:
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    atomic_write(path, buffer.getvalue())


Echo = Callable[[str], None]

Step = tuple[list[str], set[int]]  # mailops's arguments, and the exit codes that mean it did its part


class DemoError(Exception):
    """A step of the demo did not do what it should; the message says what."""


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
            oauth, addresses, reply_subject = point_config_at(
                config_dir, demo_config, server, identity_provider.base_url
            )
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
            sending: list[Step] = [
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
            ]
            closing: list[Step] = [
                (["plan", "--detailed-exitcode"], {0}),
                # The outbox as an analyst sees it: a page with charts, kept after the demo.
                (["--as", "alice", "report", "--out", str(reports_dir)], {0}),
            ]

            def steps(chosen: list[Step]) -> bool:
                for arguments, expected in chosen:
                    echo(f"$ mailops {shlex.join(arguments)}")
                    command = [sys.executable, "-m", "mailops", *arguments]
                    if arguments[0] == "connect":
                        returncode = _connect_approving(command, env, workdir, identity_provider, oauth, echo)
                    else:
                        returncode = subprocess.run(command, env=env, cwd=workdir).returncode
                    echo("")
                    if returncode not in expected:
                        echo(f"The demo stopped: `mailops {arguments[0]}` exited {returncode}.")
                        return False
                return True

            if not steps(sending):
                return 1
            try:
                bounced = _mail_arrives(server, oauth, env, workdir, echo)
            except DemoError as exc:
                echo(f"The demo stopped: {exc}")
                return 1
            working: list[Step] = [
                # The worker: tickets, the archive, auto-replies, bounces; then what it did.
                (["run", "--once"], {0}),
                (["--as", "alice", "tickets", "list"], {0}),
                (["--as", "alice", "outbox", "list"], {0}),
                (["--as", "alice", "outbox", "show", str(bounced)], {0}),
                (["--as", "alice", "archive", "list"], {0}),
            ]
            if not steps(working):
                return 1
            problem = _worker_outcome(env, workdir, bounced, reply_subject)
            if problem is not None:
                echo(f"The demo stopped: {problem}")
                return 1
            if not steps(closing):
                return 1
        echo(
            "Demo complete: every account was verified and sent its test mail, the OAuth account logs in "
            "with XOAUTH2, the project SHOP sent through it, the failed mail is in the outbox log with its "
            "class and remedy, the worker made tickets of the mail that arrived (the customer's reply joined "
            "its ticket), answered the customer once and the out-of-office answer not at all, archived the mail "
            "and marked the project's mail bounced by its delivery report, the report of the outbox is the page "
            "named above, and the final plan has no changes."
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _mailops_json(arguments: list[str], env: dict[str, str], cwd: Path) -> Any:
    """What ``mailops ARGUMENTS --json`` prints, read (not shown)."""
    command = [sys.executable, "-m", "mailops", *arguments, "--json"]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"`mailops {shlex.join(arguments)} --json` exited {result.returncode}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def _mail_arrives(server: EmbeddedMailServer, address: str, env: dict[str, str], cwd: Path, echo: Echo) -> int:
    """Deliver the demo's incoming mail into ``address``'s inbox (IMAP APPEND, as a mail server's delivery
    would leave it): a customer's mail, the customer's reply in its thread, an out-of-office answer, and a
    DSN for the project's order mail, as Postfix writes one. Returns the order mail's outbox entry."""
    from email.utils import format_datetime, make_msgid

    from imapclient import IMAPClient

    sent = _mailops_json(["--as", "alice", "outbox", "list"], env, cwd)
    order = next((e for e in sent if e["subject"] == ORDER_SUBJECT and e["status"] == "sent"), None)
    if order is None:
        raise DemoError("the order mail of the project SHOP is not in the outbox as sent")
    now = dt.datetime.now(dt.UTC)
    date = format_datetime(now.astimezone())
    question = make_msgid(domain="example.org")
    subject = "Bestellung 4711 ist nicht angekommen"
    mails = [
        _text_mail(
            [f"From: Erika Kunde <{CUSTOMER}>", f"To: {address}", f"Subject: {subject}", f"Message-ID: {question}"],
            date,
            "Guten Tag,\n\nmeine Bestellung 4711 ist noch nicht angekommen. Wo ist sie?\n\nErika Kunde\n",
        ),
        _text_mail(
            [
                f"From: Erika Kunde <{CUSTOMER}>",
                f"To: {address}",
                f"Subject: Re: {subject}",
                f"Message-ID: {make_msgid(domain='example.org')}",
                f"In-Reply-To: {question}",
                f"References: {question}",
            ],
            date,
            "Nachtrag: die Sendungsnummer ist 00340434000000004711.\n\nErika Kunde\n",
        ),
        _text_mail(
            [
                "From: Buchhaltung <buchhaltung@example.org>",
                f"To: {address}",
                "Subject: Automatische Antwort: Rechnung 4711",
                f"Message-ID: {make_msgid(domain='example.org')}",
                "Auto-Submitted: auto-replied",
            ],
            date,
            "Ich bin bis Montag nicht im Haus. Ihre Nachricht wird nicht weitergeleitet.\n",
        ),
        _postfix_dsn(address, order, now),
    ]
    echo(
        f"Mail arrives at {address}: a customer's question and her reply to it, an out-of-office answer, and "
        f"a delivery report saying that the order mail ({order['message_id']}) could not be delivered."
    )
    client = IMAPClient(HOST, port=server.imap_port, ssl=False, timeout=10)
    try:
        client.login(address, server.password)
        for raw in mails:
            client.append("INBOX", raw, msg_time=now)
    finally:
        client.logout()
    echo("")
    return int(order["id"])


def _text_mail(headers: list[str], date: str, text: str) -> bytes:
    head = [*headers, f"Date: {date}", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return ("\r\n".join([*head, "Content-Transfer-Encoding: 8bit", "", *text.splitlines(), ""])).encode()


def _postfix_dsn(address: str, order: dict[str, Any], now: dt.datetime) -> bytes:
    """A DSN for the outbox entry ``order`` as Postfix writes it: notification, message/delivery-status,
    and the undelivered message (here its header; the outbox keeps no body)."""
    from email.utils import format_datetime

    recipient = order["to"][0]
    queue_id = "4D7C21E0F3"
    boundary = f"{queue_id}.{int(now.timestamp())}/mx.example.org"
    date = format_datetime(now.astimezone())
    original = (
        f"From: {order['sender_name']} <{order['sender']}>\r\nTo: {recipient}\r\nSubject: {order['subject']}\r\n"
        f"Message-ID: {order['message_id']}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\n(the body of the order mail)\r\n"
    )
    lines = [
        "Return-Path: <>",
        f"Date: {date}",
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        f"To: {address}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        f"Message-Id: <{now:%Y%m%d%H%M%S}.{queue_id}@mx.example.org>",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is the mail system at host mx.example.org.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
        f"<{recipient}>: host mx.example.org[192.0.2.25] said: 550 5.1.1 <{recipient}>:",
        "    Recipient address rejected: User unknown in virtual mailbox table (in reply",
        "    to RCPT TO command)",
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.org",
        f"X-Postfix-Queue-ID: {queue_id}",
        f"X-Postfix-Sender: rfc822; {order['sender']}",
        f"Arrival-Date: {date}",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822;{recipient}",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.example.org",
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User",
        "    unknown in virtual mailbox table",
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message",
        "Content-Type: message/rfc822",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    return ("\r\n".join(lines) + "\r\n" + original + f"\r\n--{boundary}--\r\n").encode()


def _worker_outcome(env: dict[str, str], cwd: Path, order_id: int, reply_subject: str) -> str | None:
    """What is wrong with what `mailops run --once` did (None: nothing): the customer's mail and her reply
    one ticket, one auto-reply sent (to her), the order mail bounced, the mail in the archive."""
    try:
        tickets = _mailops_json(["--as", "alice", "tickets", "list"], env, cwd)
        outbox = _mailops_json(["--as", "alice", "outbox", "list"], env, cwd)
        archive = _mailops_json(["--as", "alice", "archive", "list"], env, cwd)
    except DemoError as exc:
        return str(exc)
    question = [t for t in tickets if t["subject"] == "Bestellung 4711 ist nicht angekommen"]
    if len(question) != 1 or question[0]["message_count"] != 2:
        return "the customer's mail and her reply should be one ticket with two mails"
    replies = [e for e in outbox if e["subject"] == reply_subject and e["status"] == "sent"]
    if [e["to"] for e in replies] != [[CUSTOMER]]:
        return f"one auto-reply should have gone to {CUSTOMER}, and none to the out-of-office answer"
    order = next((e for e in outbox if e["id"] == order_id), None)
    if order is None or order["status"] != "bounced" or order["enhanced_code"] != "5.1.1":
        return "the delivery report should have marked the order mail bounced (5.1.1)"
    if not any(entry["subject"] == "Automatische Antwort: Rechnung 4711" for entry in archive):
        return "the out-of-office answer should be in the archive"
    return None


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
