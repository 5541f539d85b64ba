"""`mailops run` (the worker: ticket import, archive, auto-replies, bounces) and `mailops tickets list|show`."""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mailops.cli.app import app
from mailops.cli.common import (
    ConfigDirOption,
    check_choice,
    load_spec_or_exit,
    open_store,
    reported_errors,
    settings_of,
)

if TYPE_CHECKING:
    from mailops.engine.visibility import Actor
    from mailops.runtime.worker import Worker
    from mailops.runtime.worker_log import WorkerLog
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state.store import StateStore

MAX_ID = 2**63 - 1  # the database's largest integer: a bigger number is a usage error, not an overflow
MAX_INTERVAL = 7 * 24 * 3600.0  # seconds: longer waits overflow the clock's arithmetic, and a week is plenty

tickets_app = typer.Typer(help="Tickets made from imported mail (read-only).", no_args_is_help=True)
app.add_typer(tickets_app, name="tickets")


class LogFormat(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    JSON = "json"


def _a_number(value: float) -> float:
    """``value`` unless it is NaN, which every range check lets through."""
    if math.isnan(value):
        raise typer.BadParameter("nan is not a number")
    return value


@app.command("run")
def run_worker(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="One pass, then exit (for cron and CI)."),
    account: list[str] = typer.Option([], "--account", help="Only this account (repeat for several)."),
    interval: float = typer.Option(
        60.0,
        "--interval",
        min=0.1,
        max=MAX_INTERVAL,
        callback=_a_number,
        help="Seconds between passes without --once.",
    ),
    log_format: LogFormat = typer.Option(
        LogFormat.AUTO,
        "--log-format",
        help="auto: a progress display on a terminal, plain lines otherwise; text: plain lines; "
        "json: one JSON object per line.",
    ),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """The worker: import new mail into tickets and the archive, apply the archive's retention, send
    auto-replies, and mark bounced mail in the outbox. SIGTERM or Ctrl-C lets the current batch
    finish and starts nothing new; without --once the worker then exits 0, with --once 130. Several
    workers share the accounts of a PostgreSQL state store; a SQLite store runs one."""
    from mailops.runtime.worker_log import make_log

    settings = settings_of(ctx, config_dir)
    log = make_log(log_format.value)
    try:
        with _stop_on_signals(log) as stop:
            code = _one_pass(settings, account, stop, log) if once else _loop(settings, account, interval, stop, log)
    finally:
        log.close()
    if code:
        raise typer.Exit(code)


@contextmanager
def _stop_on_signals(log: WorkerLog) -> Iterator[threading.Event]:
    """An event that SIGTERM and SIGINT set (instead of ending the process at once), for the duration."""
    import signal

    from mailops.runtime.worker_log import Event, WorkerEvent

    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            message = f"{signal.Signals(signum).name}: finishing the current batch, then stopping."
            log.emit(WorkerEvent(Event.WORKER_STOPPING, message))
        stop.set()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _one_pass(settings: Settings, addresses: list[str], stop: threading.Event, log: WorkerLog) -> int:
    """``--once``: one pass; the exit code (130 when stopped by a signal)."""
    from mailops.errors import MailopsError
    from mailops.runtime.worker import OneWorkerOnly, Worker, chosen_accounts

    loaded = _spec_or_none(settings, log)
    if loaded is None:
        return 1
    try:
        chosen_accounts(loaded, addresses)  # an unknown --account is refused before the store is opened
        store = _worker_store(settings)
    except MailopsError as exc:
        _report_error(log, exc)
        return 1
    try:
        with Worker(store, settings, log=log, stop=stop) as worker:
            runs = worker.run_pass(loaded, addresses)
    except OneWorkerOnly as exc:
        _report_error(log, exc, refused=True)
        return 1
    except MailopsError as exc:
        _report_error(log, exc)
        return 1
    finally:
        store.close()
    if stop.is_set():
        return 130
    return 1 if worker.lost_store is not None or any(not run.ok for run in runs) else 0


def _loop(settings: Settings, addresses: list[str], interval: float, stop: threading.Event, log: WorkerLog) -> int:
    """Pass after pass until ``stop``; the spec is read again for each pass, and a state store that is
    away is tried again at the next one. The exit code."""
    from mailops.errors import MailopsError, SpecError
    from mailops.runtime.worker import OneWorkerOnly
    from mailops.runtime.worker_log import Event, Level, WorkerEvent
    from mailops.spec import load_spec

    with ExitStack() as running:
        worker: Worker | None = None
        while not stop.is_set():
            try:
                if worker is None:
                    worker = _started_worker(settings, log, stop, running)
                worker.run_pass(load_spec(settings.config_dir), addresses)
            except OneWorkerOnly as exc:
                _report_error(log, exc, refused=True)
                return 1
            except SpecError as exc:
                message = f"the spec has {len(exc.problems)} problem(s); `mailops validate` lists them"
                log.emit(WorkerEvent(Event.SPEC_INVALID, message, Level.ERROR, counts={"problems": len(exc.problems)}))
            except MailopsError as exc:  # the state store is away, say: the next pass tries again
                _report_error(log, exc)
            if worker is not None and worker.lost_store is not None:
                return 1
            stop.wait(interval)
    log.emit(WorkerEvent(Event.WORKER_STOPPED, "Stopped."))
    return 0


def _started_worker(settings: Settings, log: WorkerLog, stop: threading.Event, running: ExitStack) -> Worker:
    """Open the state store and start a worker on it; ``running`` stops the worker, then closes the store."""
    from mailops.runtime.worker import Worker

    store = _worker_store(settings)
    try:
        worker = Worker(store, settings, log=log, stop=stop)
        worker.start()
    except BaseException:
        store.close()
        raise
    running.callback(store.close)
    running.callback(worker.finish)
    return worker


def _spec_or_none(settings: Settings, log: WorkerLog) -> LoadedSpec | None:
    """The spec; None when it has problems, which are reported (each on its own line)."""
    from mailops.errors import SpecError
    from mailops.runtime.worker_log import Event, JsonLog, Level, WorkerEvent
    from mailops.spec import load_spec

    if not isinstance(log, JsonLog):
        return load_spec_or_exit(settings, as_json=False)
    try:
        return load_spec(settings.config_dir)
    except SpecError as exc:
        problems = [str(problem) for problem in exc.problems]
        message = f"the spec has {len(problems)} problem(s); nothing was changed"
        counts = {"problems": len(problems)}
        log.emit(WorkerEvent(Event.SPEC_INVALID, message, Level.ERROR, counts=counts, extra={"problems": problems}))
        return None


def _report_error(log: WorkerLog, exc: Exception, *, refused: bool = False) -> None:
    from mailops.errors import printable
    from mailops.runtime.worker_log import Event, Level, WorkerEvent

    extra: dict[str, object] = {}
    holder = getattr(exc, "holder", None)
    if refused and holder is not None and holder.owner is not None:
        extra["held_by"] = {"host": holder.owner.host, "pid": holder.owner.pid}
    event = Event.WORKER_REFUSED if refused else Event.FAILED
    log.emit(WorkerEvent(event, printable(str(exc)), Level.ERROR, extra=extra))


def _worker_store(settings: Settings) -> StateStore:
    """The state store, migrated to this mailops (the worker writes); none is created where nothing was applied."""
    from mailops.errors import MailopsError
    from mailops.state.location import sqlite_file

    path = sqlite_file(settings.state_url)
    if path is not None and not path.exists():
        raise MailopsError("no account is applied yet; run `mailops apply` first")
    return open_store(settings, create=True)


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
    from mailops.state.tickets import Tickets, TicketStatus

    check_choice(status, TicketStatus, "--status")
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
        mails = [
            public_record(m.as_dict()) | {"raw_file": raw_file(raw_store, m.raw_sha256, m.raw_kept)} for m in messages
        ]
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
