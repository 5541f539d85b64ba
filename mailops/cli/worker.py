"""`mailops run` (the worker: ticket import, archive, auto-replies, bounces) and `mailops tickets list|show`."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, load_spec_or_exit, open_store, reported_errors, settings_of

if TYPE_CHECKING:
    from mailops.engine.visibility import Actor
    from mailops.runtime import AccountRun, ImportReport
    from mailops.runtime.archive import RetentionReport
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state.store import StateStore

MAX_ID = 2**63 - 1  # the database's largest integer: a bigger number is a usage error, not an overflow

tickets_app = typer.Typer(help="Tickets made from imported mail (read-only).", no_args_is_help=True)
app.add_typer(tickets_app, name="tickets")


@app.command("run")
def run_worker(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="One pass, then exit (for cron and CI)."),
    account: list[str] = typer.Option([], "--account", help="Only this account (repeat for several)."),
    interval: float = typer.Option(60.0, "--interval", min=0.1, help="Seconds between passes without --once."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """The worker: import new mail into tickets and the archive, apply the archive's retention, send
    auto-replies, and mark bounced mail in the outbox. SIGTERM or Ctrl-C lets the current batch
    finish and starts nothing new; without --once the worker then exits 0, with --once 130."""
    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=False) if once else None
    with _stop_on_signals() as stop:
        if loaded is None:
            _loop(settings, account, interval, stop)
            return
        with reported_errors():
            runs = _one_pass(loaded, settings, account, stop=stop)
    failed = sum(not run.ok for run in runs)
    if failed:
        typer.echo(f"{failed} of {len(runs)} account(s) failed.", err=True)
    if stop.is_set():
        raise typer.Exit(130)
    if failed:
        raise typer.Exit(1)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM and SIGINT set (instead of ending the process at once), for the duration."""
    import signal

    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            typer.echo(f"{signal.Signals(signum).name}: finishing the current batch, then stopping.", err=True)
        stop.set()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _one_pass(
    loaded: LoadedSpec, settings: Settings, addresses: list[str], *, stop: threading.Event
) -> list[AccountRun]:
    from mailops.runtime import run_once
    from mailops.runtime.worker import chosen_accounts

    chosen_accounts(loaded, addresses)  # an unknown --account is refused before the store is opened
    store = _worker_store(settings)
    try:
        runs = run_once(loaded, store, settings, addresses=addresses, stop=stop, on_done=_print_run)
    finally:
        store.close()
    if not runs:
        typer.echo("No account has ticket import, the archive or auto-replies enabled in the spec.")
    return runs


def _loop(settings: Settings, addresses: list[str], interval: float, stop: threading.Event) -> None:
    """Pass after pass until ``stop``; the spec is read again for each pass."""
    from mailops.errors import MailopsError, SpecError, printable
    from mailops.spec import load_spec

    while not stop.is_set():
        try:
            _one_pass(load_spec(settings.config_dir), settings, addresses, stop=stop)
        except SpecError as exc:
            problems = len(exc.problems)
            typer.echo(f"Error: the spec has {problems} problem(s); `mailops validate` lists them", err=True)
        except MailopsError as exc:  # the state store is away, say: the next pass tries again
            typer.echo(f"Error: {printable(str(exc))}", err=True)
        stop.wait(interval)
    typer.echo("Stopped.")


def _worker_store(settings: Settings) -> StateStore:
    """The state store, migrated to this mailops (the worker writes); none is created where nothing was applied."""
    from mailops.errors import MailopsError
    from mailops.state.location import sqlite_file

    path = sqlite_file(settings.state_url)
    if path is not None and not path.exists():
        raise MailopsError("no account is applied yet; run `mailops apply` first")
    return open_store(settings, create=True)


def _print_run(run: AccountRun) -> None:
    from mailops.errors import printable

    if run.error is not None:
        typer.echo(f"{run.address}: failed ({run.error.failure_class.value}): {printable(run.error.detail)}", err=True)
        typer.echo(f"  {run.error.remedy}", err=True)
        if run.retention is not None and (run.retention.purged or run.retention.kept_open):
            typer.echo(f"{run.address}: the archive's retention" + "".join(_retention_parts(run.retention)))
        return
    if run.report is None:
        typer.echo(f"{run.address}: nothing to do: {run.idle}")
        return
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
    typer.echo(line)
    if report.replies is not None and report.replies.error is not None:
        typer.echo(f"{run.address}: auto-replies not sent: {printable(report.replies.error)}", err=True)


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


