"""A batch of 10,000 mails through `mailops send --batch`, against a bare aiosmtplib loop, as whole processes.

The server is a cheap aiosmtpd in its own process: AUTH PLAIN/LOGIN on a plain port, every
mail counted and discarded, so neither side pays for delivery and both get the same server.
Real Dovecot (IMAPS) is there only for `mailops apply`'s IMAP check; apply runs once, untimed,
and every mailops run starts from a copy of that state (the account applied, the outbox empty).

Measured, each as its own process (wall time and peak memory as in benchmarks/_measure.py,
interpreter start-up included), on the same server, alternating, in the same run:

(a) `python -m mailops --as alice send --batch mails.jsonl`: the spec's sender, greeting,
    signature of employee alice and HTML template; every attempt written `queued` to the
    SQLite state store before it is sent, then `sent`;
(b) a bare aiosmtplib loop (`python -c`): reads the same JSONL file, fills the same merge
    fields, builds a comparable EmailMessage per mail (From, To, Subject, Date, Message-ID,
    a text part and the HTML part in the same template) and sends it over one connection,
    logging nothing.

After each mailops run (not timed) the outbox must hold one `sent` row per mail and nothing
else, and the server must have counted every mail of either side. Before the timed runs
each side runs once untimed on a small batch, to warm the file cache.

Target: mailops's throughput at least 70 % of the bare loop's (median of --runs runs each).
Run (needs Dovecot, which `make bench` installs):
    .venv/bin/python benchmarks/send_batch.py [--mails N] [--runs N]
Exit code 0 when the target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import Run, measure, measured_by, run_mailops, spread  # noqa: E402
from tests.servers import HOST, Dovecot, MailUsers, free_port, write_certificate  # noqa: E402

TARGET_RATIO = 0.70
WARM_UP_MAILS = 50
SENDER = "shop@example.com"
SENDER_NAME = "Example GmbH"
TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Mail</title></head>
<body><div class="content">{CONTENT}</div><p>Example GmbH · Musterstraße 1 · 10115 Berlin</p></body></html>
"""
GREETING = "Kind regards"
SIGNATURE = "Alice Meyer\nTel. +49 30 1"  # the spec's signature as employee alice fills it (she has no fax)
SUBJECT = "Your order {order} has shipped"
BODY = (
    "Dear {name},\n\n"
    "your order {order} left our warehouse today and should reach you within two working days.\n"
    "You can follow the parcel with the tracking number {tracking}.\n\n"
    "If anything is not as it should be, just answer this mail."
)

# argv: port, login, password. A line on stdin is answered with the number of mails taken so far;
# at the end of stdin the server stops. Prints "ready" once it listens.
_SERVER = """\
import logging, sys, warnings
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

warnings.filterwarnings("ignore")
logging.getLogger("mail.log").setLevel(logging.ERROR)
port, login, password = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()


class Count:
    taken = 0

    async def handle_DATA(self, server, session, envelope):
        Count.taken += 1
        return "250 OK"


def authenticate(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == login and data.password == password
    return AuthResult(success=ok, handled=False)


controller = Controller(
    Count(), hostname="127.0.0.1", port=port, authenticator=authenticate, auth_required=True, auth_require_tls=False
)
controller.start()
print("ready", flush=True)
for _line in sys.stdin:
    print(Count.taken, flush=True)
controller.stop()
"""

# argv: port, login, password, batch file, sender, sender name, template, closing (greeting and signature).
# Prints how many mails it sent.
_BARE_LOOP = """\
import asyncio, html, json, re, sys
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, localtime, make_msgid
import aiosmtplib

port, login, password, batch, sender, name, template, closing = sys.argv[1:]
FIELD = re.compile(r"\\{(\\w+)\\}")


async def main():
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=int(port), start_tls=False)
    await client.connect()
    await client.login(login, password)
    sent = 0
    with open(batch, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            subject = FIELD.sub(lambda m: row[m.group(1)], row["subject"])
            text = FIELD.sub(lambda m: row[m.group(1)], row["body"]) + "\\n\\n" + closing
            markup = "<br>\\n".join(html.escape(part, quote=False) for part in text.split("\\n"))
            message = EmailMessage(policy=SMTP)
            message["From"] = formataddr((name, sender))
            message["To"] = row["to"]
            message["Subject"] = subject
            message["Date"] = format_datetime(localtime())
            message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
            message.set_content(text + "\\n")
            message.add_alternative(template.replace("{CONTENT}", markup), subtype="html")
            await client.send_message(message, sender=sender, recipients=[row["to"]])
            sent += 1
    await client.quit()
    print(sent)


asyncio.run(main())
"""


