"""The outbox analysis: frames loaded through the real paths (a SQLite state store written by `Outbox`, the
CLI's export, the CLI's import of a seed log, the seed log itself), hand-counted summaries, filters, week
and day boundaries in the viewer's zone, retries counted once, visibility, bad files, and the charts."""

from __future__ import annotations

import csv
import datetime as dt
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from typer.testing import CliRunner

from mailops.cli import app
from mailops.outbox import analysis, charts, exports
from mailops.outbox.analysis import (
    COLUMNS,
    FORMULA_START,
    AnalysisError,
    by_account,
    by_class,
    by_day,
    by_domain,
    empty_frame,
    failure_rate,
    filter_frame,
    headline,
    load_export,
    load_seed_log,
    load_store,
    top_remedies,
    whats_new,
)
from mailops.outbox.classify import CLASSES, OutboxLogError, remedy
from mailops.report import Period
from mailops.state import StateStore
from mailops.state.outbox import NewAttempt, Outbox, OutboxStatus, Outcome
from mailops.state.tables import OutboxRow

runner = CliRunner()
UTC = dt.UTC

SHOP, INFO, HIDDEN = "shop@example.com", "info@example.com", "hidden@example.com"

SPEC_ACCOUNTS = (
    "accounts:\n  - address: shop@example.com\n    provider: manual\n    display_name: Shop\n"
    "    username: shop@example.com\n    password: {env: SHOP_PASSWORD}\n"
    "    imap: {host: imap.example.com, port: 993, encryption: ssl}\n"
    "    smtp: {host: smtp.example.com, port: 587, encryption: starttls}\n"
)
SPEC_DEFAULTS = (
    "defaults:\n  email: shop@example.com\n  sender_name: Shop\nemployees:\n  alice: {name: Alice}\n"
    "policies: {cli_user_is_admin: true}\n"
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose command line acts as administrator on ``state.db`` beside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.delenv("MAILOPS_USER", raising=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "accounts.yaml").write_text(SPEC_ACCOUNTS, encoding="utf-8")
    (tmp_path / "config" / "defaults.yaml").write_text(SPEC_DEFAULTS, encoding="utf-8")
    return tmp_path


def open_store(directory: Path) -> StateStore:
    return StateStore.open(f"sqlite:///{directory / 'state.db'}", create=True)


@dataclass
class Log:
    """Writes attempts through `Outbox.queue` and `.finish`, then moves each to the time it should have."""

    store: StateStore
    ids: dict[str, list[int]] = field(default_factory=dict)  # message id -> its attempts' ids

    def mail(
        self,
        message_id: str,
        when: dt.datetime,
        account: str,
        to: list[str],
        status: str,
        error_class: str | None = None,
        *,
        smtp_code: int | None = None,
        enhanced_code: str | None = None,
        project: str | None = None,
        cc: tuple[str, ...] = (),
    ) -> int:
        attempts = self.ids.setdefault(message_id, [])
        outbox = Outbox(self.store)
        [entry] = outbox.queue(
            [
                NewAttempt(
                    account=account,
                    sender=account,
                    sender_name="",
                    to=tuple(to),
                    cc=cc,
                    bcc=(),
                    subject=f"Mail {message_id}",
                    preview="",
                    message_id=f"<{message_id}@example.com>",
                    project=project,
                    attempt=len(attempts) + 1,
                    retry_of=attempts[-1] if attempts else None,
                )
            ]
        )
        if status != "queued":
            outcome = Outcome(
                OutboxStatus(status),
                reply=f"{smtp_code} {error_class}" if error_class else None,
                smtp_code=smtp_code,
                enhanced_code=enhanced_code,
                error_class=error_class,
                remedy=remedy(error_class).long if error_class else None,
            )
            outbox.finish([(entry, outcome)])
        with self.store.session() as session:  # `queue` stamps the present; the test needs its own times
            session.execute(update(OutboxRow).where(OutboxRow.id == entry).values(created_at=when))
        attempts.append(entry)
        return entry


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A moment of March 2026 in UTC (Berlin is UTC+1 until March 29th)."""
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def write_example(store: StateStore) -> None:
    """Nine mails, twelve attempts; the expected figures in the tests are counted from this by hand.

    m3 failed once (throttled) and then went out: one mail, sent. m5 failed three times: one
    mail, failed. m4 left at 23:30 UTC, which is the next day in Berlin. Nothing on March 4th.
    """
    log = Log(store)
    log.mail("m1", at(2, 9), SHOP, ["a@kunde.de"], "sent", project="SHOP")
    log.mail(
        "m2",
        at(2, 10),
        SHOP,
        ["b@kunde.de"],
        "failed",
        "mailbox_full",
        smtp_code=552,
        enhanced_code="5.2.2",
        project="SHOP",
    )
    log.mail("m3", at(2, 11), SHOP, ["c@beispiel.de"], "failed", "throttled", smtp_code=451, enhanced_code="4.7.1")
    log.mail("m3", at(2, 11, 5), SHOP, ["c@beispiel.de"], "sent")
    log.mail(
        "m4",
        at(2, 23, 30),
        INFO,
        ["D@Beispiel.DE", "e@kunde.de"],
        "failed",
        "recipients_failed",
        smtp_code=550,
        cc=("copy@example.net",),
    )
    for minute in range(3):
        log.mail("m5", at(3, 8, minute), INFO, ["e@kunde.de"], "failed", "connection_lost")
    log.mail("m6", at(5, 8), SHOP, ["F@Example.ORG"], "sent")
    log.mail("m7", at(5, 9), HIDDEN, ["x@kunde.de"], "failed", "could_not_authenticate", smtp_code=535)
    log.mail("m8", at(5, 10), SHOP, ["y@kunde.de"], "queued")
    log.mail("m9", at(3, 12), SHOP, ["g@kunde.de"], "failed", "mailbox_full", smtp_code=552, project="SHOP")


@pytest.fixture
def example(workdir: Path) -> Iterator[StateStore]:
    store = open_store(workdir)
    write_example(store)
    yield store
    store.close()


def records(table: pd.DataFrame) -> list[tuple[object, ...]]:
    """A summary's rows as plain tuples (floats rounded), to compare with hand-counted figures."""
    rows = []
    for row in table.itertuples(index=False):
        rows.append(tuple(round(value, 4) if isinstance(value, float) else value for value in row))
    return rows


# --- the frame ------------------------------------------------------------------------------------


DTYPES = {
    "id": "Int64",
    "time": "datetime64[us, UTC]",
    "source": "category",
    "account": "category",
    "project": "category",
    "sender": "str",
    "to": "str",
    "cc": "str",
    "bcc": "str",
    "recipient_domain": "category",
    "subject": "str",
    "status": "category",
    "attempt": "int64",
    "smtp_code": "Int64",
    "enhanced_code": "str",
    "class": "category",
    "reply": "str",
    "message_id": "str",
    "final": "bool",
}


def assert_shape(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == COLUMNS
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == DTYPES
    assert list(frame["status"].cat.categories) == [status.value for status in OutboxStatus]
    assert list(frame["class"].cat.categories) == list(CLASSES)
    assert str(frame["to"].dtype.storage) == "pyarrow"


def test_the_store_gives_one_row_per_attempt_in_the_documented_shape(example: StateStore) -> None:
    frame = load_store(example)
    assert_shape(frame)
    assert len(frame) == 12 and frame["id"].tolist() == list(range(1, 13))
    m4 = frame[frame["message_id"] == "<m4@example.com>"].iloc[0]
    assert (m4["to"], m4["cc"], m4["bcc"]) == ("D@Beispiel.DE; e@kunde.de", "copy@example.net", None) or pd.isna(
        m4["bcc"]
    )
    assert m4["recipient_domain"] == "beispiel.de" and m4["account"] == INFO
    assert (m4["class"], m4["smtp_code"], m4["status"]) == ("recipients_failed", 550, "failed")
    assert m4["time"] == pd.Timestamp("2026-03-02 23:30", tz="UTC")
    queued = frame[frame["status"] == "queued"].iloc[0]
    assert pd.isna(queued["class"]) and pd.isna(queued["smtp_code"])
    assert frame["source"].unique().tolist() == ["mailops"]
    assert sorted(frame["project"].dropna().unique()) == ["SHOP"]
    # The final attempts: every mail's last one.
    finals = frame[frame["final"]]
    assert sorted(finals["message_id"]) == [f"<m{n}@example.com>" for n in range(1, 10)]
    assert finals.set_index("message_id").loc["<m5@example.com>", "attempt"] == 3


def test_summaries_count_each_mail_once_by_its_final_attempt(example: StateStore) -> None:
    frame = load_store(example)
    assert headline(frame) == analysis.Headline(sent=3, failed=5, queued=1, rate=0.625)
    assert failure_rate(frame) == 0.625
    assert records(by_class(frame)) == [
        ("mailbox_full", 2, 0.4, remedy("mailbox_full").short, False),
        ("connection_lost", 1, 0.2, remedy("connection_lost").short, remedy("connection_lost").temporary),
        ("could_not_authenticate", 1, 0.2, remedy("could_not_authenticate").short, False),
        ("recipients_failed", 1, 0.2, remedy("recipients_failed").short, False),
    ]
    assert records(by_account(frame)) == [(INFO, 0, 2, 2, 1.0), (SHOP, 3, 2, 5, 0.4), (HIDDEN, 0, 1, 1, 1.0)]
    assert records(by_domain(frame)) == [("kunde.de", 1, 4, 5, 0.8), ("beispiel.de", 1, 1, 2, 0.5)]
    assert records(by_domain(frame, top=1)) == [("kunde.de", 1, 4, 5, 0.8)]
    top = top_remedies(frame, n=2)
    assert top["class"].tolist() == ["mailbox_full", "connection_lost"]
    assert top["details"].tolist() == [remedy("mailbox_full").long, remedy("connection_lost").long]


def test_every_attempt_counts_when_asked(example: StateStore) -> None:
    attempts = load_store(example).assign(final=True)
    assert headline(attempts) == analysis.Headline(sent=3, failed=8, queued=1, rate=8 / 11)
    assert dict(zip(by_class(attempts)["class"], by_class(attempts)["failures"], strict=True)) == {
        "connection_lost": 3,
        "mailbox_full": 2,
        "could_not_authenticate": 1,
        "recipients_failed": 1,
        "throttled": 1,
    }


def test_days_are_the_viewers_calendar_days_and_quiet_days_are_zero(example: StateStore) -> None:
    frame = load_store(example)
    day = pd.Timestamp
    assert records(by_day(frame)) == [
        (day("2026-03-02"), 2, 1, 3, 0.3333),
        (day("2026-03-03"), 0, 3, 3, 1.0),  # m4 at 00:30 in Berlin
        (day("2026-03-04"), 0, 0, 0, 0.0),
        (day("2026-03-05"), 1, 1, 2, 0.5),
    ]
    assert records(by_day(frame, timezone="UTC")) == [
        (day("2026-03-02"), 2, 2, 4, 0.5),
        (day("2026-03-03"), 0, 2, 2, 1.0),
        (day("2026-03-04"), 0, 0, 0, 0.0),
        (day("2026-03-05"), 1, 1, 2, 0.5),
    ]
    stretched = by_day(frame, start=dt.date(2026, 3, 1), end=dt.date(2026, 3, 3))
    assert records(stretched) == [
        (day("2026-03-01"), 0, 0, 0, 0.0),
        (day("2026-03-02"), 2, 1, 3, 0.3333),
        (day("2026-03-03"), 0, 3, 3, 1.0),
    ]
    with pytest.raises(AnalysisError, match="unknown time zone `Mars/Olympus`"):
        by_day(frame, timezone="Mars/Olympus")


def test_the_viewer_sees_only_the_accounts_given(example: StateStore) -> None:
    frame = load_store(example, accounts={SHOP, "INFO@example.com"})
    assert HIDDEN not in set(frame["account"]) and len(frame) == 11
    assert headline(frame) == analysis.Headline(sent=3, failed=4, queued=1, rate=4 / 7)
    assert "could_not_authenticate" not in set(by_class(frame)["class"])
    assert len(load_store(example, accounts=set())) == 0


def test_the_store_is_read_between_since_and_until(example: StateStore) -> None:
    frame = load_store(example, since=at(3, 0), until=dt.datetime(2026, 3, 5, 10, 0))  # naive: UTC
    assert sorted(set(frame["message_id"])) == [
        "<m5@example.com>",
        "<m6@example.com>",
        "<m7@example.com>",
        "<m9@example.com>",
    ]
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert len(load_store(example, since=dt.datetime(2026, 3, 3, 0, 30, tzinfo=berlin), until=at(3, 0))) == 1  # m4


def test_a_mail_counts_once_in_the_period_of_its_last_attempt(example: StateStore) -> None:
    # m3 failed at 11:00 (throttled) and went out on its retry at 11:05: split the log between the two.
    before, after = load_store(example, until=at(2, 11, 3)), load_store(example, since=at(2, 11, 3))
    first_try = before[before["message_id"] == "<m3@example.com>"]
    assert len(first_try) == 1 and not first_try["final"].any()
    whole = headline(load_store(example))
    assert headline(before).failed + headline(after).failed == whole.failed
    assert headline(before).sent + headline(after).sent == whole.sent


def test_filters(example: StateStore) -> None:
    frame = load_store(example)

    def counted(**filters: object) -> tuple[int, int, int]:
        figures = headline(filter_frame(frame, **filters))  # type: ignore[arg-type]
        return figures.sent, figures.failed, figures.queued

    assert counted(accounts={"SHOP@example.com"}) == (3, 2, 1)
    assert counted(accounts=set()) == (0, 0, 0)
    assert counted(projects={"SHOP"}) == (1, 2, 0)
    assert counted(projects={None}) == (2, 3, 1)
    assert counted(classes={"mailbox_full", "throttled"}) == (0, 2, 0)  # m3's throttled try was not its last
    assert counted(statuses={"queued"}) == (0, 0, 1)
    assert counted(domains={"KUNDE.de"}) == (1, 4, 1)
    assert counted(start=dt.date(2026, 3, 3), end=dt.date(2026, 3, 3)) == (0, 3, 0)  # the whole of March 3rd
    assert counted(start=dt.date(2026, 3, 3), end=dt.date(2026, 3, 3), timezone="UTC") == (0, 2, 0)
    assert counted(start=at(5, 9), end=at(5, 10)) == (0, 1, 0)  # a moment: start included, end excluded
    # A naive moment is Berlin's: 11:00 there is m2's 10:00 UTC, which an end excludes.
    assert counted(end=dt.datetime(2026, 3, 2, 11, 0)) == (1, 0, 0)
    assert counted(end=dt.datetime(2026, 3, 2, 11, 1)) == (1, 1, 0)
    assert counted(accounts={SHOP}, domains={"kunde.de"}, statuses={"sent", "failed"}) == (1, 2, 0)
    narrowed = filter_frame(frame, accounts={INFO})
    assert narrowed.index.tolist() == [4, 5, 6, 7]  # rows keep their place in the frame


def test_whats_new_compares_this_week_with_the_week_before_in_the_viewers_zone(tmp_path: Path) -> None:
    errors = {
        "mailbox_full": "SMTP Error: The following recipients failed: {a}: 452 4.2.2 The email account that you "
        "tried to reach is over quota.",
        "recipients_failed": "SMTP Error: The following recipients failed: {a}: 550 5.1.1 <{a}>: Recipient address "
        "rejected: User unknown",
        "timeout": "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_client(): Unable "
        "to connect to ssl://smtp.example.com:465 (Connection timed out)",
        "tls": "SMTP Error: Could not connect to SMTP host. Connection failed. stream_socket_enable_crypto(): SSL "
        "operation failed with code 1. OpenSSL Error messages: error:0A000086:SSL routines::certificate verify failed",
        "throttled": "SMTP Error: The following recipients failed: {a}: 421 4.7.0 Try again later, closing connection.",
    }
    rows = [  # (Berlin time, recipient, class or None for sent)
        ("01.03.2026 12:00", "x@e.de", "throttled"),  # two weeks back: does not count as "the week before"
        ("08.03.2026 23:30", "x@a.de", "mailbox_full"),  # the last minutes of the week before
        ("09.03.2026 00:10", "y@a.de", "mailbox_full"),  # this week, but a.de and mailbox_full failed before
        ("09.03.2026 00:10", "x@b.de", "recipients_failed"),
        ("10.03.2026 09:00", "y@e.de", "throttled"),
        ("10.03.2026 09:00", "x@f.de", None),  # sent: nothing new
        ("15.03.2026 23:50", "x@c.de", "timeout"),  # the last minutes of this week
        ("16.03.2026 00:10", "x@d.de", "tls"),  # tomorrow in Berlin, still the 15th in UTC
    ]
    lines = ["Datum;From;To;Fehler"]
    for when, to, name in rows:
        lines.append(f"{when};shop@example.com;{to};{errors[name].format(a=to) if name else ''}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    frame = load_seed_log(log)
    assert frame["class"].dropna().tolist() == [name for _, _, name in rows if name]
    new = whats_new(frame, today=dt.date(2026, 3, 15))
    assert records(new) == [
        ("class", "recipients_failed", 1, remedy("recipients_failed").short),
        ("class", "throttled", 1, remedy("throttled").short),
        ("class", "timeout", 1, remedy("timeout").short),
        ("domain", "b.de", 1, ""),
        ("domain", "c.de", 1, ""),
        ("domain", "e.de", 1, ""),
    ]
    # In UTC, Monday 00:10 in Berlin is still Sunday: both mailbox_full and recipients_failed failed the
    # week before, and the tls failure of Monday 00:10 in Berlin belongs to this week.
    in_utc = whats_new(frame, today=dt.date(2026, 3, 15), timezone="UTC")
    assert [tuple(row) for row in in_utc[["kind", "name"]].itertuples(index=False)] == [
        ("class", "throttled"),
        ("class", "timeout"),
        ("class", "tls"),
        ("domain", "c.de"),
        ("domain", "d.de"),
        ("domain", "e.de"),
    ]
    # A week later only Monday's failure is this week's, and neither its class nor its domain failed before.
    later = whats_new(frame, today=dt.date(2026, 3, 22))
    assert records(later) == [("class", "tls", 1, remedy("tls").short), ("domain", "d.de", 1, "")]
    assert whats_new(frame, today=dt.date(2026, 3, 29)).empty


def test_headline_compares_with_the_previous_period(example: StateStore) -> None:
    frame = load_store(example)
    before = filter_frame(frame, end=dt.date(2026, 3, 2))  # March 2nd: 2 sent, 1 failed
    after = filter_frame(frame, start=dt.date(2026, 3, 3))  # from March 3rd: 1 sent, 4 failed, 1 queued
    figures = headline(after, before)
    assert (figures.sent, figures.failed, figures.queued, figures.rate) == (1, 4, 1, 0.8)
    assert (figures.previous_sent, figures.previous_failed) == (2, 1)
    assert figures.previous_rate == pytest.approx(1 / 3) and figures.change == pytest.approx(0.8 - 1 / 3)
    assert headline(after, empty_frame()).change is None


# --- export and import through the command line --------------------------------------------------------------


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_an_export_of_the_cli_loads_as_the_same_frame(example: StateStore, workdir: Path, form: str) -> None:
    out = workdir / f"outbox.{form}"
    result = runner.invoke(app, ["outbox", "export", "--out", str(out), "--format", form])
    assert result.exit_code == 0, result.output
    exported = load_export(out)
    assert_shape(exported)
    pd.testing.assert_frame_equal(exported, load_store(example))


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_an_export_in_chunks_is_the_same_as_one_at_once(
    example: StateStore, workdir: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of two: some hold no project, no reply or no code at all, and still write those columns typed.
    monkeypatch.setattr(exports, "EXPORT_CHUNK", 2)
    out = workdir / f"outbox.{form}"
    result = runner.invoke(app, ["outbox", "export", "--out", str(out), "--format", form])
    assert result.exit_code == 0, result.output
    assert result.output == f"Wrote 12 entries to {out}.\n"
    pd.testing.assert_frame_equal(load_export(out), load_store(example))
    if form == "csv":
        assert out.read_text(encoding="utf-8").count("id,created_at,") == 1  # one header
    else:  # pandas reads its own types back: a code is no float (`552.0`), a time keeps its zone
        types = pd.read_parquet(out).dtypes
        read_back = (types["retry_of"], types["smtp_code"], str(types["created_at"]))
        assert read_back == ("Int64", "Int64", "datetime64[us, UTC]")


@pytest.mark.parametrize(
    "accounts, since",
    [(None, None), ({SHOP}, None), ({SHOP}, at(2, 11)), ({INFO, HIDDEN}, at(4, 0)), (set(), None), (None, at(9, 0))],
)
def test_chunks_are_the_entries_a_user_sees_since_a_time_in_the_order_logged(
    example: StateStore, accounts: set[str] | None, since: dt.datetime | None
) -> None:
    outbox = Outbox(example)
    entries = sorted(outbox.entries(accounts=accounts, since=since), key=lambda entry: entry.id)
    chunks = list(outbox.chunks(accounts=accounts, since=since, size=2))
    rows = [dict(zip(chunk, values, strict=True)) for chunk in chunks for values in zip(*chunk.values(), strict=True)]
    assert rows == [entry.as_dict() for entry in entries]
    assert all(chunk["id"] for chunk in chunks)  # no empty chunk


def test_an_export_that_cannot_finish_leaves_the_old_file(example: StateStore, workdir: Path) -> None:
    out = workdir / "outbox.csv"
    out.write_text("the export of yesterday\n")
    small = 3000  # bytes: the export of the example is larger, so the write fails midway

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (small, small))

    command = [sys.executable, "-m", "mailops", "outbox", "export", "--out", str(out)]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, preexec_fn=small_disk, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: cannot write {out}: File too large; the file is unchanged")
    assert out.read_text() == "the export of yesterday\n"
    assert [path.name for path in workdir.iterdir() if path.name.startswith(".outbox.csv")] == []  # no temp file
    assert runner.invoke(app, ["outbox", "export", "--out", str(out)]).exit_code == 0
    assert out.stat().st_size > small


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_an_export_stopped_midway_leaves_the_old_file_and_no_temporary_one(
    example: StateStore, workdir: Path, stop: signal.Signals
) -> None:
    columns = ", ".join(column.name for column in OutboxRow.__table__.c if column.name != "id")
    with sqlite3.connect(workdir / "state.db") as database:  # the example's twelve rows, 12 * 2**12 times
        for _ in range(12):
            database.execute(f"INSERT INTO outbox ({columns}) SELECT {columns} FROM outbox")
    out = workdir / "outbox.csv"
    out.write_text("the export of yesterday\n")
    command = [sys.executable, "-m", "mailops", "outbox", "export", "--out", str(out)]

    def as_a_terminal_would() -> None:  # under nohup the signal is ignored, and so the export would finish
        signal.signal(stop, signal.SIG_DFL)

    export = subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_a_terminal_would
    )
    try:
        while not [path for path in workdir.iterdir() if path.name.startswith(".outbox.csv.")]:  # writing now
            assert export.poll() is None, export.communicate()
            time.sleep(0.01)
        export.send_signal(stop)
        _, stderr = export.communicate(timeout=60)
    finally:
        export.kill()
    assert export.returncode == 128 + stop, stderr
    assert out.read_text() == "the export of yesterday\n"
    assert [path.name for path in workdir.iterdir() if path.name.startswith(".outbox.csv")] == []


def test_a_csv_export_marks_formulas_as_text_and_loads_back_unmarked(example: StateStore, workdir: Path) -> None:
    subjects = ['=HYPERLINK("http://evil.example","x")', "'quoted'", "-5 % off", "@home", "plain"]
    Outbox(example).queue(
        [
            NewAttempt(
                account=SHOP,
                sender=SHOP,
                sender_name="",
                to=("=cmd|' /C calc'!A0@kunde.de",),
                cc=(),
                bcc=(),
                subject=subject,
                preview="",
                message_id=f"<formula-{number}@example.com>",
            )
            for number, subject in enumerate(subjects)
        ]
    )
    out = workdir / "outbox.csv"
    assert runner.invoke(app, ["outbox", "export", "--out", str(out), "--format", "csv"]).exit_code == 0
    with out.open(newline="", encoding="utf-8") as file:
        cells = {row["message_id"]: row for row in csv.DictReader(file)}
    marked = [cells[f"<formula-{number}@example.com>"]["subject"] for number in range(len(subjects))]
    assert marked == [f"'{subject}" for subject in subjects[:4]] + ["plain"]
    assert cells["<formula-0@example.com>"]["to"] == "'=cmd|' /C calc'!A0@kunde.de"
    assert not any(value.startswith(FORMULA_START) for row in cells.values() for value in row.values())
    pd.testing.assert_frame_equal(load_export(out), load_store(example))  # the marks are gone again


def test_a_seed_log_reads_the_same_directly_and_after_the_cli_imported_it(workdir: Path) -> None:
    log = workdir / "log.csv"
    log.write_text(
        "Datum;From;To;CC;BCC;Subject;Fehler\n"
        "03.11.2026 09:15;Shop <SHOP@example.com>;kunde@example.org;;;Ihre Bestellung;\n"
        '03.11.2026 09:16;shop@example.com;"Anna <anna@Example.org>; b@example.net";;archiv@example.com;Rechnung;'
        "SMTP Error: The following recipients failed: anna@example.org: 552 5.2.2 Mailbox size limit exceeded\n"
        "04.11.2026 00:30;info@example.com;x@beispiel.de;;;Angebot;Could not access file: /srv/angebot.pdf\n"
        "04.11.2026 00:30;info@example.com;x@beispiel.de;;;Angebot;Could not access file: /srv/angebot.pdf\n"
        "06.11.2026 10:00;info@example.com;;;;Leer;You must provide at least one recipient email address.\n",
        encoding="utf-8",
    )
    direct = load_seed_log(log)
    assert_shape(direct)
    assert direct["source"].tolist() == ["import"] * 5 and direct["id"].isna().all() and direct["final"].all()
    assert direct["account"].tolist() == [SHOP, SHOP, INFO, INFO, INFO]
    assert direct["recipient_domain"].tolist()[:4] == ["example.org", "example.org", "beispiel.de", "beispiel.de"]
    assert pd.isna(direct["recipient_domain"].iloc[4])
    result = runner.invoke(app, ["outbox", "import", str(log)])
    assert result.exit_code == 0, result.output
    store = open_store(workdir)
    imported = load_store(store)
    store.close()
    assert headline(direct) == headline(imported) == analysis.Headline(sent=1, failed=4, queued=0, rate=0.8)
    for summary in (by_class, by_account, by_domain, by_day):
        pd.testing.assert_frame_equal(summary(direct), summary(imported))
    assert records(by_day(direct)) == [
        (pd.Timestamp("2026-11-03"), 1, 1, 2, 0.5),
        (pd.Timestamp("2026-11-04"), 0, 2, 2, 1.0),
        (pd.Timestamp("2026-11-05"), 0, 0, 0, 0.0),
        (pd.Timestamp("2026-11-06"), 0, 1, 1, 1.0),
    ]
    # A mail without a recipient counts among the failures, but under no domain.
    assert records(by_domain(direct)) == [("beispiel.de", 0, 2, 2, 1.0), ("example.org", 1, 1, 2, 0.5)]


# --- empty and bad input --------------------------------------------------------------------------------


def test_no_mail_gives_empty_summaries_and_no_data_charts(tmp_path: Path) -> None:
    missing = StateStore.open(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    assert not missing.exists
    for frame in (load_store(missing), load_store(open_store(tmp_path)), empty_frame()):
        assert_shape(frame)
        assert len(frame) == 0
        assert headline(frame) == analysis.Headline(sent=0, failed=0, queued=0, rate=None)
        assert failure_rate(frame) is None
        for table, columns in (
            (by_class(frame), ["class", "failures", "share", "remedy", "temporary"]),
            (top_remedies(frame), ["class", "failures", "share", "remedy", "temporary", "details"]),
            (by_account(frame), ["account", "sent", "failed", "mails", "rate"]),
            (by_domain(frame), ["domain", "sent", "failed", "mails", "rate"]),
            (by_day(frame), ["day", "sent", "failed", "mails", "rate"]),
            (whats_new(frame, today=dt.date(2026, 3, 1)), ["kind", "name", "failures", "remedy"]),
        ):
            assert table.empty and list(table.columns) == columns
        assert len(filter_frame(frame, accounts={SHOP}, start=dt.date(2026, 1, 1))) == 0
    assert records(by_day(empty_frame(), start=dt.date(2026, 3, 1), end=dt.date(2026, 3, 2))) == [
        (pd.Timestamp("2026-03-01"), 0, 0, 0, 0.0),
        (pd.Timestamp("2026-03-02"), 0, 0, 0, 0.0),
    ]


EXPORT_HEADER = "id,created_at,source,account,status,error_class\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (EXPORT_HEADER.encode() + b"1,2026-03-02 09:00:00+00:00,mailops,caf\xe9@example.com,sent,\n", ":2:40: "),
        (b"PAR1\x00\x01broken", "not a readable Parquet file"),
        (b"Datum;From;To;Fehler\n01.03.2026;a@b.de;c@d.de;\n", "no `id`, `created_at`, `account`, `status` column"),
        (EXPORT_HEADER.encode() + b"1,yesterday,mailops,a@example.com,sent,\n", "column `created_at`"),
        (
            EXPORT_HEADER.encode() + b"1,2026-03-02 09:00:00+00:00,mailops,a@example.com,lost,\n",
            "data row 1: status `lost` is not one of queued, sent, failed",
        ),
        (b"", "the file is empty"),
    ],
)
def test_a_bad_export_is_refused_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(content)
    with pytest.raises(OutboxLogError) as caught:
        load_export(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_huge_file_a_directory_or_none_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_text(EXPORT_HEADER + "1,2026-03-02 09:00:00+00:00,mailops,a@example.com,sent,\n" * 100)
    with pytest.raises(OutboxLogError, match=f"outbox export {big} is larger than 1 KiB"):
        load_export(big, limit=1024)
    with pytest.raises(OutboxLogError, match=f"outbox log {big} is larger than 1 KiB"):
        load_seed_log(big, limit=1024)
    with pytest.raises(OutboxLogError, match="is a directory, not a regular file"):
        load_export(tmp_path)
    with pytest.raises(OutboxLogError, match="not found"):
        load_export(tmp_path / "gone.parquet")


def test_a_bad_seed_log_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"Datum;Fehler\n01.01.2026;caf\xe9\n")
    with pytest.raises(OutboxLogError, match=f"{path}:2:"):
        load_seed_log(path)
    path.write_text("Datum;Fehler\n01.01.2026;x\n", encoding="utf-8")
    with pytest.raises(OutboxLogError, match="unknown time zone `Mars/Olympus`"):
        load_seed_log(path, timezone="Mars/Olympus")


def test_an_export_with_a_bom_and_a_reply_over_two_lines_loads(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "\ufeffid,created_at,account,to,status,error_class,reply,message_id\n"
        '7,2026-03-02 09:00:00.250000+00:00,Shop@Example.com,a@x.de; b@y.de,failed,no_such_class,"550 first\n'
        'second line",<m@x>\n',
        encoding="utf-8",
    )
    frame = load_export(path)
    row = frame.iloc[0]
    assert (row["id"], row["account"], row["recipient_domain"]) == (7, SHOP, "x.de")
    assert row["class"] == "unknown"  # a class this release does not know
    assert row["reply"] == "550 first\nsecond line" and row["source"] == "mailops" and row["attempt"] == 1
    assert row["time"] == pd.Timestamp("2026-03-02 09:00:00.25", tz="UTC")


# --- charts ---------------------------------------------------------------------------------------


def test_each_chart_is_a_deterministic_inline_svg_and_empty_data_says_so(example: StateStore) -> None:
    frame = load_store(example)
    drawings = {
        charts.failures_by_class: by_class,
        charts.failures_by_account: by_account,
        charts.failures_by_domain: by_domain,
        charts.failure_rate_by_day: by_day,
    }
    for chart, summary in drawings.items():
        text = charts.svg(chart(summary(frame)))
        assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
        assert "<path" in text and charts.NO_DATA not in text
        assert "<?xml" not in text and "DOCTYPE" not in text and "<metadata" not in text
        assert 'href="http' not in text and "url(http" not in text and "<image" not in text
        assert charts.svg(chart(summary(frame))) == text  # the same data, the same SVG
        empty = charts.svg(chart(summary(empty_frame())))
        assert empty.startswith("<svg") and charts.NO_DATA in empty
    assert "mailbox_full" in charts.svg(charts.failures_by_class(by_class(frame)))


def test_the_command_line_does_not_import_the_charts_or_the_analysis_at_start_up() -> None:
    import subprocess
    import sys

    probe = "import sys, mailops.cli; print([m for m in sys.modules if m.startswith(('matplotlib', 'mailops.outbox'))])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- properties -----------------------------------------------------------------------------------------------

ACCOUNTS = [SHOP, INFO, HIDDEN]
DOMAINS = ["kunde.de", "beispiel.de", "example.org", "gmx.de", "bücher.example"]  # one written with JSON escapes
PROPERTY_CLASSES = ["mailbox_full", "throttled", "tls", "recipients_failed", "could_not_authenticate"]


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pd.DataFrame]:
    """120 mails over three weeks, some retried, from a store written through `Outbox` (in one batch each:
    a transaction per attempt would take seconds)."""
    store = StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('varied') / 'state.db'}", create=True)
    rng = random.Random(7)
    attempts: list[NewAttempt] = []
    outcomes: list[tuple[dt.datetime, Outcome | None]] = []
    for number in range(120):
        when = dt.datetime(2026, 3, 1, tzinfo=UTC) + dt.timedelta(minutes=rng.randrange(21 * 24 * 60))
        account, to = rng.choice(ACCOUNTS), [f"r{number}@{rng.choice(DOMAINS)}"] if rng.random() < 0.95 else []
        project = rng.choice(["SHOP", None])
        for attempt in range(1, rng.choice([1, 1, 1, 2, 3]) + 1):
            status = rng.choice(["sent", "failed", "failed", "queued"] if attempt == 1 else ["sent", "failed"])
            name = rng.choice(PROPERTY_CLASSES) if status == "failed" else None
            attempts.append(
                NewAttempt(
                    account=account,
                    sender=account,
                    sender_name="",
                    to=to,
                    cc=(),
                    bcc=(),
                    subject="x",
                    preview="",
                    message_id=f"<v{number}@example.com>",
                    project=project,
                    attempt=attempt,
                )
            )
            outcome = None if status == "queued" else Outcome(OutboxStatus(status), error_class=name)
            outcomes.append((when + dt.timedelta(minutes=attempt), outcome))
    outbox = Outbox(store)
    ids = outbox.queue(attempts)
    outbox.finish((entry, outcome) for entry, (_, outcome) in zip(ids, outcomes, strict=True) if outcome)
    with store.session() as session:
        times = [{"id": entry, "created_at": when} for entry, (when, _) in zip(ids, outcomes, strict=True)]
        session.execute(update(OutboxRow), times)
    yield load_store(store)
    store.close()


