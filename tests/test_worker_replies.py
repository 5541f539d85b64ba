"""`mailops run` beyond tickets, against the real Dovecot and the test SMTP server: the archive with its
retention and `mailops archive`, auto-replies (once per sender and day, never to automatic mail, no
loops) and bounces (DSNs as Postfix and Exchange send them) matched to the outbox."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailops.cli import app
from mailops.runtime.archive import MAX_CONVERTED_HTML, message_text
from mailops.runtime.autoreply import own_addresses, why_not_answer
from mailops.runtime.dsn import read_delivery_report
from mailops.runtime.headers import MAX_MIME_BOUNDARIES, header_block
from mailops.runtime.rawstore import RawStore
from tests.test_send import outbox_rows, received
from tests.test_worker import MAILOPS, Mailbox, rows, run, stored, ticket

runner = CliRunner()
REPLY_SUBJECT = "We got your message"
REPLY = "{enabled: true, once_per_day_per_sender: true, subject: We got your message, body: <p>Thanks!</p>}"
EVERY_MAIL_REPLY = "{enabled: true, once_per_day_per_sender: false, subject: We got your message, body: <p>Hi</p>}"


def write_spec(directory: Path, mail_servers, accounts: list, settings: dict, *, visible: dict | None = None) -> Path:
    """Accounts with their `ticket:`, `archive:` and `autoreply:` (by address: {"archive": "{...}", ...});
    the first is the default sender; defaults copy every mail to an office address."""
    config = directory / "config"
    config.mkdir(parents=True, exist_ok=True)
    entries = []
    for account in accounts:
        extra = {"ticket": "{enabled: false}"} | settings.get(account.address, {})
        if visible and account.address in visible:
            extra["visible_to"] = visible[account.address]
        entries.append(account.yaml(mail_servers, **extra))
    projects = f"projects:\n  SHOP: {{email: {accounts[0].address}}}\n"
    (config / "accounts.yaml").write_text("accounts:\n" + "".join(entries) + projects, encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {accounts[0].address}\n  sender_name: Example GmbH\n"
        "  cc: [office@example.org]\n"
        '  greeting: "Kind regards\\n{MITARBEITER}"\n'
        "employees:\n  alice: {name: Alice, groups: [support-team]}\n  bob: {name: Bob, groups: [sales-team]}\n"
        "queues: [support, sales]\n"
        "policies: {outbox: {keep_bodies_days: 1}}\n",
        encoding="utf-8",
    )
    return config


def applied(directory: Path, mail_servers, accounts: list, settings: dict, **kwargs) -> None:
    write_spec(directory, mail_servers, accounts, settings, **kwargs)
    result = run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    for account in accounts:  # apply's test mails are not what these tests look at
        box = mail_servers.users.maildir(account.address)
        for key in list(box.keys()):
            box.remove(key)


def inbound(sender: str, subject: str, message_id: str, *headers: str, to: str = "support@example.com") -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        "Date: Tue, 01 Jul 2025 10:00:00 +0200",
        f"Message-ID: {message_id}",
        *headers,
    ]
    return ("\r\n".join(lines) + f"\r\n\r\nText of {subject}.\r\n").encode()


def days_ago(days: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)


def replies(engine_env) -> list[dict]:
    return [row for row in outbox_rows(engine_env) if row["subject"] == REPLY_SUBJECT]


def line_of(result, address: str) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith(f"{address}:"))


# -- the archive -------------------------------------------------------------------------------------


def test_the_archive_keeps_one_copy_and_its_retention_spares_open_tickets(engine_env, mail_servers, new_account):
    shop, closed, archive_only, forever = new_account(), new_account(), new_account(), new_account()
    month = "{enabled: true, retention_days: 30}"
    settings = {
        shop.address: {"ticket": ticket(), "archive": month},
        closed.address: {"ticket": ticket(auto_close=True), "archive": month},
        archive_only.address: {"archive": month},
        forever.address: {"archive": "{enabled: true, retention_days: 0}"},
    }
    applied(engine_env, mail_servers, [shop, closed, archive_only, forever], settings)

    def old(name: str) -> bytes:
        return inbound("Kunde <kunde@example.org>", f"Old {name}", f"<old-{name}@example.org>")

    Mailbox(mail_servers, shop).append(old("open"), when=days_ago(31))
    Mailbox(mail_servers, closed).append(old("closed"), when=days_ago(31))
    Mailbox(mail_servers, archive_only).append(old("archived"), when=days_ago(31))
    Mailbox(mail_servers, archive_only).append(old("recent"), when=days_ago(29))
    Mailbox(mail_servers, forever).append(old("forever"), when=days_ago(400))

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert line_of(result, shop.address) == (
        f"{shop.address}: imported 1, skipped 0; archived 1; 1 past the retention kept for their open ticket"
    )
    assert line_of(result, closed.address) == (
        f"{closed.address}: imported 1, skipped 0; archived 1; purged 1 from the archive (older than 30 days)"
    )
    assert line_of(result, archive_only.address) == (
        f"{archive_only.address}: imported 2, skipped 0; archived 2; purged 1 from the archive (older than 30 days)"
    )
    assert line_of(result, forever.address) == f"{forever.address}: imported 1, skipped 0; archived 1"

    index = {row["dedupe_key"]: row for row in rows(engine_env, "messages")}
    by_subject = {row["subject"]: row for row in index.values()}
    # One copy: the open ticket's mail is its archive entry too, with its file.
    kept = by_subject["Old open"]
    assert kept["ticket_id"] is not None and kept["archive_state"] == "archived" and stored(engine_env, kept)
    assert by_subject["Old recent"]["archive_state"] == "archived"
    assert by_subject["Old forever"]["archive_state"] == "archived"
    purged = [row for row in index.values() if row["archive_state"] == "purged"]
    assert len(purged) == 2 and all(row["sender"] == "" and row["subject"] == "" for row in purged)
    for row in purged:  # the mail itself is gone; the row stays, so that it is never imported again
        assert not row["raw_kept"]
        sha = row["raw_sha256"]
        assert not (engine_env / "messages" / sha[:2] / f"{sha}.eml").exists()
    assert [t["status"] for t in rows(engine_env, "tickets") if t["account"] == closed.address] == ["closed"]

    # A rebuilt mailbox with the same mail: the purged message is recognised, not archived again.
    box = Mailbox(mail_servers, archive_only)
    box.recreate(box.uidvalidity() + 5)
    box.append(old("archived"), when=days_ago(31))
    again = run("run", "--once")
    assert again.exit_code == 0, again.output
    assert line_of(again, archive_only.address).startswith(
        f"{archive_only.address}: imported 0, skipped 1 (1 already stored)"
    )
    assert line_of(again, shop.address) == (
        f"{shop.address}: imported 0, skipped 0; 1 past the retention kept for their open ticket"
    )
    listed = json.loads(run("--as", "alice", "archive", "list", "--json").stdout)
    assert sorted(entry["subject"] for entry in listed) == ["Old forever", "Old open", "Old recent"]


def test_archive_commands_show_only_what_the_user_may_see(engine_env, mail_servers, new_account) -> None:
    shop, sales = new_account(), new_account()
    archive = "{enabled: true, retention_days: 0}"
    applied(
        engine_env,
        mail_servers,
        [shop, sales],
        {shop.address: {"archive": archive}, sales.address: {"archive": archive}},
        visible={sales.address: "[sales-team]"},
    )
    html = (
        b"From: Anna <anna@example.org>\r\nTo: shop@example.com\r\nSubject: Invoice 42\r\n"
        b"Message-ID: <inv-42@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Please pay the <b>Lieferschein</b> soon.</p>\r\n"
    )
    Mailbox(mail_servers, shop).append(html, inbound("Ben <ben@example.org>", "Hello", "<hello@example.org>"))
    Mailbox(mail_servers, sales).append(inbound("Cleo <cleo@example.org>", "Secret offer", "<offer@example.org>"))
    assert run("run", "--once").exit_code == 0
    entries = {row["subject"]: row["id"] for row in rows(engine_env, "messages")}

    seen = json.loads(run("--as", "alice", "archive", "list", "--json").stdout)
    assert sorted(entry["subject"] for entry in seen) == ["Hello", "Invoice 42"]
    assert len(json.loads(run("--as", "bob", "archive", "list", "--json").stdout)) == 3
    only_sales = run("--as", "bob", "archive", "list", "--account", sales.address, "--json")
    assert [entry["subject"] for entry in json.loads(only_sales.stdout)] == ["Secret offer"]
    later = run("--as", "bob", "archive", "list", "--since", "2999-01-01", "--json")
    assert json.loads(later.stdout) == []

    # Search reads the index and the text (HTML as text), ignoring case; hidden accounts stay hidden.
    by_body = json.loads(run("--as", "alice", "archive", "search", "lieferschein", "--json").stdout)
    assert [entry["subject"] for entry in by_body] == ["Invoice 42"]
    by_sender = json.loads(run("--as", "alice", "archive", "search", "BEN@", "--json").stdout)
    assert [entry["subject"] for entry in by_sender] == ["Hello"]
    assert json.loads(run("--as", "alice", "archive", "search", "secret", "--json").stdout) == []
    assert len(json.loads(run("--as", "bob", "archive", "search", "secret", "--json").stdout)) == 1
    # The search text in the title is text: not markup, and its control characters escaped.
    for typed, title in (("[/]", "[/]"), ("[link=http://x]y", "[link=http://x]y"), ("\x1b[2Jz", "\\x1b[2Jz")):
        titled = run("--as", "alice", "archive", "search", typed)
        assert titled.exit_code == 0 and title in titled.stdout and "\x1b" not in titled.stdout, titled.output

    shown = run("--as", "alice", "archive", "show", str(entries["Invoice 42"]))
    assert shown.exit_code == 0, shown.output
    assert "Please pay the Lieferschein soon." in shown.stdout and "raw_file" in shown.stdout
    hidden = entries["Secret offer"]
    refused = run("--as", "alice", "archive", "show", str(hidden))
    assert refused.exit_code == 1 and refused.stderr == f"Error: no archive entry {hidden}\n"
    assert run("--as", "alice", "archive", "show", "999999").stderr == "Error: no archive entry 999999\n"
    assert run("--as", "bob", "archive", "show", str(hidden), "--json").exit_code == 0
    listed = run("--as", "alice", "archive", "list")
    assert listed.exit_code == 0 and "Invoice 42" in listed.stdout
    assert run("archive", "list").exit_code == 1  # nobody said who acts


# -- auto-replies ------------------------------------------------------------------------------------


def test_one_auto_reply_per_sender_and_day_across_runs(engine_env, mail_servers, new_account) -> None:
    support, every, customer, other = new_account(), new_account(), new_account("kunde"), new_account("anna")
    settings = {
        support.address: {"ticket": ticket(), "autoreply": REPLY},
        every.address: {"autoreply": EVERY_MAIL_REPLY},
    }
    applied(engine_env, mail_servers, [support, every], settings)
    box = Mailbox(mail_servers, support)
    first = inbound(customer.address, "Order 1", "<order-1@example.org>", "References: <older@example.org>")
    box.append(first, inbound(customer.address, "Order 2", "<order-2@example.org>"))
    Mailbox(mail_servers, every).append(
        inbound(customer.address, "One", "<one@example.org>"), inbound(customer.address, "Two", "<two@example.org>")
    )

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert line_of(result, support.address) == (
        f"{support.address}: imported 2, skipped 0; auto-replies: 1 sent, 1 not to senders answered today"
    )
    assert line_of(result, every.address) == f"{every.address}: imported 2, skipped 0; auto-replies: 2 sent"
    [reply, *_] = [m for m in received(mail_servers, customer.address) if m["From"].endswith(f"<{support.address}>")]
    assert reply["Subject"] == REPLY_SUBJECT and reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<order-1@example.org>"
    assert reply["References"] == "<older@example.org> <order-1@example.org>"
    assert reply["Cc"] is None  # an automatic reply goes to its sender only, not to the defaults' copies
    text = reply.get_body(("plain",)).get_content()
    assert "Thanks!" in text and "Kind regards" in text and "{MITARBEITER}" not in text
    logged = replies(engine_env)
    assert len(logged) == 3 and {row["status"] for row in logged} == {"sent"}  # in the outbox like any mail
    assert len(received(mail_servers, customer.address)) == 3

    # The next run (a restart): the same sender the same day gets nothing more, another sender does.
    box.append(inbound(customer.address, "Order 3", "<order-3@example.org>"))
    box.append(inbound(other.address, "Question", "<question@example.org>"))
    later = run("run", "--once", "--account", support.address)
    assert later.exit_code == 0, later.output
    assert later.stdout == (
        f"{support.address}: imported 2, skipped 0; auto-replies: 1 sent, 1 not to senders answered today\n"
    )
    assert [row["to_addresses"] for row in replies(engine_env)][-1] == json.dumps([other.address])

    # A claim of yesterday does not count today.
    with sqlite3.connect(engine_env / "state.db") as connection:
        connection.execute("UPDATE autoreplies SET day = date(day, '-1 day')")
    box.append(inbound(customer.address, "Order 4", "<order-4@example.org>"))
    next_day = run("run", "--once", "--account", support.address)
    assert next_day.stdout == f"{support.address}: imported 1, skipped 0; auto-replies: 1 sent\n"
    assert len(received(mail_servers, customer.address)) == 4
    assert len(rows(engine_env, "tickets")) == 5  # answering changes nothing about the tickets


def test_an_auto_reply_goes_to_the_envelope_sender_and_else_to_from(engine_env, mail_servers, new_account) -> None:
    support, writer, envelope, forged, client = (new_account() for _ in range(5))
    applied(engine_env, mail_servers, [support], {support.address: {"autoreply": EVERY_MAIL_REPLY}})
    # Delivery puts its Return-Path on top; one further down is the sender's own text.
    delivered = inbound(
        writer.address, "Delivered", "<delivered@example.org>", f"Return-Path: <{envelope.address}>",
        f"Return-Path: <{forged.address}>",
    )  # fmt: skip
    appended = inbound(client.address, "Appended by a client", "<appended@example.org>")
    Mailbox(mail_servers, support).append(delivered, appended)

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert line_of(result, support.address) == f"{support.address}: imported 2, skipped 0; auto-replies: 2 sent"
    answered = [json.loads(row["to_addresses"]) for row in replies(engine_env)]
    assert sorted(answered) == sorted([[envelope.address], [client.address]])
    assert [m["In-Reply-To"] for m in received(mail_servers, envelope.address)] == ["<delivered@example.org>"]
    assert [m["In-Reply-To"] for m in received(mail_servers, client.address)] == ["<appended@example.org>"]
    assert received(mail_servers, writer.address) == received(mail_servers, forged.address) == []


def test_outbox_retry_sends_an_auto_reply_again_only_when_it_certainly_did_not_arrive(
    engine_env, mail_servers, new_account
) -> None:
    """Delivery is at least once, but an auto-reply promises at most one a day. `outbox retry` sends one again
    only after a 4xx reply (it was not taken); one that may have arrived is closed: left queued by a killed
    process (as interrupted), or failed with a connection lost after the data (keeping its class). An ordinary
    mail left queued is sent again."""
    support, recipient = new_account(), new_account()
    customers = [new_account("kunde") for _ in range(3)]
    applied(engine_env, mail_servers, [support], {support.address: {"autoreply": REPLY}})
    Mailbox(mail_servers, support).append(
        *(inbound(customer.address, f"Order {n}", f"<order-{n}@example.org>") for n, customer in enumerate(customers))
    )
    assert run("run", "--once").exit_code == 0
    assert run("--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "x").exit_code == 0
    queued, lost, refused = replies(engine_env)
    [ordinary] = [row for row in outbox_rows(engine_env) if row["subject"] == "Hi"]
    assert all(row["raw"] is not None for row in (queued, lost, refused, ordinary))  # kept (keep_bodies_days: 1)
    with sqlite3.connect(engine_env / "state.db") as connection:  # as a killed sender and failures leave them
        left_queued = "status = 'queued', owner = 'elsewhere 42', updated_at = '2000-01-01 00:00:00'"
        connection.execute(f"UPDATE outbox SET {left_queued} WHERE id IN (?, ?)", (queued["id"], ordinary["id"]))
        connection.execute(
            "UPDATE outbox SET status = 'failed', error_class = 'connection_lost', reply = 'lost after DATA' "
            "WHERE id = ?",
            (lost["id"],),
        )
        connection.execute(
            "UPDATE outbox SET status = 'failed', error_class = 'throttled', smtp_code = 451, "
            "enhanced_code = '4.7.1', reply = '451 4.7.1 try again later' WHERE id = ?",
            (refused["id"],),
        )

    result = run("--as", "alice", "outbox", "retry")
    assert result.exit_code == 0, result.output
    for closed in (queued, lost):
        assert f"#{closed['id']} closed, not sent again: an automatic reply that may have arrived." in result.stdout
    assert "2 of 2 mail(s) sent again." in result.stdout
    after = {row["id"]: row for row in outbox_rows(engine_env)}
    assert [(after[row["id"]]["status"], after[row["id"]]["error_class"]) for row in (queued, lost)] == [
        ("failed", "interrupted"),
        ("failed", "connection_lost"),
    ]
    assert after[queued["id"]]["raw"] is None and after[lost["id"]]["raw"] is None  # nothing sends them later
    retried = sorted(row["retry_of"] for row in after.values() if row["retry_of"] is not None)
    assert retried == sorted([refused["id"], ordinary["id"]])
    # What the faked failures hid arrived once; the reply refused "for now" and the ordinary mail come again.
    assert [len(received(mail_servers, customer.address)) for customer in customers] == [1, 1, 2]
    assert len(received(mail_servers, recipient.address)) == 2
    assert run("--as", "alice", "outbox", "retry").stdout == "Nothing to retry.\n"  # closed for good


def test_the_day_of_once_a_day_is_the_calendar_day_of_the_business(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    """UTC+14 and UTC-11: at any moment at least one of the two is on another date than UTC."""
    from zoneinfo import ZoneInfo

    zones = {"Pacific/Kiritimati": new_account(), "Pacific/Pago_Pago": new_account()}
    customer = new_account("kunde")
    applied(engine_env, mail_servers, list(zones.values()), {a.address: {"autoreply": REPLY} for a in zones.values()})
    for zone, account in zones.items():
        monkeypatch.setenv("MAILOPS_TIMEZONE", zone)
        Mailbox(mail_servers, account).append(inbound(customer.address, "Hello", f"<{zone}@example.org>"))
        before = dt.datetime.now(ZoneInfo(zone)).date()
        result = run("run", "--once", "--account", account.address)
        after = dt.datetime.now(ZoneInfo(zone)).date()
        assert result.exit_code == 0, result.output
        [claim] = [row for row in rows(engine_env, "autoreplies") if row["account"] == account.address.lower()]
        assert dt.date.fromisoformat(claim["day"]) in (before, after), zone

    monkeypatch.setenv("MAILOPS_TIMEZONE", "Mars/Olympus_Mons")
    refused = run("run", "--once")
    assert refused.exit_code == 1
    assert "MAILOPS_TIMEZONE" in refused.stderr and "is not a known time zone" in refused.stderr


def test_two_workers_at_once_send_one_reply_per_sender(engine_env, mail_servers, new_account) -> None:
    support, customer = new_account(), new_account("kunde")
    applied(engine_env, mail_servers, [support], {support.address: {"ticket": ticket(), "autoreply": REPLY}})
    Mailbox(mail_servers, support).append(
        *(inbound(customer.address, f"Mail {n}", f"<mail-{n}@example.org>") for n in range(8))
    )
    workers = [
        subprocess.Popen([*MAILOPS, "run", "--once"], cwd=engine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        output, errors = worker.communicate(timeout=120)
        # SQLite runs one worker: while the first runs, a second one is refused (and sends nothing).
        assert worker.returncode == 0 or b"SQLite runs one worker" in errors, output + errors
    assert sorted(row["subject"] for row in rows(engine_env, "messages")) == [f"Mail {n}" for n in range(8)]
    assert len(replies(engine_env)) == 1
    assert len(received(mail_servers, customer.address)) == 1
    with sqlite3.connect(engine_env / "state.db") as connection:
        claims = connection.execute("SELECT recipient, scope, status FROM autoreplies").fetchall()
    assert claims == [(customer.address, "day", "sent")]


AUTOMATIC = {
    "auto-generated": ("robot@shop.example", ["Auto-Submitted: auto-generated"]),
    "auto-replied": ("away@example.net", ["Auto-Submitted: auto-replied; owner-email=away@example.net"]),
    "bulk": ("news@example.net", ["Precedence: bulk"]),
    "list": ("member@example.net", ["Precedence: list"]),
    "junk": ("spam@example.net", ["Precedence: junk"]),
    "list-id": ("poster@example.net", ["List-Id: Users <users.lists.example.net>"]),
    "list-unsubscribe": ("shop@news.example", ["List-Unsubscribe: <mailto:leave@news.example>"]),
    "null return path": ("bounce@example.net", ["Return-Path: <>"]),
    "empty return path": ("nobody@example.net", ["Return-Path: "]),
    "mailer-daemon": ("MAILER-DAEMON@mx.example.net", []),
    "postmaster": ("postmaster@example.net", []),
    "no-reply": ("no-reply@shop.example", []),
    "noreply": ("NoReply+123@shop.example", []),
    "donotreply": ("do-not-reply@bank.example", []),
    "outlook suppress": ("colleague@example.net", ["X-Auto-Response-Suppress: All"]),
    # Blanks before the colon (RFC 5322's obsolete syntax), every field of a name, a comment after the keyword.
    "obsolete auto-submitted": ("away2@example.net", ["Auto-Submitted : auto-replied"]),
    "obsolete precedence": ("news2@example.net", ["Precedence\t: bulk"]),
    "obsolete list-id": ("poster2@example.net", ["List-Id : <users.lists.example.net>"]),
    "second auto-submitted": ("away3@example.net", ["Auto-Submitted: no", "Auto-Submitted: auto-replied"]),
    "precedence with a comment": ("news3@example.net", ["Precedence: bulk (mass mail)"]),
    "noreply as a word": ("notifications-noreply@shop.example", []),
}


def test_no_auto_reply_to_automatic_mail_or_our_own_addresses(engine_env, mail_servers, new_account) -> None:
    support, colleague = new_account(), new_account()
    settings = {
        support.address: {"autoreply": REPLY},
        colleague.address: {"archive": "{enabled: true}"},
    }
    applied(engine_env, mail_servers, [support, colleague], settings)
    box = Mailbox(mail_servers, support)
    for kind, (sender, headers) in AUTOMATIC.items():
        box.append(inbound(sender, kind, f"<{kind.replace(' ', '-')}@example.net>", *headers))
    box.append(inbound(colleague.address, "From a colleague", "<colleague@example.com>"))
    sender_header = f"Sender: {support.address}"
    on_behalf = inbound("News <news@example.net>", "Sent by us for them", "<ours@example.com>", sender_header)
    box.append(on_behalf)
    box.append(inbound(f"Us <{support.address}>", "From ourselves", "<self@example.com>"))
    # Auto-Submitted: no is a person's mail, and gets its reply.
    box.append(inbound("person@example.net", "A person", "<person@example.net>", "Auto-Submitted: no"))
    automatic = len(AUTOMATIC) + 3

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert line_of(result, support.address) == (
        f"{support.address}: imported {automatic + 1}, skipped 0; "
        f"auto-replies: 1 sent, {automatic} not to automatic mail or our own addresses"
    )
    assert [json.loads(row["to_addresses"]) for row in replies(engine_env)] == [["person@example.net"]]


def test_answering_machines_on_two_installations_do_not_loop(engine_env, mail_servers, new_account) -> None:
    """Two separate mailops (each its own spec and state store), each account answering automatically:
    the own-address rule cannot help, Auto-Submitted must."""
    ours, theirs = new_account(), new_account()
    applied(engine_env, mail_servers, [ours], {ours.address: {"autoreply": REPLY}})
    other = engine_env / "other"
    write_spec(other, mail_servers, [theirs], {theirs.address: {"autoreply": REPLY}})
    env = {"MAILOPS_STATE_URL": f"sqlite:///{other / 'state.db'}", "MAILOPS_CONFIG_DIR": str(other / "config")}

    def run_other(*args: str):
        return runner.invoke(app, list(args), env=env)

    assert run_other("apply", "--auto-approve").exit_code == 0
    for account in (ours, theirs):
        box = mail_servers.users.maildir(account.address)
        for key in list(box.keys()):
            box.remove(key)
    sent = run_other("--as", "alice", "send", "--to", ours.address, "--subject", "Hello", "--body", "Hi there")
    assert sent.exit_code == 0, sent.output

    for _round in range(2):
        assert run("run", "--once").exit_code == 0
        assert run_other("run", "--once").exit_code == 0
    assert [m["Subject"] for m in received(mail_servers, ours.address)] == ["Hello"]
    [reply] = received(mail_servers, theirs.address)
    assert reply["Subject"] == REPLY_SUBJECT and reply["Auto-Submitted"] == "auto-replied"
    with sqlite3.connect(other / "state.db") as connection:
        assert connection.execute("SELECT count(*) FROM outbox").fetchone() == (1,)  # their mail, no reply
    assert len(replies(engine_env)) == 1


# -- bounces -----------------------------------------------------------------------------------------


def postfix_dsn(account: str, recipient: str, original: bytes, queue_id: str = "3F1C6A2B9D") -> bytes:
    """A DSN as Postfix writes it: notification, message/delivery-status, and the whole original."""
    boundary = f"{queue_id}.1751356805/mx1.example.com"
    head = (
        "Return-Path: <>\r\n"
        "Date: Tue,  1 Jul 2025 10:00:05 +0200 (CEST)\r\n"
        "From: MAILER-DAEMON@mx1.example.com (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {account}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n"
        f"Message-Id: <20250701080005.{queue_id}@mx1.example.com>\r\n\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx1.example.com.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n\r\n"
        f"<{recipient}>: host mx.example.net[192.0.2.25] said: 550 5.1.1\r\n"
        f"    <{recipient}>: Recipient address rejected: User unknown in virtual\r\n"
        "    mailbox table (in reply to RCPT TO command)\r\n\r\n"
        f"--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx1.example.com\r\n"
        f"X-Postfix-Queue-ID: {queue_id}\r\n"
        f"X-Postfix-Sender: rfc822; {account}\r\n"
        "Arrival-Date: Tue,  1 Jul 2025 10:00:04 +0200 (CEST)\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Remote-MTA: dns; mx.example.net\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address\r\n"
        "    rejected: User unknown in virtual mailbox table\r\n\r\n"
        f"--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode() + original + f"\r\n--{boundary}--\r\n".encode()


def exchange_dsn(account: str, recipient: str, original_headers: bytes) -> bytes:
    """A non-delivery report as Exchange Online writes it: the original's header as text/rfc822-headers."""
    head = (
        "From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>\r\n"
        f"To: <{account}>\r\n"
        "Date: Tue, 1 Jul 2025 08:00:06 +0000\r\n"
        'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="b1_ndr"\r\n'
        "Content-Language: en-US\r\n"
        "Message-ID: <8f1b2c3d-0001@AM0PR01MB1234.eurprd01.prod.exchangelabs.com>\r\n"
        "Subject: Undeliverable: Your order\r\n"
        "X-MS-Exchange-Message-Is-Ndr:\r\n"
        "MIME-Version: 1.0\r\n\r\n"
        '--b1_ndr\r\nContent-Type: multipart/alternative; boundary="b2_ndr"\r\n\r\n'
        '--b2_ndr\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\n'
        f"Delivery has failed to these recipients or groups:\r\n\r\n{recipient}\r\n"
        "The email address you entered couldn't be found.\r\n\r\n"
        "--b2_ndr--\r\n\r\n"
        "--b1_ndr\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com\r\n"
        "Received-From-MTA: dns;AM0PR01MB5678.eurprd01.prod.exchangelabs.com\r\n"
        "Arrival-Date: Tue, 1 Jul 2025 08:00:04 +0000\r\n\r\n"
        f"Final-Recipient: rfc822;{recipient}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found\r\n\r\n"
        "--b1_ndr\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    )
    return head.encode() + original_headers + b"\r\n--b1_ndr--\r\n"


def sent_mail(engine_env, to: str, subject: str) -> dict:
    result = run("--as", "alice", "send", "--to", to, "--subject", subject, "--body", "Your order has shipped.")
    assert result.exit_code == 0, result.output
    return outbox_rows(engine_env)[-1]


def test_bounces_mark_their_outbox_entry_and_become_no_ticket_and_no_reply(engine_env, mail_servers, new_account):
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: {"ticket": ticket(), "autoreply": REPLY}})
    postfix_entry = sent_mail(engine_env, "nobody@example.net", "Your invoice")
    exchange_entry = sent_mail(engine_env, "gone@contoso.example", "Your order")
    assert {postfix_entry["status"], exchange_entry["status"]} == {"sent"}  # the servers took both
    original = postfix_entry["raw"]  # kept by policies.outbox.keep_bodies_days, as it went out
    exchange_headers = exchange_entry["raw"].split(b"\r\n\r\n", 1)[0] + b"\r\n"
    not_ours = b"Message-ID: <not-ours@example.net>\r\n\r\nx\r\n"
    unmatched = postfix_dsn(support.address, "who@example.net", not_ours, queue_id="4A2B7C1E0F")
    Mailbox(mail_servers, support).append(
        postfix_dsn(support.address, "nobody@example.net", original),
        exchange_dsn(support.address, "gone@contoso.example", exchange_headers),
        unmatched,
    )

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{support.address}: imported 3, skipped 0; archived 1; 2 bounce(s) marked in the outbox; "
        "1 delivery report(s) matching no outbox entry (archived)\n"
    )
    entries = {row["id"]: row for row in outbox_rows(engine_env)}
    for entry, mta in ((postfix_entry, "mx1.example.com"), (exchange_entry, "AM0PR01MB1234")):
        bounced = entries[entry["id"]]
        assert (bounced["status"], bounced["enhanced_code"], bounced["smtp_code"]) == ("bounced", "5.1.1", 550)
        assert bounced["error_class"] == "recipients_failed" and bounced["remedy"]
        assert mta in bounced["reply"] and json.loads(bounced["to_addresses"])[0] in bounced["reply"]
    assert "User unknown in virtual mailbox table" in entries[postfix_entry["id"]]["reply"]
    assert "RESOLVER.ADR.RecipNotFound" in entries[exchange_entry["id"]]["reply"]
    assert len(entries) == 2  # no auto-reply to any DSN
    assert rows(engine_env, "tickets") == []  # and no ticket
    bounces = rows(engine_env, "bounces")
    assert [(b["outbox_id"], b["status"], b["reporting_mta"]) for b in bounces] == [
        (postfix_entry["id"], "5.1.1", "mx1.example.com"),
        (exchange_entry["id"], "5.1.1", "AM0PR01MB1234.eurprd01.prod.exchangelabs.com"),
        (None, "5.1.1", "mx1.example.com"),
    ]
    [archived] = json.loads(run("--as", "alice", "archive", "list", "--json").stdout)
    assert archived["subject"] == "Undelivered Mail Returned to Sender" and archived["ticket_id"] is None

    listed = json.loads(run("--as", "alice", "outbox", "list", "--status", "bounced", "--json").stdout)
    assert sorted(entry["id"] for entry in listed) == sorted([postfix_entry["id"], exchange_entry["id"]])
    shown = run("--as", "alice", "outbox", "show", str(postfix_entry["id"]))
    assert shown.exit_code == 0 and "bounced" in shown.stdout and "5.1.1" in shown.stdout
    again = run("run", "--once")
    assert again.stdout == f"{support.address}: imported 0, skipped 0\n"
    assert len(rows(engine_env, "bounces")) == 3


