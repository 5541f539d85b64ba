"""`mailops report`, driven through the command line on a real SQLite state store written by `Outbox`: the page's
figures against the analysis functions, its charts, that it loads nothing from anywhere, hostile text, who sees
what, the accounts that need action, and the ways a call can be wrong."""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import text as sa_text
from sqlalchemy import update
from typer.testing import CliRunner

from mailops.cli import app
from mailops.outbox import analysis
from mailops.outbox.classify import remedy
from mailops.report import Period
from mailops.report.html import MAX_CELL
from mailops.state import StateStore
from mailops.state.outbox import NewAttempt, Outbox, OutboxStatus, Outcome
from mailops.state.tables import OutboxRow
from mailops.transport.failures import REMEDIES, FailureClass
from tests.test_outbox_analysis import HIDDEN, INFO, SHOP, assert_store_summary_is_the_frames, at, write_example

runner = CliRunner()

MARCH = ["--since", "2026-03-02", "--until", "2026-03-05"]
PAGE = "outbox-2026-03-05.html"
HOSTILE_SUBJECT = '<script>alert("x")</script><img src="https://evil.example/pixel.png"> Rechnung'
HOSTILE_REPLY = "550 5.1.1 <b onmouseover=alert(1)>unknown</b> see http://evil.example/why"


def spec(visible: dict[str, list[str]], *, admin: bool) -> dict[str, str]:
    """The two spec files: the accounts of ``visible`` (address -> visible_to), alice and bob."""
    accounts = "accounts:\n"
    for address, names in visible.items():
        accounts += (
            f"  - address: {address}\n    provider: manual\n    display_name: {address.split('@')[0]}\n"
            f"    username: {address}\n    password: {{env: SHOP_PASSWORD}}\n"
            "    imap: {host: imap.example.com, port: 993, encryption: ssl}\n"
            "    smtp: {host: smtp.example.com, port: 587, encryption: starttls}\n"
            f"    visible_to: [{', '.join(names)}]\n"
        )
    defaults = (
        "defaults:\n  email: shop@example.com\n  sender_name: Shop\n"
        "employees:\n  alice: {name: Alice, groups: [support]}\n  bob: {name: Bob}\n"
        f"policies: {{cli_user_is_admin: {'true' if admin else 'false'}}}\n"
    )
    return {"accounts.yaml": accounts, "defaults.yaml": defaults}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a spec of SHOP (everyone) and INFO (bob only); the command line is administrator."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.delenv("MAILOPS_USER", raising=False)
    write_spec(tmp_path, admin=True)
    return tmp_path


def write_spec(directory: Path, *, admin: bool) -> None:
    (directory / "config").mkdir(exist_ok=True)
    for name, text in spec({SHOP: [], INFO: ["bob"]}, admin=admin).items():
        (directory / "config" / name).write_text(text, encoding="utf-8")


@pytest.fixture
def store(workdir: Path) -> Iterator[StateStore]:
    """The example log of tests/test_outbox_analysis.py (March 2nd to 5th), a hostile failure, and account states."""
    opened = StateStore.open(f"sqlite:///{workdir / 'state.db'}", create=True)
    write_example(opened)
    hostile_failure(opened, at(4, 12), subject=HOSTILE_SUBJECT, reply=HOSTILE_REPLY)
    opened.record_account(SHOP, "manual", {"display_name": "Shop"}, "connected", verified=True)
    opened.record_account(
        INFO, "manual", {"visible_to": ["bob"]}, "error", error_class=FailureClass.AUTH.value, error="535 <denied>"
    )
    yield opened
    opened.close()


def hostile_failure(
    store: StateStore,
    when: dt.datetime,
    *,
    subject: str,
    reply: str,
    to: tuple[str, ...] = ("victim@kunde.de",),
    bcc: tuple[str, ...] = (),
) -> None:
    """A failed mail from SHOP whose subject and reply carry markup and addresses of the web."""
    outbox = Outbox(store)
    [entry] = outbox.queue(
        [
            NewAttempt(
                account=SHOP,
                sender=SHOP,
                sender_name="",
                to=to,
                cc=(),
                bcc=bcc,
                subject=subject,
                preview="",
                message_id="<hostile@example.com>",
            )
        ]
    )
    outcome = Outcome(
        OutboxStatus.FAILED,
        reply=reply,
        smtp_code=550,
        error_class="recipients_failed",
        remedy=remedy("recipients_failed").long,
    )
    outbox.finish([(entry, outcome)])
    with store.session() as session:
        session.execute(update(OutboxRow).where(OutboxRow.id == entry).values(created_at=when))