# -- tickets list|show ------------------------------------------------------------------------------


def reading_context(
    ctx: typer.Context, config_dir: Path | None, *, as_json: bool
) -> tuple[Settings, set[str] | None, StateStore]:
    """For the commands that read what the worker stored: settings, the accounts the acting user may
    see (None: all, the administrator) and the state store (read-only)."""
    from mailops.engine.visibility import acting, visible_addresses

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=as_json)
    with reported_errors(as_json=as_json):
        actor: Actor = acting(loaded.spec, settings.user)
        store = open_store(settings, create=False)
        visible = None if actor.admin else visible_addresses(loaded.spec, actor, store.accounts(include_deleted=True))
    return settings, visible, store


@tickets_app.command("list")
def list_tickets(
    ctx: typer.Context,
    queue: str | None = typer.Option(None, "--queue", help="Only this queue."),
    project: str | None = typer.Option(None, "--project", help="Only this project / sales channel."),
    status: str | None = typer.Option(None, "--status", help="open or closed."),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_ID, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the tickets as JSON."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """The latest tickets the acting user may see."""
    from mailops.state.tickets import Tickets

    _settings, visible, store = reading_context(ctx, config_dir, as_json=as_json)
    records = Tickets(store)
    with reported_errors(as_json=as_json):
        tickets = records.tickets(accounts=visible, queue=queue, project=project, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps([public_record(ticket.as_dict()) for ticket in tickets], indent=2))
        return
    from rich.console import Console

    from mailops.views import tables

    rows = [
        (
            str(ticket.id),
            f"{ticket.updated_at:%Y-%m-%d %H:%M}",
            ticket.status,
            ticket.account,
            ticket.queue or "",
            ticket.project or "",
            str(ticket.message_count),
            ticket.subject,
        )
        for ticket in tickets
    ]
    columns = [
        tables.Column("#"),
        tables.Column("updated"),
        tables.Column("status"),
        tables.Column("account", key=True),
        tables.Column("queue"),
        tables.Column("project"),
        tables.Column("mails"),
        tables.Column("subject"),
    ]
    console = Console(highlight=False)
    console.print(tables.records(console, "Tickets", columns, rows))


@tickets_app.command("show")
def show_ticket(
    ctx: typer.Context,
    ticket_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The ticket's number (#)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ticket and its mails as JSON."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """One ticket with the index entries of its mails and where each raw message is kept."""
    from mailops.errors import MailopsError, printable
    from mailops.runtime.rawstore import RawStore, message_dir_of
    from mailops.state.tickets import Tickets

    settings, visible, store = reading_context(ctx, config_dir, as_json=as_json)
    records = Tickets(store)
    with reported_errors(as_json=as_json):
        ticket = records.ticket(ticket_id)
        if ticket is None or (visible is not None and ticket.account not in visible):
            raise MailopsError(f"no ticket {ticket_id}")  # the same answer for one this user may not see
        messages = records.messages(ticket_id=ticket_id)
    raw_store = RawStore(message_dir_of(settings))
    mails = [public_record(m.as_dict()) | {"raw_file": raw_file(raw_store, m.raw_sha256, m.raw_kept)} for m in messages]
    if as_json:
        typer.echo(json.dumps(public_record(ticket.as_dict()) | {"messages": mails}, indent=2))
        return
    for key, value in public_record(ticket.as_dict()).items():
        typer.echo(f"{key:<14} {printable(str('' if value is None else value))}")
    for mail in mails:
        typer.echo("")
        for key in ("received_at", "sender", "to", "cc", "subject", "sent_at", "message_id", "size", "raw_file"):
            value = mail[key]
            shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
            typer.echo(f"  {key:<12} {printable(str(shown))}")


def raw_file(raw_store: Any, sha256: str, kept: bool) -> str | None:
    """Where a message's .eml is (None: not kept, or purged by the archive's retention)."""
    return str(raw_store.path_of(sha256)) if kept else None


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as JSON shows it: times in ISO 8601, address tuples as lists."""
    return {
        key: value.isoformat() if isinstance(value, dt.datetime) else list(value) if isinstance(value, tuple) else value
        for key, value in record.items()
    }
