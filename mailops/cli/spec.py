"""`mailops validate`: load and check the spec."""

from __future__ import annotations

from pathlib import Path

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, load_spec_or_exit, settings_of


@app.command()
def validate(
    ctx: typer.Context,
    config_dir: Path | None = ConfigDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the problems as a JSON list."),
) -> None:
    """Load and check the spec. Exit 0 when valid, 1 when not."""
    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=as_json)
    if as_json:
        typer.echo("[]")
        return
    from rich.console import Console
    from rich.text import Text

    from mailops.views.tables import Column, records

    console = Console(highlight=False)
    for note in loaded.notes:
        console.print(str(note), style="dim", soft_wrap=True, markup=False)
    spec = loaded.spec
    rows = []
    for account in spec.accounts:
        imap, smtp = account.imap, account.smtp
        uses = [
            name
            for name, on in (
                ("ticket", account.ticket.enabled),
                ("archive", account.archive.enabled),
                ("auto-reply", account.autoreply.enabled),
            )
            if on
        ]
        default = ["(default)"] if account.address.lower() == spec.defaults.email.lower() else []
        rows.append(
            (
                account.address,
                account.display_name or "",
                account.provider,
                f"{imap.host}:{imap.port} {imap.encryption}" if imap else "",
                f"{smtp.host}:{smtp.port} {smtp.encryption}" if smtp else "",
                ", ".join(uses),
                ", ".join(default + spec.projects_of(account.address)),
            )
        )
    columns = [
        Column("address", key=True),
        Column("name"),
        Column("provider"),
        Column("IMAP", key=True),
        Column("SMTP", key=True),
        Column("uses"),
        Column("projects"),
    ]
    console.print(records(console, "Declared accounts", columns, rows))
    summary = (
        f" {settings.config_dir} is valid: {len(spec.accounts)} account(s), "
        f"{len(spec.projects)} project link(s), {len(spec.employees)} employee(s)."
    )
    console.print(Text.assemble(("✓", "green"), summary), soft_wrap=True)
