"""What every command shares: options, settings, loading the spec, opening the state, reporting errors.

Errors are reported here once: one ``Error: …`` line per problem on stderr (or JSON
on stdout where the command offers ``--json``), and exit code 1. Nothing below this
module prints a traceback for a mistake a user can make.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state import LiveAccounts, StateStore

ConfigDirOption = typer.Option(
    None,
    "--config-dir",
    "-c",
    help="Directory with accounts.yaml and defaults.yaml [env: MAILOPS_CONFIG_DIR; default: config]",
)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``Error: message`` (each line of it) on stderr and exit."""
    from mailops.errors import printable

    for line in message.splitlines() or [""]:
        typer.echo(f"Error: {printable(line)}", err=True)
    raise typer.Exit(code)


def check_choice(value: str | None, choices: Iterable[str], option: str) -> None:
    """A usage error (exit 2) when ``value`` is given and none of ``choices``: a typo filters out everything."""
    allowed = list(choices)
    if value is not None and value not in allowed:
        raise typer.BadParameter(f"{value!r} is none of {', '.join(allowed)}.", param_hint=f"'{option}'")


def settings_of(ctx: typer.Context, config_dir: Path | None = None) -> Settings:
    from mailops.settings import SettingsError, load_settings

    try:
        return load_settings(config_dir=config_dir, **(ctx.obj or {}))
    except SettingsError as exc:
        fail(str(exc))


@contextmanager
def reported_errors(*, as_json: bool = False) -> Iterator[None]:
    """Turn mailops' own errors into a message and exit code 1."""
    from mailops.errors import MailopsError

    try:
        yield
    except MailopsError as exc:
        if as_json:
            typer.echo(json.dumps({"error": str(exc)}, ensure_ascii=False))
            raise typer.Exit(1) from None
        fail(str(exc))


def load_spec_or_exit(settings: Settings, *, as_json: bool) -> LoadedSpec:
    """Load the spec; on problems print them all (stderr, or JSON on stdout) and exit 1."""
    from mailops.errors import SpecError
    from mailops.spec import load_spec

    with reported_errors(as_json=as_json):
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


def read_state(settings: Settings) -> LiveAccounts:
    """The live state for a command that only reads: nothing is created, migrated or locked."""
    from mailops.state import read_live_state

    return read_live_state(settings.state_url)


def open_store(settings: Settings, *, create: bool) -> StateStore:
    """The state store for a command that writes; ``create`` makes (and migrates) it where missing."""
    from mailops.state import StateStore

    return StateStore.open(settings.state_url, create=create)
