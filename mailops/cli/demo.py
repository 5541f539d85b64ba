"""`mailops demo`: the whole job against an embedded local mail server."""

from __future__ import annotations

from pathlib import Path

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, settings_of


@app.command()
def demo(ctx: typer.Context, config_dir: Path | None = ConfigDirOption) -> None:
    """Run validate, plan, apply, accounts and a test mail against an embedded local mail server."""
    from mailops.demo import run_demo

    raise typer.Exit(run_demo(settings_of(ctx, config_dir).config_dir, echo=typer.echo))
