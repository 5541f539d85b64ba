"""The outbox report: one period of the outbox log as a self-contained HTML page, with the CSVs behind its tables.

:func:`build_report` gathers what the page shows from the analysis functions
(:mod:`mailops.outbox.analysis`) and the charts (:mod:`mailops.outbox.charts`): the
headline figures against the period of equal length before, failures by class (with both
remedies), by account, by recipient domain and the failure rate by day, the latest failed
attempts, and the accounts whose status needs a person. :func:`write_report` writes
``outbox-YYYY-MM-DD.html`` (named by the period's last day) and ``outbox-YYYY-MM-DD-*.csv``
into a directory, each file atomically, the page last, so that a page on disk always has its
CSVs beside it.

A period is a run of calendar days in a time zone, both ends included. The report reads
only what the viewer may see: ``accounts`` limits the outbox, the caller limits the
account statuses it passes in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import zoneinfo
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailops.errors import MailopsError, quoted

if TYPE_CHECKING:
    import pandas as pd

    from mailops.outbox.analysis import Headline
    from mailops.state.store import StateStore

DEFAULT_DAYS = 30
# A report's days, and those of the period before that it is compared with, lie within pandas' times
# (1677 to 2262); a period longer than ten years is a typo in a year, which would count for minutes.
EARLIEST_DAY, LATEST_DAY = dt.date(1900, 1, 1), dt.date(2199, 12, 31)
MAX_DAYS = 3660
DEFAULT_TIMEZONE = "Europe/Berlin"
TOP_CLASSES = 5
TOP_DOMAINS = 10
LATEST_FAILURES = 10
# The names of the CSVs beside the page (outbox-DATE-NAME.csv), in the order the page shows their tables.
TABLES = ("headline", "classes", "accounts", "domains", "days", "latest-failures", "needs-action")


class ReportError(MailopsError):
    """The report cannot be made as asked: a period that ends before it starts, an unusable directory."""


@dataclass(frozen=True)
class Period:
    """Calendar days ``first`` to ``last`` (both included) in ``timezone``."""

    first: dt.date
    last: dt.date
    timezone: str = DEFAULT_TIMEZONE

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of as many days just before this one."""
        last = self.first - dt.timedelta(days=1)
        return Period(last - dt.timedelta(days=self.days - 1), last, self.timezone)

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The first moment of ``first`` and of the day after ``last``, in UTC."""
        zone = zoneinfo.ZoneInfo(self.timezone)

        def midnight(day: dt.date) -> dt.datetime:
            return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)

        return midnight(self.first), midnight(self.last + dt.timedelta(days=1))


def period(
    since: dt.date | None, until: dt.date | None, *, timezone: str = DEFAULT_TIMEZONE, today: dt.date | None = None
) -> Period:
    """The period from ``since`` to ``until``; without ``until`` it ends today (in ``timezone``), without
    ``since`` it is :data:`DEFAULT_DAYS` long. :class:`ReportError` when it would end before it starts."""
    from mailops.settings import known_zone

    try:
        zone = known_zone(timezone)
    except ValueError:
        raise ReportError(f"unknown time zone {quoted(timezone)} (an IANA name such as Europe/Berlin)") from None
    last = until or today or dt.datetime.now(zone).date()
    for day in (since, last):
        if day is not None and not EARLIEST_DAY <= day <= LATEST_DAY:
            raise ReportError(
                f"{day.isoformat()} is not within the days a report covers, "
                f"{EARLIEST_DAY.isoformat()} to {LATEST_DAY.isoformat()}"
            )
    first = since or max(last - dt.timedelta(days=DEFAULT_DAYS - 1), EARLIEST_DAY)
    if first > last:
        raise ReportError(f"--since {first.isoformat()} is after --until {last.isoformat()}")
    if (last - first).days + 1 > MAX_DAYS:
        raise ReportError(
            f"the period {first.isoformat()} to {last.isoformat()} is {(last - first).days + 1:,} days long; "
            f"a report covers at most {MAX_DAYS:,} days (ten years)"
        )
    return Period(first, last, timezone)


@dataclass(frozen=True)
class AccountAction:
    """An account whose status needs a person, with what to do."""

    address: str
    status: str
    reason: str
    fix: str


def accounts_needing_action(overview: Iterable[Mapping[str, Any]]) -> list[AccountAction]:
    """The rows of the account overview (``account_overview``) that are not ``connected``, with their fix.

    The fix is the one `mailops check` would print, from the stored status: no server is
    contacted here.
    """
    from mailops.state.accounts import AccountStatus
    from mailops.transport.failures import REMEDIES, FailureClass

    actions = []
    for row in overview:
        address, status = str(row["address"]), str(row["status"])
        if status == AccountStatus.CONNECTED:
            continue
        if status == AccountStatus.PENDING_CONSENT:
            fix = f"run `mailops connect {address}`"
        elif status == AccountStatus.NEEDS_RECONNECT:
            fix = f"run `mailops reconnect {address}`"
        elif row.get("last_error_class") in {failure.value for failure in FailureClass}:
            fix = REMEDIES[FailureClass(row["last_error_class"])].replace("ADDRESS", address)
        else:
            fix = "run `mailops check` to find out why"
        actions.append(AccountAction(address, status, str(row.get("last_error") or ""), fix))
    return actions


@dataclass(frozen=True)
class Report:
    """Everything the page shows; the tables are the frames written as CSV."""

    period: Period
    generated_at: dt.datetime
    headline: Headline
    classes: pd.DataFrame  # analysis.top_remedies: every class that occurs, with both remedies
    accounts: pd.DataFrame  # analysis.by_account
    domains: pd.DataFrame  # analysis.by_domain
    days: pd.DataFrame  # analysis.by_day, every day of the period
    latest_failures: pd.DataFrame
    actions: list[AccountAction]
    charts: dict[str, str]  # title -> inline SVG, in the page's order

    @property
    def stem(self) -> str:
        """The files' common name: ``outbox-`` and the period's last day."""
        return f"outbox-{self.period.last.isoformat()}"

    @property
    def empty(self) -> bool:
        return self.headline.sent + self.headline.failed + self.headline.queued == 0

    def tables(self) -> dict[str, pd.DataFrame]:
        """Each of :data:`TABLES` as the frame its CSV holds."""
        import pandas as pd

        figures, previous = self.headline, self.period.previous()
        periods = [
            ("period", self.period, figures.sent, figures.failed, figures.queued, figures.rate),
            ("previous period", previous, figures.previous_sent, figures.previous_failed, None, figures.previous_rate),
        ]
        headline = pd.DataFrame(
            [(name, span.first.isoformat(), span.last.isoformat(), *counts) for name, span, *counts in periods],
            columns=["period", "first_day", "last_day", "sent", "failed", "queued", "failure_rate"],
        ).astype({"sent": "Int64", "failed": "Int64", "queued": "Int64"})  # counts, some unknown: not floats
        actions = pd.DataFrame(
            [(action.address, action.status, action.reason, action.fix) for action in self.actions],
            columns=["address", "status", "reason", "fix"],
        )
        days = self.days.assign(day=self.days["day"].dt.strftime("%Y-%m-%d"))
        return dict(
            zip(
                TABLES,
                (headline, self.classes, self.accounts, self.domains, days, self.latest_failures, actions),
                strict=True,
            )
        )


def build_report(
    store: StateStore,
    span: Period,
    *,
    accounts: Collection[str] | None = None,
    overview: Iterable[Mapping[str, Any]] = (),
    now: dt.datetime | None = None,
) -> Report:
    """The report of ``span`` from the outbox of ``store``.

    ``accounts``: the addresses whose outbox entries the viewer may see (None: all);
    ``overview``: the rows of ``account_overview`` the viewer may see, for the accounts that
    need action.
    """
    from mailops.outbox import analysis, charts

    previous = span.previous()
    # Counted in the database, not loaded: the tables the frame functions give for the period's frame.
    summary = analysis.summarise_store(
        store,
        span.first,
        span.last,
        timezone=span.timezone,
        accounts=accounts,
        previous=(previous.first, previous.last),
        top_domains=TOP_DOMAINS,
        latest=LATEST_FAILURES,
    )
    drawings = {
        "Failed mails by error class": charts.failures_by_class(summary.classes),
        "Failure rate by day": charts.failure_rate_by_day(summary.days),
        "Recipient domains with the most failed mails": charts.failures_by_domain(summary.domains),
        "Failed mails by account": charts.failures_by_account(summary.accounts),
    }
    return Report(
        period=span,
        generated_at=now or dt.datetime.now(dt.UTC),
        headline=summary.headline,
        classes=summary.classes,  # every class that failed: the CSV has them all, the page the top ones
        accounts=summary.accounts,
        domains=summary.domains,
        days=summary.days,
        latest_failures=_latest(summary.latest_failures, span.timezone),
        actions=accounts_needing_action(overview),
        charts={title: charts.svg(drawing) for title, drawing in drawings.items()},
    )


def _latest(frame: pd.DataFrame, timezone: str) -> pd.DataFrame:
    """The latest failed attempts, newest first, with the columns the page and its CSV show."""
    table = frame.iloc[::-1][["time", "account", "to", "subject", "class", "smtp_code", "enhanced_code", "reply"]]
    return table.assign(time=table["time"].dt.tz_convert(timezone).dt.strftime("%Y-%m-%d %H:%M")).reset_index(drop=True)


def write_report(report: Report, directory: Path) -> Path:
    """Write the page and its CSVs into ``directory`` (made when missing); the page's path.

    Everything is rendered and written under temporary names before the first file is
    replaced, the page last: when a write fails, every file is as it was (and the
    directories made for it are gone again), and :class:`ReportError` (or ``FileWriteError``)
    says why. A symlink in the directory under one of the files' names is replaced, never
    followed: the directory may be shared.
    """
    from mailops.fileio import write_together
    from mailops.report.html import render

    page = render(report)
    files = {directory / f"{report.stem}-{name}.csv": _csv(table) for name, table in report.tables().items()}
    files[directory / f"{report.stem}.html"] = page.encode("utf-8")
    made = _usable_directory(directory)
    try:
        write_together(files, follow_symlinks=False)
    except BaseException:
        for path in made:  # innermost first; one that holds something meanwhile stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return directory / f"{report.stem}.html"


def _usable_directory(directory: Path) -> list[Path]:
    """Make ``directory`` when missing, and check that it can be written into; the directories it made,
    innermost first."""
    if directory.exists() and not directory.is_dir():
        raise ReportError(f"--out {directory} is not a directory")
    missing = list(itertools.takewhile(lambda path: not path.exists(), [directory, *directory.parents]))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot make the directory {directory}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write into {directory}: permission denied")
    return missing


def _csv(table: pd.DataFrame) -> bytes:
    """The table as UTF-8 CSV; a text cell that a spreadsheet would run as a formula starts with ``'``."""
    from mailops.outbox.analysis import spreadsheet_csv

    return spreadsheet_csv(table).encode("utf-8")
