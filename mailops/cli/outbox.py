"""`mailops send` and `mailops outbox list|show|resend|retry|export|import`: mail out, and its log."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mailops.cli.app import app
from mailops.cli.common import (
    ConfigDirOption,
    check_choice,
    fail,
    load_spec_or_exit,
    open_store,
    reported_errors,
    settings_of,
)

if TYPE_CHECKING:
    from mailops.engine.send import SendResult
    from mailops.engine.visibility import Actor
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state.outbox import OutboxEntry
    from mailops.state.store import StateStore

MAX_BODY_BYTES = 10 * 1024 * 1024

outbox_app = typer.Typer(help="The outbox log: every attempt to send a mail.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")


def _context(ctx: typer.Context, config_dir: Path | None) -> tuple[Settings, LoadedSpec, Actor, StateStore]:
    from mailops.engine.visibility import acting

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=False)
    with reported_errors():
        actor = acting(loaded.spec, settings.user)
        store = open_store(settings, create=False)
    return settings, loaded, actor, store


MAX_ID = 2**63 - 1  # the database's largest integer: a bigger number is a usage error, not an overflow


def _in_zone(since: dt.datetime | None, settings: Settings) -> dt.datetime | None:
    """``--since`` as an instant in UTC, as the store compares times: a date or time without an offset is the
    business's (MAILOPS_TIMEZONE), as the days of `report` and the times of `outbox import` are."""
    if since is None:
        return None
    try:
        return (since.replace(tzinfo=settings.zone) if since.tzinfo is None else since).astimezone(dt.UTC)
    except OverflowError:  # within a day of the calendar's ends: since the first day is everything, the last none
        return None if since.year == dt.MINYEAR else dt.datetime.max.replace(tzinfo=dt.UTC)


