"""`mailops archive list|show|search`: the mail the worker archived (read-only, visibility enforced)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, reported_errors
from mailops.cli.worker import MAX_ID, public_record, raw_file, reading_context

if TYPE_CHECKING:
    from mailops.state.tickets import IndexedMessage

archive_app = typer.Typer(help="The archive of received mail (read-only).", no_args_is_help=True)
app.add_typer(archive_app, name="archive")

AccountOption = typer.Option(None, "--account", help="Only this account's mail.")
SinceOption = typer.Option(None, "--since", help="Only mail received since this date (YYYY-MM-DD, UTC).")
LimitOption = typer.Option(50, "--limit", min=1, max=MAX_ID, help="At most this many, the latest first.")
JsonOption = typer.Option(False, "--json", help="Print the entries as JSON.")


@archive_app.command("list")
def list_entries(
    ctx: typer.Context,
    account: str | None = AccountOption,
    since: dt.datetime | None = SinceOption,
    limit: int = LimitOption,
    as_json: bool = JsonOption,
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """The latest archived mail the acting user may see."""
    from mailops.state.archive import Archive

    _settings, visible, store = reading_context(ctx, config_dir, as_json=as_json)
    with reported_errors(as_json=as_json):
        entries = Archive(store).entries(accounts=visible, account=account, since=_utc(since), limit=limit)
    _print_entries(entries, "Archive", as_json=as_json)


@archive_app.command("search")
def search_entries(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="Found in From, To, Cc, Subject, Message-ID or the mail's text."),
    account: str | None = AccountOption,
    since: dt.datetime | None = SinceOption,
    limit: int = LimitOption,
    as_json: bool = JsonOption,
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Archived mail that contains TEXT (ignoring case), of the accounts the acting user may see."""
    from mailops.runtime.archive import search
    from mailops.runtime.rawstore import RawStore, message_dir_of

    settings, visible, store = reading_context(ctx, config_dir, as_json=as_json)
    with reported_errors(as_json=as_json):
        found = search(
            store,
            RawStore(message_dir_of(settings)),
            text,
            accounts=visible,
            account=account,
            since=_utc(since),
            limit=limit,
        )
    _print_entries(found, f"Archive: {text}", as_json=as_json)


@archive_app.command("show")
def show_entry(
    ctx: typer.Context,
    entry_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The entry's number (#)."),
    as_json: bool = typer.Option(False, "--json", help="Print the entry and its text as JSON."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """One archived mail: its index entry, where its .eml is, and its text."""
    from mailops.errors import MailopsError, printable
    from mailops.runtime.archive import message_text
    from mailops.runtime.rawstore import RawStore, message_dir_of
    from mailops.state.archive import Archive

    settings, visible, store = reading_context(ctx, config_dir, as_json=as_json)
    with reported_errors(as_json=as_json):
        entry = Archive(store).entry(entry_id)
        if entry is None or (visible is not None and entry.account not in visible):
            raise MailopsError(f"no archive entry {entry_id}")  # the same answer for one this user may not see
        raw_store = RawStore(message_dir_of(settings))
        record = public_record(entry.as_dict()) | {"raw_file": raw_file(raw_store, entry.raw_sha256, entry.raw_kept)}
        record["text"] = message_text(raw_store, entry.raw_sha256)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for key in ("id", "account", "received_at", "sender", "to", "cc", "subject", "sent_at", "message_id", "size"):
        value = record[key]
        shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
        typer.echo(f"{key:<12} {printable(str(shown))}")
    typer.echo(f"{'ticket':<12} {record['ticket_id'] or ''}")
    typer.echo(f"{'raw_file':<12} {record['raw_file'] or ''}")
    typer.echo("")
    for line in record["text"].splitlines():
        typer.echo(printable(line))


def _utc(since: dt.datetime | None) -> dt.datetime | None:
    # The store compares times as UTC text: one with another offset is converted, not read as UTC.
    return (
        None if since is None else (since.replace(tzinfo=dt.UTC) if since.tzinfo is None else since).astimezone(dt.UTC)
    )


def _print_entries(entries: list[IndexedMessage], title: str, *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([public_record(entry.as_dict()) for entry in entries], indent=2))
        return
    from rich.console import Console

    from mailops.views import tables

    rows = [
        (
            str(entry.id),
            f"{entry.received_at:%Y-%m-%d %H:%M}",
            entry.account,
            entry.sender,
            entry.subject,
            f"#{entry.ticket_id}" if entry.ticket_id is not None else "",
        )
        for entry in entries
    ]
    columns = [
        tables.Column("#"),
        tables.Column("received"),
        tables.Column("account", key=True),
        tables.Column("from"),
        tables.Column("subject"),
        tables.Column("ticket"),
    ]
    console = Console(highlight=False)
    console.print(tables.records(console, title, columns, rows))
