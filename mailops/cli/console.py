"""`mailops console`: the connect, test-mail and outbox notebooks as a small web app (Voilà) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, fail, reported_errors, settings_of


@app.command()
def console(
    ctx: typer.Context,
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port on 127.0.0.1 [default: a free one]"),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the address only; open no browser."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Serve the connect, test-mail and outbox notebooks as a web app on 127.0.0.1 until Ctrl-C or SIGTERM.

    It prints the address to open, with its token. The notebooks get this command's settings
    (MAILOPS_*, --state, --as) through the environment.
    """
    from mailops.notebook.console import start_console

    settings = settings_of(ctx, config_dir)
    if not settings.config_dir.is_dir():
        fail(f"the config directory {settings.config_dir} does not exist (-c DIR or MAILOPS_CONFIG_DIR)")
    with _sigterm_as_interrupt():
        try:
            with reported_errors():
                running = start_console(settings, port=port)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        try:
            typer.echo(f"mailops console: {running.url}")
            typer.echo("Stop it with Ctrl-C.", err=True)
            if not no_browser:
                import webbrowser

                webbrowser.open(running.opening_page().as_uri())
            code = running.wait()
        except KeyboardInterrupt:
            typer.echo("Stopping the console …", err=True)
            return
        finally:
            running.stop()
    fail(f"Voilà stopped by itself (exit code {code}); see its log above")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the console as Ctrl-C does (a service manager stops it so), for the duration."""
    import signal

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