# Each example costs a few summaries' fixed pandas overhead (about 50 ms): a fifth of the profile's examples.
@settings(max_examples=max(20, settings().max_examples // 5))
@given(
    accounts=st.none() | st.sets(st.sampled_from(ACCOUNTS)),
    classes=st.none() | st.sets(st.sampled_from(PROPERTY_CLASSES)),
    statuses=st.none() | st.sets(st.sampled_from(["queued", "sent", "failed"])),
    domains=st.none() | st.sets(st.sampled_from(DOMAINS)),
    start=st.none() | st.dates(dt.date(2026, 2, 27), dt.date(2026, 3, 24)),
    days=st.none() | st.integers(0, 25),
    timezone=st.sampled_from(["Europe/Berlin", "UTC", "America/New_York", "Pacific/Kiritimati"]),
    all_attempts=st.booleans(),
)
def test_every_summary_counts_the_same_failures_of_any_filtered_frame(
    varied: pd.DataFrame,
    accounts: set[str] | None,
    classes: set[str] | None,
    statuses: set[str] | None,
    domains: set[str] | None,
    start: dt.date | None,
    days: int | None,
    timezone: str,
    all_attempts: bool,
) -> None:
    end = start + dt.timedelta(days=days) if start is not None and days is not None else None
    frame = varied.assign(final=True) if all_attempts else varied
    narrowed = filter_frame(
        frame,
        accounts=accounts,
        classes=classes,
        statuses=statuses,
        domains=domains,
        start=start,
        end=end,
        timezone=timezone,
    )
    counted = narrowed[narrowed["final"]]
    failed, sent = int((counted["status"] == "failed").sum()), int((counted["status"] == "sent").sum())
    figures = headline(narrowed)
    assert (figures.sent, figures.failed) == (sent, failed)
    assert int(by_class(narrowed)["failures"].sum()) == failed
    assert int(by_account(narrowed)["failed"].sum()) == failed
    per_day = by_day(narrowed, timezone=timezone)
    assert (int(per_day["sent"].sum()), int(per_day["failed"].sum())) == (sent, failed)
    assert per_day["rate"].between(0, 1).all() and per_day["day"].is_monotonic_increasing
    with_domain = int((counted["status"] == "failed").mul(counted["recipient_domain"].notna()).sum())
    assert int(by_domain(narrowed, top=len(DOMAINS))["failed"].sum()) == with_domain
    rate = failure_rate(narrowed)
    assert rate == (failed / (sent + failed) if sent + failed else None)
    if accounts is not None:
        assert set(narrowed["account"]) <= accounts
    if start is not None and len(per_day):
        assert per_day["day"].iloc[0] >= pd.Timestamp(start)


def test_a_field_without_an_address_has_no_recipient_domain() -> None:
    # A mail to BCC recipients only is logged with an empty To list: it has no domain, and breaks no summary.
    domains = analysis.recipient_domains(pd.Series(['["a@B.de."]', "[]", None, "kunde", "Anna <x@Y.org>; b@z.de", ""]))
    assert [None if pd.isna(domain) else domain for domain in domains] == ["b.de", None, None, None, "y.org", None]


# --- a period summarised in the state store (the report's path) ------------------------------------------------


def assert_store_summary_is_the_frames(
    store: StateStore,
    first: dt.date,
    last: dt.date,
    *,
    timezone: str = "Europe/Berlin",
    accounts: set[str] | None = None,
    previous: tuple[dt.date, dt.date] | None = None,
) -> analysis.StoreSummary:
    """`summarise_store` gives, table for table, what the frame functions give for the frame of the same days."""
    since, until = Period(first, last, timezone).bounds()
    frame = load_store(store, accounts=accounts, since=since, until=until)
    summary = analysis.summarise_store(
        store, first, last, timezone=timezone, accounts=accounts, previous=previous, top_domains=3, latest=4
    )
    pd.testing.assert_frame_equal(summary.classes, top_remedies(frame, n=len(CLASSES)))
    pd.testing.assert_frame_equal(summary.accounts, by_account(frame))
    pd.testing.assert_frame_equal(summary.domains, by_domain(frame, top=3))
    pd.testing.assert_frame_equal(summary.days, by_day(frame, timezone=timezone, start=first, end=last))
    before = None
    if previous is not None:
        before_since, before_until = Period(*previous, timezone).bounds()
        before = load_store(store, accounts=accounts, since=before_since, until=before_until)
    assert summary.headline == headline(frame, before)
    latest = load_store(store, accounts=accounts, since=since, until=until, statuses=["failed"], newest=4)
    pd.testing.assert_frame_equal(summary.latest_failures, latest)
    return summary


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "UTC", "Asia/Kolkata", "America/New_York"])
def test_the_store_summary_is_what_the_frame_functions_give(example: StateStore, timezone: str) -> None:
    march_2, march_5 = dt.date(2026, 3, 2), dt.date(2026, 3, 5)
    summary = assert_store_summary_is_the_frames(example, march_2, march_5, timezone=timezone)
    if timezone == "Europe/Berlin":  # counted by hand in test_summaries_count_each_mail_once_by_its_final_attempt
        assert summary.headline == analysis.Headline(sent=3, failed=5, queued=1, rate=0.625)
        assert records(summary.domains) == [("kunde.de", 1, 4, 5, 0.8), ("beispiel.de", 1, 1, 2, 0.5)]
        # The newest by time: m9 was logged after m7, but is of March 3rd, m7 of March 5th.
        assert summary.latest_failures["message_id"].tolist()[-1] == "<m7@example.com>"
    # Against the day before: March 2nd, where m3 was throttled once and then went out (one mail, sent).
    assert_store_summary_is_the_frames(
        example, dt.date(2026, 3, 3), march_5, timezone=timezone, previous=(march_2, march_2)
    )
    assert_store_summary_is_the_frames(
        example,
        march_2,
        march_5,
        timezone=timezone,
        accounts={SHOP, "INFO@example.com"},
        previous=(dt.date(2026, 2, 1), dt.date(2026, 2, 28)),
    )
    nobody = assert_store_summary_is_the_frames(example, march_2, march_5, timezone=timezone, accounts=set())
    assert nobody.headline == analysis.Headline(sent=0, failed=0, queued=0, rate=None)


