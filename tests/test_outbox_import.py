"""`mailops outbox import`: another system's outbox log joins the outbox, classified, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailops.cli import app

runner = CliRunner()

SEED_LOG = (
    "Datum;From;To;CC;BCC;Subject;Fehler\n"
    "03.11.2026 09:15;shop@example.com;kunde@example.org;;;Ihre Bestellung;\n"
    '03.11.2026 09:16;shop@example.com;"Anna <anna@example.org>; b@example.org";;archiv@example.com;Rechnung;'
    "SMTP Error: The following recipients failed: anna@example.org: 552 5.2.2 Mailbox size limit exceeded\n"
    "03.11.2026 09:17;info@example.com;x@example.org;;;Angebot;Could not access file: /srv/angebot.pdf\n"
    "03.11.2026 09:17;info@example.com;x@example.org;;;Angebot;Could not access file: /srv/angebot.pdf\n"
)


@pytest.fixture
def admin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec whose command line acts as administrator, and an empty state store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.delenv("MAILOPS_USER", raising=False)
    config = tmp_path / "config"
    config.mkdir()
    (config / "accounts.yaml").write_text(
        "accounts:\n  - address: shop@example.com\n    provider: manual\n    display_name: Shop\n"
        "    username: shop@example.com\n    password: {env: SHOP_PASSWORD}\n"
        "    imap: {host: imap.example.com, port: 993, encryption: ssl}\n"
        "    smtp: {host: smtp.example.com, port: 587, encryption: starttls}\n",
        encoding="utf-8",
    )
    (config / "defaults.yaml").write_text(
        "defaults:\n  email: shop@example.com\n  sender_name: Shop\nemployees:\n  alice: {name: Alice}\n"
        "policies: {cli_user_is_admin: true}\n",
        encoding="utf-8",
    )
    return tmp_path


def test_rows_are_classified_marked_and_imported_once(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    log.write_text(SEED_LOG, encoding="utf-8")
    first = runner.invoke(app, ["outbox", "import", str(log)])
    assert first.exit_code == 0, first.output
    assert "Imported 4 new entries" in first.stdout  # the two equal rows are two mails
    again = runner.invoke(app, ["outbox", "import", str(log)])
    assert "Imported 0 new entries" in again.stdout
    entries = json.loads(runner.invoke(app, ["outbox", "list", "--json"]).stdout)
    assert len(entries) == 4 and {entry["source"] for entry in entries} == {"import"}
    by_subject = {entry["subject"]: entry for entry in entries}
    sent, full = by_subject["Ihre Bestellung"], by_subject["Rechnung"]
    assert (sent["status"], sent["error_class"], sent["remedy"]) == ("sent", None, None)
    assert sent["created_at"].startswith("2026-11-03T08:15:00")  # 09:15 in Berlin is 08:15 UTC
    assert (full["status"], full["error_class"], full["smtp_code"], full["enhanced_code"]) == (
        "failed",
        "mailbox_full",
        552,
        "5.2.2",
    )
    assert full["to"] == ["anna@example.org", "b@example.org"] and full["bcc"] == ["archiv@example.com"]
    assert full["remedy"]
    assert [entry["error_class"] for entry in entries if entry["subject"] == "Angebot"] == ["file_access"] * 2


def test_only_an_administrator_imports(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    log.write_text(SEED_LOG, encoding="utf-8")
    refused = runner.invoke(app, ["--as", "alice", "outbox", "import", str(log)])
    assert refused.exit_code == 1 and "for an administrator" in refused.stderr
    assert not (admin_env / "state.db").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"Datum;From;To\n01.01.2026;a@b.de;c@d.de\n", "no `Fehler` (or `error`) column"),
        (b"Datum;Fehler\n31.02.2026 10:00;x\n", "bad.csv:2: Datum `31.02.2026 10:00` is not a date"),
        (b"Datum;Fehler\nnow;x\n", "bad.csv:2: Datum `now` is not a date"),
        (b"Datum;Fehler\n01.01.0001 00:00;x\n", "bad.csv:2: Datum `01.01.0001 00:00` is not within the years"),
        (b"Datum;To;Fehler\n01.01.2026;a@example.org;\n01.01.2026;b@exa", "bad.csv:3: 2 field(s) where"),
        (b"Datum;Fehler\n01.01.2026;caf\xe9\n", ":2:"),
        # An attempt's time is not made up: the import's own time would put it in today's report.
        (b"Datum;Fehler\n01.01.2026 10:00;x\n;y\n", "bad.csv:3: Datum: no time; an imported attempt needs when"),
        (b"To;Fehler\na@example.org;x\n", "bad.csv:2: Datum: no time"),
    ],
)
def test_a_bad_log_is_refused_and_nothing_is_stored(admin_env: Path, content: bytes, message: str) -> None:
    good = admin_env / "good.csv"
    good.write_text(SEED_LOG, encoding="utf-8")
    assert runner.invoke(app, ["outbox", "import", str(good)]).exit_code == 0
    bad = admin_env / "bad.csv"
    bad.write_bytes(content)
    result = runner.invoke(app, ["outbox", "import", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(json.loads(runner.invoke(app, ["outbox", "list", "--json"]).stdout)) == 4


def test_times_with_an_offset_are_the_same_rows_in_any_zone(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    log.write_text(
        "Datum;From;To;Subject;Fehler\n2026-11-03T09:15:00+01:00;shop@example.com;a@example.org;Offset;550 5.1.1 x\n"
        "2026-11-03T09:15:00Z;shop@example.com;a@example.org;Zulu;\n03.11.2026 09:15;shop@example.com;;Local;\n",
        encoding="utf-8",
    )
    assert "Imported 3 new entries" in runner.invoke(app, ["outbox", "import", str(log)]).stdout
    for zone in ("UTC", "America/New_York"):
        again = runner.invoke(app, ["outbox", "import", str(log), "--timezone", zone])
        assert again.exit_code == 0 and "Imported 0 new entries" in again.stdout, again.output


@pytest.fixture(params=["sqlite", "postgresql"])
def import_store(request: pytest.FixtureRequest, admin_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The state URL of an empty store, SQLite's or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{admin_env / 'state.db'}"
    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
    database = f"imports_{os.getpid()}_{os.urandom(4).hex()}"
    admin = create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    monkeypatch.setenv("MAILOPS_STATE_URL", f"{server}/{database}")
    return f"{server}/{database}"


@contextmanager
def writes_held(url: str) -> Iterator[None]:
    """Another process holds the outbox, so that two imports started meanwhile both read it before either writes."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        if url.startswith("sqlite"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE"))
        yield
        connection.commit()
    engine.dispose()


