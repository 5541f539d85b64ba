"""What the worker (`mailops run`) says while it runs, in three forms chosen once per process.

The worker and its command emit :class:`WorkerEvent` values; a log renders them:

- :class:`TextLog`: plain lines, one per account and pass (results on stdout, failures on stderr),
  for a pipe, a file, cron or systemd's journal;
- :class:`JsonLog` (``--log-format json``): one JSON object per line on stdout, with the same keys in
  every line: ``time`` (UTC, ISO 8601), ``level``, ``event``, ``account``, ``counts``, ``error_class``,
  ``message``, ``host`` and ``pid``; some events add keys (``remedy``, ``previous_owner``, ``held_by``);
- :class:`TerminalLog`: on a terminal, the same lines in colour above a progress bar of the pass.

No secret reaches a log: failures carry the classified error text that the transport and state layers
already cleaned, and leases name their owner by host and pid, never by token.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

from mailops.errors import printable

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from mailops.runtime.archive import RetentionReport
    from mailops.runtime.ticket_import import ImportReport
    from mailops.runtime.worker import AccountRun


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Event(StrEnum):
    """The ``event`` of a log line."""

    WORKER_STARTED = "worker_started"
    WORKER_REFUSED = "worker_refused"  # a store that runs one worker has one running
    WORKER_STOPPING = "worker_stopping"  # SIGTERM or Ctrl-C: the current batch finishes
    WORKER_STOPPED = "worker_stopped"
    PASS_STARTED = "pass_started"
    PASS_DONE = "pass_done"
    ACCOUNT_DONE = "account_done"
    ACCOUNT_FAILED = "account_failed"
    ACCOUNT_IDLE = "account_idle"
    NO_ACCOUNTS = "no_accounts"
    LEASE_CLAIMED = "lease_claimed"
    LEASE_TAKEN_OVER = "lease_taken_over"  # claimed after another worker's lease expired
    LEASE_RELEASED = "lease_released"
    LEASE_LOST = "lease_lost"
    LEASE_RENEWAL_FAILED = "lease_renewal_failed"
    SPEC_INVALID = "spec_invalid"
    FAILED = "failed"  # anything else that ends a pass or the worker (the state store is away, say)


@dataclass(frozen=True)
class WorkerEvent:
    event: Event
    message: str  # one human-readable line
    level: Level = Level.INFO
    account: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    error_class: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # further keys of the JSON line
    run: AccountRun | None = None  # an account's event: its run, whose plain-text lines say more


class WorkerLog:
    """Where the worker's events go; a log renders them in :meth:`render`."""

    def __init__(self) -> None:
        # Accounts finish on several threads and the lease keeper has its own; a signal handler may
        # emit while the main thread is inside emit (hence reentrant).
        self._lock = threading.RLock()

    def emit(self, event: WorkerEvent) -> None:
        with self._lock:
            self.render(event)

    def render(self, event: WorkerEvent) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """The worker is done: a display gives the terminal back."""


def make_log(log_format: str, *, stream: TextIO | None = None) -> WorkerLog:
    """The log for ``--log-format``: ``json``, ``text``, or ``auto`` (the progress display on a terminal)."""
    out = stream or sys.stdout
    if log_format == "json":
        return JsonLog(out)
    if log_format == "auto" and out.isatty():
        return TerminalLog()
    return TextLog()


# -- what an account's run says -------------------------------------------------------------------------


def account_event(run: AccountRun) -> WorkerEvent:
    if run.error is not None:
        return WorkerEvent(
            Event.ACCOUNT_FAILED,
            run.error.detail,
            Level.ERROR,
            account=run.address,
            counts=run_counts(run),
            error_class=run.error.failure_class.value,
            extra={"remedy": run.error.remedy},
            run=run,
        )
    if run.report is None:
        return WorkerEvent(Event.ACCOUNT_IDLE, f"nothing to do: {run.idle}", account=run.address, run=run)
    level = Level.WARNING if run.report.replies is not None and run.report.replies.error else Level.INFO
    return WorkerEvent(
        Event.ACCOUNT_DONE, account_lines(run)[0][0], level, account=run.address, counts=run_counts(run), run=run
    )


