"""`mailops send` and the outbox log, against the real test servers: what arrives is what the spec
describes, every attempt is logged with its class and remedy, visibility holds, and a killed batch
loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailops.cli import app
from mailops.engine.batch import BatchError, read_batch
from mailops.state import StateStore
from tests.servers import HOST

runner = CliRunner()
MAILOPS = [sys.executable, "-m", "mailops"]

TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Mail</title></head>
<body><div class="content">{CONTENT}</div><p>Example GmbH · Musterstraße 1</p></body></html>
"""


def write_spec(directory: Path, mail_servers, accounts: list, *, projects: str = "", extra_defaults: str = "") -> Path:
    config = directory / "config"
    config.mkdir(exist_ok=True)
    imap, smtp = mail_servers.ports("ssl", "starttls")
    entries = []
    for account in accounts:
        visible = getattr(account, "visible_to", "")
        entries.append(
            f"  - address: {account.address}\n    provider: manual\n    display_name: {account.address.split('@')[0]}\n"
            f"    username: {account.address}\n    password: {{env: {account.env_name}}}\n"
            f"    imap: {{host: {HOST}, port: {imap}, encryption: ssl}}\n"
            f"    smtp: {{host: {HOST}, port: {smtp}, encryption: starttls}}\n" + visible
        )
    (config / "accounts.yaml").write_text("accounts:\n" + "".join(entries) + projects, encoding="utf-8")
    (config / "templates").mkdir(exist_ok=True)
    (config / "templates" / "mail.html").write_text(TEMPLATE, encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults:\n  email: {accounts[0].address}\n  sender_name: Example GmbH\n"
        '  signature: "{MITARBEITER}\\nTel. {MITARBEITER_TELEFON}\\nFax {MITARBEITER_TELEFAX}"\n'
        '  greeting: "Kind regards"\n'
        "  html_template: templates/mail.html\n"
        f"{extra_defaults}"
        "employees:\n"
        '  alice: {name: Alice Meyer, email: alice@example.com, phone: "+49 30 1", groups: [support-team]}\n'
        "  bob: {name: Bob Schulz, groups: [sales-team]}\n"
        "queues: [support]\n"
        "policies: {outbox: {keep_bodies_days: 1}}\n",
        encoding="utf-8",
    )
    return config


def run(*args: str):
    return runner.invoke(app, list(args))


def applied(engine_env, mail_servers, accounts, **kwargs) -> Path:
    config = write_spec(engine_env, mail_servers, accounts, **kwargs)
    result = run("apply", "--auto-approve")
    assert result.exit_code == 0, result.output
    for account in accounts:  # the test mails of apply are not what these tests look at
        for key in list(mail_servers.users.maildir(account.address).keys()):
            mail_servers.users.maildir(account.address).remove(key)
    return config


@contextlib.contextmanager
def sender_fault(mail_servers, sender, fault: str | None) -> Iterator[None]:
    """The SMTP server misbehaves for ``sender`` (see ``RejectingHandler.sender_faults``) meanwhile."""
    faults = mail_servers.smtp.handler.sender_faults
    if fault is not None:
        faults[sender.address] = fault
    try:
        yield
    finally:
        faults.pop(sender.address, None)


def received(mail_servers, address: str):
    return [message_from_bytes(bytes(m), policy=policy.default) for m in mail_servers.users.messages(address)]


def outbox_rows(engine_env) -> list[dict]:
    with sqlite3.connect(engine_env / "state.db") as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM outbox ORDER BY id")]


# -- what arrives ----------------------------------------------------------------------------


