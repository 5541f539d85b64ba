"""`mailops run` (ticket import) and `mailops tickets`, against the real Dovecot: mail is delivered by
IMAP APPEND (or straight into the maildir), imported once and only once, also when the worker is
killed at any step of an import."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient
from typer.testing import CliRunner

from mailops.cli import app
from mailops.state import StateStore
from mailops.transport.imap import delete_by_uid
from tests.servers import HOST

runner = CliRunner()
MAILOPS = [sys.executable, "-m", "mailops"]
CUSTOMER = "kunde@example.org"


def run(*args: str):
    return runner.invoke(app, list(args))


def write_spec(directory: Path, mail_servers, accounts: list, tickets: dict[str, str], *, visible: dict | None = None):
    """Accounts with their `ticket:` settings (by address); SHOP sends from the first; queues support and sales."""
    config = directory / "config"
    config.mkdir(exist_ok=True)
    entries = []
    for account in accounts:
        extra = {"ticket": tickets.get(account.address, "{enabled: false}")}
        if visible and account.address in visible:
            extra["visible_to"] = visible[account.address]
        entries.append(account.yaml(mail_servers, **extra))
    (config / "accounts.yaml").write_text(
        "accounts:\n" + "".join(entries) + f"projects:\n  SHOP: {{email: {accounts[0].address}}}\n", encoding="utf-8"
    )
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {accounts[0].address}\n  sender_name: Example GmbH\n"
        "employees:\n  alice: {name: Alice, groups: [support-team]}\n  bob: {name: Bob, groups: [sales-team]}\n"
        "queues: [support, sales]\n",
        encoding="utf-8",
    )


def ticket(**settings: object) -> str:
    fields = {"enabled": "true", "default_queue": "support", "default_project": "SHOP"}
    fields.update(
        {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in settings.items()}
    )
    return "{" + ", ".join(f"{key}: {value}" for key, value in fields.items()) + "}"


def applied(engine_env, mail_servers, accounts, tickets, **kwargs) -> None:
    write_spec(engine_env, mail_servers, accounts, tickets, **kwargs)
    result = run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    for account in accounts:  # apply's test mails are not what these tests import
        box = mail_servers.users.maildir(account.address)
        for key in list(box.keys()):
            box.remove(key)


def applied_with_archive(engine_env, mail_servers, account, *, retention_days: int) -> None:
    """:func:`applied` for one account that imports into tickets and keeps an archive too."""
    write_spec(engine_env, mail_servers, [account], {account.address: ticket()})
    accounts = (engine_env / "config" / "accounts.yaml").read_text(encoding="utf-8")
    archive = f"    archive: {{enabled: true, retention_days: {retention_days}}}\n"
    (engine_env / "config" / "accounts.yaml").write_text(
        accounts.replace("    ticket:", archive + "    ticket:", 1), encoding="utf-8"
    )
    assert run("apply", "--auto-approve").exit_code == 0
    box = mail_servers.users.maildir(account.address)
    for key in list(box.keys()):  # apply's test mails are not what these tests import
        box.remove(key)


def mail(subject: str, message_id: str | None, *, reply_to: str | None = None, references: str = "") -> bytes:
    lines = [
        f"From: Kunde <{CUSTOMER}>",
        "To: support@example.com",
        "Cc: office@example.com",
        f"Subject: {subject}",
        "Date: Tue, 01 Jul 2025 10:00:00 +0200",
    ]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if reply_to:
        lines.append(f"In-Reply-To: {reply_to}")
    if references:
        lines.append(f"References: {references}")
    return ("\r\n".join(lines) + f"\r\n\r\nText of {subject}.\r\n").encode()


class Mailbox:
    """An account's INBOX over IMAP, as a mail client (or a delivery) sees it."""

    def __init__(self, mail_servers, account):
        self.mail_servers, self.account = mail_servers, account

    def client(self) -> IMAPClient:
        client = IMAPClient(HOST, port=self.mail_servers.dovecot.plain_port, ssl=False, timeout=10)
        client.login(self.account.address, self.account.password)
        return client

    def append(self, *raws: bytes, when: dt.datetime | None = None, flags: tuple = ()) -> None:
        client = self.client()
        try:
            for raw in raws:
                client.append("INBOX", raw, flags=flags, msg_time=when)
        finally:
            client.logout()

    def messages(self) -> dict[str, tuple]:
        """Message-ID (or `uid:N`) -> flags, for every message in the INBOX."""
        client = self.client()
        try:
            client.select_folder("INBOX", readonly=True)
            uids = client.search(["ALL"])
            found = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
        finally:
            client.logout()
        result = {}
        for uid, data in found.items():
            header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().strip()
            result[header.partition(":")[2].strip() or f"uid:{uid}"] = data[b"FLAGS"]
        return result

    def uidvalidity(self) -> int:
        client = self.client()
        try:
            return client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
        finally:
            client.logout()

    def recreate(self, uidvalidity: int) -> None:
        """Remove the mailbox and make it anew, empty, with ``uidvalidity`` (a rebuilt or migrated mailbox)."""
        users = self.mail_servers.users
        path = users.root / "mail" / self.account.address
        shutil.rmtree(path)
        users.maildir(self.account.address)
        (path / "dovecot-uidlist").write_text(f"3 V{uidvalidity} N1 G{secrets.token_hex(16)}\n", encoding="utf-8")
        users.maildir(self.account.address)  # hands the new files to the mail user