@pytest.mark.parametrize(
    "step, replies_sent",
    [
        ("after-raw-write:1", 1),  # killed before the DSN's commit: the next pass does all of it
        ("after-commit:1", 1),  # the DSN is done; the customer's mail waits for the next pass
        ("after-raw-write:2", 1),  # killed before the mail's commit: its reply is claimed next time
        ("after-commit:2", 0),  # the reply was claimed, not sent: it is not sent later (at most one)
    ],
)
def test_a_killed_worker_marks_a_bounce_once_and_never_replies_twice(
    engine_env, mail_servers, new_account, step, replies_sent
) -> None:
    support, customer = new_account(), new_account("kunde")
    applied(engine_env, mail_servers, [support], {support.address: {"ticket": ticket(), "autoreply": REPLY}})
    entry = sent_mail(engine_env, "nobody@example.net", "Invoice")
    box = Mailbox(mail_servers, support)
    box.append(postfix_dsn(support.address, "nobody@example.net", entry["raw"]))
    box.append(inbound(customer.address, "Question", "<question@example.org>"))
    killed = subprocess.run(
        [*MAILOPS, "run", "--once"],
        cwd=engine_env,
        env=os.environ | {"MAILOPS_TEST_CRASH_AT": step},
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL

    again = run("run", "--once")
    assert again.exit_code == 0, again.output
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"
    assert [row["subject"] for row in rows(engine_env, "messages")] == [
        "Undelivered Mail Returned to Sender",
        "Question",
    ]
    assert [(b["outbox_id"], b["status"]) for b in rows(engine_env, "bounces")] == [(entry["id"], "5.1.1")]
    assert outbox_rows(engine_env)[0]["status"] == "bounced"
    assert len(replies(engine_env)) == replies_sent == len(received(mail_servers, customer.address))
    assert len(rows(engine_env, "autoreplies")) == 1


def test_unreadable_mail_and_reports_never_end_a_run(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    settings = {support.address: {"ticket": ticket(), "archive": "{enabled: true}", "autoreply": REPLY}}
    applied(engine_env, mail_servers, [support], settings)
    entry = sent_mail(engine_env, "nobody@example.net", "Invoice")
    report_part = (
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    )

    def report(*parts: bytes, content_type: bytes = b"multipart/report; report-type=delivery-status") -> bytes:
        body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"
        head = b"From: MAILER-DAEMON@mx\r\nSubject: Undelivered\r\nContent-Type: " + content_type
        return head + b'; boundary="b"\r\n\r\n' + body

    control = entry["message_id"][:-1].encode() + b"\x01>"
    maildir = mail_servers.users.maildir(support.address)
    for raw in (
        report(report_part),  # no original header at all
        report(report_part, b"Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: " + control + b"\r\n"),
        report(b"Content-Type: message/delivery-status\r\n\r\n\xff\xfe\x00garbage\r\n"),
        report(report_part, content_type=b"multipart/report; report-type=delivery-status; boundary=unclosed"),
        b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno boundary at all",
        b"Subject: " + b"x" * 300_000 + b"\r\nFrom: " + b"<a@b.example>, " * 20_000 + b"\r\nPrecedence: bulk\r\n\r\n.",
        bytes(range(256)) * 64,
        # A Date beyond the last time in UTC: no date, not a failed pass.
        b"From: a@example.org\r\nDate: Fri, 31 Dec 9999 23:59:59 -0100\r\nPrecedence: bulk\r\n\r\nFar off.\r\n",
    ):
        maildir.add(raw)
    mail_servers.users.maildir(support.address)  # hands the files to the mail user

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    line = line_of(result, support.address)
    assert line.startswith(f"{support.address}: imported 8, skipped 0; archived 8;")
    assert "delivery report(s) matching no outbox entry (archived)" in line
    assert outbox_rows(engine_env)[0]["status"] == "sent"  # a Message-ID with a control character matches nothing
    assert len(outbox_rows(engine_env)) == 1  # and nobody was answered
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"


def test_postgresql_claims_and_bounces_like_sqlite(postgres_url, engine_env, mail_servers, new_account, monkeypatch):
    from sqlalchemy import create_engine, text

    url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    database = f"replies_{os.getpid()}_{os.urandom(4).hex()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    state_url = url.rsplit("/", 1)[0] + f"/{database}"
    monkeypatch.setenv("MAILOPS_STATE_URL", state_url)
    monkeypatch.setenv("MAILOPS_MESSAGE_DIR", str(engine_env / "messages"))
    support, customer = new_account(), new_account("kunde")
    applied(engine_env, mail_servers, [support], {support.address: {"ticket": ticket(), "autoreply": REPLY}})
    result = run("--as", "alice", "send", "--to", "nobody@example.net", "--subject", "Invoice", "--body", "Hi")
    assert result.exit_code == 0, result.output
    listed = json.loads(run("--as", "alice", "outbox", "list", "--json").stdout)
    original = f"Message-ID: {listed[0]['message_id']}\r\nSubject: Invoice\r\n\r\nHi\r\n".encode()
    box = Mailbox(mail_servers, support)
    box.append(postfix_dsn(support.address, "nobody@example.net", original))
    box.append(*(inbound(customer.address, f"Mail {n}", f"<pg-{n}@example.org>") for n in range(2)))
    first = run("run", "--once")
    assert first.exit_code == 0, first.output
    assert first.stdout == (
        f"{support.address}: imported 3, skipped 0; 1 bounce(s) marked in the outbox; "
        "auto-replies: 1 sent, 1 not to senders answered today\n"
    )
    box.append(inbound(customer.address, "Mail 2", "<pg-2@example.org>"))
    second = run("run", "--once")
    assert second.stdout == f"{support.address}: imported 1, skipped 0; auto-replies: 1 not to senders answered today\n"
    statuses = sorted(entry["status"] for entry in json.loads(run("--as", "alice", "outbox", "list", "--json").stdout))
    assert statuses == ["bounced", "sent"]


# -- the rules on their own (no servers) -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff" * 1000,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\n--b--",
        b"Content-Type: multipart/report; report-type=DELIVERY-STATUS; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: utf-8; j\xc3\xb6rg@example.org\r\nStatus: 5.2.2\r\n\r\n--b--",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nOriginal-Envelope-Id: QQ+2B1+00\r\n\r\n"
        b"Action: delayed\r\nStatus: 4.4.1\r\n\r\n--b--",
    ],
)
def test_reading_a_report_never_fails(raw: bytes) -> None:
    report = read_delivery_report(raw)
    if raw.startswith(b"Content-Type: multipart/report"):
        assert report is not None
        assert all(message_id.isascii() and "\x00" not in message_id for message_id in report.original_ids())
    why_not_answer(header_block(raw), frozenset())  # never raises either


