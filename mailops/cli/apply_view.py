"""What `mailops apply` shows on a terminal: the plan and its question, progress, and the results."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mailops.cli.common import fail
from mailops.engine.apply import EXIT_INTERRUPTED, AccountOutcome, ApplyHooks, ApplyReport, ApplyResult
from mailops.engine.plan import SYMBOLS, Plan
from mailops.views.plan import format_plan
from mailops.views.tables import Column, records


class TerminalHooks(ApplyHooks):
    """Apply's hooks on a terminal: the plan, a yes/no question, a progress bar (transient)."""

    def __init__(self, console: Console, *, ask: bool):
        self.console, self.ask = console, ask
        self.showing = False
        self.progress = Progress(
            TextColumn("[bold]apply"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("", total=0)

    def approve(self, the_plan: Plan) -> bool:
        self.console.print(format_plan(the_plan), markup=False)
        if not self.ask:
            return True
        if not sys.stdin.isatty():
            fail("not applying without approval; pass --auto-approve in non-interactive runs.")
        return typer.confirm("Apply these changes?")

    def started(self, the_plan: Plan) -> None:
        counts = the_plan.counts
        self.progress.update(self.task, total=counts["add"] + counts["change"] + counts["delete"])
        self.progress.start()
        self.showing = True

    def stop(self) -> None:
        if self.showing:
            self.progress.stop()

    def account_done(self, outcome: AccountOutcome) -> None:
        self.progress.update(self.task, advance=1, description=outcome.change.address)

    def stopping_now(self) -> None:
        self.stop()
        self.console.print(
            "Stopped at once. Accounts already done are stored; those that were running are not: "
            "run `mailops apply` again.",
            markup=False,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # Threads blocked in a login cannot be interrupted; waiting for them is what the user refused.
        os._exit(EXIT_INTERRUPTED)

    def interrupted(self) -> None:
        self.progress.console.print(
            "Interrupted: no further account is started; waiting for those running to finish "
            "(Ctrl-C again to stop at once).",
            markup=False,
        )


def print_outcomes(console: Console, report: ApplyReport) -> None:
    rows = []
    for outcome in report.outcomes:
        mail = outcome.test_mail
        mail_text = "" if mail is None else (f"sent to {mail.recipient}" if mail.error is None else "failed")
        problem = f"{outcome.error.protocol.upper()} {outcome.error.failure_class.value}" if outcome.error else ""
        rows.append(
            (SYMBOLS[outcome.change.action], outcome.change.address, outcome.status or "deleted", mail_text, problem)
        )
    columns = [Column(""), Column("account", key=True), Column("status"), Column("test mail"), Column("problem")]
    if rows:
        console.print(records(console, "Apply results", columns, rows))
    for outcome in report.failed:
        assert outcome.error is not None
        # Full text, unwrapped, so CI logs can be searched for it.
        console.print(f"{outcome.change.address}: {outcome.error.summary()}", soft_wrap=True, markup=False)
        console.print(f"  Remedy: {outcome.error.remedy}", soft_wrap=True, markup=False)
    failed = len(report.failed)
    done = len(report.outcomes) - failed
    if report.result is ApplyResult.INTERRUPTED:
        waiting = ", ".join(change.address for change in report.not_started)
        console.print(
            f"Apply interrupted: {done} succeeded, {failed} failed, {len(report.not_started)} not started "
            f"({waiting}). Each finished account is stored; run `mailops apply` again to do the rest.",
            soft_wrap=True,
            markup=False,
        )
    elif failed:
        console.print(f"Apply complete: {done} succeeded, {failed} failed.", markup=False)
    else:
        console.print(f"Apply complete: {len(report.outcomes)} account(s) done.", markup=False)