def killed_at(engine_env: Path, step: str) -> subprocess.CompletedProcess[str]:
    """`mailops run --once` as its own process, killed (SIGKILL) at ``step`` (mailops.runtime.faults)."""
    return subprocess.run(
        [*MAILOPS, "run", "--once"],
        cwd=engine_env,
        env=os.environ | {"MAILOPS_TEST_CRASH_AT": step},
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(engine_env, table: str) -> list[dict]:
    with sqlite3.connect(engine_env / "state.db") as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(f"SELECT * FROM {table} ORDER BY id")]


def stored(engine_env, row: dict) -> bytes:
    sha = row["raw_sha256"]
    data = (engine_env / "messages" / sha[:2] / f"{sha}.eml").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    return data


# -- what is imported, and where it goes --------------------------------------------------------------


def test_new_mail_becomes_tickets_and_replies_join_their_thread(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    first, second = mail("Order 1 broken", "<order-1@example.org>"), mail("Where is order 2?", "<order-2@example.org>")
    reply = mail("Re: Order 1 broken", "<reply-1@example.org>", reply_to="<order-1@example.org>")
    # A reply that names its thread only in References, after a message mailops never saw.
    late = mail("Re: Re: Order 1", "<reply-2@example.org>", references="<order-1@example.org> <unknown@example.org>")
    Mailbox(mail_servers, support).append(first, second, reply, late)

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"{support.address}: imported 4, skipped 0; 2 joined the ticket of their thread\n")
    tickets = rows(engine_env, "tickets")
    assert [(t["subject"], t["queue"], t["project"], t["status"]) for t in tickets] == [
        ("Order 1 broken", "support", "SHOP", "open"),
        ("Where is order 2?", "support", "SHOP", "open"),
    ]
    messages = {m["message_id"]: m for m in rows(engine_env, "messages")}
    assert {mid: m["ticket_id"] for mid, m in messages.items()} == {
        "<order-1@example.org>": tickets[0]["id"],
        "<order-2@example.org>": tickets[1]["id"],
        "<reply-1@example.org>": tickets[0]["id"],
        "<reply-2@example.org>": tickets[0]["id"],
    }
    indexed = messages["<order-1@example.org>"]
    assert (indexed["sender"], json.loads(indexed["to_addresses"]), json.loads(indexed["cc_addresses"])) == (
        f"Kunde <{CUSTOMER}>",
        ["support@example.com"],
        ["office@example.com"],
    )
    assert indexed["subject"] == "Order 1 broken" and indexed["size"] == len(first)
    assert indexed["sent_at"].startswith("2025-07-01 08:00:00")  # the Date header, in UTC
    assert stored(engine_env, indexed) == first  # the raw message, byte for byte
    # Reading took no \Seen: the mail still looks unread to the people using the mailbox.
    assert all(b"\\Seen" not in flags for flags in Mailbox(mail_servers, support).messages().values())

    again = run("run", "--once")
    assert again.exit_code == 0 and again.stdout == f"{support.address}: imported 0, skipped 0\n"
    assert len(rows(engine_env, "messages")) == 4 and len(rows(engine_env, "tickets")) == 2

    listed = json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)
    assert [(t["id"], t["message_count"]) for t in listed] == [(tickets[1]["id"], 1), (tickets[0]["id"], 3)]
    assert run("--as", "alice", "tickets", "list", "--queue", "sales", "--json").stdout.strip() == "[]"
    shown = run("--as", "alice", "tickets", "show", str(tickets[0]["id"]))
    assert shown.exit_code == 0 and "Re: Re: Order 1" in shown.stdout and "raw_file" in shown.stdout


