"""The `mailops` command line: thin shells over the library API.

Heavy modules (pydantic, ruamel.yaml, rich tables) are imported inside the commands,
so that `mailops --help` starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from mailops import __version__

if TYPE_CHECKING:
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec

app = typer.Typer(
    name="mailops",
    help="Manage a business system's e-mail accounts declaratively: validate, plan and apply YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigDirOption = typer.Option(
    None, "--config-dir", "-c", help="Directory with accounts.yaml and defaults.yaml [env: MAILOPS_CONFIG_DIR; default: config]"
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mailops {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(  # noqa: UP007 - typer needs Optional here
        None, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
    state: Optional[str] = typer.Option(  # noqa: UP007
        None, "--state", help="State store URL [env: MAILOPS_STATE_URL; default: sqlite:///.mailops/state.db]"
    ),
    acting_user: Optional[str] = typer.Option(  # noqa: UP007
        None, "--as", help="The acting employee, for visibility checks [env: MAILOPS_USER]"
    ),
) -> None:
    ctx.obj = {"state_url": state, "user": acting_user}


def _settings(ctx: typer.Context, config_dir: Path | None = None) -> Settings:
    from mailops.settings import load_settings

    return load_settings(config_dir=config_dir, **(ctx.obj or {}))


def _load_or_exit(settings: Settings, *, as_json: bool) -> LoadedSpec:
    """Load the spec; on problems print them all (stderr, or JSON on stdout) and exit 1."""
    from mailops.errors import SpecError
    from mailops.spec import load_spec

    try:
        return load_spec(settings.config_dir)
    except SpecError as exc:
        if as_json:
            typer.echo(json.dumps([problem.as_dict() for problem in exc.problems], indent=2, ensure_ascii=False))
        else:
            for problem in exc.problems:
                typer.echo(str(problem), err=True)
            typer.echo(f"{len(exc.problems)} problem(s) found; nothing was changed.", err=True)
        raise typer.Exit(1) from None


@app.command()
def validate(
    ctx: typer.Context,
    config_dir: Optional[Path] = ConfigDirOption,  # noqa: UP007
    as_json: bool = typer.Option(False, "--json", help="Print the problems as a JSON list."),
) -> None:
    """Load and check the spec. Exit 0 when valid, 1 when not."""
    settings = _settings(ctx, config_dir)
    loaded = _load_or_exit(settings, as_json=as_json)
    if as_json:
        typer.echo("[]")
        return
    from rich.console import Console

    console = Console(highlight=False)
    for note in loaded.notes:
        console.print(f"[dim]{note}[/dim]", soft_wrap=True)
    console.print(_accounts_table(loaded))
    spec = loaded.spec
    console.print(
        f"[green]✓[/green] {settings.config_dir} is valid: {len(spec.accounts)} account(s), "
        f"{len(spec.projects)} project link(s), {len(spec.employees)} employee(s)."
    )


def _accounts_table(loaded: LoadedSpec):  # noqa: ANN202 - rich is imported lazily
    from rich.table import Table

    spec = loaded.spec
    table = Table(title="Declared accounts", title_justify="left")
    for column in ("address", "name", "provider", "IMAP", "SMTP", "uses", "projects"):
        table.add_column(column)
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
        table.add_row(
            account.address,
            account.display_name or "",
            account.provider,
            f"{imap.host}:{imap.port} {imap.encryption}" if imap else "",
            f"{smtp.host}:{smtp.port} {smtp.encryption}" if smtp else "",
            ", ".join(uses),
            ", ".join(default + spec.projects_of(account.address)),
        )
    return table


if __name__ == "__main__":
    app()
