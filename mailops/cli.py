"""The `mailops` command line: thin shells over the library API.

Heavy modules (pydantic, ruamel.yaml, rich tables) are imported inside the commands,
so that `mailops --help` starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mailops import __version__

if TYPE_CHECKING:
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state import StateStore

app = typer.Typer(
    name="mailops",
    help="Manage a business system's e-mail accounts declaratively: validate, plan and apply YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigDirOption = typer.Option(
    None,
    "--config-dir",
    "-c",
    help="Directory with accounts.yaml and defaults.yaml [env: MAILOPS_CONFIG_DIR; default: config]",
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


def _settings(ctx: typer.Context, config_dir: Path | None = None) -> Settings:
    from pydantic import ValidationError

    from mailops.settings import load_settings

    try:
        return load_settings(config_dir=config_dir, **(ctx.obj or {}))
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            name = "MAILOPS_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"Error: setting {name}: {error['msg']}", err=True)
        raise typer.Exit(1) from None


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
    config_dir: Path | None = ConfigDirOption,
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
        console.print(str(note), style="dim", soft_wrap=True, markup=False)
    console.print(_accounts_table(loaded))
    spec = loaded.spec
    console.print(
        f"[green]✓[/green] {settings.config_dir} is valid: {len(spec.accounts)} account(s), "
        f"{len(spec.projects)} project link(s), {len(spec.employees)} employee(s)."
    )


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn mailops' own errors into a message on stderr and exit code 1."""
    from mailops.errors import MailopsError

    try:
        yield
    except MailopsError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


def _open_store(settings: Settings) -> StateStore:
    from mailops.state import StateStore

    return StateStore.open(settings.state_url)


