"""`TestMail`: send a test mail from an account now, as `mailops test-mail` does (`engine.testmail`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from mailops.errors import MailopsError
from mailops.notebook.common import Context, Task, error_message, load_settings_once, message, sized

if TYPE_CHECKING:
    from mailops.engine.verify import TestMailResult
    from mailops.settings import Settings


class TestMail:
    """Pick an account (those the acting user may see), a recipient and whether to wait until the
    mail is in the inbox, then press ``send_button``; ``outcome`` shows the result with the
    failure's class and remedy once :meth:`wait` returns."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self.account = widgets.Dropdown(options=[], description="Account", **sized())
        self.recipient = widgets.Text(description="To", placeholder="the account itself", **sized())
        self.wait_for_arrival = widgets.Checkbox(
            value=False, description="Wait until it has arrived in the inbox", indent=False
        )
        self.send_button = widgets.Button(description="Send test mail", button_style="primary", icon="envelope")
        self.outcome = widgets.HTML()
        self._task = Task(self._crashed, controls=(self.send_button,))
        self.view = widgets.VBox(
            [
                widgets.HTML("<b>Send a test mail</b>"),
                self.account,
                self.recipient,
                self.wait_for_arrival,
                self.send_button,
                self.outcome,
            ]
        )
        self.send_button.on_click(lambda _button: self._send())
        self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)

    @property
    def running(self) -> bool:
        return self._task.running

    def wait(self, timeout: float | None = None) -> None:
        """Until the test mail is sent (and, when asked, has arrived)."""
        self._task.wait(timeout)

    def refresh(self) -> None:
        """List the declared accounts the acting user may see (after the spec changed)."""
        try:
            context = Context.load(load_settings_once(self._settings))
            actor = context.actor()
        except MailopsError as exc:
            self.account.options = []
            self.outcome.value = error_message(exc)
            return
        chosen = self.account.value
        addresses = [a.address for a in context.loaded.spec.accounts if actor.may_see(a.visible_to)]
        self.account.options = addresses
        if chosen in addresses:
            self.account.value = chosen
        policy = context.loaded.spec.policies.test_mail.to
        self.recipient.placeholder = "the account itself" if policy == "self" else policy

    def _send(self) -> None:
        if self._task.running:
            return
        self.outcome.value = ""
        address = self.account.value
        if not address:
            self.outcome.value = message("error", "choose the account that sends")
            return
        try:
            context = Context.load(load_settings_once(self._settings))
            context.actor()  # the page acts for someone, as it lists the accounts they may see
        except MailopsError as exc:
            self.outcome.value = error_message(exc)
            return
        recipient = self.recipient.value.strip() or None
        wait = bool(self.wait_for_arrival.value)
        self.outcome.value = message("note", f"Sending a test mail from {address} …")

        def work() -> None:
            from mailops.engine.testmail import send_test_mail

            try:
                store = context.store(create=False)
                user = context.settings.user
                result = send_test_mail(context.loaded, store, context.settings, user, address, to=recipient, wait=wait)
            except MailopsError as exc:
                self.outcome.value = error_message(exc)
                return
            self.outcome.value = _result_html(address, result)

        self._task.start(work, name="test-mail")

    def _crashed(self, exc: BaseException) -> None:
        self.outcome.value = error_message(exc)


def _result_html(address: str, result: TestMailResult) -> str:
    if result.error is None:
        arrived = " and arrived in the inbox" if result.arrived else ""
        return message("ok", f"Test mail from {address} sent to {result.recipient}{arrived}.")
    error = result.error
    return message(
        "error",
        f"Test mail from {address} to {result.recipient} failed",
        [
            ("Class", error.failure_class.value),
            ("Server", error.summary()),
            ("Remedy", error.remedy.replace("ADDRESS", address)),
        ],
    )
