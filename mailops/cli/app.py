"""The Typer application and its global options; the commands register in their own modules."""

from __future__ import annotations

import typer

from mailops import __version__

app = typer.Typer(
    name="mailops",
    help="Manage a business system's e-mail accounts declaratively: validate, plan and apply YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mailops {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
    state: str | None = typer.Option(
        None, "--state", help="State store URL [env: MAILOPS_STATE_URL; default: sqlite:///.mailops/state.db]"
    ),
    acting_user: str | None = typer.Option(
        None, "--as", help="The acting employee, for visibility checks [env: MAILOPS_USER]"
    ),
) -> None:
    ctx.obj = {"state_url": state, "user": acting_user}