class CountingServer:
    """The aiosmtpd that counts and discards, in its own process."""

    def __init__(self, login: str, password: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self.port), login, password],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the counting SMTP server did not come up")

    def taken(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def write_spec(config: Path, imap_port: int, smtp_port: int) -> None:
    (config / "templates").mkdir(parents=True)
    (config / "templates" / "mail.html").write_text(TEMPLATE, encoding="utf-8")
    (config / "accounts.yaml").write_text(
        "accounts:\n"
        f"  - address: {SENDER}\n"
        "    provider: manual\n"
        "    display_name: Shop\n"
        f"    username: {SENDER}\n"
        "    password: {env: BENCH_SMTP_PASSWORD}\n"
        f"    imap: {{host: {HOST}, port: {imap_port}, encryption: ssl}}\n"
        f"    smtp: {{host: {HOST}, port: {smtp_port}, encryption: none}}\n",
        encoding="utf-8",
    )
    (config / "defaults.yaml").write_text(
        "defaults:\n"
        f"  email: {SENDER}\n"
        f"  sender_name: {SENDER_NAME}\n"
        '  signature: "{MITARBEITER}\\nTel. {MITARBEITER_TELEFON}\\nFax {MITARBEITER_TELEFAX}"\n'
        f"  greeting: {GREETING}\n"
        "  html_template: templates/mail.html\n"
        "employees:\n"
        '  alice: {name: Alice Meyer, email: alice@example.com, phone: "+49 30 1", groups: [support-team]}\n'
        "queues: [support]\n"
        "policies: {require_encryption: false}\n",  # the counting server has no TLS
        encoding="utf-8",
    )


def write_batch(path: Path, mails: int) -> None:
    with path.open("w", encoding="utf-8") as batch:
        for n in range(mails):
            row = {
                "to": f"customer{n}@example.net",
                "subject": SUBJECT,
                "body": BODY,
                "name": f"Customer {n}",
                "order": f"A-{100000 + n}",
                "tracking": f"00340434{n:010d}",
            }
            batch.write(json.dumps(row, ensure_ascii=False) + "\n")


def outbox_statuses(state: Path) -> dict[str, int]:
    with sqlite3.connect(state) as connection:
        return dict(connection.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())


class Bench:
    def __init__(self, root: Path, env: dict[str, str], server: CountingServer, password: str):
        self.root, self.env, self.server, self.password = root, env, server, password
        self.applied = root / "applied.db"

    def apply(self) -> None:
        env = {**self.env, "MAILOPS_STATE_URL": f"sqlite:///{self.applied}"}
        run = run_mailops("apply", "--auto-approve", env=env)
        if run.exit_code != 0:
            sys.exit(f"apply failed (exit code {run.exit_code}):\n{run.output[-3000:]}")

    def mailops(self, batch: Path, mails: int, tag: str) -> Run:
        state = self.root / f"state-{tag}.db"
        shutil.copyfile(self.applied, state)
        env = {**self.env, "MAILOPS_STATE_URL": f"sqlite:///{state}"}
        before = self.server.taken()
        run = run_mailops("--as", "alice", "send", "--batch", str(batch), env=env)
        if run.exit_code != 0:
            sys.exit(f"mailops send --batch failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        statuses = outbox_statuses(state)
        if statuses != {"sent": mails}:
            sys.exit(f"the outbox should hold {mails} sent attempts and nothing else; it holds {statuses}")
        self._check_taken(before, mails, "mailops")
        state.unlink()
        return run

    def bare_loop(self, batch: Path, mails: int) -> Run:
        closing = f"{GREETING}\n\n{SIGNATURE}"
        command = [sys.executable, "-c", _BARE_LOOP, str(self.server.port), SENDER, self.password, str(batch)]
        before = self.server.taken()
        run = measure([*command, SENDER, SENDER_NAME, TEMPLATE, closing], env=self.env)
        if run.exit_code != 0 or run.output.split()[-1:] != [str(mails)]:
            sys.exit(f"the bare aiosmtplib loop failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        self._check_taken(before, mails, "the bare loop")
        return run

    def _check_taken(self, before: int, mails: int, who: str) -> None:
        taken = self.server.taken() - before
        if taken != mails:
            sys.exit(f"the server counted {taken} mails from {who}, not {mails}")


def report(label: str, mails: int, runs: list[Run]) -> float:
    median, low, high = spread([run.seconds for run in runs])
    peak = max(run.peak_mib for run in runs)
    print(
        f"{label:<26} {mails} mails: {median:6.2f} s median (min {low:.2f}, max {high:.2f}), "
        f"{mails / median:6.0f} mails/s, peak {peak:5.1f} MiB"
    )
    return mails / median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mailops-bench-send-"))
    root.chmod(0o755)
    password = secrets.token_hex(8)
    cert, key = write_certificate(root)
    users = MailUsers(root)
    dovecot = Dovecot(root, users, cert, key)  # creates the users/ and mail/ dirs
    server: CountingServer | None = None
    print(f"peak memory measured by {measured_by()}", flush=True)
    try:
        dovecot.start()
        users.add(SENDER, password)  # after Dovecot and its dirs are up, as tests/conftest.py does
        server = CountingServer(SENDER, password)
        write_spec(root / "config", dovecot.tls_port, server.port)
        batch, warm_up = root / "mails.jsonl", root / "warm-up.jsonl"
        write_batch(batch, args.mails)
        write_batch(warm_up, WARM_UP_MAILS)
        env = {
            **os.environ,
            "MAILOPS_CONFIG_DIR": str(root / "config"),
            "MAILOPS_CA_FILE": str(cert),
            "BENCH_SMTP_PASSWORD": password,
        }
        bench = Bench(root, env, server, password)
        bench.apply()
        bench.bare_loop(warm_up, WARM_UP_MAILS)
        bench.mailops(warm_up, WARM_UP_MAILS, "warm-up")
        bare: list[Run] = []
        mailops: list[Run] = []
        for n in range(args.runs):  # alternating, so that a slower moment of the machine hits both
            bare.append(bench.bare_loop(batch, args.mails))
            mailops.append(bench.mailops(batch, args.mails, str(n)))
            print(f"run {n + 1}: bare loop {bare[-1].seconds:.2f} s, mailops {mailops[-1].seconds:.2f} s", flush=True)
    finally:
        if server is not None:
            server.stop()
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)
    bare_rate = report("bare aiosmtplib loop", args.mails, bare)
    mailops_rate = report("mailops send --batch", args.mails, mailops)
    ratio = mailops_rate / bare_rate
    meets = ratio >= TARGET_RATIO
    print(
        f"mailops reaches {ratio:.0%} of the bare loop's throughput, every attempt logged "
        f"(target >= {TARGET_RATIO:.0%}): {'meets' if meets else 'MISSES'}"
    )
    return 0 if meets else 1


if __name__ == "__main__":
    sys.exit(main())