def test_the_store_summary_of_no_store_is_empty(tmp_path: Path) -> None:
    missing = StateStore.open(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    summary = assert_store_summary_is_the_frames(
        missing, dt.date(2026, 3, 2), dt.date(2026, 3, 5), previous=(dt.date(2026, 2, 26), dt.date(2026, 3, 1))
    )
    assert summary.headline == analysis.Headline(0, 0, 0, None, 0, 0, None, None)
    assert summary.days["mails"].tolist() == [0, 0, 0, 0]
    assert not (tmp_path / "none.db").exists()


def test_a_store_summary_of_a_bad_period_is_refused(example: StateStore) -> None:
    with pytest.raises(AnalysisError, match="ends before it starts"):
        analysis.summarise_store(example, dt.date(2026, 3, 5), dt.date(2026, 3, 4))
    with pytest.raises(AnalysisError, match="must end before the period starts"):
        analysis.summarise_store(
            example, dt.date(2026, 3, 5), dt.date(2026, 3, 6), previous=(dt.date(2026, 3, 4), dt.date(2026, 3, 5))
        )
    with pytest.raises(AnalysisError, match="unknown time zone"):
        analysis.summarise_store(example, dt.date(2026, 3, 5), dt.date(2026, 3, 6), timezone="Mars/Olympus")


def test_the_store_summary_reads_one_state_of_the_store(
    example: StateStore, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts and the rest are read by several statements and taken from each other: a mail logged between two
    of them must not count as sent. SQLite keeps a writer waiting until the summary has read everything."""
    expected = assert_store_summary_is_the_frames(example, dt.date(2026, 3, 2), dt.date(2026, 3, 5))
    refused: list[str] = []
    counts = analysis._attempts_by_account  # the second statement: the rest has been read by now

    def log_a_mail_meanwhile(*arguments: object, **keywords: object) -> object:
        writer = sqlite3.connect(workdir / "state.db", timeout=0.05)
        try:
            writer.execute("UPDATE outbox SET status = 'queued' WHERE message_id = '<m1@example.com>'")
            writer.commit()
        except sqlite3.OperationalError as exc:
            refused.append(str(exc))
        finally:
            writer.close()
        return counts(*arguments, **keywords)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis, "_attempts_by_account", log_a_mail_meanwhile)
    summary = analysis.summarise_store(example, dt.date(2026, 3, 2), dt.date(2026, 3, 5), top_domains=3, latest=4)
    assert refused == ["database is locked"]
    assert summary.headline == expected.headline


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    """Six weeks of mail from March 1st, 2026 (New York's and Europe's clocks change, Lord Howe's by half an hour),
    queued through `Outbox`, then given their outcomes: retries linked to the attempt they repeat (some a day
    later), bounces, a status this release does not know, mails without a recipient or with two, domains in
    capitals."""
    store = StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('logged') / 'state.db'}", create=True)
    rng = random.Random(11)
    attempts: list[NewAttempt] = []
    plans: list[tuple[dt.datetime, str, str | None, int | None]] = []  # time, status, class, attempt it repeats
    for number in range(160):
        when = dt.datetime(2026, 3, 1, tzinfo=UTC) + dt.timedelta(minutes=rng.randrange(42 * 24 * 60))
        account, domain = rng.choice(ACCOUNTS), rng.choice(DOMAINS)
        to = rng.choice([[], [f"r{number}@{domain}"], [f"R{number}@{domain.upper()}."], [f"a@{domain}", "b@gmx.de"]])
        for attempt in range(1, rng.choice([1, 1, 1, 2, 3]) + 1):
            status = rng.choice(["sent", "sent", "failed", "failed", "queued", "bounced", "deferred"])
            name = rng.choice(PROPERTY_CLASSES) if status in {"failed", "bounced"} else None
            attempts.append(
                NewAttempt(
                    account=account,
                    sender=account,
                    sender_name="",
                    to=to,
                    cc=(),
                    bcc=(),
                    subject="x",
                    preview="",
                    message_id=f"<l{number}@example.com>",
                    attempt=attempt,
                )
            )
            later = when + dt.timedelta(hours=rng.choice([1, 30]) * (attempt - 1))
            plans.append((later, status, name, len(attempts) - 2 if attempt > 1 else None))
    ids = Outbox(store).queue(attempts)
    outcomes = [
        {
            "id": entry,
            "created_at": when,
            "status": status,
            "error_class": name,
            "retry_of": None if repeats is None else ids[repeats],
        }
        for entry, (when, status, name, repeats) in zip(ids, plans, strict=True)
    ]
    with store.session() as session:
        session.execute(update(OutboxRow), outcomes)
    yield store
    store.close()


# Each example loads the frame three times and summarises it twice (about 0.25 s): a 25th of the profile's
# examples keeps the suite within its time (the long profile still runs 800).
@settings(max_examples=max(20, settings().max_examples // 25))
@given(
    first=st.dates(dt.date(2026, 2, 26), dt.date(2026, 4, 12)),
    days=st.integers(0, 20),
    before=st.none() | st.integers(1, 14),
    gap=st.integers(0, 3),
    timezone=st.sampled_from(
        ["Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Kiritimati"]
    ),
    accounts=st.none() | st.sets(st.sampled_from([SHOP, INFO.upper(), HIDDEN])),
)
def test_the_store_summary_of_any_period_is_what_the_frame_functions_give(
    logged: StateStore,
    first: dt.date,
    days: int,
    before: int | None,
    gap: int,
    timezone: str,
    accounts: set[str] | None,
) -> None:
    previous = None if before is None else (first - dt.timedelta(days=gap + before), first - dt.timedelta(days=gap + 1))
    last = first + dt.timedelta(days=days)
    assert_store_summary_is_the_frames(logged, first, last, timezone=timezone, accounts=accounts, previous=previous)


# --- the explorer's outbox, counted in the state store ------------------------------------------------------------


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame with its categories as their values (two loads of the same rows may order categories apart, and
    frames of other categories concatenate to text)."""
    frame = frame.reset_index(drop=True)
    labels = [name for name in frame.columns if isinstance(frame[name].dtype, pd.CategoricalDtype | pd.StringDtype)]
    return frame.assign(**{name: frame[name].astype(object) for name in labels})


@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    """Five weeks of mail from three accounts with projects (some stored as an empty text), retries (of a sent mail
    too), bounces, a status this release does not know, a class it does not know, mails without a recipient, with
    two, domains in capitals and with a trailing dot, and a quote in an address."""
    store = StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('explored') / 'state.db'}", create=True)
    rng = random.Random(23)
    attempts: list[NewAttempt] = []
    plans: list[tuple[dt.datetime, str, str | None, str | None, int | None]] = []
    for number in range(220):
        when = dt.datetime(2026, 3, 1, tzinfo=UTC) + dt.timedelta(minutes=rng.randrange(35 * 24 * 60))
        account, domain = rng.choice(ACCOUNTS), rng.choice(DOMAINS)
        to = rng.choice(
            [[], [f"r{number}@{domain}"], [f"R{number}@{domain.upper()}."], [f"a@{domain}", "b@gmx.de"], ['"q"@x.de']]
        )
        project = rng.choice(["SHOP", "AMAZON", None, None])
        for attempt in range(1, rng.choice([1, 1, 1, 2, 3]) + 1):
            status = rng.choice(["sent", "sent", "sent", "failed", "failed", "queued", "bounced", "deferred"])
            name = rng.choice([*PROPERTY_CLASSES, "gone_away", None]) if status in {"failed", "bounced"} else None
            attempts.append(
                NewAttempt(
                    account=account,
                    sender=account,
                    sender_name="",
                    to=to,
                    cc=(),
                    bcc=(),
                    subject="x",
                    preview="",
                    message_id=f"<e{number}@example.com>",
                    project=project,
                    attempt=attempt,
                )
            )
            later = when + dt.timedelta(hours=rng.choice([1, 30]) * (attempt - 1))
            plans.append((later, status, name, project, len(attempts) - 2 if attempt > 1 else None))
    ids = Outbox(store).queue(attempts)
    outcomes = [
        {
            "id": entry,
            "created_at": when,
            "status": status,
            "error_class": name,
            "project": "" if project is None and entry % 5 == 0 else project,  # no project, stored as ""
            "retry_of": None if repeats is None else ids[repeats],
        }
        for entry, (when, status, name, project, repeats) in zip(ids, plans, strict=True)
    ]
    with store.session() as session:
        session.execute(update(OutboxRow), outcomes)
    yield store
    store.close()


@settings(max_examples=max(25, settings().max_examples // 20))  # a store and a frame per example (about 0.4 s)
@given(
    accounts=st.none() | st.sets(st.sampled_from([SHOP, INFO.upper(), HIDDEN]), max_size=2),
    projects=st.none() | st.sets(st.sampled_from(["SHOP", "AMAZON", None]), max_size=2),
    classes=st.none() | st.sets(st.sampled_from([*PROPERTY_CLASSES, "unknown"]), max_size=2),
    statuses=st.none() | st.sets(st.sampled_from(["queued", "sent", "failed", "bounced"]), max_size=2),
    domains=st.none() | st.sets(st.sampled_from([*DOMAINS, "x.de", "nowhere.example"]), max_size=2),
    start=st.none() | st.dates(dt.date(2026, 2, 26), dt.date(2026, 4, 8)),
    days=st.none() | st.integers(-1, 20),
    timezone=st.sampled_from(["Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata"]),
    visible=st.none() | st.just({SHOP, INFO}),
)
def test_the_store_outbox_summarises_and_pages_any_filter_as_the_frame_functions_do(
    explored: StateStore,
    accounts: set[str] | None,
    projects: set[str | None] | None,
    classes: set[str] | None,
    statuses: set[str] | None,
    domains: set[str] | None,
    start: dt.date | None,
    days: int | None,
    timezone: str,
    visible: set[str] | None,
) -> None:
    end = (start or dt.date(2026, 3, 20)) + dt.timedelta(days=days) if days is not None else None
    filters = {
        "accounts": accounts,
        "projects": projects,
        "classes": classes,
        "statuses": statuses,
        "domains": domains,
        "start": start,
        "end": end,
    }
    frame = load_store(explored, accounts=visible)
    outbox = analysis.StoreOutbox(explored, accounts=visible, timezone=timezone)
    expected = analysis.summaries(frame, timezone=timezone, top_domains=3, **filters)
    counted = outbox.summaries(top_domains=3, **filters)
    assert counted.headline == expected.headline
    assert counted.attempts == expected.attempts
    for table in ("classes", "accounts", "domains", "days"):
        pd.testing.assert_frame_equal(getattr(counted, table), getattr(expected, table))
    # The table's pages: newest first (ties: the higher id first), in full.
    passing = filter_frame(frame, timezone=timezone, **filters)
    newest = passing.sort_values(["time", "id"], ascending=False)
    for offset in (0, 7):
        page = outbox.page(offset, 7, **filters)
        pd.testing.assert_frame_equal(plain(page), plain(newest.iloc[offset : offset + 7]))
    exported = list(outbox.export(chunk=50, **filters))
    assert all(len(chunk) <= 50 for chunk in exported)
    whole = pd.concat(exported, ignore_index=True) if exported else analysis.empty_frame()
    pd.testing.assert_frame_equal(plain(whole), plain(passing))


def test_the_store_outbox_offers_what_occurs_and_shows_the_store_as_opened(explored: StateStore) -> None:
    frame = load_store(explored, accounts={SHOP, INFO})
    outbox = analysis.StoreOutbox(explored, accounts={SHOP, INFO, "quiet@example.com"})  # the last sent nothing
    assert outbox.accounts() == sorted({SHOP, INFO})
    assert outbox.projects() == ["AMAZON", "SHOP"]
    present = set(frame["class"].dropna())
    assert outbox.classes() == [name for name in CLASSES if name in present]
    assert outbox.statuses() == [name for name in analysis.STATUSES if name in set(frame["status"].dropna())]
    counts = frame["recipient_domain"].value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert outbox.domains(3) == [name for name, _ in ranked[:3]]
    before = outbox.summaries()
    Log(explored).mail("late", at(10, 9), SHOP, ["z@kunde.de"], "failed", "mailbox_full")  # logged after it opened
    after = outbox.summaries()
    assert (after.headline, after.attempts) == (before.headline, before.attempts)
    pd.testing.assert_frame_equal(after.days, before.days)
    assert outbox.page(0, 1)["message_id"].tolist() != ["<late@example.com>"]
    assert analysis.StoreOutbox(explored).summaries().attempts == before.attempts + len(load_store(explored)) - len(
        frame
    )


def test_the_store_outbox_of_no_store_or_no_account_is_empty(tmp_path: Path, explored: StateStore) -> None:
    missing = StateStore.open(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    for outbox in (analysis.StoreOutbox(missing), analysis.StoreOutbox(explored, accounts=set())):
        found = outbox.summaries()
        assert found.attempts == 0 and found.headline == analysis.Headline(0, 0, 0, None)
        assert len(outbox.page(0, 10)) == 0 and list(outbox.export()) == []
        assert (outbox.accounts(), outbox.classes(), outbox.domains(5)) == ([], [], [])
    assert not (tmp_path / "none.db").exists()


def test_the_domain_and_project_counts_read_the_indexes_not_the_table(explored: StateStore) -> None:
    """SQLite uses an index on an expression only for a query that spells it alike (migration 0007)."""
    outbox = analysis.StoreOutbox(explored)
    plans: list[str] = []

    def explain(session: object, query: object) -> list[tuple[object, ...]]:
        connection = session.connection()  # type: ignore[attr-defined]
        compiled = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
        plans.append(" ".join(str(row[3]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")))
        return fetch(session, query)  # type: ignore[arg-type]

    fetch = analysis._fetch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis, "_fetch", explain)
        outbox.summaries(domains=["kunde.de"], projects=["SHOP"], start=dt.date(2026, 3, 2))
    assert plans and all("SCAN outbox " not in plan for plan in plans), plans
    assert any("USING INDEX ix_outbox_recipient_domain (<expr>=? AND account=? AND project=?" in plan for plan in plans)


def test_text_that_a_spreadsheet_would_run_is_written_as_text() -> None:
    from mailops.outbox.analysis import spreadsheet_safe

    frame = pd.DataFrame(
        {
            "subject": pd.Series(
                ['=HYPERLINK("http://evil.example","x")', "Order 42", None, "'quoted"], dtype="string"
            ),
            "reply": pd.Series(["+1 555", "@SUM(A1)", "\t=1", "ok"], dtype=object),
            "mixed": pd.Series([-5, "-5", None, 7], dtype=object),
            "class": pd.Series(["tls", "=x", "tls", "tls"], dtype="category"),
            "count": [1, -2, 3, 4],
        }
    )
    safe = spreadsheet_safe(frame)
    assert safe["subject"].tolist()[:2] == ['\'=HYPERLINK("http://evil.example","x")', "Order 42"]
    assert pd.isna(safe["subject"].iloc[2])
    assert safe["subject"].iloc[3] == "''quoted"  # a spreadsheet hides one ': the text shows as it is
    assert safe["reply"].tolist() == ["'+1 555", "'@SUM(A1)", "'\t=1", "ok"]
    assert safe["mixed"].tolist()[:2] == [-5, "'-5"]  # a number is no formula; the text "-5" would be one
    assert safe["class"].tolist() == ["tls", "'=x", "tls", "tls"]
    assert safe["count"].tolist() == [1, -2, 3, 4]
    assert frame["reply"].iloc[0] == "+1 555"  # the frame handed in is left as it was


def test_a_non_ascii_domain_is_named_as_written_whichever_way_it_is_read(tmp_path: Path) -> None:
    """The store keeps the addresses as JSON text, which writes `ü` as an escape: no view may show the escape."""
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    log = Log(store)
    log.mail("u1", at(2, 9), SHOP, ["a@bücher.example"], "failed", "mailbox_full", smtp_code=552)
    log.mail("u2", at(2, 10), SHOP, ["b@BÜCHER.example"], "sent")
    log.mail("u3", at(2, 11), SHOP, ["c@kunde.de"], "sent")
    outbox = analysis.StoreOutbox(store)
    assert outbox.domains(10) == ["bücher.example", "kunde.de"]
    chosen = outbox.summaries(domains=["Bücher.example"])
    assert chosen.attempts == 2
    assert chosen.domains["domain"].tolist() == ["bücher.example"]
    summary = analysis.summarise_store(store, dt.date(2026, 3, 2), dt.date(2026, 3, 2))
    assert summary.domains.set_index("domain")["failed"].to_dict() == {"bücher.example": 1}


# --- times kept as texts ---------------------------------------------------------------------------------------


def test_times_read_as_texts_are_the_same_whether_arrow_or_pandas_parses_them() -> None:
    texts = [
        "2026-03-02 10:00:00.000000",  # as SQLite keeps them: no zone, which is UTC
        "2026-03-02 10:00:00.5",
        "2026-03-02T23:59:59",
        None,
        "2026-03-02 10:00:00+01:00",  # a zone (an export): left to pandas
        "2026-03-02 10:00:00.123456789",
        "",
    ]
    for chosen in ([0, 1, 2, 3], list(range(len(texts)))):  # all Arrow's, and some it refuses
        values = pd.Series([texts[number] for number in chosen], dtype=analysis.STRING)
        parsed = pd.to_datetime(values.astype(object), utc=True, format="ISO8601").astype("datetime64[us, UTC]")
        pd.testing.assert_series_equal(analysis._utc(values), parsed)