def test_a_report_is_read_as_rfc_3464_writes_it() -> None:
    original = b"From: a@example.com\r\nMessage-ID: <m-1@example.com>\r\n\r\nbody\r\n"
    report = read_delivery_report(postfix_dsn("a@example.com", "nobody@example.net", original))
    assert report is not None and report.original_ids() == ("<m-1@example.com>",)
    [recipient] = report.failed
    assert (recipient.recipient, recipient.action, recipient.status, recipient.smtp_code) == (
        "nobody@example.net",
        "failed",
        "5.1.1",
        550,
    )
    assert recipient.diagnostic is not None and recipient.diagnostic.endswith("User unknown in virtual mailbox table")
    forwarded = b"Content-Type: multipart/mixed; boundary=f\r\n\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n"
    assert read_delivery_report(forwarded + postfix_dsn("a@example.com", "x@example.net", original)) is None
    delayed = read_delivery_report(
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nOriginal-Envelope-Id: m-2+40example.com\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.net\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n--b--"
    )
    assert delayed is not None and delayed.failed == () and delayed.original_ids() == ("<m-2@example.com>",)


@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"])
def test_a_report_with_more_parts_than_a_report_has_is_not_parsed_and_no_report_is_answered(
    tmp_path: Path, end: bytes
) -> None:
    """A crafted multipart/report of thousands of empty parts (or nested deep) would hold Python's parser for
    minutes: it is not read as a delivery report, its text is not searched, and, a report still, it gets no
    auto-reply, whatever its lines end in (the parser takes a lone CR too). Neither does a read receipt."""
    head = b"From: MAILER-DAEMON@mx\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
    wide = head + (b"--b" + end + end) * (MAX_MIME_BOUNDARIES + 1) + b"--b--" + end
    assert read_delivery_report(wide) is None
    bounded = head + (b"--b" + end + end) * (MAX_MIME_BOUNDARIES - 1) + b"--b--" + end  # the closing line is one too
    assert read_delivery_report(bounded) is not None
    assert why_not_answer(header_block(wide), frozenset()) == "a report (multipart/report)"
    receipt = (
        b"From: person@example.org\r\nContent-Type: multipart/report; report-type=disposition-notification\r\n\r\n"
    )
    assert why_not_answer(header_block(receipt), frozenset()) == "a report (multipart/report)"
    store = RawStore(tmp_path)
    [bomb, letter] = store.put_many([wide, b"Subject: x\r\n\r\nfind me\r\n"])
    assert message_text(store, bomb) == ""
    assert "find me" in message_text(store, letter)