def test_mail_before_import_since_is_skipped_until_the_date_moves_earlier(engine_env, mail_servers, new_account):
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(import_since="2025-01-01")})
    box = Mailbox(mail_servers, support)
    box.append(mail("Old", "<old@example.org>"), when=dt.datetime(2024, 12, 31, 23, 30, tzinfo=dt.UTC))
    box.append(mail("On the day", "<day@example.org>"), when=dt.datetime(2025, 1, 1, 0, 5, tzinfo=dt.UTC))
    box.append(mail("New", "<new@example.org>"))
    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{support.address}: imported 2, skipped 1 (1 before import_since)\n"
    assert {m["message_id"] for m in rows(engine_env, "messages")} == {"<day@example.org>", "<new@example.org>"}

    write_spec(engine_env, mail_servers, [support], {support.address: ticket(import_since="2024-06-01")})
    earlier = run("run", "--once")
    assert earlier.exit_code == 0, earlier.output
    assert earlier.stdout == (
        f"{support.address}: imported 1, skipped 2 (2 already stored); import_since moved earlier: "
        "older mail looked at again\n"
    )
    assert sorted(m["message_id"] for m in rows(engine_env, "messages")) == [
        "<day@example.org>",
        "<new@example.org>",
        "<old@example.org>",
    ]


class StopAfterChecks(threading.Event):
    """A stop signal that sets itself when the worker looks at it for the ``checks``-th time: the worker looks
    once before an account starts and once after each batch, so ``checks=2`` stops after the first batch."""

    def __init__(self, checks: int):
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.set()
        return super().is_set()


def test_a_pass_stopped_after_a_batch_counts_only_what_it_dealt_with(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    """Skipped mail is counted as its batch is dealt with, not for the whole window upfront: the next pass
    counts the rest, and nothing twice."""
    from mailops.runtime import ticket_import
    from mailops.runtime.worker import run_once
    from mailops.settings import load_settings
    from mailops.spec import load_spec

    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(import_since="2025-01-01")})
    box = Mailbox(mail_servers, support)
    old, new = dt.datetime(2024, 12, 31, 12, 0, tzinfo=dt.UTC), dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    for n in range(3):  # UIDs 1-6: before import_since, after it, before, after, ...
        box.append(mail(f"Old {n}", f"<old-{n}@example.org>"), when=old)
        box.append(mail(f"New {n}", f"<new-{n}@example.org>"), when=new)
    monkeypatch.setattr(ticket_import, "BATCH_MESSAGES", 2)
    settings = load_settings()
    store = StateStore.open(settings.state_url)
    try:
        loaded = load_spec(settings.config_dir)
        first = run_once(loaded, store, settings, stop=StopAfterChecks(2))
        second = run_once(loaded, store, settings)
    finally:
        store.close()

    reports = [runs[0].report for runs in (first, second)]
    assert all(report is not None for report in reports)
    assert [(r.imported, r.before_since, r.already_stored, r.stopped) for r in reports if r is not None] == [
        (1, 1, 0, True),  # UIDs 1 and 2 only
        (2, 2, 0, False),  # UIDs 3 to 6
    ]
    assert sorted(m["message_id"] for m in rows(engine_env, "messages")) == [f"<new-{n}@example.org>" for n in range(3)]

    # The mailbox is rebuilt (a new UIDVALIDITY) with the stored mail first, then one new message: the mail
    # found stored again is counted as its batch is dealt with too.
    box.recreate(box.uidvalidity() + 1000)
    box.append(*(mail(f"New {n}", f"<new-{n}@example.org>") for n in range(3)), when=new)
    box.append(mail("Newer", "<newer@example.org>"), when=new)
    store = StateStore.open(settings.state_url)
    try:
        rebuilt = [run_once(loaded, store, settings, stop=StopAfterChecks(2)), run_once(loaded, store, settings)]
    finally:
        store.close()
    again = [runs[0].report for runs in rebuilt]
    assert [(r.imported, r.already_stored, r.stopped) for r in again if r is not None] == [
        (0, 2, True),  # UIDs 1 and 2
        (1, 1, False),  # UIDs 3 and 4
    ]


def test_auto_close_stores_new_tickets_closed(engine_env, mail_servers, new_account) -> None:
    support, sales = new_account(), new_account()
    applied(
        engine_env,
        mail_servers,
        [support, sales],
        {support.address: ticket(auto_close=True), sales.address: ticket(default_queue="sales")},
    )
    Mailbox(mail_servers, support).append(mail("Handled elsewhere", "<done@example.org>"))
    Mailbox(mail_servers, sales).append(mail("Offer please", "<offer@example.org>"))
    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert {(t["account"], t["queue"], t["status"]) for t in rows(engine_env, "tickets")} == {
        (support.address, "support", "closed"),
        (sales.address, "sales", "open"),
    }
    closed = json.loads(run("--as", "alice", "tickets", "list", "--status", "closed", "--json").stdout)
    assert [t["subject"] for t in closed] == ["Handled elsewhere"]
    # Once tickets are handled here, a customer's reply reopens the ticket of its thread.
    write_spec(engine_env, mail_servers, [support, sales], {support.address: ticket(), sales.address: ticket()})
    reply = mail("Re: Handled elsewhere", "<re@example.org>", reply_to="<done@example.org>")
    Mailbox(mail_servers, support).append(reply)
    assert run("run", "--once", "--account", support.address).exit_code == 0
    assert [t["status"] for t in rows(engine_env, "tickets") if t["account"] == support.address] == ["open"]


