"""`PlanApply`: the plan as `mailops plan` shows it, in colour, and an Apply button (`engine.apply`).

The plan's text is the command line's (`views.plan.format_plan`); each line is coloured by its
symbol, as Terraform colours its plan. Apply executes exactly the plan shown: it is handed over
as a saved plan, so a spec or live state that moved on since is refused. Deleting an account
needs its address typed, as in the seed; apply's progress (its ``account_done`` hook) feeds a
progress bar.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from mailops.engine.apply import ApplyHooks
from mailops.errors import MailopsError
from mailops.notebook.common import (
    Context,
    Markup,
    Task,
    error_message,
    escape,
    load_settings_once,
    message,
    table,
)

if TYPE_CHECKING:
    from mailops.engine.apply import AccountOutcome, ApplyReport
    from mailops.engine.plan import Plan
    from mailops.settings import Settings

# The symbols' colours: + create, ~ update, - delete, ! needs a person.
COLOURS = {"+": "#1b7f3b", "~": "#9a6700", "-": "#b3261e", "!": "#8250df"}
_SYMBOL_LINE = re.compile(r"^(\s*)([+~!-]) ")
_LEGEND_SYMBOL = re.compile(r"([+~!-]) ")


def plan_html(plan: Plan) -> str:
    """The plan's text (as the command line prints it), each line coloured by its symbol; escaped."""
    from mailops.views.plan import LEGEND, format_plan

    text = format_plan(plan)
    legend_line = LEGEND.splitlines()[1]
    lines = []
    for line in text.split("\n"):
        if line == legend_line:
            lines.append(_LEGEND_SYMBOL.sub(lambda m: _coloured(m.group(1), m.group(1)) + " ", escape(line)))
            continue
        match = _SYMBOL_LINE.match(line)
        if match is None:
            lines.append(escape(line))
            continue
        symbol = match.group(2)
        body = escape(line)
        weight = ";font-weight:bold" if len(match.group(1)) == 2 else ""  # an account's head line
        lines.append(f'<span style="color:{COLOURS[symbol]}{weight}">{body}</span>')
    return '<pre class="mailops-plan" style="white-space:pre-wrap">' + "\n".join(lines) + "</pre>"


def _coloured(text: str, symbol: str) -> str:
    return f'<span style="color:{COLOURS[symbol]};font-weight:bold">{escape(text)}</span>'


class _ProgressHooks(ApplyHooks):
    """Apply's hooks for the widget: the click approved the plan; each account done moves the bar."""

    def __init__(self, widget: PlanApply) -> None:
        self._widget = widget

    def started(self, plan: Plan) -> None:
        counts = plan.counts
        self._widget.progress.max = max(1, counts["add"] + counts["change"] + counts["delete"])
        self._widget.progress.value = 0
        self._widget.progress_label.value = "applying …"

    def account_done(self, outcome: AccountOutcome) -> None:
        progress = self._widget.progress
        progress.value = progress.value + 1
        self._widget.progress_label.value = f"{progress.value} of {progress.max}: {outcome.change.address}"