def test_the_mail_that_arrives_is_the_one_the_spec_describes(engine_env, mail_servers, new_account, tmp_path) -> None:
    shop, office, archive, customer = new_account(), new_account(), new_account(), new_account()
    projects = f"projects:\n  SHOP: {{email: {shop.address}, sender_name: Beispiel Shop}}\n"
    defaults = f"  cc: [{office.address}]\n  bcc: {archive.address}\n"
    applied(engine_env, mail_servers, [shop, office, archive], projects=projects, extra_defaults=defaults)
    attachment = tmp_path / "invoice.pdf"
    attachment.write_bytes(b"%PDF-1.4 not really")
    result = run(
        "--as", "alice", "send", "--to", customer.address, "--subject", "Grüße – Bestellung ✓",
        "--body", "Your order has shipped.", "--project", "SHOP", "--attach", str(attachment), "--explain",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "project SHOP" in result.stdout  # --explain says why this account sends
    [mail] = received(mail_servers, customer.address)
    assert mail["From"] == f"Beispiel Shop <{shop.address}>"
    assert mail["Subject"] == "Grüße – Bestellung ✓"
    assert mail["Cc"] == office.address
    assert mail["Bcc"] is None  # BCC goes in the envelope only
    assert len(received(mail_servers, archive.address)) == 1 and len(received(mail_servers, office.address)) == 1
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Your order has shipped." in text and "Alice Meyer" in text and "Tel. +49 30 1" in text
    assert "Fax" not in text  # alice has no fax: that line is dropped, not left dangling
    assert '<div class="content">' in html and "Your order has shipped." in html
    [part] = list(mail.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("invoice.pdf", b"%PDF-1.4 not really")
    listed = json.loads(run("--as", "alice", "outbox", "list", "--json").stdout)
    assert listed[0]["status"] == "sent" and listed[0]["project"] == "SHOP"
    assert (listed[0]["to"], listed[0]["cc"], listed[0]["bcc"]) == (
        [customer.address],
        [office.address],
        [archive.address],
    )


def test_a_batch_merges_its_columns_and_reuses_one_session(engine_env, mail_servers, new_account, tmp_path) -> None:
    sender, first, second = new_account(), new_account(), new_account()
    applied(engine_env, mail_servers, [sender], extra_defaults="")
    batch = tmp_path / "mails.csv"
    batch.write_text(
        f"to;subject;body;name\n{first.address};Hello {{name}};Dear {{name}}, {{{{braces}}}} stay.;Ann\n"
        f"{second.address};Hello {{name}};Dear {{name}}.;Bo\n",
        encoding="utf-8",
    )
    result = run("--as", "alice", "send", "--batch", str(batch))
    assert result.exit_code == 0, result.output
    [mail] = received(mail_servers, first.address)
    assert mail["Subject"] == "Hello Ann"
    assert "Dear Ann, {braces} stay." in mail.get_body(("plain",)).get_content()
    bad = tmp_path / "bad.csv"
    bad.write_text("to;subject;body\nx@example.com;Hi {nobody};body\n", encoding="utf-8")
    refused = run("--as", "alice", "send", "--batch", str(bad))
    assert refused.exit_code == 1
    assert refused.stderr == f"Error: {bad}:2: `subject` uses {{nobody}}, which is no column of the batch\n"


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_a_batch_keeps_single_quotes_and_reads_double_ones_as_quoting(tmp_path: Path, separator: str) -> None:
    """Python's sniffer takes a field in '…' for quoting: only the separator is taken from it."""
    batch = tmp_path / "mails.csv"
    rows = [
        ["to", "subject", "body"],
        ["kunde@example.org", "'Sommer-Sale' 20%", "Liebe Kundin"],
        ["kunde@example.org", "'Sommer-Sale'", "'Danke'"],
        ["kunde@example.org", "Preis", f'"5{separator} ""netto"""'],
    ]
    batch.write_text("\n".join(separator.join(row) for row in rows) + "\n", encoding="utf-8")
    requests = read_batch(batch)
    assert [(request.subject, request.body) for request in requests] == [
        ("'Sommer-Sale' 20%", "Liebe Kundin"),
        ("'Sommer-Sale'", "'Danke'"),
        ("Preis", f'5{separator} "netto"'),
    ]


def test_a_batch_row_with_a_control_character_is_named_by_its_line(tmp_path: Path) -> None:
    batch = tmp_path / "mails.csv"
    batch.write_text(
        'to,subject,body,name\nkunde@example.org,Hallo,"Liebe {name},\r\nalles gut",Ann\n'
        "kunde@example.org,Hallo {name},Hi,B\x1bo\n",
        encoding="utf-8",
    )
    with pytest.raises(BatchError) as raised:
        read_batch(batch)
    # The second row spans lines 2 and 3: the third starts on line 4.
    assert (
        str(raised.value) == f"{batch}:4: `subject` has the control character U+001B (ESC), which a mail may not carry"
    )
    batch.write_text("to,subject,body\nkunde@example.org,Hallo,a\x00b\n", encoding="utf-8")
    with pytest.raises(BatchError, match=r":2: `body` has the control character U\+0000 \(NUL\)"):
        read_batch(batch)


# -- failures, classified --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault, recipients, expected",
    [
        ("refuse", ["ok"], ("from_failed", 553, "5.1.8")),
        (None, ["ok", "unknown", "ok"], ("recipients_failed", 550, "5.1.1")),
        ("spam", ["ok"], ("policy_rejection", 554, "5.7.1")),
        ("too-large", ["ok"], ("message_too_large", 552, "5.3.4")),
    ],
)
def test_each_refusal_is_logged_with_its_class_codes_and_remedy(
    engine_env, mail_servers, new_account, fault, recipients, expected
) -> None:
    sender = new_account()
    applied(engine_env, mail_servers, [sender])
    to = [new_account(name).address for name in recipients]
    arguments = [item for address in to for item in ("--to", address)]
    with sender_fault(mail_servers, sender, fault):
        result = run("--as", "alice", "send", *arguments, "--subject", "Hi", "--body", "Hello")
    assert result.exit_code == 1
    [row] = outbox_rows(engine_env)
    assert (row["error_class"], row["smtp_code"], row["enhanced_code"]) == expected
    assert row["status"] == "failed" and row["reply"] and row["remedy"]
    assert expected[0] in result.stderr


def test_a_wrong_password_is_could_not_authenticate(engine_env, mail_servers, new_account, monkeypatch) -> None:
    sender = new_account()
    applied(engine_env, mail_servers, [sender])
    monkeypatch.setenv(sender.env_name, "no longer the password")
    result = run("--as", "alice", "send", "--to", new_account().address, "--subject", "Hi", "--body", "Hello")
    assert result.exit_code == 1
    [row] = outbox_rows(engine_env)
    assert (row["error_class"], row["smtp_code"]) == ("could_not_authenticate", 535)


@pytest.mark.parametrize("local, code", [("greylist", 451), ("busy", 452)])
def test_a_4xx_is_retried_and_the_second_attempt_is_linked(engine_env, mail_servers, new_account, local, code) -> None:
    sender, recipient = new_account(), new_account(local)
    applied(engine_env, mail_servers, [sender])
    result = run("--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "Hello")
    assert result.exit_code == 0, result.output
    first, second = outbox_rows(engine_env)
    assert (first["status"], first["error_class"], first["smtp_code"]) == ("failed", "throttled", code)
    assert first["reply"] and first["remedy"]
    assert (second["status"], second["attempt"], second["retry_of"]) == ("sent", 2, first["id"])
    assert len(received(mail_servers, recipient.address)) == 1


def test_a_recipient_refused_for_now_gets_the_next_try_alone(engine_env, mail_servers, new_account) -> None:
    sender, taken, greylisted = new_account(), new_account(), new_account("greylist")
    applied(engine_env, mail_servers, [sender])
    result = run(
        "--as", "alice", "send", "--to", taken.address, "--to", greylisted.address, "--subject", "Hi", "--body", "x"
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = outbox_rows(engine_env)
    assert (first["status"], first["error_class"], first["smtp_code"]) == ("failed", "throttled", 451)
    assert greylisted.address in first["reply"] and taken.address not in first["reply"]
    assert (second["status"], second["retry_of"]) == ("sent", first["id"])
    # the server took the mail for the other recipient the first time: it gets no second copy
    assert len(received(mail_servers, taken.address)) == 1
    assert len(received(mail_servers, greylisted.address)) == 1


def test_a_5xx_is_final_even_in_a_class_that_usually_passes(engine_env, mail_servers, new_account) -> None:
    sender = new_account()
    applied(engine_env, mail_servers, [sender])
    with sender_fault(mail_servers, sender, "quota"):
        result = run("--as", "alice", "send", "--to", new_account().address, "--subject", "Hi", "--body", "x")
    assert result.exit_code == 1
    [row] = outbox_rows(engine_env)  # a daily limit says 550: not tried again within the run
    assert (row["status"], row["error_class"], row["smtp_code"], row["enhanced_code"]) == (
        "failed", "throttled", 550, "5.4.5",
    )  # fmt: skip
    assert row["raw"] is None or row["raw_expires_at"] is not None  # nothing kept for `outbox retry`
    assert "Nothing to retry." in run("--as", "alice", "outbox", "retry").stdout


def test_a_passing_failure_is_retried_later_and_then_keeps_no_body(engine_env, mail_servers, new_account) -> None:
    sender, recipient = new_account(), new_account()
    config = applied(engine_env, mail_servers, [sender])
    defaults = config / "defaults.yaml"
    defaults.write_text(defaults.read_text().replace("keep_bodies_days: 1", "keep_bodies_days: 0"))
    with sender_fault(mail_servers, sender, "defer"):
        result = run("--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "IBAN DE00")
    assert result.exit_code == 1
    rows = outbox_rows(engine_env)
    assert [(row["status"], row["error_class"]) for row in rows] == [("failed", "throttled")] * 3
    assert [row["raw"] is not None for row in rows] == [False, False, True]  # kept for `outbox retry` only
    retried = run("--as", "alice", "outbox", "retry")
    assert retried.exit_code == 0, retried.output
    last = outbox_rows(engine_env)[-1]
    assert (last["status"], last["retry_of"], last["attempt"]) == ("sent", rows[-1]["id"], 4)
    assert [row["raw"] for row in outbox_rows(engine_env)] == [None] * 4  # keep_bodies_days: 0 keeps nothing
    assert len(received(mail_servers, recipient.address)) == 1


def test_retry_leaves_what_its_account_cannot_send_now(engine_env, mail_servers, new_account) -> None:
    sender, recipient = new_account(), new_account()
    applied(engine_env, mail_servers, [sender])
    assert run("--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "x").exit_code == 0
    with sqlite3.connect(engine_env / "state.db") as connection:  # as a sender killed elsewhere leaves it
        connection.execute(
            "UPDATE outbox SET status = 'queued', owner = 'elsewhere 42', updated_at = '2000-01-01 00:00:00', "
            "raw = CAST('Subject: x' AS BLOB)"
        )
        connection.execute("UPDATE accounts SET status = 'needs_reconnect'")
    result = run("--as", "alice", "outbox", "retry")
    assert result.exit_code == 1
    assert f"#1 left as it is: {sender.address} is needs reconnect, not connected" in result.stderr
    [row] = outbox_rows(engine_env)
    assert row["status"] == "queued" and row["raw"] is not None  # still there for a retry after the fix
    assert len(received(mail_servers, recipient.address)) == 1


def test_a_connection_lost_mid_data_is_tried_again_then_logged(engine_env, mail_servers, new_account) -> None:
    sender = new_account()
    applied(engine_env, mail_servers, [sender])
    with sender_fault(mail_servers, sender, "drop"):
        result = run("--as", "alice", "send", "--to", new_account().address, "--subject", "Hi", "--body", "Hello")
    assert result.exit_code == 1
    rows = outbox_rows(engine_env)
    assert [row["attempt"] for row in rows] == [1, 2, 3]
    assert {row["status"] for row in rows} == {"failed"}
    assert {row["error_class"] for row in rows} == {"connection_lost"}
    assert all(row["retry_of"] == previous["id"] for previous, row in zip(rows, rows[1:], strict=False))


def test_a_server_that_stops_offering_starttls_gets_no_mail_in_clear(engine_env, mail_servers, new_account) -> None:
    sender, recipient = new_account(), new_account()
    config = applied(engine_env, mail_servers, [sender])
    accounts = config / "accounts.yaml"  # the same host now answers without STARTTLS (a downgrade)
    starttls, plain = mail_servers.smtp.starttls_port, mail_servers.smtp.plain_port
    accounts.write_text(accounts.read_text().replace(f"port: {starttls},", f"port: {plain},"))
    result = run("--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "Hello")
    assert result.exit_code == 1
    [row] = outbox_rows(engine_env)
    assert (row["status"], row["error_class"]) == ("failed", "tls")
    assert "STARTTLS" in row["reply"] and row["remedy"]
    assert received(mail_servers, recipient.address) == []


def test_a_missing_attachment_is_logged_and_nothing_is_sent(engine_env, mail_servers, new_account, tmp_path) -> None:
    sender, recipient = new_account(), new_account()
    applied(engine_env, mail_servers, [sender])
    result = run(
        "--as", "alice", "send", "--to", recipient.address, "--subject", "Hi", "--body", "Hello",
        "--attach", str(tmp_path / "gone.pdf"),
    )  # fmt: skip
    assert result.exit_code == 1
    [row] = outbox_rows(engine_env)
    assert (row["status"], row["error_class"]) == ("failed", "file_access")
    assert received(mail_servers, recipient.address) == []


# -- who may do what ---------------------------------------------------------------------------


def test_visible_to_limits_sending_and_reading(engine_env, mail_servers, new_account) -> None:
    support = new_account()
    support.visible_to = "    visible_to: [support-team]\n"  # type: ignore[attr-defined]
    applied(engine_env, mail_servers, [support])
    recipient = new_account().address
    sent = run("--as", "alice", "send", "--to", recipient, "--subject", "Hi", "--body", "Hello")
    assert sent.exit_code == 0, sent.output
    refused = run("--as", "bob", "send", "--to", recipient, "--subject", "Hi", "--body", "Hello")
    assert refused.exit_code == 1
    assert f"bob may not send from {support.address}" in refused.stderr
    assert json.loads(run("--as", "bob", "outbox", "list", "--json").stdout) == []
    [entry] = json.loads(run("--as", "alice", "outbox", "list", "--json").stdout)
    hidden = run("--as", "bob", "outbox", "show", str(entry["id"]))
    assert hidden.exit_code == 1 and hidden.stderr == f"Error: no outbox entry {entry['id']}\n"
    nobody = run("outbox", "list")
    assert nobody.exit_code == 1 and "say who acts: --as EMPLOYEE or MAILOPS_USER" in nobody.stderr
    # A test mail goes to any --to: it is sending, and asks the same of who acts.
    tested = run("--as", "alice", "test-mail", support.address, "--to", recipient)
    assert tested.exit_code == 0, tested.output
    for who, refusal in (
        (["--as", "bob"], f"Error: bob may not send from {support.address} (it is not in its visible_to)\n"),
        (["--as", "nosuch"], "Error: `nosuch` is not an employee declared under `employees:`\n"),
        ([], "Error: say who acts: --as EMPLOYEE or MAILOPS_USER"),
    ):
        refused = run(*who, "test-mail", support.address, "--to", recipient)
        assert refused.exit_code == 1 and refused.stderr.startswith(refusal), refused.output
    assert len(received(mail_servers, recipient)) == 2  # the mail and alice's test mail


def test_a_deleted_account_no_longer_sends_but_its_history_stays(engine_env, mail_servers, new_account) -> None:
    keep, gone = new_account(), new_account()
    applied(engine_env, mail_servers, [keep, gone], projects=f"projects:\n  OLD: {{email: {gone.address}}}\n")
    recipient = new_account().address
    assert (
        run("--as", "alice", "send", "--to", recipient, "--subject", "Hi", "--body", "x", "--project", "OLD").exit_code
        == 0
    )
    write_spec(engine_env, mail_servers, [keep])
    assert run("apply", "--auto-approve", "--confirm-delete", gone.address, "--force").exit_code == 0
    refused = run("--as", "alice", "send", "--to", recipient, "--subject", "Hi", "--body", "x", "--project", "OLD")
    assert refused.exit_code == 1
    history = json.loads(run("--as", "alice", "outbox", "list", "--json").stdout)
    assert [entry["account"] for entry in history] == [gone.address.lower()]


# -- nothing lost -----------------------------------------------------------------------------


def test_a_batch_killed_midway_is_finished_by_two_retries_and_nothing_is_lost(
    engine_env, mail_servers, new_account
) -> None:
    sender, recipient = new_account(), new_account()
    applied(engine_env, mail_servers, [sender])
    batch = engine_env / "batch.jsonl"
    batch.write_text(
        "".join(json.dumps({"to": recipient.address, "subject": f"Mail {n}", "body": "x"}) + "\n" for n in range(500)),
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [*MAILOPS, "--as", "alice", "send", "--batch", str(batch)], cwd=engine_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while len(mail_servers.users.messages(recipient.address)) < 50:
        assert process.poll() is None, "the batch finished before it could be killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    retries = [  # two at once: each left-behind attempt is taken over by one of them only
        subprocess.Popen(
            [*MAILOPS, "--as", "alice", "outbox", "retry"],
            cwd=engine_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for retry in retries:
        output, errors = retry.communicate(timeout=300)
        assert retry.returncode == 0, output + errors
    retried_from = [row["retry_of"] for row in outbox_rows(engine_env) if row["retry_of"] is not None]
    assert retried_from and len(retried_from) == len(set(retried_from))
    rows = outbox_rows(engine_env)
    assert {row["status"] for row in rows} <= {"sent", "failed"}
    latest = {}
    for row in rows:  # every mail's last attempt was sent
        latest[row["message_id"]] = row["status"]
    assert len(latest) == 500 and set(latest.values()) == {"sent"}
    delivered: dict[str, int] = {}
    for mail in received(mail_servers, recipient.address):
        delivered[mail["Message-ID"]] = delivered.get(mail["Message-ID"], 0) + 1
    assert set(delivered) == set(latest)  # every mail arrived: at least once...
    assert max(delivered.values()) <= 2  # ...and at most twice


def test_a_batch_with_one_bad_row_logs_and_sends_nothing(engine_env, mail_servers, new_account, tmp_path) -> None:
    sender, recipient = new_account(), new_account()
    applied(engine_env, mail_servers, [sender])
    batch = tmp_path / "batch.csv"
    batch.write_text(
        f"to;subject;body;attach;project\n{recipient.address};A;x;missing.pdf;\n{recipient.address};B;x;;NOPE\n",
        encoding="utf-8",
    )
    result = run("--as", "alice", "send", "--batch", str(batch))
    assert result.exit_code == 1 and "NOPE" in result.stderr
    assert outbox_rows(engine_env) == [] and received(mail_servers, recipient.address) == []


@pytest.mark.parametrize("attach", ["../secret.key", "/etc/hostname", "sub/../../secret.key"])
def test_a_batch_attaches_only_files_in_its_own_directory(engine_env, mail_servers, new_account, tmp_path, attach):
    applied(engine_env, mail_servers, [new_account()])
    (tmp_path / "secret.key").write_text("TOP SECRET")
    (tmp_path / "batches").mkdir()
    batch = tmp_path / "batches" / "batch.csv"
    batch.write_text(f"to;subject;body;attach\n{new_account().address};s;b;{attach}\n", encoding="utf-8")
    result = run("--as", "alice", "send", "--batch", str(batch))
    assert result.exit_code == 1
    assert f"batch.csv:2: the attachment '{attach}' is outside the batch file's directory" in result.stderr
    assert outbox_rows(engine_env) == []


def test_a_batch_takes_no_per_mail_options(engine_env, mail_servers, new_account, tmp_path) -> None:
    applied(engine_env, mail_servers, [new_account()])
    batch = tmp_path / "batch.csv"
    batch.write_text(f"to;subject;body\n{new_account().address};s;b\n", encoding="utf-8")
    result = run("--as", "alice", "send", "--batch", str(batch), "--bcc", "x@example.com", "--project", "P")
    assert result.exit_code == 1
    assert "give no --bcc, --project" in result.stderr
    assert outbox_rows(engine_env) == []


def test_html_merge_values_are_escaped_and_a_bcc_only_mail_goes_out(engine_env, mail_servers, new_account, tmp_path):
    applied(engine_env, mail_servers, [new_account()])
    recipient, hidden = new_account(), new_account()
    batch = tmp_path / "batch.jsonl"
    row = {"to": recipient.address, "subject": "Hi {name}", "body": "<p>Dear {name}</p>", "html": True}
    batch.write_text(json.dumps(row | {"name": '<img src="cid:secret.pdf">'}) + "\n", encoding="utf-8")
    assert run("--as", "alice", "send", "--batch", str(batch)).exit_code == 0
    [mail] = received(mail_servers, recipient.address)
    assert "&lt;img src=&quot;cid:secret.pdf&quot;&gt;" in mail.get_body(("html",)).get_content()
    assert mail["Subject"] == 'Hi <img src="cid:secret.pdf">'  # a subject is text, not HTML
    newsletter = run("--as", "alice", "send", "--bcc", hidden.address, "--subject", "News", "--body", "x")
    assert newsletter.exit_code == 0, newsletter.output
    [copy] = received(mail_servers, hidden.address)
    assert copy["To"] == "undisclosed-recipients:;" and copy["Bcc"] is None


def test_numbers_beyond_the_database_are_usage_errors(engine_env, mail_servers, new_account) -> None:
    applied(engine_env, mail_servers, [new_account()])
    for args in (
        ["outbox", "show", str(2**63)],
        ["outbox", "resend", str(2**64)],
        ["outbox", "list", "--limit", "9" * 30],
    ):
        result = run("--as", "alice", *args)
        assert result.exit_code == 2 and "is not in the range" in result.output, result.output


def test_a_missing_attachment_from_a_hidden_account_is_refused_not_logged(
    engine_env, mail_servers, new_account, tmp_path
) -> None:
    shared, support = new_account(), new_account()
    support.visible_to = "    visible_to: [support-team]\n"  # type: ignore[attr-defined]
    applied(engine_env, mail_servers, [shared, support], projects=f"projects:\n  SUP: {{email: {support.address}}}\n")
    result = run(
        "--as", "bob", "send", "--to", new_account().address, "--subject", "Fake", "--body", "x", "--project", "SUP",
        "--attach", str(tmp_path / "gone.pdf"),
    )  # fmt: skip
    assert result.exit_code == 1 and f"bob may not send from {support.address}" in result.stderr
    assert outbox_rows(engine_env) == []  # nothing written under an account bob may not see


def test_the_store_is_needed_before_anything_is_sent(engine_env, mail_servers, new_account) -> None:
    write_spec(engine_env, mail_servers, [new_account()])
    result = run("--as", "alice", "send", "--to", "x@example.com", "--subject", "Hi", "--body", "x")
    assert result.exit_code == 1
    assert result.stderr == "Error: no account is applied yet; run `mailops apply` first\n"
    assert (
        not (engine_env / "state.db").exists()
        or StateStore.open(f"sqlite:///{engine_env / 'state.db'}").accounts() == []
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path.write_bytes(b"Gr\xfc\xdfe\n"), "body.txt:1:3: body file is not valid UTF-8"),
        (lambda path: os.mkfifo(path), "is a named pipe (FIFO), not a regular file"),
        (lambda path: path.write_bytes(b"x" * (10 * 1024 * 1024 + 1)), "is larger than 10 MiB"),
    ],
)
def test_a_body_file_that_cannot_be_used_is_refused_before_anything_else(
    engine_env, mail_servers, new_account, make, message
) -> None:
    write_spec(engine_env, mail_servers, [new_account()])
    body = engine_env / "body.txt"
    make(body)
    result = run("--as", "alice", "send", "--to", "x@example.com", "--subject", "Hi", "--body-file", str(body))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output


def test_a_batch_with_an_injected_header_sends_none_of_its_mails(engine_env, mail_servers, new_account) -> None:
    sender, first, victim = new_account(), new_account(), new_account()
    applied(engine_env, mail_servers, [sender])
    batch = engine_env / "batch.jsonl"
    rows = [
        {"to": first.address, "subject": "fine", "body": "x"},
        {"to": first.address, "subject": f"Hi\r\nBcc: {victim.address}", "body": "x"},
    ]
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = run("--as", "alice", "send", "--batch", str(batch))
    assert result.exit_code == 1
    assert received(mail_servers, victim.address) == [] and received(mail_servers, first.address) == []
    assert "invalid_header" in result.output or "control character" in result.output