def test_a_changed_uidvalidity_imports_nothing_twice(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    box = Mailbox(mail_servers, support)
    originals = [mail(f"Mail {n}", f"<m{n}@example.org>") for n in range(3)] + [mail("No id", None)]
    box.append(*originals)
    assert run("run", "--once").exit_code == 0
    before = box.uidvalidity()

    box.recreate(before + 1000)  # the same messages, under new UIDs
    box.append(mail("After the move", "<after@example.org>"), *originals)
    assert box.uidvalidity() == before + 1000
    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{support.address}: imported 1, skipped 4 (4 already stored); "
        f"UIDVALIDITY changed (was {before}): stored mail recognised by Message-ID\n"
    )
    assert len(rows(engine_env, "messages")) == 5 and len(rows(engine_env, "tickets")) == 5
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"


# -- deleting on the server ----------------------------------------------------------------------


def test_delete_after_import_deletes_only_what_is_stored(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    settings = ticket(import_since="2025-01-01", delete_after_import=True)
    applied(engine_env, mail_servers, [support], {support.address: settings})
    box = Mailbox(mail_servers, support)
    box.append(mail("Too old", "<old@example.org>"), when=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    # Another client flagged this one for deletion and may still change its mind: not ours to expunge.
    box.append(mail("Flagged by Outlook", "<flagged@example.org>"), when=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    client = box.client()
    client.select_folder("INBOX")
    client.add_flags(client.search(["HEADER", "Message-ID", "<flagged@example.org>"]), [b"\\Deleted"])
    client.logout()
    box.append(*(mail(f"New {n}", f"<new-{n}@example.org>") for n in range(3)))

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout == f"{support.address}: imported 3, skipped 2 (2 before import_since); deleted 3 on the server\n"
    )
    left = box.messages()
    assert set(left) == {"<old@example.org>", "<flagged@example.org>"}
    assert b"\\Deleted" in left["<flagged@example.org>"] and b"\\Deleted" not in left["<old@example.org>"]
    assert {m["server_state"] for m in rows(engine_env, "messages")} == {"deleted"}
    for row in rows(engine_env, "messages"):
        assert stored(engine_env, row).startswith(b"From: Kunde")


def test_without_uidplus_expunge_waits_for_others_flags(mail_servers, new_account) -> None:
    """The fallback for servers without UIDPLUS, on a real connection: a plain EXPUNGE is sent only
    when it removes exactly the messages asked for."""
    account = new_account()
    box = Mailbox(mail_servers, account)
    box.append(mail("Ours", "<ours@example.org>"), mail("Theirs", "<theirs@example.org>"))
    client = box.client()
    try:
        client.select_folder("INBOX")
        ours, theirs = client.search(["HEADER", "Message-ID", "<ours@example.org>"]) + client.search(
            ["HEADER", "Message-ID", "<theirs@example.org>"]
        )
        client.add_flags([theirs], [b"\\Deleted"])
        assert delete_by_uid(client, [ours], uidplus=False) is False  # EXPUNGE would take theirs too
        assert set(client.search(["ALL"])) == {ours, theirs}
        client.remove_flags([theirs], [b"\\Deleted"])
        assert delete_by_uid(client, [ours], uidplus=False) is True
        assert client.search(["ALL"]) == [theirs]
        assert delete_by_uid(client, [ours], uidplus=True) is True  # a UID gone already is no error
    finally:
        client.logout()


# -- killed at any step --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    ["after-fetch", "after-raw-write", "after-commit:2", "before-delete", "after-delete"],
)
def test_a_worker_killed_at_any_step_loses_and_doubles_nothing(engine_env, mail_servers, new_account, step) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(delete_after_import=True)})
    box = Mailbox(mail_servers, support)
    sent = {
        "<a@example.org>": mail("A", "<a@example.org>"),
        "<b@example.org>": mail("Re: A", "<b@example.org>", reply_to="<a@example.org>"),
        "<c@example.org>": mail("C", "<c@example.org>"),
    }
    box.append(*sent.values())

    killed = killed_at(engine_env, step)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    on_server = set(box.messages())
    index = {row["message_id"]: row for row in rows(engine_env, "messages")}
    assert set(sent) - on_server <= set(index)  # nothing left the server without being stored

    again = run("run", "--once")
    assert again.exit_code == 0, again.output
    index_rows = rows(engine_env, "messages")
    assert sorted(row["message_id"] for row in index_rows) == sorted(sent)  # each exactly once
    for row in index_rows:
        assert stored(engine_env, row) == sent[row["message_id"]]
        assert row["server_state"] == "deleted"
    assert box.messages() == {}
    tickets = rows(engine_env, "tickets")
    assert sorted(t["subject"] for t in tickets) == ["A", "C"]  # the reply joined A's ticket, once