def report(*arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, ["report", *arguments])
    return result.exit_code, result.output


class Page(HTMLParser):
    """What a browser would see of the page: elements, attributes, text, and the values of the headline."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.figures: dict[str, str] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {name: value or "" for name, value in attrs}
        self.attributes += list(values.items())
        if "data-value" in values:
            self.figures[values["id"]] = values["data-value"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def expected_headline(store: StateStore, first: dt.date, last: dt.date) -> analysis.Headline:
    span = Period(first, last)
    start, end = span.bounds()
    before_start, before_end = span.previous().bounds()
    frame = analysis.load_store(store, since=start, until=end)
    return analysis.headline(frame, analysis.load_store(store, since=before_start, until=before_end))


def test_the_headline_is_what_the_analysis_functions_give(store: StateStore, workdir: Path) -> None:
    code, output = report(*MARCH)
    assert code == 0, output
    page_path = workdir / "reports" / PAGE
    assert output.strip() == str(Path("reports") / PAGE)
    page = Page(page_path.read_text(encoding="utf-8"))
    figures = expected_headline(store, dt.date(2026, 3, 2), dt.date(2026, 3, 5))
    # Counted by hand from the example: m1, m3 (sent on its retry) and m6 went out; m2, m4, m5 (three tries),
    # m7, m9 and the hostile mail failed; m8 is still queued.
    assert (figures.sent, figures.failed, figures.queued) == (3, 6, 1)
    assert page.figures["sent"] == "3"
    assert page.figures["failed"] == "6"
    assert float(page.figures["failure-rate"]) == figures.rate == 6 / 9
    assert page.figures["change"] == ""  # nothing in the four days before
    with (workdir / "reports" / "outbox-2026-03-05-headline.csv").open(encoding="utf-8") as handle:
        period = next(csv.DictReader(handle))
    assert (int(period["sent"]), int(period["failed"]), int(period["queued"])) == (3, 6, 1)


@pytest.mark.skipif("bounced" not in analysis.STATUSES, reason="this store knows no bounces")
def test_a_mail_that_bounced_counts_as_failed(store: StateStore, workdir: Path) -> None:
    with store.session() as session:  # m6 went out; then the recipient's server reported it undeliverable
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.message_id == "<m6@example.com>")
            .values(status="bounced", error_class="mailbox_full")
        )
    code, output = report(*MARCH)
    assert code == 0, output
    page = Page((workdir / "reports" / PAGE).read_text(encoding="utf-8"))
    assert (page.figures["sent"], page.figures["failed"]) == ("2", "7")
    classes = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-classes.csv")
    assert classes.set_index("class").loc["mailbox_full", "failures"] == 3  # m2, m9 and m6


def test_the_change_is_against_the_period_of_equal_length_before(store: StateStore, workdir: Path) -> None:
    code, output = report("--since", "2026-03-04", "--until", "2026-03-05")
    assert code == 0, output
    page = Page((workdir / "reports" / PAGE).read_text(encoding="utf-8"))
    figures = expected_headline(store, dt.date(2026, 3, 4), dt.date(2026, 3, 5))
    # March 4th-5th: m6 sent, m7 and the hostile mail failed. March 2nd-3rd: m1 and m3 sent; m2, m4, m5, m9 failed.
    assert (figures.sent, figures.failed, figures.previous_sent, figures.previous_failed) == (1, 2, 2, 4)
    assert figures.change == pytest.approx(2 / 3 - 4 / 6)
    assert float(page.figures["change"]) == figures.change


def test_every_chart_is_drawn_and_the_tables_match_their_csvs(store: StateStore, workdir: Path) -> None:
    code, output = report(*MARCH)
    assert code == 0, output
    text = (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    charts = re.findall(r"<figure class=\"chart\"[^>]*>.*?</figure>", text, flags=re.DOTALL)
    assert len(charts) == 4
    for chart in charts:
        assert "<svg" in chart and "<path" in chart
        assert "no data" not in chart
    frame = analysis.load_store(store, since=Period(dt.date(2026, 3, 2), dt.date(2026, 3, 5)).bounds()[0])
    classes = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-classes.csv")
    expected = analysis.by_class(frame)
    assert classes["class"].tolist() == expected["class"].tolist()
    assert classes["failures"].tolist() == expected["failures"].tolist()
    top = classes.iloc[0]
    assert top["details"] == remedy(top["class"]).long  # the long remedy beside the short one
    assert remedy(top["class"]).long in Page(text).text
    days = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-days.csv")
    assert days["day"].tolist() == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"]
    domains = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-domains.csv")
    assert domains["domain"].iloc[0] == "kunde.de"


def test_the_page_loads_nothing_and_escapes_hostile_text(store: StateStore, workdir: Path) -> None:
    code, output = report(*MARCH)
    assert code == 0, output
    text = (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    page = Page(text)
    assert not {"script", "img", "link", "iframe", "object", "embed", "base"} & set(page.tags)
    # An address of the web appears only inside text, never in an attribute a browser would follow.
    assert not [value for name, value in page.attributes if re.search(r"https?:|//", value) and name != "content"]
    assert ("http-equiv", "Content-Security-Policy") in page.attributes
    assert ("content", "default-src 'none'; style-src 'unsafe-inline'") in page.attributes
    assert "url(" not in text.replace("url(#", "")
    outside_text = re.sub(r">[^<]*<", "><", text)  # the markup without the text between the tags
    assert "http" not in outside_text.replace("http-equiv", "")
    # The hostile subject and reply are shown as text, escaped.
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "&lt;b onmouseover=alert(1)&gt;" in text
    assert HOSTILE_SUBJECT in page.text
    assert "<b onmouseover" not in text


def test_control_characters_show_escaped_on_the_page(store: StateStore, workdir: Path) -> None:
    hostile_failure(store, at(5, 12), subject="invoice \u202egpj.exe \x1b[2J", reply="550 no\nsuch user")
    code, output = report(*MARCH)
    assert code == 0, output
    text = "".join(Page((workdir / "reports" / PAGE).read_text(encoding="utf-8")).text)
    assert "invoice \\u202egpj.exe \\x1b[2J" in text
    assert "\u202e" not in text and "\x1b" not in text
    assert "550 no\nsuch user" in text  # a line break is no control to hide


def test_a_long_text_is_cut_on_the_page_and_whole_in_the_csv(store: StateStore, workdir: Path) -> None:
    subject, reply = "S" * 100_000, "550 " + "R" * 100_000
    hostile_failure(store, at(5, 12), subject=subject, reply=reply, to=tuple(f"r{n}@kunde.de" for n in range(2_000)))
    code, output = report(*MARCH)
    assert code == 0, output
    page = (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    assert len(page) < 100_000  # each text is cut at MAX_CELL characters
    for text in ("S" * MAX_CELL, "R" * MAX_CELL, "r1999@kunde.de"):
        assert text not in page
    assert "S" * (MAX_CELL - 1) + "…" in page
    latest = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-latest-failures.csv")
    assert subject in latest["subject"].tolist() and reply in latest["reply"].tolist()


def test_a_csv_cell_that_a_spreadsheet_would_run_is_defused(store: StateStore, workdir: Path) -> None:
    hostile_failure(store, at(5, 12), subject='=HYPERLINK("http://evil.example","x")', reply="550 no")
    code, output = report(*MARCH)
    assert code == 0, output
    latest = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-latest-failures.csv")
    assert latest["subject"].iloc[0] == '\'=HYPERLINK("http://evil.example","x")'


def test_a_user_sees_only_the_accounts_they_may(store: StateStore, workdir: Path) -> None:
    write_spec(workdir, admin=False)
    code, output = report(*MARCH)
    assert code == 1
    assert output.startswith("Error: say who acts")
    code, output = runner.invoke(app, ["--as", "alice", "report", *MARCH]).exit_code, ""
    assert code == 0
    files = {path.name: path.read_text(encoding="utf-8") for path in (workdir / "reports").iterdir()}
    page = Page(files[PAGE])
    # SHOP only: m1, m3, m6 sent; m2, m9 and the hostile mail failed. INFO's and the deleted HIDDEN's are not hers.
    assert (page.figures["sent"], page.figures["failed"]) == ("3", "3")
    for text in files.values():
        assert INFO not in text and HIDDEN not in text
    assert "Every account is connected." in page.text
    runner.invoke(app, ["--as", "bob", "report", *MARCH, "--out", "bob"])
    bob = Page((workdir / "bob" / PAGE).read_text(encoding="utf-8"))
    assert (bob.figures["sent"], bob.figures["failed"]) == ("3", "5")  # SHOP's and INFO's: m4, m5 too


def test_the_accounts_that_need_action_come_with_their_fix(store: StateStore, workdir: Path) -> None:
    store.record_account("team@example.com", "microsoft", {}, "needs_reconnect")
    code, output = report(*MARCH)
    assert code == 0, output
    text = (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    page = Page(text)
    assert REMEDIES[FailureClass.AUTH].replace("ADDRESS", INFO) in page.text
    assert "535 <denied>" in page.text and "535 &lt;denied&gt;" in text
    assert "run `mailops reconnect team@example.com`" in page.text
    with (workdir / "reports" / "outbox-2026-03-05-needs-action.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["address"], row["status"]) for row in rows] == [
        (INFO, "error"),
        ("team@example.com", "needs_reconnect"),
    ]


def test_an_empty_outbox_gives_a_report_that_says_so(workdir: Path) -> None:
    code, output = report("--until", "2026-03-05")  # no state store at all
    assert code == 0, output
    text = (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    page = Page(text)
    assert "The outbox has no mail in this period." in page.text
    assert (page.figures["sent"], page.figures["failed"], page.figures["failure-rate"]) == ("0", "0", "")
    assert text.count("<svg") == 4 and text.count(">no data<") == 4
    assert "Outbox report 2026-02-04 to 2026-03-05" in page.text  # thirty days by default
    assert not (workdir / "state.db").exists()  # a report creates no store


def test_the_days_are_the_business_time_zones_unless_told_otherwise(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILOPS_TIMEZONE", "Pacific/Kiritimati")
    assert report("--until", "2026-03-05")[0] == 0
    assert "calendar days in Pacific/Kiritimati" in (workdir / "reports" / PAGE).read_text(encoding="utf-8")
    assert report("--until", "2026-03-05", "--timezone", "Asia/Tokyo")[0] == 0
    assert "calendar days in Asia/Tokyo" in (workdir / "reports" / PAGE).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "2026-03-06", "--until", "2026-03-05"], "Error: --since 2026-03-06 is after --until 2026-03-05"),
        (["--since", "05.03.2026"], "Error: --since '05.03.2026' is not a date (YYYY-MM-DD)"),
        (["--until", "2026-02-30"], "Error: --until '2026-02-30' is not a date (YYYY-MM-DD)"),
        (["--out", "taken"], "Error: --out taken is not a directory"),
        (["--out", "/dev/null"], "Error: --out /dev/null is not a directory"),
        (["--out", ""], "Error: --out is empty: name the directory for the report"),
        (["--out", "/proc/mailops-report"], "Error: cannot make the directory /proc/mailops-report"),
        (["--timezone", "Mars/Olympus"], "Error: unknown time zone"),
        (["--timezone", "America"], "Error: unknown time zone `America`"),  # a directory of the zone database
        (["--timezone", ""], "Error: unknown time zone ``"),  # not the default
        (["--timezone", "A" * 300], "Error: unknown time zone"),  # too long for a file name
        (["--since", "0001-01-01", "--until", "0001-01-05"], "Error: 0001-01-01 is not within the days a report"),
        (["--until", "0001-01-10"], "Error: 0001-01-10 is not within the days a report covers"),
        (["--since", "9999-12-01", "--until", "9999-12-31"], "Error: 9999-12-01 is not within the days a report"),
        (
            ["--since", "1926-03-05", "--until", "2026-03-05"],
            "Error: the period 1926-03-05 to 2026-03-05 is 36,526",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    store: StateStore, workdir: Path, arguments: list[str], message: str
) -> None:
    (workdir / "taken").write_text("keep me", encoding="utf-8")
    code, output = report(*arguments)
    assert code == 1
    assert len(output.strip().splitlines()) == 1
    assert output.startswith(message)
    assert not (workdir / "reports").exists()
    assert (workdir / "taken").read_text(encoding="utf-8") == "keep me"


def test_a_failed_write_leaves_no_new_file(store: StateStore, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailops.fileio

    staged: list[str] = []
    real = mailops.fileio._stage

    def full_disk_at_the_page(path: Path, data: str | bytes, **options: Any) -> tuple[str, Path]:
        if str(path).endswith(".html"):
            raise mailops.fileio.FileWriteError(f"cannot write {path}: No space left on device; the file is unchanged")
        staged.append(str(path))
        return real(path, data, **options)

    monkeypatch.setattr(mailops.fileio, "_stage", full_disk_at_the_page)
    code, output = report(*MARCH)
    assert code == 1
    assert "No space left on device" in output
    assert len(staged) == 7  # every CSV was written under a temporary name, then taken away again
    assert not (workdir / "reports").exists()  # made for this report, and taken away with it
    (workdir / "reports").mkdir()
    assert report(*MARCH)[0] == 1
    assert list((workdir / "reports").iterdir()) == []  # one that was there stays


def test_a_failed_report_leaves_the_page_and_its_csvs_of_the_last_one(store: StateStore, workdir: Path) -> None:
    assert report("--since", "2026-03-04", "--until", "2026-03-05")[0] == 0
    reports = workdir / "reports"
    before = {path.name: path.read_bytes() for path in reports.iterdir()}
    (reports / PAGE).chmod(0o444)  # the page, written last, cannot be replaced: not even by root
    code, output = report(*MARCH)
    assert code == 1
    assert "read-only" in output
    assert {path.name: path.read_bytes() for path in reports.iterdir()} == before  # no temporary file either
    headline = (reports / "outbox-2026-03-05-headline.csv").read_text(encoding="utf-8")
    assert "\nperiod,2026-03-04,2026-03-05," in headline


def test_a_symlink_in_the_directory_is_replaced_not_followed(store: StateStore, workdir: Path) -> None:
    reports, elsewhere = workdir / "reports", workdir / "elsewhere"
    reports.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.conf").write_text("keep me", encoding="utf-8")
    planted = {
        "outbox-2026-03-05-latest-failures.csv": elsewhere / "precious.conf",  # an existing file
        "outbox-2026-03-05-classes.csv": elsewhere / "made-by-mailops",  # a file it would create
    }
    for name, target in planted.items():
        (reports / name).symlink_to(target)
    code, output = report(*MARCH)
    assert code == 0, output
    assert (elsewhere / "precious.conf").read_text(encoding="utf-8") == "keep me"
    assert sorted(path.name for path in elsewhere.iterdir()) == ["precious.conf"]
    for name in planted:
        assert not (reports / name).is_symlink()
        assert (reports / name).read_text(encoding="utf-8").startswith(("time,", "class,"))


def test_a_carriage_return_in_a_cell_stays_in_its_cell(store: StateStore, workdir: Path) -> None:
    # A spreadsheet ends a row at a bare CR: unquoted, the rest would be a cell of its own, starting with `=`.
    hostile_failure(store, at(5, 12), subject="Rechnung 42\r=cmd|' /C calc'!A0", reply="550 no\rmore")
    code, output = report(*MARCH)
    assert code == 0, output
    with (workdir / "reports" / "outbox-2026-03-05-latest-failures.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert {len(row) for row in rows} == {len(rows[0])}  # no row broken into two
    [hostile] = [row for row in rows if row[3].startswith("Rechnung")]
    assert hostile[3] == "Rechnung 42\r=cmd|' /C calc'!A0"
    assert "550 no\rmore" in hostile
    assert all(not cell.startswith("=") for row in rows for cell in row)


def test_a_text_in_the_store_that_is_not_utf8_is_one_error_line(store: StateStore, workdir: Path) -> None:
    hostile_failure(store, at(5, 12), subject="placeholder", reply="550 no")
    with store.session() as session:
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.subject == "placeholder")
            .values(subject=sa_text("CAST(X'4142FF80' AS TEXT)"))
        )
    code, output = report(*MARCH)
    assert code == 1
    assert output.startswith("Error: the state store") and "UTF-8" in output
    assert len(output.strip().splitlines()) == 1


def test_the_store_counts_and_a_narrow_load_agree_with_a_full_load(store: StateStore) -> None:
    start, end = Period(dt.date(2026, 3, 2), dt.date(2026, 3, 5)).bounds()
    full = analysis.load_store(store, since=start, until=end)
    narrow = analysis.load_store(store, since=start, until=end, columns=analysis.SUMMARY_COLUMNS)
    for summary in (analysis.by_class, analysis.by_account, analysis.by_domain, analysis.by_day):
        pd.testing.assert_frame_equal(summary(narrow), summary(full))
    assert narrow["subject"].isna().all() and narrow["recipient_domain"].notna().all()
    counts = analysis.store_counts(store, since=start, until=end)
    figures = analysis.headline(full)
    assert counts == {"sent": figures.sent, "failed": figures.failed, "queued": figures.queued}
    latest = analysis.load_store(store, statuses=["failed"], newest=2)
    # The newest by time, last: the hostile failure was logged last, but is of March 4th, m7 of March 5th.
    assert latest["subject"].tolist() == [HOSTILE_SUBJECT, "Mail m7"]
    assert latest["time"].is_monotonic_increasing


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[StateStore]:
    """A new PostgreSQL database holding what the SQLite `store` holds."""
    from sqlalchemy import create_engine, text

    server = postgres_url.rsplit("/", 1)[0]
    database = f"report_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    opened = StateStore.open(f"{server}/{database}", create=True)
    write_example(opened)
    hostile_failure(opened, at(4, 12), subject=HOSTILE_SUBJECT, reply=HOSTILE_REPLY)
    yield opened
    opened.close()


def test_a_postgresql_store_loads_as_the_same_frame_as_sqlite(store: StateStore, postgres: StateStore) -> None:
    """The driver's own values differ (times as datetimes, lists as text, booleans): the frames may not."""
    start, end = Period(dt.date(2026, 3, 2), dt.date(2026, 3, 5)).bounds()
    pd.testing.assert_frame_equal(
        analysis.load_store(postgres, since=start, until=end), analysis.load_store(store, since=start, until=end)
    )
    assert analysis.store_counts(postgres) == analysis.store_counts(store)


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "Asia/Kolkata"])
def test_a_postgresql_store_gives_the_same_summary_as_sqlite(
    store: StateStore, postgres: StateStore, timezone: str
) -> None:
    """Counted by PostgreSQL (strpos, timestamptz bounds, its own plans): what the frame functions give, and what
    SQLite gives."""
    for first, last, accounts, previous in (
        (dt.date(2026, 3, 2), dt.date(2026, 3, 5), None, None),
        (dt.date(2026, 3, 4), dt.date(2026, 3, 5), None, (dt.date(2026, 3, 2), dt.date(2026, 3, 3))),
        (dt.date(2026, 3, 3), dt.date(2026, 3, 5), {SHOP}, (dt.date(2026, 3, 1), dt.date(2026, 3, 2))),
    ):
        counted = assert_store_summary_is_the_frames(
            postgres, first, last, timezone=timezone, accounts=accounts, previous=previous
        )
        lite = analysis.summarise_store(
            store, first, last, timezone=timezone, accounts=accounts, previous=previous, top_domains=3, latest=4
        )
        assert counted.headline == lite.headline
        for name in ("classes", "accounts", "domains", "days", "latest_failures"):
            pd.testing.assert_frame_equal(getattr(counted, name), getattr(lite, name))