def test_a_message_of_heavy_html_has_a_bounded_share_of_it_converted(tmp_path: Path, monkeypatch) -> None:
    """HTML of nothing but tags converts at seconds a megabyte and gives no text: only so much of a message's HTML
    is converted, however much of it there is and however little text it gives; its other text is still read."""
    from mailops.compose import htmlbody

    converted: list[int] = []
    convert = htmlbody.html_to_text
    monkeypatch.setattr(
        htmlbody, "html_to_text", lambda html, **options: converted.append(len(html)) or convert(html, **options)
    )
    tags = "<table><tr>" + "<td></td>" * 100_000 + "</tr></table>"
    parts = [f"Content-Type: text/html; charset=utf-8\r\n\r\n{tags}\r\n" for _ in range(3)]
    parts.append("Content-Type: text/plain; charset=utf-8\r\n\r\nfind me too\r\n")
    body = "".join(f"--b\r\n{part}" for part in parts) + "--b--\r\n"
    raw = ("Subject: tags\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n" + body).encode()
    store = RawStore(tmp_path)
    [heavy] = store.put_many([raw])
    assert "find me too" in message_text(store, heavy)
    assert 0 < sum(converted) <= MAX_CONVERTED_HTML < 3 * len(tags)


def test_a_received_table_is_read_without_its_layout(tmp_path: Path) -> None:
    """A cell of many lines beside a wide one lays out as their product (inscriptis pads both ways): HTML from
    anywhere is read with its tables flowing, in time and memory that follow its length."""
    tall = "<br>".join(["x"] * 3000)
    html = f"<table><tr><td>{'A' * 3000}</td><td>{tall}</td></tr></table>"
    raw = ("Subject: t\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
    store = RawStore(tmp_path)
    [table] = store.put_many([raw])
    text = message_text(store, table)
    assert "A" * 3000 in text and text.count("x") == 3000
    assert len(text) < 20_000  # laid out: 3,000 lines of 3,000 characters


def test_own_addresses_include_aliases(example_config) -> None:
    from mailops.spec import load_spec

    spec = load_spec(example_config).spec
    own = own_addresses(spec)
    assert {account.address.lower() for account in spec.accounts} <= own
    aliases = {alias.lower() for account in spec.accounts for alias in account.aliases}
    assert aliases and aliases <= own
    for address in sorted(own):
        headers = header_block(f"From: Us <{address.upper()}>\r\n\r\n".encode())
        assert why_not_answer(headers, own) == f"our own address ({address.upper()})"
    assert why_not_answer(header_block(b"From: customer@example.org\r\n\r\n"), own) is None