def test_a_killed_delete_after_a_rebuilt_mailbox_still_deletes_what_is_stored(engine_env, mail_servers, new_account):
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(delete_after_import=True)})
    box = Mailbox(mail_servers, support)
    originals = [mail("One", "<one@example.org>"), mail("Two", "<two@example.org>")]
    box.append(*originals)
    killed = killed_at(engine_env, "before-delete")
    assert killed.returncode == -signal.SIGKILL
    box.recreate(box.uidvalidity() + 7)
    box.append(*originals)
    # The same Message-ID on other content is not what was stored: it stays on the server.
    box.append(mail("One, edited", "<one@example.org>"))
    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert "imported 0, skipped 3 (3 already stored); deleted 2 on the server" in result.stdout
    assert set(box.messages()) == {"<one@example.org>"} and len(rows(engine_env, "messages")) == 2


def test_a_file_purged_before_the_delete_is_stored_again_from_the_server(engine_env, mail_servers, new_account):
    """A retention purge of another account can take a shared file after this import committed its row and
    before it wrote the file again; a kill then leaves the server's copy as the only one."""
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(delete_after_import=True)})
    box = Mailbox(mail_servers, support)
    originals = {"<one@example.org>": mail("One", "<one@example.org>"), "<two@example.org>": mail("Two", None)}
    box.append(*originals.values())
    killed = killed_at(engine_env, "before-delete")
    assert killed.returncode == -signal.SIGKILL
    [one] = [row for row in rows(engine_env, "messages") if row["message_id"] == "<one@example.org>"]
    sha = one["raw_sha256"]
    (engine_env / "messages" / sha[:2] / f"{sha}.eml").unlink()  # what the purge took

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert "deleted 2 on the server" in result.stdout
    assert box.messages() == {}
    assert stored(engine_env, one) == originals["<one@example.org>"]  # fetched again before the server's delete


# -- who sees what, and bad input ------------------------------------------------------------------


def test_visible_to_limits_who_reads_tickets(engine_env, mail_servers, new_account) -> None:
    shop, sales = new_account(), new_account()
    applied(
        engine_env,
        mail_servers,
        [shop, sales],
        {shop.address: ticket(), sales.address: ticket(default_queue="sales")},
        visible={sales.address: "[sales-team]"},
    )
    Mailbox(mail_servers, shop).append(mail("For everyone", "<all@example.org>"))
    Mailbox(mail_servers, sales).append(mail("Sales only", "<sales@example.org>"))
    assert run("run", "--once").exit_code == 0
    hidden = next(t["id"] for t in rows(engine_env, "tickets") if t["account"] == sales.address)

    seen_by_alice = json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)
    assert [t["subject"] for t in seen_by_alice] == ["For everyone"]
    refused = run("--as", "alice", "tickets", "show", str(hidden))
    assert refused.exit_code == 1 and refused.stderr == f"Error: no ticket {hidden}\n"
    assert run("--as", "alice", "tickets", "show", "999").stderr == "Error: no ticket 999\n"  # the same answer
    assert run("--as", "bob", "tickets", "show", str(hidden)).exit_code == 0
    assert len(json.loads(run("--as", "bob", "tickets", "list", "--json").stdout)) == 2
    nobody = run("tickets", "list")
    assert nobody.exit_code == 1 and "say who acts" in nobody.stderr