@app.command()
def plan(
    ctx: typer.Context,
    config_dir: Path | None = ConfigDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as versioned JSON (secrets redacted)."),
    detailed_exitcode: bool = typer.Option(
        False, "--detailed-exitcode", help="Exit 0 when nothing changes, 2 when something would, 1 on error."
    ),
    out: Path | None = typer.Option(None, "--out", help="Save the plan, for `mailops apply FILE`."),
) -> None:
    """Show what apply would change: + create, ~ update, - delete, ! needs action."""
    from mailops.engine.plan import format_plan, plan_for

    settings = _settings(ctx, config_dir)
    loaded = _load_or_exit(settings, as_json=as_json)
    with _reported_errors():
        store = _open_store(settings)
        the_plan = plan_for(loaded, store)
    if out is not None:
        try:
            the_plan.save(out)
        except OSError as exc:
            typer.echo(f"Error: cannot write the plan to {out}: {exc.strerror}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps(the_plan.as_json(), indent=2, sort_keys=True) if as_json else format_plan(the_plan))
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


@app.command(name="apply")
def apply_command(
    ctx: typer.Context,
    plan_file: Path | None = typer.Argument(None, help="A plan saved by `mailops plan --out`."),
    config_dir: Path | None = ConfigDirOption,
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Apply without asking."),
    confirm_delete: list[str] = typer.Option(
        [], "--confirm-delete", metavar="ADDRESS", help="Allow deleting this account (repeat for each)."
    ),
    force: bool = typer.Option(False, "--force", help="Allow deleting more than policies.max_delete_fraction."),
) -> None:
    """Make the live state match the spec; verify each created or changed account and send its test mail."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mailops.engine.apply import apply
    from mailops.engine.plan import format_plan

    settings = _settings(ctx, config_dir)
    loaded = _load_or_exit(settings, as_json=False)
    console = Console(highlight=False)
    saved = None
    if plan_file is not None:
        try:
            saved = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            typer.echo(f"Error: cannot read plan file {plan_file}: {exc}", err=True)
            raise typer.Exit(1) from None

    def approve(the_plan) -> bool:  # noqa: ANN001
        console.print(format_plan(the_plan), markup=False)
        if auto_approve or saved is not None:
            return True
        if not sys.stdin.isatty():
            typer.echo("Error: not applying without approval; pass --auto-approve in non-interactive runs.", err=True)
            raise typer.Exit(1)
        return typer.confirm("Apply these changes?")

    progress = Progress(
        TextColumn("[bold]apply"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    task = progress.add_task("", total=0)

    def started(the_plan) -> None:  # noqa: ANN001
        actionable = sum(the_plan.counts[k] for k in ("add", "change", "delete"))
        progress.update(task, total=actionable)
        progress.start()

    def done(outcome) -> None:  # noqa: ANN001
        progress.update(task, advance=1, description=outcome.change.address)

    with _reported_errors():
        store = _open_store(settings)
        try:
            report = apply(
                loaded,
                store,
                settings,
                saved_plan=saved,
                confirmed_deletes=frozenset(a.lower() for a in confirm_delete),
                force=force,
                approve=approve,
                lock_wait=settings.lock_wait,
                on_start=started,
                on_done=done,
            )
        finally:
            progress.stop()
    if not report.outcomes:
        return
    console.print(_outcomes_table(report))
    for outcome in report.failed:
        # Full text, unwrapped, so CI logs can be searched for it.
        console.print(f"{outcome.change.address}: {outcome.error.summary()}", soft_wrap=True, markup=False)
        console.print(f"  Remedy: {outcome.error.remedy}", soft_wrap=True, markup=False)
    failed = len(report.failed)
    console.print(
        f"Apply complete: {len(report.outcomes) - failed} succeeded, {failed} failed."
        if failed
        else f"Apply complete: {len(report.outcomes)} account(s) done."
    )
    if failed:
        raise typer.Exit(1)


def _outcomes_table(report):  # noqa: ANN001, ANN202
    from rich.table import Table

    from mailops.engine.plan import SYMBOLS

    table = Table(title="Apply results", title_justify="left")
    for column in ("", "account", "status", "test mail", "problem"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes:
        mail = outcome.test_mail
        mail_text = "" if mail is None else (f"sent to {mail.recipient}" if mail.error is None else "failed")
        problem = f"{outcome.error.protocol.upper()} {outcome.error.failure_class.value}" if outcome.error else ""
        table.add_row(
            SYMBOLS[outcome.change.action],
            outcome.change.address,
            outcome.status or "deleted",
            mail_text,
            problem,
        )
    return table


@app.command()
def accounts(
    ctx: typer.Context,
    config_dir: Path | None = ConfigDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the overview as JSON."),
) -> None:
    """The overview: each live account with its status, project links and last test mail."""
    from mailops.engine.overview import account_overview

    settings = _settings(ctx, config_dir)
    with _reported_errors():
        rows = account_overview(_open_store(settings), settings.config_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="E-mail accounts", title_justify="left")
    for column in ("address / projects", "name", "provider", "status", "last test mail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        links = "".join(f"\n  [dim]{code}[/dim]" for code in row["projects"])
        mail = row["last_test_mail"]
        mail_text = (
            "" if mail is None else f"{mail['at']:%Y-%m-%d %H:%M} {'ok' if mail['ok'] else 'failed: ' + mail['error']}"
        )
        table.add_row(row["address"] + links, row["display_name"], row["provider"], row["status"], mail_text)
    Console(highlight=False).print(table)


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

    settings = _settings(ctx, config_dir)
    loaded = _load_or_exit(settings, as_json=False)
    with _reported_errors():
        result = send_test_mail(loaded, _open_store(settings), settings, address, to=to, wait=wait)
    if result.error is not None:
        typer.echo(f"Test mail from {address} to {result.recipient} failed: {result.error.summary()}", err=True)
        typer.echo(f"Remedy: {result.error.remedy}", err=True)
        raise typer.Exit(1)
    arrived = " and arrived in the inbox" if result.arrived else ""
    typer.echo(f"Test mail from {address} sent to {result.recipient}{arrived}.")


@app.command(name="force-unlock")
def force_unlock(
    ctx: typer.Context, lock_id: str = typer.Argument(..., help="The lock ID that apply reported.")
) -> None:
    """Release an apply lock whose holder is gone."""
    settings = _settings(ctx)
    with _reported_errors():
        store = _open_store(settings)
        holder = store.current_lock()
        if not store.release_lock(lock_id):
            held = f"the lock is held as {holder.lock_id}" if holder else "no lock is held"
            typer.echo(f"Error: no lock {lock_id}; {held}.", err=True)
            raise typer.Exit(1)
    typer.echo(f"Released lock {lock_id} ({holder.describe() if holder else ''}).")


@app.command(name="import")
def import_command(ctx: typer.Context, config_dir: Path | None = ConfigDirOption) -> None:
    """Write the live state back into accounts.yaml, keeping comments; adds accounts that exist only live."""
    from mailops.spec.writer import import_live_state

    settings = _settings(ctx, config_dir)
    with _reported_errors():
        report = import_live_state(settings.config_dir, _open_store(settings).accounts())
    for address, fields in report.updated.items():
        typer.echo(f"~ {address}: {', '.join(fields)}")
    for address in report.added:
        typer.echo(f"+ {address} (only in the live state)")
    for address in report.only_in_spec:
        typer.echo(f"  {address} is not in the live state yet; kept")
    target = settings.config_dir / "accounts.yaml"
    typer.echo(f"Wrote {target}." if report.changed else f"{target} already matches the live state.")


@app.command()
def demo(ctx: typer.Context, config_dir: Path | None = ConfigDirOption) -> None:
    """Run validate, plan, apply, accounts and a test mail against an embedded local mail server."""
    from mailops.demo import run_demo

    raise typer.Exit(run_demo(_settings(ctx, config_dir).config_dir, echo=typer.echo))


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
