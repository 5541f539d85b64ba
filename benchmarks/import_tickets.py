"""Importing 10,000 mails from Dovecot with `mailops run --once`, against a bare imapclient FETCH loop, as whole
processes; a second pass with nothing new; and peak memory against the mailbox size and the batch size.

Real Dovecot (IMAPS, 127.0.0.1) serves two mailboxes: LARGE with --messages mails (10,000) and SMALL with
the first --small of them (2,000). The mails are written straight into the maildirs, as Dovecot's own
delivery would leave them (LF line ends, ``,S=``/``,W=`` sizes in the file name), in a few seconds instead
of 10,000 IMAP APPENDs. They are of realistic, varied kinds and sizes (2-50 KB): plain text, HTML with a
text alternative, some with an attachment (a PDF, base64), a third of them replies in threads
(In-Reply-To and References naming earlier mails). `mailops apply` runs once, untimed (SMTP: the test
server of tests/servers.py, for apply's login check; no test mail lands in the mailboxes), and every
mailops import starts from a copy of that state with an empty message directory. Both accounts import
into tickets (queue and project) and archive (retention 365 days): the mail is kept as synced .eml files
and index rows, as `mailops run` always does.

Measured, each as its own process (wall time and peak memory as in benchmarks/_measure.py, interpreter
start-up included), on the same mailbox, alternating, in the same run:

(a) `python -m mailops run --once --account LARGE` into a fresh state, against a bare imapclient loop
    (`python -c`): log in over the same IMAPS port, EXAMINE the INBOX, UID SEARCH, then UID FETCH
    ``BODY.PEEK[]`` in batches of 200 and discard the bytes. After each mailops run (not timed) the state
    must hold one index row per mail and one ticket per thread, and the message directory one .eml per
    mail. Target: mailops's throughput at least 70 % of the bare loop's (median of --runs runs each).
    Also measured, alternating with both and only for information: the same bare loop with imaplib's
    debug formatting off, as mailops reads (imapclient turns it on, and imaplib then formats every line
    it reads, each message included, for a logger that discards it: more work than the reading). The
    target is judged against the bare loop as a user would write it; this figure shows what is left when
    both read alike.
(b) The same command again with nothing new (the state of the last import): at most 0.2 s as a whole
    process (median of --idle-runs). Beside it, what start-up alone costs: the interpreter (`python -c
    pass`), and the interpreter with the imports of such a run (the command line, the spec, the state
    store, the worker and IMAP), so that the rest is what the pass itself takes.
(c) Peak memory of the import at SMALL and LARGE mailbox sizes with the default batch (flat: the larger
    within 10 % of the smaller), and at LARGE with smaller and larger batches (a wrapper sets
    ``ticket_import.BATCH_MESSAGES`` before running the same command line), which shows what it does
    depend on.

Before the timed runs each side reads the mailbox once untimed (Dovecot indexes a new maildir on its
first SELECT and caches sizes and dates on the first FETCH; the file cache warms up).
Run (needs Dovecot, which `make bench` installs; takes a few minutes):
    .venv/bin/python benchmarks/import_tickets.py [--messages N] [--small N] [--runs N] [--idle-runs N]
Exit code 0 when all three targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import secrets
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._measure import Run, measure, measured_by, run_mailops, spread  # noqa: E402
from tests.servers import HOST, Dovecot, MailUsers, Smtp, write_certificate  # noqa: E402

TARGET_RATIO = 0.70
TARGET_IDLE_SECONDS = 0.2
FLAT_WITHIN = 0.10  # peak memory growth from SMALL to LARGE still called flat
FETCH_BATCH = 200  # the bare loop's UID FETCH batch (mailops's default, ticket_import.BATCH_MESSAGES)
OTHER_BATCHES = (50, 800)  # batch sizes of the memory check besides the default
LARGE, SMALL = "large@example.com", "small@example.com"
MIN_BYTES, MAX_BYTES = 2 * 1024, 50 * 1024

# argv: host, port, CA file, login, password, batch, quiet. Prints "<messages> <bytes>".
_BARE_LOOP = """\
import ssl, sys
from imapclient import IMAPClient

host, port, ca, login, password, batch, quiet = sys.argv[1:8]
client = IMAPClient(host, port=int(port), ssl=True, ssl_context=ssl.create_default_context(cafile=ca), timeout=60)
if quiet == "quiet":  # as mailops reads: imaplib formats no debug output that nobody logs
    client._imap.debug = 0