def test_terminal_escapes_in_stored_mail_are_shown_escaped(engine_env, mail_servers, new_account) -> None:
    """A sender writes control characters into the subject, the name and the text (encoded words hide them from
    any filter on the way): every read command shows them escaped; nothing reaches the terminal as a control.
    (click drops colour sequences from output that is not a terminal, as here, but not the others: the
    hyperlink and the bell would reach a terminal.)"""
    support = new_account()
    applied_with_archive(engine_env, mail_servers, support, retention_days=0)
    hostile = (
        b"From: =?utf-8?q?Evil=1B]8;;https://evil.example/=07Bank=1B[2J?= <evil@example.org>\r\n"
        b"To: support@example.com\r\nSubject: =?utf-8?q?Pay=1B[31m_now=0D=08?=\r\n"
        b"Message-ID: <escape@example.org>\r\nDate: Tue, 01 Jul 2025 10:00:00 +0200\r\n\r\n"
        b"Text \x1b[8mhidden\x1b[0m, \x1b]8;;https://evil.example/\x07a link\x1b]8;;\x07.\r\n"
    )
    Mailbox(mail_servers, support).append(hostile)
    assert run("run", "--once").exit_code == 0
    [stored] = rows(engine_env, "messages")
    assert "\x1b[31m" in stored["subject"]  # stored as sent: the raw message and its index agree
    [listed] = json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)
    shown = [
        run("--as", "alice", "tickets", "list"),
        run("--as", "alice", "tickets", "show", str(listed["id"])),
        run("--as", "alice", "archive", "list"),
        run("--as", "alice", "archive", "show", str(stored["id"])),
        run("--as", "alice", "archive", "search", "hidden"),
    ]
    for result in shown:
        assert result.exit_code == 0, result.output
        controls = {char for char in result.stdout if ord(char) < 32 and char != "\n" or char == "\x7f"}
        assert controls == set(), (result.stdout, controls)
    assert "Pay\\x1b[31m now" in shown[1].stdout  # escaped, still readable


def test_a_stored_message_name_that_is_no_hash_is_refused_and_a_status_typo_is_a_usage_error(
    engine_env, mail_servers, new_account
) -> None:
    """A damaged or hostile row of the state store (a shared database) names a file outside the message
    directory: it is neither read nor named. A status nobody has would show an empty list: a usage error."""
    support = new_account()
    applied_with_archive(engine_env, mail_servers, support, retention_days=30)
    Mailbox(mail_servers, support).append(mail("Hello", "<hello@example.org>"))
    assert run("run", "--once").exit_code == 0
    [message] = rows(engine_env, "messages")
    secret = engine_env / "secret.eml"
    secret.write_text("Subject: not for you\r\n\r\nsecret\r\n", encoding="utf-8")
    with sqlite3.connect(engine_env / "state.db") as connection:
        connection.execute("UPDATE messages SET raw_sha256 = ?", (f"../../{secret.with_suffix('')}",))
    [listed] = json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)
    for command in (["archive", "show", str(message["id"])], ["tickets", "show", str(listed["id"])]):
        shown = run("--as", "alice", *command)
        assert shown.exit_code == 1
        assert "which is no SHA-256" in shown.stderr
        assert "secret" not in shown.stdout
    for command in (["tickets", "list"], ["outbox", "list"]):
        typo = run("--as", "alice", *command, "--status", "opne")
        assert typo.exit_code == 2
        assert "'opne' is none of" in typo.stderr


def test_one_failing_account_does_not_stop_the_others(engine_env, mail_servers, new_account, monkeypatch) -> None:
    good, disconnected, locked_out = new_account(), new_account(), new_account()
    accounts = [good, disconnected, locked_out]
    applied(engine_env, mail_servers, accounts, {account.address: ticket() for account in accounts})
    for account in accounts:
        Mailbox(mail_servers, account).append(mail(f"For {account.address}", f"<{account.address}.1@example.org>"))
    StateStore.open(f"sqlite:///{engine_env / 'state.db'}").set_status(
        disconnected.address, "needs_reconnect", error_class="auth", error="the grant was revoked"
    )
    monkeypatch.setenv(locked_out.env_name, "a wrong password")

    result = run("run", "--once")
    assert result.exit_code == 1
    assert f"{good.address}: imported 1, skipped 0\n" in result.stdout
    not_connected = f"{disconnected.address} is not connected (status needs_reconnect): the grant was revoked"
    assert f"{disconnected.address}: failed (auth): {not_connected}" in result.stderr
    assert f"{locked_out.address}: failed (auth): " in result.stderr and "AUTHENTICATIONFAILED" in result.stderr
    assert "2 of 3 account(s) failed." in result.stderr
    assert [m["account"] for m in rows(engine_env, "messages")] == [good.address]

    unknown = run("run", "--once", "--account", "nobody@example.com")
    assert unknown.exit_code == 1
    assert unknown.stderr == "Error: `nobody@example.com` is not an account declared in the spec\n"
    only = run("run", "--once", "--account", good.address.upper())
    assert only.exit_code == 0 and only.stdout == f"{good.address}: imported 0, skipped 0\n"