def run_counts(run: AccountRun) -> dict[str, int]:
    """Every figure of an account's pass, 0 included (a log reader wants the same keys every time)."""
    counts: dict[str, int] = {}
    report = run.report
    if report is not None:
        for name in (
            "imported",
            "new_tickets",
            "joined",
            "archived",
            "bounced",
            "reports_unmatched",
            "reports_other",
            "before_since",
            "already_stored",
            "vanished",
            "deleted",
            "left_flagged",
        ):
            counts[name] = getattr(report, name)
        if report.replies is not None:
            for name in ("sent", "failed", "automatic", "answered_today", "too_old"):
                counts[f"replies_{name}"] = getattr(report.replies, name)
    if run.retention is not None:
        counts["purged"], counts["kept_open"] = run.retention.purged, run.retention.kept_open
    return counts


def account_lines(run: AccountRun) -> list[tuple[str, bool]]:
    """The plain-text lines of an account's pass, each with whether it belongs on stderr."""
    if run.error is not None:
        lines = [
            (f"{run.address}: failed ({run.error.failure_class.value}): {printable(run.error.detail)}", True),
            (f"  {run.error.remedy}", True),
        ]
        if run.retention is not None and (run.retention.purged or run.retention.kept_open):
            lines.append((f"{run.address}: the archive's retention" + "".join(_retention_parts(run.retention)), False))
        return lines
    if run.report is None:
        return [(f"{run.address}: nothing to do: {run.idle}", False)]
    report = run.report
    why = [
        f"{count} {what}"
        for count, what in (
            (report.before_since, "before import_since"),
            (report.already_stored, "already stored"),
            (report.vanished, "gone from the server meanwhile"),
        )
        if count
    ]
    line = f"{run.address}: imported {report.imported}, skipped {report.skipped}"
    line += f" ({', '.join(why)})" if why else ""
    if report.joined:
        line += f"; {report.joined} joined the ticket of their thread"
    if report.deleted:
        line += f"; deleted {report.deleted} on the server"
    line += "".join(_outcome_parts(report))
    if run.retention is not None:
        line += "".join(_retention_parts(run.retention))
    if report.left_flagged:
        line += (
            f"; {report.left_flagged} flagged \\Deleted, not expunged yet (no UIDPLUS, and other mail "
            "flagged \\Deleted that a plain EXPUNGE would remove too)"
        )
    if report.resynced_from is not None:
        line += f"; UIDVALIDITY changed (was {report.resynced_from}): stored mail recognised by Message-ID"
    if report.rescanned:
        line += "; import_since moved earlier: older mail looked at again"
    if report.stopped:
        line += "; stopped, the rest waits for the next pass"
    lines = [(line, False)]
    if report.replies is not None and report.replies.error is not None:
        lines.append((f"{run.address}: auto-replies not sent: {printable(report.replies.error)}", True))
    return lines


def _outcome_parts(report: ImportReport) -> list[str]:
    """The archive, bounce and auto-reply figures of a pass, those that are not 0."""
    from mailops.runtime.autoreply import REPLY_WITHIN

    parts = []
    if report.archived:
        parts.append(f"; archived {report.archived}")
    if report.bounced:
        parts.append(f"; {report.bounced} bounce(s) marked in the outbox")
    if report.reports_unmatched:
        parts.append(f"; {report.reports_unmatched} delivery report(s) matching no outbox entry (archived)")
    if report.reports_other:
        parts.append(f"; {report.reports_other} delivery report(s) of a delay or success")
    replies = report.replies
    if replies is not None:
        counts = [
            f"{count} {what}"
            for count, what in (
                (replies.sent, "sent"),
                (replies.failed, "failed"),
                (replies.automatic, "not to automatic mail or our own addresses"),
                (replies.answered_today, "not to senders answered today"),
                (replies.too_old, f"not to mail older than {REPLY_WITHIN.days} days"),
            )
            if count
        ]
        if counts:
            parts.append(f"; auto-replies: {', '.join(counts)}")
    return parts


def _retention_parts(retention: RetentionReport) -> list[str]:
    parts = []
    if retention.purged:
        parts.append(f"; purged {retention.purged} from the archive (older than {retention.retention_days} days)")
    if retention.kept_open:
        parts.append(f"; {retention.kept_open} past the retention kept for their open ticket")
    return parts


def pass_counts(runs: Sequence[AccountRun], held: int, declared: int) -> dict[str, int]:
    return {
        "accounts": len(runs),
        "failed": sum(not run.ok for run in runs),
        "imported": sum(run.report.imported for run in runs if run.report is not None),
        "held": held,
        "declared": declared,
    }


# -- the three logs -----------------------------------------------------------------------------------