@app.command()
def send(
    ctx: typer.Context,
    to: list[str] = typer.Option([], "--to", help="Recipient (repeat for several)."),
    cc: list[str] = typer.Option([], "--cc", help="Copy recipient (repeat)."),
    bcc: list[str] = typer.Option([], "--bcc", help="Blind copy recipient (repeat)."),
    subject: str = typer.Option("", "--subject", help="The subject."),
    body: str | None = typer.Option(None, "--body", help="The text (or HTML with --html)."),
    body_file: Path | None = typer.Option(None, "--body-file", help="Read the body from this file."),
    html: bool = typer.Option(False, "--html", help="The body is HTML."),
    attach: list[Path] = typer.Option([], "--attach", help="Attach this file (repeat)."),
    project: str | None = typer.Option(None, "--project", help="Send as this project / sales channel."),
    batch: Path | None = typer.Option(None, "--batch", help="Send one mail per row of this CSV or JSONL file."),
    explain: bool = typer.Option(False, "--explain", help="Show how the mail was put together."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compose and check, send nothing."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Send a mail composed from the spec (sender, signature, CC/BCC, template); every attempt is logged."""
    from mailops.compose import SendRequest
    from mailops.engine.batch import read_batch
    from mailops.engine.send import send_mails
    from mailops.fileio import read_text

    settings, loaded, actor, store = _context(ctx, config_dir)
    with reported_errors():
        if batch is not None:
            given = [
                name
                for name, value in (
                    ("--to", to), ("--cc", cc), ("--bcc", bcc), ("--subject", subject), ("--body", body),
                    ("--body-file", body_file), ("--html", html), ("--attach", attach), ("--project", project),
                )
                if value
            ]  # fmt: skip
            if given:
                fail(f"--batch takes every mail's fields from the file (its columns); give no {', '.join(given)}")
            requests = read_batch(batch)
        else:
            if body_file is not None:
                if body is not None:
                    fail("give the body with one of --body and --body-file, not both")
                body = read_text(body_file, limit=MAX_BODY_BYTES, what="body file")
            if body is None:
                fail("give the body with --body or --body-file")
            requests = [
                SendRequest(
                    to=tuple(to),
                    cc=tuple(cc),
                    bcc=tuple(bcc),
                    subject=subject,
                    body=body,
                    html=html,
                    attachments=tuple(attach),
                    project=project,
                )
            ]
        if not store.exists:
            fail("no account is applied yet; run `mailops apply` first")
        results = send_mails(loaded, store, settings, actor, requests, dry_run=dry_run)
    for result in results:
        _print_result(result, explain=explain or dry_run)
    failed = sum(not result.ok for result in results)
    if len(results) > 1:
        typer.echo(f"{len(results) - failed} of {len(results)} mail(s) sent." if not dry_run else "Nothing was sent.")
    if failed:
        raise typer.Exit(1)


def _print_result(result: SendResult, *, explain: bool) -> None:
    from mailops.errors import printable

    mail = result.composed
    if explain and mail is not None:
        for what, why in mail.explanation:
            typer.echo(f"  {what + ':':<14} {printable(why)}")
    recipients = printable(", ".join(mail.to)) if mail else ""
    if result.status == "dry-run":
        typer.echo(f"would send to {recipients} from {mail.sender if mail else ''} (dry run)")
    elif result.ok:
        typer.echo(f"sent    #{result.entry_id} to {recipients}")
    else:
        from mailops.outbox.classify import remedy

        short = remedy(result.error_class).short if result.error_class else ""
        typer.echo(f"failed  #{result.entry_id} {result.error_class}: {printable(result.reply or '')}", err=True)
        typer.echo(f"        {short}", err=True)


def _visible(loaded: LoadedSpec, store: StateStore, actor: Actor) -> set[str] | None:
    from mailops.engine.visibility import visible_addresses

    if actor.admin:
        return None
    return visible_addresses(loaded.spec, actor, store.accounts(include_deleted=True))


@outbox_app.command("list")
def list_entries(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", help="queued, sent, failed or bounced."),
    account: str | None = typer.Option(None, "--account", help="Only this account."),
    project: str | None = typer.Option(None, "--project", help="Only this project / sales channel."),
    error_class: str | None = typer.Option(None, "--class", help="Only this error class."),
    since: dt.datetime | None = typer.Option(
        None,
        "--since",
        help="Only attempts since this date (YYYY-MM-DD) or time, in MAILOPS_TIMEZONE.",
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_ID, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """The latest attempts, with To, CC and BCC told apart, and each failure's class and remedy."""
    from mailops.state.outbox import Outbox, OutboxStatus

    check_choice(status, OutboxStatus, "--status")
    if error_class is not None:
        from mailops.outbox.classify import CLASSES

        check_choice(error_class, CLASSES, "--class")
    settings, loaded, actor, store = _context(ctx, config_dir)
    with reported_errors(as_json=as_json):
        entries = Outbox(store).entries(
            accounts=_visible(loaded, store, actor),
            status=status,
            account=account,
            project=project,
            error_class=error_class,
            since=_in_zone(since, settings),
            limit=limit,
        )
    if as_json:
        typer.echo(json.dumps([_public(entry) for entry in entries], indent=2, default=str))
        return
    from rich.console import Console

    from mailops.outbox.classify import remedy
    from mailops.views.tables import Column, records

    rows = []
    for entry in entries:
        people = [f"To: {', '.join(entry.to)}"] + [f"Cc: {', '.join(entry.cc)}"] * bool(entry.cc)
        people += [f"Bcc: {', '.join(entry.bcc)}"] * bool(entry.bcc)
        problem = f"{entry.error_class}: {remedy(entry.error_class).short}" if entry.error_class else ""
        rows.append(
            (
                str(entry.id),
                f"{entry.created_at:%Y-%m-%d %H:%M}",
                entry.status,
                entry.sender,
                "\n".join(people),
                entry.subject,
                problem,
            )
        )
    columns = [
        Column("#"),
        Column("time"),
        Column("status"),
        Column("from", key=True),
        Column("recipients"),
        Column("subject"),
        Column("problem"),
    ]
    console = Console(highlight=False)
    console.print(records(console, "Outbox", columns, rows))


def _public(entry: OutboxEntry) -> dict[str, Any]:
    """The entry as JSON shows it: times in ISO 8601."""
    return {
        key: value.isoformat() if isinstance(value, dt.datetime) else value
        for key, value in entry.as_dict().items()
        if key != "has_raw"
    }


@outbox_app.command()
def show(
    ctx: typer.Context,
    entry_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The entry's number (#)."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """One attempt in full: addresses, the server's reply, codes, class and remedy."""
    from mailops.errors import printable
    from mailops.state.outbox import Outbox

    _settings, loaded, actor, store = _context(ctx, config_dir)
    with reported_errors():
        entry = Outbox(store).entry(entry_id)
    visible = _visible(loaded, store, actor)
    if entry is None or (visible is not None and entry.account not in visible):
        fail(f"no outbox entry {entry_id}")  # the same answer for one this user may not see
    for key, value in _public(entry).items():
        shown = ", ".join(value) if isinstance(value, tuple) else ("" if value is None else value)
        typer.echo(f"{key:<14} {printable(str(shown))}")


@outbox_app.command()
def resend(
    ctx: typer.Context,
    entry_id: int = typer.Argument(
        ..., min=1, max=MAX_ID, help="The entry to send again (kept whole by policies.outbox)."
    ),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Send a logged mail again, after a fix; the new attempt is linked to the old one."""
    from mailops.engine.send import resend as resend_entry

    settings, loaded, actor, store = _context(ctx, config_dir)
    with reported_errors():
        result = resend_entry(loaded, store, settings, actor, entry_id)
    _print_result(result, explain=False)
    if not result.ok:
        raise typer.Exit(1)


@outbox_app.command()
def retry(ctx: typer.Context, config_dir: Path | None = ConfigDirOption) -> None:
    """Send again what an interrupted process left queued, and passing failures (4xx, timeouts)."""
    from mailops.engine.send import retry as retry_orphans

    settings, loaded, actor, store = _context(ctx, config_dir)
    from mailops.errors import printable

    with reported_errors():
        report = retry_orphans(loaded, store, settings, actor)
    for result in report.results:
        _print_result(result, explain=False)
    for entry_id, why in report.skipped:
        typer.echo(f"#{entry_id} left as it is: {printable(why)}", err=True)
    for entry_id in report.closed:
        typer.echo(f"#{entry_id} closed, not sent again: an automatic reply that may have arrived.")
    if report.taken_elsewhere:
        typer.echo(f"{report.taken_elsewhere} attempt(s) taken over by another `mailops outbox retry` meanwhile.")
    results = report.results
    sent = sum(result.ok for result in results)
    if results:
        typer.echo(f"{sent} of {len(results)} mail(s) sent again.")
    elif not report.closed:
        typer.echo("Nothing to retry.")
    if report.skipped or any(not result.ok for result in results):
        raise typer.Exit(1)


@outbox_app.command()
def export(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="The file to write."),
    format: str = typer.Option("csv", "--format", help="csv or parquet."),  # noqa: A002 - the option's name
    since: dt.datetime | None = typer.Option(
        None, "--since", help="Only attempts since this date (YYYY-MM-DD) or time, in MAILOPS_TIMEZONE."
    ),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Write the outbox log (what this user may see) as CSV or Parquet, for analysis."""
    from mailops.outbox.exports import write_export

    if format not in ("csv", "parquet"):
        fail("--format is csv or parquet")
    settings, loaded, actor, store = _context(ctx, config_dir)
    with reported_errors():
        written = write_export(
            store, out, form=format, accounts=_visible(loaded, store, actor), since=_in_zone(since, settings)
        )
    typer.echo(f"Wrote {written} entr{'y' if written == 1 else 'ies'} to {out}.")


@outbox_app.command("import")
def import_log(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="The outbox log exported from the ERP (CSV with a `Fehler` column)."),
    timezone: str | None = typer.Option(
        None, "--timezone", help="The zone of times without an offset [default: MAILOPS_TIMEZONE, Europe/Berlin]."
    ),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Load another system's outbox log for analysis: each row is classified and marked as imported.

    Importing the same file again adds nothing. Only an administrator imports, since the
    rows may belong to accounts a user may not see.
    """
    from mailops.outbox.imports import import_seed_log, read_import

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=False)
    with reported_errors():
        from mailops.engine.visibility import acting

        if not acting(loaded.spec, settings.user).admin:
            fail("importing another system's log is for an administrator (policies.cli_user_is_admin, no --as)")
        zone = settings.timezone if timezone is None else timezone  # an empty --timezone is no zone, not the default
        log = read_import(file, timezone=zone)  # unreadable: no store is made
        count = import_seed_log(open_store(settings, create=True), log)
    typer.echo(f"Imported {count} new entr{'y' if count == 1 else 'ies'} from {file} (marked as imported).")