def test_an_account_in_error_is_worked_on_unless_its_failure_needs_a_person(
    engine_env, mail_servers, new_account
) -> None:
    """A timeout that `mailops check` saw (a network blip) does not keep the worker away until the next check;
    a refused login does: trying it on every pass could get the account locked out."""
    blipped, refused = new_account(), new_account()
    applied(engine_env, mail_servers, [blipped, refused], {blipped.address: ticket(), refused.address: ticket()})
    for account in (blipped, refused):
        Mailbox(mail_servers, account).append(mail(f"For {account.address}", f"<{account.address}.1@example.org>"))
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    store.set_status(blipped.address, "error", error_class="timeout", error="IMAP timeout after 0.001 s")
    store.set_status(refused.address, "error", error_class="auth", error="535 authentication failed")
    result = run("run", "--once")
    assert result.exit_code == 1
    assert f"{blipped.address}: imported 1, skipped 0\n" in result.stdout
    assert f"{refused.address}: failed (auth): {refused.address} is not connected (status error)" in result.stderr
    assert {row["subject"] for row in rows(engine_env, "messages")} == {f"For {blipped.address}"}


def test_garbage_bytes_are_stored_and_indexed_with_what_can_be_read(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    garbage = bytes(range(1, 256)) * 8 + b"\r\n\r\n\xff\xfe"
    box = mail_servers.users.maildir(support.address)
    box.add(garbage)
    box.add(b"Subject: =?unknown-8bit?b?///+?= \xe4\r\nFrom: <<>>\r\nDate: yesterday\r\nMessage-ID:\r\n\r\nx")
    mail_servers.users.maildir(support.address)  # hands the files to the mail user
    Mailbox(mail_servers, support).append(mail("Fine", "<fine@example.org>"))

    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{support.address}: imported 3, skipped 0\n"
    broken = [row for row in rows(engine_env, "messages") if row["message_id"] is None]
    assert len(broken) == 2 and all(row["sent_at"] is None for row in broken)
    assert {row["size"] for row in broken} == {len(stored(engine_env, row)) for row in broken}
    by_subject = {row["subject"]: row for row in broken}
    assert "" in by_subject and by_subject[""]["sender"] == ""  # nothing readable: empty, not an error
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"
    listed = run("--as", "alice", "tickets", "list")
    assert listed.exit_code == 0 and "Fine" in listed.stdout


def test_a_raw_store_that_cannot_be_written_imports_nothing_until_fixed(
    engine_env, mail_servers, new_account, monkeypatch
) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket(delete_after_import=True)})
    Mailbox(mail_servers, support).append(mail("Keep me", "<keep@example.org>"))
    (engine_env / "not-a-dir").write_text("a file where the messages should go")
    monkeypatch.setenv("MAILOPS_MESSAGE_DIR", str(engine_env / "not-a-dir"))
    result = run("run", "--once")
    assert result.exit_code == 1
    assert f"{support.address}: failed (local): cannot store a message in {engine_env / 'not-a-dir'}" in result.stderr
    assert rows(engine_env, "messages") == [] and set(Mailbox(mail_servers, support).messages()) == {
        "<keep@example.org>"
    }
    monkeypatch.setenv("MAILOPS_MESSAGE_DIR", str(engine_env / "messages"))
    assert run("run", "--once").stdout == f"{support.address}: imported 1, skipped 0; deleted 1 on the server\n"


def test_the_worker_upgrades_a_store_of_the_previous_schema(engine_env, mail_servers, new_account) -> None:
    from alembic import command
    from alembic.config import Config

    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    store = StateStore.open(f"sqlite:///{engine_env / 'state.db'}")
    config = Config()
    config.set_main_option("script_location", "mailops.state:migrations")
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    store.close()
    assert run("--as", "alice", "tickets", "list").stderr.startswith("Error: the state store")  # read-only: no upgrade
    Mailbox(mail_servers, support).append(mail("After the upgrade", "<up@example.org>"))
    result = run("run", "--once")
    assert result.exit_code == 0 and result.stdout == f"{support.address}: imported 1, skipped 0\n"
    assert [t["subject"] for t in json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)] == [
        "After the upgrade"
    ]