class PlanApply:
    """Shows the plan in ``plan_view``; ``apply_button`` applies it. A plan that deletes accounts
    needs each address typed into ``confirm_delete`` (separated by commas or spaces); ``force``
    allows deleting more than ``policies.max_delete_fraction``. ``progress`` follows the apply,
    ``outcome`` shows each account's result (after :meth:`wait`); then the plan is made again."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._plan: Plan | None = None
        self.plan_view = widgets.HTML()
        self.refresh_button = widgets.Button(description="Plan again", icon="refresh")
        self.confirm_delete = widgets.Text(
            description="Delete",
            placeholder="type the address of each account to delete",
            layout=widgets.Layout(width="40em"),
        )
        self.force = widgets.Checkbox(
            value=False, description="Allow deleting more than policies.max_delete_fraction", indent=False
        )
        self.apply_button = widgets.Button(description="Apply", button_style="danger", icon="check")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Progress")
        self.progress_label = widgets.Label()
        self.outcome = widgets.HTML()
        # The apply button follows the plan (refresh); "Plan again" waits for a running apply.
        self._task = Task(self._crashed, controls=(self.refresh_button,))
        self.delete_box = widgets.VBox(
            [
                widgets.HTML("<b>This plan deletes accounts.</b> Type the address of each one to delete it."),
                self.confirm_delete,
                self.force,
            ]
        )
        self.view = widgets.VBox(
            [
                widgets.HTML("<b>Plan and apply</b>"),
                self.plan_view,
                self.delete_box,
                widgets.HBox([self.refresh_button, self.apply_button]),
                widgets.HBox([self.progress, self.progress_label]),
                self.outcome,
            ]
        )
        self.refresh_button.on_click(lambda _button: self.refresh())
        self.apply_button.on_click(lambda _button: self._apply())
        self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)

    @property
    def running(self) -> bool:
        return self._task.running

    def wait(self, timeout: float | None = None) -> None:
        """Until the apply is done."""
        self._task.wait(timeout)

    def refresh(self) -> None:
        """Make the plan again from the spec and the live state, as `mailops plan` does."""
        from mailops.engine.plan import Action, plan_for

        self._plan = None
        try:
            context = Context.load(load_settings_once(self._settings))
            plan = plan_for(context.loaded, context.live())
        except MailopsError as exc:
            self.plan_view.value = error_message(exc, "No plan")
            self.apply_button.disabled = True
            self.delete_box.layout.display = "none"
            return
        self._plan = plan
        self.plan_view.value = plan_html(plan)
        self.apply_button.disabled = not plan.has_changes
        self.delete_box.layout.display = None if plan.by_action(Action.DELETE) else "none"

    def _apply(self) -> None:
        from mailops.engine.plan import Action
        from mailops.spec.models import address_key

        if self._task.running or self._plan is None:
            return
        shown_plan = self._plan
        deletes = [change.address for change in shown_plan.by_action(Action.DELETE)]
        typed = {address_key(word) or word.lower() for word in re.split(r"[\s,;]+", self.confirm_delete.value) if word}
        unconfirmed = [address for address in deletes if address not in typed]
        if unconfirmed:
            self.outcome.value = message(
                "error",
                "Not applied: type the address of each account this plan deletes",
                [("Not confirmed", ", ".join(unconfirmed))],
            )
            return
        try:
            context = Context.load(load_settings_once(self._settings))
        except MailopsError as exc:
            self.outcome.value = error_message(exc, "Not applied")
            return
        self.outcome.value = ""
        self.apply_button.disabled = True
        self.progress.value = 0
        self.progress_label.value = "waiting for the apply lock …"
        force = bool(self.force.value)
        hooks = _ProgressHooks(self)

        def work() -> None:
            from mailops.engine.apply import apply

            try:
                report = apply(
                    context.loaded,
                    context.store(create=True),
                    context.settings,
                    # Exactly the plan on the screen: a spec or state that changed since is refused.
                    saved_plan=shown_plan.as_json(),
                    confirmed_deletes=frozenset(deletes),
                    force=force,
                    hooks=hooks,
                )
            except MailopsError as exc:
                self.progress_label.value = ""
                self.outcome.value = error_message(exc, "Not applied")
                self.refresh()
                return
            self.progress_label.value = "done"
            self.confirm_delete.value = ""
            self.outcome.value = outcomes_html(report)
            self.refresh()

        self._task.start(work, name="apply")

    def _crashed(self, exc: BaseException) -> None:
        self.outcome.value = error_message(exc)


def outcomes_html(report: ApplyReport) -> str:
    """Each account's result, the failures with their remedies, and the summary line."""
    from mailops.engine.apply import ApplyResult
    from mailops.engine.plan import SYMBOLS

    if report.result is ApplyResult.NO_CHANGES:
        return message("note", report.plan.summary_line())
    if report.result is ApplyResult.CANCELLED:
        return message("note", "Apply cancelled. Nothing was changed.")
    rows = []
    for outcome in report.outcomes:
        symbol = SYMBOLS[outcome.change.action]
        mail = outcome.test_mail
        mail_text = "" if mail is None else (f"sent to {mail.recipient}" if mail.error is None else "failed")
        problem = f"{outcome.error.protocol.upper()} {outcome.error.failure_class.value}" if outcome.error else ""
        rows.append(
            [
                Markup(_coloured(symbol, symbol)) if symbol in COLOURS else symbol,
                outcome.change.address,
                outcome.status or "deleted",
                mail_text,
                problem.strip(),
            ]
        )
    parts = [table(["", "account", "status", "test mail", "problem"], rows)]
    for outcome in report.failed:
        assert outcome.error is not None
        parts.append(
            message(
                "error",
                f"{outcome.change.address}: {outcome.error.summary()}",
                [("Remedy", outcome.error.remedy.replace("ADDRESS", outcome.change.address))],
            )
        )
    failed = len(report.failed)
    if failed:
        parts.append(message("error", f"Apply complete: {len(report.outcomes) - failed} succeeded, {failed} failed."))
    else:
        parts.append(message("ok", f"Apply complete: {len(report.outcomes)} account(s) done."))
    return "".join(parts)