def test_two_imports_at_once_store_each_row_once(admin_env: Path, import_store: str) -> None:
    from sqlalchemy import create_engine, text

    log = admin_env / "log.csv"
    rows = "".join(f"03.11.2026 09:{n % 60:02d};shop@example.com;k{n}@example.org;;;Mail {n};\n" for n in range(2000))
    log.write_text("Datum;From;To;CC;BCC;Subject;Fehler\n" + rows, encoding="utf-8")
    command = [sys.executable, "-m", "mailops", "outbox", "import", str(log)]
    assert subprocess.run(command, capture_output=True).returncode == 0  # the store exists: both only add
    log.write_text("Datum;From;To;CC;BCC;Subject;Fehler\n" + rows.replace("Mail", "Second"), encoding="utf-8")
    with writes_held(import_store):
        both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(3)  # both started and waiting to write (SQLite's busy timeout, 10 s, outlasts this)
    outputs = [process.communicate(timeout=120) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    assert sorted(out for out, _err in outputs) == [
        f"Imported 0 new entries from {log} (marked as imported).\n",
        f"Imported 2000 new entries from {log} (marked as imported).\n",
    ]
    engine = create_engine(import_store)
    with engine.connect() as connection:
        counted = connection.execute(text("SELECT count(*), count(DISTINCT message_id) FROM outbox")).one()
    engine.dispose()
    assert tuple(counted) == (4000, 4000)


def test_list_takes_a_known_class_and_refuses_a_typo(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    log.write_text(SEED_LOG, encoding="utf-8")
    assert runner.invoke(app, ["outbox", "import", str(log)]).exit_code == 0
    full = json.loads(runner.invoke(app, ["outbox", "list", "--class", "mailbox_full", "--json"]).stdout)
    assert [entry["subject"] for entry in full] == ["Rechnung"]
    typo = runner.invoke(app, ["outbox", "list", "--class", "mailbox-full"])  # would list nothing, silently
    assert typo.exit_code == 2
    assert "'mailbox-full' is none of no_recipient," in " ".join(typo.stderr.split())


def test_list_and_export_read_dates_in_the_business_zone_and_order_by_time(admin_env: Path) -> None:
    later, earlier = admin_env / "later.csv", admin_env / "earlier.csv"
    header = "Datum;From;To;Subject;Fehler\n"
    later.write_text(
        header + "20.11.2026 10:00;shop@example.com;a@example.org;Newest;550 5.1.1 unknown\n"
        "20.11.2026 09:00;shop@example.com;c@example.org;Sent;\n"
    )
    earlier.write_text(header + "03.11.2026 00:30;shop@example.com;b@example.org;Past midnight;550 5.1.1 unknown\n")
    for log in (later, earlier):  # the older log imported last
        assert runner.invoke(app, ["outbox", "import", str(log)]).exit_code == 0
    newest = json.loads(runner.invoke(app, ["outbox", "list", "--limit", "1", "--json"]).stdout)
    assert [entry["subject"] for entry in newest] == ["Newest"]
    # 00:30 in Berlin is 23:30 UTC of the day before: a date is the business's day, as in `report`.
    since = json.loads(runner.invoke(app, ["outbox", "list", "--since", "2026-11-03", "--json"]).stdout)
    assert sorted(entry["subject"] for entry in since) == ["Newest", "Past midnight", "Sent"]
    for edge, count in (("0001-01-01", 3), ("9999-12-31T23:59:59", 0)):  # the calendar's ends: all, and none
        listed = runner.invoke(app, ["outbox", "list", "--since", edge, "--json"])
        assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == count, listed.output
    exported = runner.invoke(app, ["outbox", "export", "--since", "2026-11-03", "--out", "out.csv"])
    assert exported.exit_code == 0 and "Wrote 3 entries" in exported.stdout
    lines = (admin_env / "out.csv").read_text(encoding="utf-8").splitlines()
    assert "Newest" in lines[1] and "Sent" in lines[2] and "Past midnight" in lines[3]  # as the log was written
    assert ",550," in lines[1] and "550.0" not in lines[1]  # a code is a number, not a float


# A directory of the zone database, and a name too long for a file, are no zones either.
@pytest.mark.parametrize("zone", ["Mars/Olympus", "America", "A" * 300])
def test_an_unknown_time_zone_is_refused(admin_env: Path, zone: str) -> None:
    log = admin_env / "log.csv"
    log.write_text(SEED_LOG, encoding="utf-8")
    result = runner.invoke(app, ["outbox", "import", str(log), "--timezone", zone])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: unknown time zone `{zone[:40]}")
    assert result.stderr.endswith("` (an IANA name such as Europe/Berlin)\n")


def test_a_huge_subject_is_cut_in_the_table_and_whole_in_json(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    subject = "Rechnung " + "x" * 20_000
    log.write_text(f"Datum;From;Subject;Fehler\n01.11.2026;a@example.com;{subject};550 no\n", encoding="utf-8")
    assert runner.invoke(app, ["outbox", "import", str(log)]).exit_code == 0
    listed = runner.invoke(app, ["outbox", "list"])
    assert listed.exit_code == 0, listed.output
    assert "Rechnung" in listed.stdout and "…" in listed.stdout
    assert listed.stdout.count("x") < 400
    [entry] = json.loads(runner.invoke(app, ["outbox", "list", "--json"]).stdout)
    assert entry["subject"] == subject


def test_control_characters_in_an_imported_row_never_reach_the_terminal(admin_env: Path) -> None:
    log = admin_env / "log.csv"
    log.write_text(
        "Datum;From;Subject;Fehler\n01.11.2026;a@example.com;\x1b[2JHi\x07 invoice \u202egpj.exe;x\x1b]2:owned\x07\n"
    )
    assert runner.invoke(app, ["outbox", "import", str(log)]).exit_code == 0
    listed = runner.invoke(app, ["outbox", "list"])
    assert listed.exit_code == 0, listed.output
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout and "\u202e" not in listed.stdout
    assert "\\x1b[2JHi\\x07" in listed.stdout and "\\u202egpj.exe" in listed.stdout
    shown = runner.invoke(app, ["outbox", "show", "1"])
    assert "\x1b" not in shown.stdout and "\\x1b]2:owned\\x07" in shown.stdout
