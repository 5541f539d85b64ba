"""`mailops connect`, `reconnect` and `keygen`: OAuth consent for Microsoft 365 and Google mailboxes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, load_spec_or_exit, open_store, reported_errors, settings_of

if TYPE_CHECKING:
    from mailops.providers.oauth import ConsentMethod


def _connect(
    ctx: typer.Context, address: str, device_code: bool, browser: bool, config_dir: Path | None, *, reconnect: bool
) -> None:
    from mailops.engine.connect import connect_account

    if device_code and browser:
        raise typer.BadParameter("choose one of --device-code and --browser")
    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=False)
    account = loaded.spec.account(address)
    # Google offers no device flow for mail scopes: its accounts always consent in a browser.
    method: ConsentMethod = (
        "browser" if browser or (account is not None and account.provider == "google") else "device-code"
    )
    with reported_errors():
        report = connect_account(
            loaded,
            open_store(settings, create=True),
            settings,
            address,
            method=method,
            show=lambda text: typer.echo(text, err=True),
            reconnect=reconnect,
        )
    typer.echo(f"{report.address}: consent by {report.identity}, token stored (encrypted).")
    if report.error is not None:
        typer.echo(f"{report.address} is {report.status}: {report.error.summary()}", err=True)
        typer.echo(f"Remedy: {report.error.remedy}", err=True)
        raise typer.Exit(1)
    mail = report.test_mail
    sent = f"; test mail sent to {mail.recipient}" if mail is not None else ""
    typer.echo(f"{report.address} is connected: IMAP and SMTP log in with XOAUTH2{sent}.")


@app.command()
def connect(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="The declared Microsoft or Google account."),
    device_code: bool = typer.Option(False, "--device-code", help="Sign in on any device with a code (Microsoft)."),
    browser: bool = typer.Option(False, "--browser", help="Sign in in a browser on this machine."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Connect an OAuth account: consent, identity check, token stored, IMAP/SMTP verified, test mail."""
    _connect(ctx, address, device_code, browser, config_dir, reconnect=False)


@app.command()
def reconnect(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="An OAuth account whose grant died (needs_reconnect)."),
    device_code: bool = typer.Option(False, "--device-code", help="Sign in on any device with a code (Microsoft)."),
    browser: bool = typer.Option(False, "--browser", help="Sign in in a browser on this machine."),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Consent again for a connected OAuth account whose token was revoked or expired."""
    _connect(ctx, address, device_code, browser, config_dir, reconnect=True)


@app.command()
def keygen(
    out: Path | None = typer.Option(
        None, "--out", help="Write the key to this file (mode 0600) instead of printing it."
    ),
) -> None:
    """Make a key for MAILOPS_SECRET_KEY, which encrypts the stored OAuth tokens."""
    from mailops.fileio import atomic_write
    from mailops.state.tokens import make_key

    key = make_key()
    if out is None:
        typer.echo(key)
        typer.echo(
            "Keep this key secret and set MAILOPS_SECRET_KEY to it (or to file:PATH of a file holding it).", err=True
        )
        return
    with reported_errors():
        if out.exists():
            raise typer.BadParameter(
                f"{out} exists; a new key would make the tokens stored with the old one unreadable"
            )
        atomic_write(out, key + "\n", mode=0o600)
    typer.echo(f"Wrote a new key to {out}. Set MAILOPS_SECRET_KEY=file:{out}")