def test_the_store_must_exist_and_once_is_one_pass(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    write_spec(engine_env, mail_servers, [support], {support.address: ticket()})
    result = run("run", "--once")
    assert result.exit_code == 1 and result.stderr == "Error: no account is applied yet; run `mailops apply` first\n"
    assert not (engine_env / "state.db").exists()
    assert run("--as", "alice", "tickets", "list", "--json").stdout.strip() == "[]"


def test_the_loop_stops_gracefully_on_sigterm(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    Mailbox(mail_servers, support).append(mail("Hello", "<hello@example.org>"))
    worker = subprocess.Popen(
        [*MAILOPS, "run", "--interval", "0.2"],
        cwd=engine_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not rows(engine_env, "messages") and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        Mailbox(mail_servers, support).append(mail("Later", "<later@example.org>"))
        while len(rows(engine_env, "messages")) < 2 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        output, errors = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output + errors
    assert output.endswith("Stopped.\n") and "SIGTERM: finishing the current batch" in errors
    assert sorted(m["message_id"] for m in rows(engine_env, "messages")) == [
        "<hello@example.org>",
        "<later@example.org>",
    ]


def test_postgresql_state_store_imports_like_sqlite(postgres_url, engine_env, mail_servers, new_account, monkeypatch):
    from sqlalchemy import create_engine, text

    url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    database = f"worker_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    monkeypatch.setenv("MAILOPS_STATE_URL", url.rsplit("/", 1)[0] + f"/{database}")
    monkeypatch.setenv("MAILOPS_MESSAGE_DIR", str(engine_env / "messages"))
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    box = mail_servers.users.maildir(support.address)
    # Not UTF-8 and a NUL (which Dovecot serves as 0x80) in headers: PostgreSQL takes neither as text.
    box.add(b"Subject: NUL \x00 and \xff in a header\r\nFrom: x\x00y@example.org\r\n\r\nbody")
    mail_servers.users.maildir(support.address)
    Mailbox(mail_servers, support).append(
        mail("Question", "<q@example.org>"), mail("Re: Question", "<r@example.org>", reply_to="<q@example.org>")
    )
    result = run("run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{support.address}: imported 3, skipped 0; 1 joined the ticket of their thread\n"
    assert run("run", "--once").stdout == f"{support.address}: imported 0, skipped 0\n"
    listed = json.loads(run("--as", "alice", "tickets", "list", "--json").stdout)
    assert sorted((t["subject"], t["message_count"]) for t in listed) == [
        ("NUL \ufffd and \ufffd in a header", 1),
        ("Question", 2),
    ]


def test_the_retention_step_removes_raw_files_that_a_killed_import_left(engine_env, mail_servers, new_account) -> None:
    """A worker killed after writing the .eml files of a batch and before committing their rows leaves files that
    no index row may ever take (the mail is gone from the server meanwhile). The worker's retention step removes
    such a file once it is older than a day; a referenced file stays however old, and so does an unreferenced
    young one (another worker's, written and not committed yet). The sweep runs at most once a day."""
    support = new_account()
    applied(engine_env, mail_servers, [support], {support.address: ticket()})
    box = Mailbox(mail_servers, support)
    kept, gone = mail("Kept", "<kept@example.org>"), mail("Gone", "<gone@example.org>")
    box.append(kept, gone)
    killed = killed_at(engine_env, "after-raw-write")
    assert killed.returncode == -signal.SIGKILL and rows(engine_env, "messages") == []
    client = box.client()
    try:
        client.select_folder("INBOX")
        client.delete_messages(client.search(["HEADER", "Message-ID", "<gone@example.org>"]))
        client.expunge()
    finally:
        client.logout()

    def file_of(raw: bytes) -> Path:
        sha = hashlib.sha256(raw).hexdigest()
        return engine_env / "messages" / sha[:2] / f"{sha}.eml"

    assert file_of(kept).exists() and file_of(gone).exists()
    first = run("run", "--once")  # imports Kept into its file; Gone's file is unreferenced, but young
    assert first.exit_code == 0 and first.stdout == f"{support.address}: imported 1, skipped 0\n"
    assert file_of(kept).exists() and file_of(gone).exists()

    two_days_ago = time.time() - 2 * 24 * 3600
    leftover = file_of(gone).parent / f".{file_of(gone).name}.0badcafe.tmp"  # of a replacement cut short
    leftover.write_bytes(gone[:10])
    young = file_of(b"another worker's message, not committed yet\r\n")
    young.parent.mkdir(exist_ok=True)
    young.write_bytes(b"another worker's message, not committed yet\r\n")
    for path in (file_of(kept), file_of(gone), leftover, engine_env / "messages" / ".orphans-swept"):
        os.utime(path, (two_days_ago, two_days_ago))
    assert run("run", "--once").exit_code == 0
    assert file_of(kept).exists() and young.exists()
    assert not file_of(gone).exists() and not leftover.exists()
    assert stored(engine_env, rows(engine_env, "messages")[0]) == kept

    os.utime(young, (two_days_ago, two_days_ago))  # an orphan now, but a sweep ran less than a day ago
    assert run("run", "--once").exit_code == 0 and young.exists()