client.login(login, password)
client.select_folder("INBOX", readonly=True)
uids = client.search(["ALL"])
count = size = 0
for start in range(0, len(uids), int(batch)):
    for data in client.fetch(uids[start : start + int(batch)], ["BODY.PEEK[]"]).values():
        count += 1
        size += len(data[b"BODY[]"])
client.logout()
print(count, size)
"""

# What `mailops run` imports before it does anything: the start-up a pass cannot avoid.
_IMPORTS = (
    "import mailops.cli, mailops.cli.worker, mailops.runtime, mailops.spec, mailops.state.store, "
    "mailops.transport.imap, imapclient"
)

# argv: batch size, then mailops's arguments. The same command line, with another import batch.
_WITH_BATCH = """\
import sys
import mailops.runtime.ticket_import as ticket_import
ticket_import.BATCH_MESSAGES = int(sys.argv[1])
from mailops.cli import app
app(prog_name="mailops", args=sys.argv[2:])
"""


# -- the mail -----------------------------------------------------------------------------------------

_WORDS = (
    "order delivery invoice parcel tracking number customer service please thank you regards return refund "
    "warehouse shipment address payment received question answer product size colour broken missing week "
    "Bestellung Lieferung Rechnung Paket Sendungsnummer Kundendienst bitte danke Grüße Rücksendung Erstattung "
    "Lager Zahlung erhalten Frage Antwort Artikel Größe Farbe kaputt fehlt Woche morgen heute gestern schnell"
).split()


@dataclass(frozen=True)
class Mail:
    raw: bytes  # LF line ends, as a maildir keeps it
    reply: bool  # joins the ticket of an earlier mail


class MailMaker:
    """Deterministic mails of varied kinds and sizes (see the module doc)."""

    def __init__(self, seed: int = 10):
        self.random = random.Random(seed)
        lines, line = [], ""
        for _ in range(60_000):  # a pool of wrapped text lines, sliced per mail (fast and varied)
            word = self.random.choice(_WORDS)
            if len(line) + len(word) >= 72:
                lines.append(line)
                line = ""
            line = f"{line} {word}" if line else word
        self.lines = lines
        self.attachment = base64.encodebytes(self.random.randbytes(40 * 1024)).decode("ascii")
        self.sent: list[tuple[str, str, str]] = []  # message id, subject, references of earlier mails

    def text(self, size: int) -> str:
        start = self.random.randrange(len(self.lines) - 1000)
        taken, total = [], 0
        for line in self.lines[start:]:
            if total >= size:
                break
            taken.append(line)
            total += len(line.encode()) + 1
        return "\n".join(taken)

    def mail(self, n: int) -> Mail:
        rnd = self.random
        message_id = f"<{n}.{rnd.getrandbits(40):x}@kunde.example.org>"
        customer = n % 1500
        headers = [
            f"Return-Path: <kunde{customer}@example.org>",
            "Received: from mx.example.org (mx.example.org [192.0.2.10])\n\tby mail.example.com with ESMTPS id "
            f"{rnd.getrandbits(48):x}\n\tfor <{LARGE}>; Tue, 01 Jul 2025 10:00:00 +0200",
            f"From: Kunde {customer} <kunde{customer}@example.org>",
            f"To: Support <{LARGE}>",
        ]
        if rnd.random() < 0.2:
            headers.append("Cc: office@example.com, Buchhaltung <buchhaltung@example.com>")
        day, minute = 1 + n % 28, n % 60
        headers.append(f"Date: Tue, {day:02d} Jul 2025 10:{minute:02d}:00 +0200")
        reply = bool(self.sent) and rnd.random() < 0.33
        if reply:
            parent_id, parent_subject, parent_refs = self.sent[
                rnd.randrange(max(0, len(self.sent) - 500), len(self.sent))
            ]
            subject = parent_subject if parent_subject.startswith("Re: ") else f"Re: {parent_subject}"
            references = f"{parent_refs} {parent_id}".strip()
            headers += [f"Subject: {subject}", f"In-Reply-To: {parent_id}", f"References: {references}"]
        else:
            subject = f"Bestellung A-{100000 + n}: {' '.join(rnd.sample(_WORDS, 4))}"
            references = ""
            headers.append(f"Subject: {subject}")
        headers += [f"Message-ID: {message_id}", "MIME-Version: 1.0", "X-Mailer: Bench Mail 1.0"]
        self.sent.append((message_id, subject, " ".join(references.split()[-8:])))
        kind = rnd.random()
        if kind < 0.45:  # plain text, 2-15 KB
            body = self.text(rnd.randrange(MIN_BYTES, 15 * 1024))
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            raw = "\n".join(headers) + "\n\n" + body + "\n"
        elif kind < 0.88:  # HTML with its text alternative, 5-40 KB
            text = self.text(rnd.randrange(2 * 1024, 16 * 1024))
            html = "".join(f"<p>{line}</p>\n" for line in text.split("\n"))
            boundary = f"alt-{n}-{rnd.getrandbits(32):x}"
            headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
            raw = (
                "\n".join(headers)
                + f"\n\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                + text
                + f"\n--{boundary}\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                + f"<!DOCTYPE html><html><body>\n{html}</body></html>\n--{boundary}--\n"
            )
        else:  # text with a PDF attached, 20-50 KB
            text = self.text(rnd.randrange(MIN_BYTES, 8 * 1024))
            attached = self.attachment[: rnd.randrange(16 * 1024, 40 * 1024) // 77 * 77]
            boundary = f"mix-{n}-{rnd.getrandbits(32):x}"
            headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
            raw = (
                "\n".join(headers)
                + f"\n\n--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                + text
                + f'\n--{boundary}\nContent-Type: application/pdf; name="Rechnung-{n}.pdf"\n'
                + f'Content-Disposition: attachment; filename="Rechnung-{n}.pdf"\nContent-Transfer-Encoding: base64\n\n'
                + attached
                + f"--{boundary}--\n"
            )
        data = raw.encode("utf-8")[:MAX_BYTES]
        return Mail(data, reply)


def fill_maildir(users: MailUsers, address: str, mails: list[Mail]) -> None:
    """Write ``mails`` into the address's maildir as Dovecot's delivery leaves them (see the module doc)."""
    box = users.root / "mail" / address
    users.maildir(address)  # creates cur/ new/ tmp/
    now = 1_751_356_800
    for n, mail in enumerate(mails):
        crlf_size = len(mail.raw) + mail.raw.count(b"\n")
        name = f"{now + n}.M{n}P{os.getpid()}.bench,S={len(mail.raw)},W={crlf_size}:2,"
        (box / "cur" / name).write_bytes(mail.raw)
    users.maildir(address)  # hands the files to Dovecot's mail user


# -- the runs ---------------------------------------------------------------------------------------


def write_spec(config: Path, imap_port: int, smtp_port: int) -> None:
    config.mkdir(parents=True)
    accounts = "".join(
        f"  - address: {address}\n"
        "    provider: manual\n"
        f"    display_name: {address.split('@')[0]}\n"
        f"    username: {address}\n"
        "    password: {env: BENCH_IMAP_PASSWORD}\n"
        f"    imap: {{host: {HOST}, port: {imap_port}, encryption: ssl}}\n"
        f"    smtp: {{host: {HOST}, port: {smtp_port}, encryption: ssl}}\n"
        "    ticket: {enabled: true, default_queue: support, default_project: SHOP}\n"
        "    archive: {enabled: true, retention_days: 365}\n"
        for address in (LARGE, SMALL)
    )
    (config / "accounts.yaml").write_text(
        f"accounts:\n{accounts}projects:\n  SHOP: {{email: {LARGE}}}\n", encoding="utf-8"
    )
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {LARGE}\n  sender_name: Example GmbH\nqueues: [support]\n"
        "policies: {test_mail: {on_apply: false}}\n",
        encoding="utf-8",
    )


def count_files(directory: Path) -> int:
    return sum(len([name for name in files if name.endswith(".eml")]) for _dir, _dirs, files in os.walk(directory))


class Bench:
    def __init__(self, root: Path, env: dict[str, str], dovecot: Dovecot, ca: Path, password: str):
        self.root, self.env, self.dovecot, self.ca, self.password = root, env, dovecot, ca, password
        self.applied = root / "applied.db"
        self.runs = 0
        self.kept: dict[str, str] = {}  # the environment of the import whose state is kept

    def apply(self) -> None:
        env = {**self.env, "MAILOPS_STATE_URL": f"sqlite:///{self.applied}"}
        run = run_mailops("apply", "--auto-approve", env=env)
        if run.exit_code != 0:
            sys.exit(f"apply failed (exit code {run.exit_code}):\n{run.output[-3000:]}")

    def fresh(self) -> tuple[Path, Path, dict[str, str]]:
        """A copy of the applied state and an empty message directory."""
        self.runs += 1
        state, messages = self.root / f"state-{self.runs}.db", self.root / f"messages-{self.runs}"
        shutil.copyfile(self.applied, state)
        env = {**self.env, "MAILOPS_STATE_URL": f"sqlite:///{state}", "MAILOPS_MESSAGE_DIR": str(messages)}
        return state, messages, env

    def mailops(self, address: str, mails: list[Mail], *, batch: int | None = None, keep: bool = False) -> Run:
        state, messages, env = self.fresh()
        arguments = ["run", "--once", "--account", address]
        if batch is None:
            run = run_mailops(*arguments, env=env)
        else:
            run = measure([sys.executable, "-c", _WITH_BATCH, str(batch), *arguments], env=env)
        if run.exit_code != 0 or f"{address}: imported {len(mails)}, skipped 0" not in run.output:
            sys.exit(f"mailops run --once failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        self._check(state, messages, address, mails)
        if keep:
            self.kept = env
        # The files stay until the end: ext4 creates files slowly for a while in block groups where many
        # were just deleted, which would slow the next run down for a reason no real import has.
        return run

    def _check(self, state: Path, messages: Path, address: str, mails: list[Mail]) -> None:
        with sqlite3.connect(state) as connection:
            rows = connection.execute("SELECT count(*) FROM messages WHERE account = ?", (address,)).fetchone()[0]
            tickets = connection.execute("SELECT count(*) FROM tickets WHERE account = ?", (address,)).fetchone()[0]
        threads = sum(not mail.reply for mail in mails)
        files = count_files(messages)
        if (rows, tickets, files) != (len(mails), threads, len(mails)):
            sys.exit(
                f"after the import: {rows} index rows, {tickets} tickets, {files} .eml files; "
                f"expected {len(mails)}, {threads}, {len(mails)}"
            )

    def idle(self) -> Run:
        """The same command once more on the state of the last import: nothing is new."""
        run = run_mailops("run", "--once", "--account", LARGE, env=self.kept)
        if run.exit_code != 0 or f"{LARGE}: imported 0, skipped 0" not in run.output:
            sys.exit(f"the second mailops run --once failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        return run

    def bare_loop(self, address: str, mails: list[Mail], *, quiet: bool = False) -> Run:
        port = str(self.dovecot.tls_port)
        command = [sys.executable, "-c", _BARE_LOOP, HOST, port, str(self.ca), address, self.password, str(FETCH_BATCH)]
        run = measure([*command, "quiet" if quiet else "as-is"], env=self.env)
        if run.exit_code != 0 or run.output.split()[:1] != [str(len(mails))]:
            sys.exit(f"the bare imapclient loop failed (exit code {run.exit_code}):\n{run.output[-3000:]}")
        return run


def rate(label: str, count: int, runs: list[Run]) -> float:
    median, low, high = spread([run.seconds for run in runs])
    peak = max(run.peak_mib for run in runs)
    print(
        f"{label:<28} {count} mails: {median:6.2f} s median (min {low:.2f}, max {high:.2f}), "
        f"{count / median:6.0f} mails/s, peak {peak:5.1f} MiB"
    )
    return count / median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-runs", type=int, default=11)
    args = parser.parse_args()
    if not 0 < args.small < args.messages:
        parser.error("--small must be between 0 and --messages")
    root = Path(tempfile.mkdtemp(prefix="mailops-bench-import-"))
    root.chmod(0o755)  # Dovecot's processes run as other users and must reach the files
    password = secrets.token_hex(8)
    cert, key = write_certificate(root)
    users = MailUsers(root)
    dovecot, smtp = Dovecot(root, users, cert, key), Smtp(users, cert, key)
    print(f"peak memory measured by {measured_by()}", flush=True)
    try:
        dovecot.start()
        smtp.start()
        users.add(LARGE, password)
        users.add(SMALL, password)
        maker = MailMaker()
        mails = [maker.mail(n) for n in range(args.messages)]
        fill_maildir(users, LARGE, mails)
        fill_maildir(users, SMALL, mails[: args.small])
        sizes = sorted(len(mail.raw) for mail in mails)
        print(
            f"{len(mails)} mails written into the maildir: {sum(sizes) / 2**20:.0f} MiB, "
            f"{sizes[0] / 1024:.1f}-{sizes[-1] / 1024:.1f} KB (median {sizes[len(sizes) // 2] / 1024:.1f} KB), "
            f"{sum(mail.reply for mail in mails)} replies in threads",
            flush=True,
        )
        write_spec(root / "config", dovecot.tls_port, smtp.tls_port)
        env = {
            **os.environ,
            "MAILOPS_CONFIG_DIR": str(root / "config"),
            "MAILOPS_CA_FILE": str(cert),
            "BENCH_IMAP_PASSWORD": password,
        }
        bench = Bench(root, env, dovecot, cert, password)
        bench.apply()
        for address, box in ((LARGE, mails), (SMALL, mails[: args.small])):  # untimed: indexes, caches
            bench.bare_loop(address, box)
            bench.mailops(address, box)
        print("warmed up", flush=True)
        bare: list[Run] = []
        quiet: list[Run] = []
        mailops: list[Run] = []
        for n in range(args.runs):  # alternating, so that a slower moment of the machine hits all
            bare.append(bench.bare_loop(LARGE, mails))
            mailops.append(bench.mailops(LARGE, mails, keep=n == args.runs - 1))
            quiet.append(bench.bare_loop(LARGE, mails, quiet=True))
            print(
                f"run {n + 1}: bare loop {bare[-1].seconds:.2f} s, mailops {mailops[-1].seconds:.2f} s, "
                f"bare loop without imaplib's debug formatting {quiet[-1].seconds:.2f} s",
                flush=True,
            )
        bench.idle()  # untimed: warms the file cache for this path
        idle = [bench.idle() for _ in range(args.idle_runs)]
        interpreter = [measure([sys.executable, "-c", "pass"]).seconds for _ in range(args.idle_runs)]
        imports = [measure([sys.executable, "-c", _IMPORTS], env=env).seconds for _ in range(args.idle_runs)]
        small_peak = max(bench.mailops(SMALL, mails[: args.small]).peak_mib for _ in range(2))
        batches = {batch: bench.mailops(LARGE, mails, batch=batch).peak_mib for batch in OTHER_BATCHES}
    finally:
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)

    print()
    bare_rate = rate("bare imapclient FETCH loop", len(mails), bare)
    quiet_rate = rate("the same, debug formatting off", len(mails), quiet)
    mailops_rate = rate("mailops run --once", len(mails), mailops)
    ratio = mailops_rate / bare_rate
    fast = ratio >= TARGET_RATIO
    print(
        f"(a) mailops imports at {ratio:.0%} of the bare loop's throughput, every mail a synced .eml, an index "
        f"row and a ticket (target >= {TARGET_RATIO:.0%}): {'meets' if fast else 'MISSES'}"
    )
    print(
        f"    against a bare loop that, like mailops, turns off imaplib's debug formatting (imapclient turns it "
        f"on): {mailops_rate / quiet_rate:.0%}"
    )

    idle_median, idle_low, idle_high = spread([run.seconds for run in idle])
    interpreter_median, imports_median = spread(interpreter)[0], spread(imports)[0]
    quick = idle_median <= TARGET_IDLE_SECONDS
    print(
        f"(b) second mailops run --once, nothing new: {idle_median:.3f} s median (min {idle_low:.3f}, "
        f"max {idle_high:.3f}) as a whole process (target <= {TARGET_IDLE_SECONDS:.1f} s): "
        f"{'meets' if quick else 'MISSES'}"
    )
    print(
        f"    of which start-up: the interpreter {interpreter_median:.3f} s (python -c pass), with the imports of "
        f"a run {imports_median:.3f} s; the rest (settings, spec, state store, IMAP login, the pass) about "
        f"{idle_median - imports_median:.3f} s"
    )

    large_peak = max(run.peak_mib for run in mailops)
    growth = large_peak / small_peak - 1
    flat = growth <= FLAT_WITHIN
    print(
        f"(c) peak memory with batches of {FETCH_BATCH}: {small_peak:.1f} MiB at {args.small} mails, "
        f"{large_peak:.1f} MiB at {len(mails)} ({growth:+.0%}; target: within {FLAT_WITHIN:.0%}): "
        f"{'flat, meets' if flat else 'grows with the mailbox, MISSES'}"
    )
    by_batch = {**batches, FETCH_BATCH: large_peak}
    print(
        f"    at {len(mails)} mails by batch size: "
        + ", ".join(f"{batch} mails: {peak:.1f} MiB" for batch, peak in sorted(by_batch.items()))
    )
    return 0 if fast and quick and flat else 1


if __name__ == "__main__":
    sys.exit(main())
