"""`mailops accounts` (the overview) and `mailops test-mail`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, load_spec_or_exit, open_store, read_state, reported_errors, settings_of

# The reason an account is in error, as the overview shows it; --json has the whole text.
SHORT_REASON = 70


@app.command()
def accounts(
    ctx: typer.Context,
    config_dir: Path | None = ConfigDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the overview as JSON."),
) -> None:
    """The overview: each live account with its status, project links and last test mail."""
    from mailops.engine.overview import account_overview

    settings = settings_of(ctx, config_dir)
    with reported_errors(as_json=as_json):
        rows = account_overview(read_state(settings), settings.config_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console

    from mailops.views.tables import Column, records

    console = Console(highlight=False)
    table_rows = []
    for row in rows:
        mail = row["last_test_mail"]
        mail_text = (
            "" if mail is None else f"{mail['at']:%Y-%m-%d %H:%M} {'ok' if mail['ok'] else 'failed: ' + mail['error']}"
        )
        status = row["status"]
        if row["last_error"]:
            status += f"\n{_shorten(row['last_error'])}"
        table_rows.append(
            (row["address"], ", ".join(row["projects"]), row["display_name"], row["provider"], status, mail_text)
        )
    columns = [
        Column("address", key=True),
        Column("projects"),
        Column("name"),
        Column("provider"),
        Column("status"),
        Column("last test mail"),
    ]
    console.print(records(console, "E-mail accounts", columns, table_rows))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORT_REASON else text[: SHORT_REASON - 1] + "…"


@app.command(name="test-mail")
def test_mail(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="The account that sends."),
    to: str | None = typer.Option(None, "--to", help="Recipient (default: policies.test_mail.to)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the mail has arrived in the account's inbox."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Send a test mail from ADDRESS now."""
    from mailops.engine.testmail import send_test_mail

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=False)
    with reported_errors():
        store = open_store(settings, create=False)
        result = send_test_mail(loaded, store, settings, settings.user, address, to=to, wait=wait)
    if result.error is not None:
        typer.echo(f"Test mail from {address} to {result.recipient} failed: {result.error.summary()}", err=True)
        typer.echo(f"Remedy: {result.error.remedy}", err=True)
        raise typer.Exit(1)
    arrived = " and arrived in the inbox" if result.arrived else ""
    typer.echo(f"Test mail from {address} sent to {result.recipient}{arrived}.")


@app.command()
def check(
    ctx: typer.Context,
    config_dir: Path | None = ConfigDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Log in to every live account and refresh its token; exit 1 when any needs a person."""
    from mailops.engine.connect import check_accounts

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=as_json)
    with reported_errors(as_json=as_json):
        results = check_accounts(loaded, open_store(settings, create=False), settings)
    if as_json:
        rows = [
            {
                "address": r.address,
                "status": r.status,
                "error_class": r.error.failure_class.value if r.error else None,
                "error": r.error.summary() if r.error else None,
                "fix": r.fix,
            }
            for r in results
        ]
        typer.echo(json.dumps(rows, indent=2))
    else:
        for result in results:
            if result.ok:
                typer.echo(f"ok      {result.address}")
            else:
                reason = f": {result.error.summary()}" if result.error else ""
                typer.echo(f"{result.status:<7} {result.address}{reason}")
                typer.echo(f"        fix: {result.fix}")
        bad = sum(not r.ok for r in results)
        typer.echo(
            f"{len(results) - bad} of {len(results)} account(s) connected." + (f" {bad} need a person." if bad else "")
        )
    if any(not r.ok for r in results):
        raise typer.Exit(1)
