"""`mailops plan`, `apply`, `import` and `force-unlock`: reconciling the spec with the live state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mailops.cli.app import app
from mailops.cli.common import (
    ConfigDirOption,
    fail,
    load_spec_or_exit,
    open_store,
    read_state,
    reported_errors,
    settings_of,
)

# A saved plan of 10,000 accounts is a few MiB; anything far larger is not a plan.
MAX_PLAN_FILE_BYTES = 256 * 1024 * 1024


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
    from mailops.engine.plan import plan_for
    from mailops.views.plan import format_plan

    settings = settings_of(ctx, config_dir)
    loaded = load_spec_or_exit(settings, as_json=as_json)
    with reported_errors(as_json=as_json):
        the_plan = plan_for(loaded, read_state(settings))
    if out is not None:
        with reported_errors(as_json=as_json):
            the_plan.save(out)
    typer.echo(json.dumps(the_plan.as_json(), indent=2, sort_keys=True) if as_json else format_plan(the_plan))
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


def read_saved_plan(path: Path) -> dict[str, Any]:
    """The JSON object that `mailops plan --out` wrote, or an error that says what the file is instead."""
    from mailops.fileio import decode_utf8, read_bytes

    with reported_errors():
        raw = read_bytes(path, limit=MAX_PLAN_FILE_BYTES, what="plan file")
    try:
        saved = json.loads(decode_utf8(raw))
        json.dumps(saved)  # the digest check writes it again: a nesting that only just loads fails there
    except ValueError as exc:  # invalid JSON or UTF-8, or a number too long to convert
        fail(f"plan file {path} is not a saved plan: {exc}")
    except RecursionError:
        fail(f"plan file {path} is not a saved plan: nested too deeply")
    if not isinstance(saved, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
        got = "null" if saved is None else kind.get(type(saved), type(saved).__name__)
        fail(f"plan file {path} is not a saved plan: expected a JSON object, got {got}")
    return saved


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
    from rich.console import Console

    from mailops.cli.apply_view import TerminalHooks, print_outcomes
    from mailops.engine.apply import EXIT_INTERRUPTED, ApplyResult, apply

    settings = settings_of(ctx, config_dir)
    saved = read_saved_plan(plan_file) if plan_file is not None else None
    loaded = load_spec_or_exit(settings, as_json=False)
    console = Console(highlight=False)
    hooks = TerminalHooks(console, ask=not auto_approve and saved is None)
    with reported_errors():
        store = open_store(settings, create=True)
        try:
            report = apply(
                loaded,
                store,
                settings,
                saved_plan=saved,
                confirmed_deletes=frozenset(a.lower() for a in confirm_delete),
                force=force,
                hooks=hooks,
            )
        finally:
            hooks.stop()
    if report.result is ApplyResult.NO_CHANGES:
        typer.echo(report.plan.summary_line())
        return
    if report.result is ApplyResult.CANCELLED:
        typer.echo("Apply cancelled. Nothing was changed.")
        return
    print_outcomes(console, report)
    if report.result is ApplyResult.INTERRUPTED:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(1)


@app.command(name="import")
def import_command(ctx: typer.Context, config_dir: Path | None = ConfigDirOption) -> None:
    """Write the live state back into accounts.yaml, keeping comments; adds accounts that exist only live."""
    from mailops.engine.importer import import_live_state

    settings = settings_of(ctx, config_dir)
    with reported_errors():
        report = import_live_state(settings.config_dir, read_state(settings).accounts())
    for address, fields in report.updated.items():
        typer.echo(f"~ {address}: {', '.join(fields)}")
    for address in report.added:
        typer.echo(f"+ {address} (only in the live state)")
    for address in report.only_in_spec:
        typer.echo(f"  {address} is not in the live state yet; kept")
    target = settings.config_dir / "accounts.yaml"
    typer.echo(f"Wrote {target}." if report.changed else f"{target} already matches the live state.")


@app.command(name="force-unlock")
def force_unlock(
    ctx: typer.Context, lock_id: str = typer.Argument(..., help="The lock ID that apply reported.")
) -> None:
    """Release an apply lock whose holder is gone."""
    settings = settings_of(ctx)
    with reported_errors():
        store = open_store(settings, create=False)
        holder = store.current_lock()
        if not store.release_lock(lock_id):
            held = f"the lock is held as {holder.lock_id}" if holder else "no lock is held"
            fail(f"no lock {lock_id}; {held}.")
    typer.echo(f"Released lock {lock_id} ({holder.describe() if holder else ''}).")