# The worker-level events that plain text shows (the others are for JSON's readers): where, and how.
_TEXT_ERRORS = {Event.WORKER_REFUSED, Event.SPEC_INVALID, Event.FAILED}
_TEXT_STDERR = {Event.WORKER_STOPPING, Event.LEASE_LOST, Event.LEASE_RENEWAL_FAILED}
_TEXT_STDOUT = {Event.WORKER_STOPPED, Event.NO_ACCOUNTS, Event.LEASE_TAKEN_OVER}


class TextLog(WorkerLog):
    """Plain lines: an account's results on stdout, its failures on stderr, errors as ``Error: …``."""

    def __init__(self) -> None:
        super().__init__()
        self._share = ""  # the last share line printed: printed again only when it changes

    def render(self, event: WorkerEvent) -> None:
        if event.run is not None:
            for line, to_stderr in account_lines(event.run):
                _echo(line, err=to_stderr)
        elif event.event is Event.PASS_DONE and event.counts.get("failed"):
            _echo(f"{event.counts['failed']} of {event.counts['accounts']} account(s) failed.", err=True)
        elif event.event is Event.PASS_STARTED:
            share = event.message if event.counts.get("held", 0) < event.counts.get("declared", 0) else ""
            if share and share != self._share:
                _echo(share)
            self._share = share
        elif event.event in _TEXT_ERRORS:
            for line in event.message.splitlines() or [""]:
                _echo(f"Error: {printable(line)}", err=True)
        elif event.event in _TEXT_STDERR or event.event in _TEXT_STDOUT:
            prefix = f"{event.account}: " if event.account else ""
            _echo(prefix + printable(event.message), err=event.event in _TEXT_STDERR)


class JsonLog(WorkerLog):
    """One JSON object per line (see the module doc), flushed at once: a log shipper reads it live."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        self.host, self.pid = socket.gethostname(), os.getpid()

    def render(self, event: WorkerEvent) -> None:
        now = dt.datetime.now(dt.UTC)
        line: dict[str, Any] = {
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": event.level.value,
            "event": event.event.value,
            "account": event.account,
            "counts": dict(event.counts),
            "error_class": event.error_class,
            "message": event.message,
            "host": self.host,
            "pid": self.pid,
        }
        line.update(event.extra)
        self.stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()


class TerminalLog(WorkerLog):
    """On a terminal: each account's line in colour as it finishes, above a progress bar of the pass."""

    def __init__(self) -> None:
        from rich.console import Console

        super().__init__()
        self.console = Console(highlight=False)
        self.errors = Console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._share = ""  # the last share line shown

    def render(self, event: WorkerEvent) -> None:
        if event.event is Event.PASS_STARTED:
            self._start_pass(event)
        if event.run is not None:
            self._account(event.run)
        elif event.event is Event.PASS_DONE:
            self._end_pass()
            if event.counts.get("failed"):
                failed = f"{event.counts['failed']} of {event.counts['accounts']} account(s) failed."
                self.errors.print(failed, style="red", markup=False)
        elif event.event is not Event.PASS_STARTED:
            self._line(event)

    def _start_pass(self, event: WorkerEvent) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._end_pass()
        share = event.message if event.counts.get("held", 0) < event.counts.get("declared", 0) else ""
        if share and share != self._share:
            self.console.print(share, style="cyan", markup=False)
        self._share = share
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]pass"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("", total=event.counts.get("accounts", 0))
        self._progress.start()

    def _account(self, run: AccountRun) -> None:
        for line, to_stderr in account_lines(run):
            style = "red" if to_stderr else ("green" if run.report is not None and run.report.imported else "dim")
            (self.errors if to_stderr else self.console).print(line, style=style, markup=False)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=run.address)

    def _line(self, event: WorkerEvent) -> None:
        if event.level is Level.ERROR:
            for line in event.message.splitlines() or [""]:
                self.errors.print(f"Error: {printable(line)}", style="bold red", markup=False)
            return
        if event.event in _TEXT_STDERR or event.event in _TEXT_STDOUT:
            prefix = f"{event.account}: " if event.account else ""
            console = self.errors if event.event in _TEXT_STDERR else self.console
            style = "yellow" if event.level is Level.WARNING else "cyan"
            console.print(prefix + printable(event.message), style=style, markup=False)

    def _end_pass(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task = None, None

    def close(self) -> None:
        self._end_pass()


def _echo(line: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()
