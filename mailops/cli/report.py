"""`mailops report`: the outbox log of a period as a self-contained HTML page with its CSVs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from mailops.cli.app import app
from mailops.cli.common import ConfigDirOption, fail, load_spec_or_exit, open_store, reported_errors, settings_of


@app.command()
def report(
    ctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help="First day, YYYY-MM-DD [default: 29 days before --until]"),
    until: str | None = typer.Option(None, "--until", help="Last day, included, YYYY-MM-DD [default: today]"),
    out: str = typer.Option("reports", "--out", help="Directory for the page and its CSVs."),
    timezone: str | None = typer.Option(
        None, "--timezone", help="The zone whose calendar days count [default: MAILOPS_TIMEZONE, Europe/Berlin]."
    ),
    config_dir: Path | None = ConfigDirOption,
) -> None:
    """Write outbox-YYYY-MM-DD.html (charts inline, nothing loaded from elsewhere) and the CSVs behind its tables.

    It shows what the acting user may see: sent and failed mails against the period
    before, failures by class with their remedies, by account, by recipient domain and
    by day, the latest failures, and the accounts that need a person.
    """
    from mailops.bulk import cycle_collector_paused

    # The command imports pandas and matplotlib and builds the report's frames: many objects and no garbage, which
    # the cycle collector would otherwise walk again and again (about half a second of a million rows' report).
    if not out:  # as a path it would be the current directory, which nobody meant
        fail("--out is empty: name the directory for the report (default: reports)")
    with cycle_collector_paused():
        page = _write_report(ctx, since, until, Path(out), timezone, config_dir)
    typer.echo(str(page))


def _write_report(
    ctx: typer.Context, since: str | None, until: str | None, out: Path, timezone: str | None, config_dir: Path | None
) -> Path:
    from mailops.engine.overview import account_overview
    from mailops.engine.visibility import acting, visible_addresses
    from mailops.report import build_report, period, write_report

    first, last = _day(since, "--since"), _day(until, "--until")
    settings = settings_of(ctx, config_dir)
    with reported_errors():
        zone = settings.timezone if timezone is None else timezone  # an empty --timezone is no zone, not the default
        span = period(first, last, timezone=zone)  # fails before the spec is read
    loaded = load_spec_or_exit(settings, as_json=False)
    with reported_errors():
        actor = acting(loaded.spec, settings.user)
        store = open_store(settings, create=False)
        visible = None if actor.admin else visible_addresses(loaded.spec, actor, store.accounts(include_deleted=True))
        overview = [
            row for row in account_overview(store, settings.config_dir) if visible is None or row["address"] in visible
        ]
        return write_report(build_report(store, span, accounts=visible, overview=overview), out)


def _day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option} {value!r} is not a date (YYYY-MM-DD)")