def test_a_mail_logged_while_postgresql_is_read_is_in_none_of_the_summary(
    postgres: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL lets the writer go on: the summary's statements still read one snapshot, so the mail logged
    between two of them is neither counted as sent nor taken off."""
    march_2, march_5 = dt.date(2026, 3, 2), dt.date(2026, 3, 5)
    expected = assert_store_summary_is_the_frames(postgres, march_2, march_5)
    writer = StateStore.open(postgres.engine.url.render_as_string(hide_password=False), create=False)
    counts = analysis._attempts_by_account  # the second statement: the rest has been read by now

    def log_a_mail_meanwhile(*arguments: Any, **keywords: Any) -> Any:
        hostile_failure(writer, at(4, 13), subject="logged meanwhile", reply="550 no")
        return counts(*arguments, **keywords)

    monkeypatch.setattr(analysis, "_attempts_by_account", log_a_mail_meanwhile)
    try:
        summary = analysis.summarise_store(postgres, march_2, march_5, top_domains=3, latest=4)
    finally:
        writer.close()
    assert summary.headline == expected.headline
    monkeypatch.undo()
    assert (
        assert_store_summary_is_the_frames(postgres, march_2, march_5).headline.failed == expected.headline.failed + 1
    )


def test_the_report_counts_in_the_database_without_loading_the_period(
    store: StateStore, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million attempts must not become a frame: the report takes its figures from `summarise_store`."""

    def no_frame(*arguments: Any, **keywords: Any) -> pd.DataFrame:
        raise AssertionError("the report loaded the outbox as a frame")

    monkeypatch.setattr(analysis, "load_store", no_frame)
    code, output = report(*MARCH)
    assert code == 0, output
    page = Page((workdir / "reports" / PAGE).read_text(encoding="utf-8"))
    assert (page.figures["sent"], page.figures["failed"]) == ("3", "6")


def test_a_mail_to_bcc_recipients_only_is_reported(store: StateStore, workdir: Path) -> None:
    """Its To list is empty: no recipient domain, and the report counts it like any other failure."""
    hostile_failure(store, at(5, 13), subject="Rundschreiben", reply="550 no", to=(), bcc=("kunde@kunde.de",))
    code, output = report(*MARCH)
    assert code == 0, output
    page = Page((workdir / "reports" / PAGE).read_text(encoding="utf-8"))
    assert (page.figures["sent"], page.figures["failed"]) == ("3", "7")
    domains = pd.read_csv(workdir / "reports" / "outbox-2026-03-05-domains.csv")
    assert int(domains["failed"].sum()) == 6  # the one without a To address has no domain


def test_the_summary_reads_the_indexes_of_migration_0007_not_the_table(store: StateStore) -> None:
    """Each of `summarise_store`'s statements is answered from an index (a range of it, or the small one of the
    attempts not sent); SQLite uses the one on the recipient domain only for a query that spells it alike."""
    plans: list[str] = []
    fetch = analysis._fetch

    def explain(session: Any, query: Any) -> list[tuple[Any, ...]]:
        connection = session.connection()
        compiled = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        plans.append(" | ".join(str(row[3]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")))
        return fetch(session, query)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis, "_fetch", explain)
        analysis.summarise_store(
            store, dt.date(2026, 3, 2), dt.date(2026, 3, 5), previous=(dt.date(2026, 2, 26), dt.date(2026, 3, 1))
        )
    assert plans and not [plan for plan in plans if re.search(r"SCAN outbox(_\d+)?( |$)(?!USING)", plan)], plans
    assert any("COVERING INDEX ix_outbox_unsent" in plan for plan in plans)
    assert any("INDEX ix_outbox_recipient_domain (<expr>=? AND account=? AND project=?" in plan for plan in plans)


def test_the_report_draws_without_pyplot_or_a_gui_toolkit(store: StateStore, workdir: Path) -> None:
    """matplotlib's figure and canvases only: pyplot would pick a backend for the whole process."""
    import subprocess
    import sys

    code = (
        "import sys; from mailops.cli import app\n"
        "try:\n    app(['report', '--since', '2026-03-02', '--until', '2026-03-05'])\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "gui = ('matplotlib.pyplot', 'tkinter', 'PyQt5', 'PyQt6', 'PySide6', 'gi')\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in gui or name in gui))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
