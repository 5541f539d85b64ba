"""`ConnectAccount`: the seed's "+ Konto hinzufügen" as a widget, over the library `mailops connect` uses.

Microsoft 365 and Google accounts consent by OAuth (`engine.connect.connect_account`, the
identity check included); the sign-in (device code, or consent URL) appears as a link while
the consent waits on a background thread. An IMAP-SMTP account is tested with the servers
typed in (prefilled from the provider presets as the domain is typed): its password goes into
the secret reference the person chooses, then IMAP and SMTP are logged in to and the test
mail is sent (`engine.verify.verify_account`, as apply does). Recording an account in the
live state stays apply's job; the widget shows the entry to put into accounts.yaml.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from mailops.errors import MailopsError
from mailops.notebook.common import (
    Context,
    Task,
    error_message,
    escape,
    linkified,
    load_settings_once,
    message,
    preformatted,
    shown,
    sized,
)

if TYPE_CHECKING:
    from mailops.engine.connect import ConnectReport
    from mailops.engine.verify import VerifyResult
    from mailops.providers.oauth import ConsentMethod
    from mailops.settings import Settings
    from mailops.spec.models import Account

PROVIDERS = (("Microsoft 365", "microsoft"), ("Google", "google"), ("IMAP-SMTP", "manual"))
ENCRYPTIONS = ("ssl", "starttls", "none")
SECRET_KINDS = (("environment variable", "env"), ("file (relative to the config dir)", "file"))
# The fields of a manual account that the widget sets; the rest keep their defaults.
MANUAL_FIELDS = ("display_name", "username", "password", "imap", "smtp")
_NOT_A_NAME = re.compile(r"[^A-Z0-9_]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CODE = re.compile(r"(enter the code )([A-Za-z0-9-]+)")  # in escaped text: a code is letters and digits


class ConnectAccount:
    """Connect a Microsoft 365, Google or IMAP-SMTP account.

    Set ``provider`` and ``address`` (and for IMAP-SMTP the server fields, ``password`` and the
    secret reference), then press ``connect_button``. The outcome appears in ``outcome`` when
    the background work is done (:meth:`wait`); ``sign_in`` holds the device code or consent
    link meanwhile, and ``cancel_button`` ends that wait (nothing is stored). ``snippet`` holds
    the accounts.yaml entry when the account is not declared as tested. ``reconnect_button``
    shows for an account whose grant died (``needs_reconnect``).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._context: Context | None = None
        # What the widget itself put into a field (the defaults count): a field still holding it is
        # filled again as the address changes, one the person edited is left alone.
        self._filled: dict[str, object] = {
            "imap_port": 993,
            "imap_encryption": "ssl",
            "smtp_port": 587,
            "smtp_encryption": "starttls",
        }
        self.provider = widgets.Dropdown(options=PROVIDERS, value="microsoft", description="Provider", **sized())
        self.address = widgets.Text(description="Address", placeholder="name@example.com", **sized())
        self.display_name = widgets.Text(description="Display name", **sized())
        self.username = widgets.Text(description="Login name", **sized())
        self.imap_host = widgets.Text(description="IMAP server", **sized())
        self.imap_port = widgets.BoundedIntText(value=993, min=1, max=65535, description="port", **sized("10em", "3em"))
        self.imap_encryption = widgets.Dropdown(
            options=ENCRYPTIONS, value="ssl", description="encryption", **sized("16em", "6em")
        )
        self.smtp_host = widgets.Text(description="SMTP server", **sized())
        self.smtp_port = widgets.BoundedIntText(value=587, min=1, max=65535, description="port", **sized("10em", "3em"))
        self.smtp_encryption = widgets.Dropdown(
            options=ENCRYPTIONS, value="starttls", description="encryption", **sized("16em", "6em")
        )
        self.password = widgets.Password(description="Password", **sized())
        self.secret_kind = widgets.Dropdown(options=SECRET_KINDS, value="env", description="Keep it in", **sized())
        self.secret_name = widgets.Text(description="Name / path", placeholder="INFO_PASSWORD", **sized())
        self.preset_note = widgets.HTML()
        self.connect_button = widgets.Button(description="Connect", button_style="primary", icon="plug")
        self.reconnect_button = widgets.Button(description="Reconnect", button_style="warning", icon="refresh")
        self.cancel_button = widgets.Button(description="Cancel", icon="times")  # while a sign-in waits
        self._cancel: threading.Event | None = None
        self.sign_in = widgets.HTML()
        self.outcome = widgets.HTML()
        self.snippet = widgets.HTML()
        self._task = Task(self._crashed, controls=(self.connect_button, self.reconnect_button))
        self.manual_box = widgets.VBox(
            [
                self.display_name,
                self.username,
                widgets.HBox([self.imap_host, self.imap_port, self.imap_encryption]),
                widgets.HBox([self.smtp_host, self.smtp_port, self.smtp_encryption]),
                self.preset_note,
                self.password,
                widgets.HBox([self.secret_kind, self.secret_name]),
            ]
        )
        self.view = widgets.VBox(
            [
                widgets.HTML("<b>Connect an e-mail account</b>"),
                self.provider,
                self.address,
                self.manual_box,
                widgets.HBox([self.connect_button, self.reconnect_button, self.cancel_button]),
                self.sign_in,
                self.outcome,
                self.snippet,
            ]
        )
        self.provider.observe(self._provider_changed, names="value")
        self.address.observe(self._address_changed, names="value")
        self.secret_kind.observe(self._secret_kind_changed, names="value")
        self.connect_button.on_click(lambda _button: self._start(reconnect=False))
        self.reconnect_button.on_click(lambda _button: self._start(reconnect=True))
        self.cancel_button.on_click(lambda _button: self._cancel_sign_in())
        shown(self.manual_box, False)
        shown(self.reconnect_button, False)
        shown(self.cancel_button, False)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)

    @property
    def running(self) -> bool:
        return self._task.running

    def wait(self, timeout: float | None = None) -> None:
        """Until the consent, the logins and the test mail are done (see :meth:`Task.wait`)."""
        self._task.wait(timeout)

    # -- as the person types --------------------------------------------------------------

    def _spec_context(self) -> Context | None:
        """The spec as loaded last (for prefilling while typing); None while it cannot be loaded."""
        if self._context is None:
            try:
                self._context = Context.load(load_settings_once(self._settings))
            except MailopsError:
                return None
        return self._context

    def _provider_changed(self, change: dict[str, Any]) -> None:
        shown(self.manual_box, change["new"] == "manual")
        self._address_changed({"new": self.address.value})

    def _address_changed(self, change: dict[str, Any]) -> None:
        from mailops.spec.models import address_key

        address = address_key(str(change["new"]).strip())
        if address is None:
            shown(self.reconnect_button, False)
            return
        context = self._spec_context()
        declared = context.loaded.spec.account(address) if context is not None else None
        if declared is not None and declared.provider != self.provider.value:
            self.provider.value = declared.provider  # observed: comes back here with it
            return
        shown(self.reconnect_button, context is not None and self._needs_reconnect(context, address))
        if self.provider.value != "manual":
            return
        if declared is not None:
            self._fill_from(declared)
            return
        self._fill("username", address)
        self._fill("display_name", address.partition("@")[0])
        self._fill("secret_name", self._default_secret_name(address, self.secret_kind.value))
        from mailops.providers.presets import preset_for

        preset = preset_for("manual", address)
        if preset is None:
            self.preset_note.value = ""
            return
        for prefix, server in (("imap", preset.imap), ("smtp", preset.smtp)):
            self._fill(f"{prefix}_host", server.host)
            self._fill(f"{prefix}_port", server.port)
            self._fill(f"{prefix}_encryption", server.encryption)
        self.preset_note.value = (
            f'<span style="color:#555">Servers filled from the preset {escape(preset.name)}.</span>'
        )

    def _fill_from(self, account: Account) -> None:
        """The declared entry's settings: what the widget tests is what accounts.yaml says."""
        assert account.imap is not None and account.smtp is not None  # the loader filled them
        values: dict[str, object] = {
            "display_name": account.display_name or "",
            "username": account.username or "",
            "imap_host": account.imap.host,
            "imap_port": account.imap.port,
            "imap_encryption": account.imap.encryption,
            "smtp_host": account.smtp.host,
            "smtp_port": account.smtp.port,
            "smtp_encryption": account.smtp.encryption,
        }
        if account.password is not None:
            kind = "env" if account.password.env is not None else "file"
            values["secret_kind"] = kind
            values["secret_name"] = account.password.env or str(account.password.file)
        for name, value in values.items():
            self._fill(name, value, force=True)
        self.preset_note.value = '<span style="color:#555">Filled from accounts.yaml.</span>'

    def _fill(self, name: str, value: object, *, force: bool = False) -> None:
        """Set a field the person has not changed since the widget last set it."""
        field = getattr(self, name)
        if force or field.value == "" or field.value == self._filled.get(name):
            field.value = value
            self._filled[name] = value

    def _secret_kind_changed(self, change: dict[str, Any]) -> None:
        from mailops.spec.models import address_key

        address = address_key(self.address.value.strip())
        if address is not None:
            self._fill("secret_name", self._default_secret_name(address, change["new"]))

    @staticmethod
    def _default_secret_name(address: str, kind: str) -> str:
        local = address.partition("@")[0]
        if kind == "file":
            return f"secrets/{local}.password"
        return _NOT_A_NAME.sub("_", local.upper()) + "_PASSWORD"

    @staticmethod
    def _needs_reconnect(context: Context, address: str) -> bool:
        from mailops.state.accounts import AccountStatus

        try:
            live = {state.address: state.status for state in context.live().accounts()}
        except MailopsError:
            return False
        return live.get(address.lower()) == AccountStatus.NEEDS_RECONNECT

    # -- on a click ---------------------------------------------------------------------------

    def _start(self, *, reconnect: bool) -> None:
        if self._task.running:
            return
        self.outcome.value = self.sign_in.value = self.snippet.value = ""
        try:
            self._context = context = Context.load(load_settings_once(self._settings))
            actor = context.actor()
        except MailopsError as exc:
            self._discard_password()
            self.outcome.value = error_message(exc)
            return
        from mailops.spec.models import address_key

        address = address_key(self.address.value.strip())
        if address is None:
            self._discard_password()
            self.outcome.value = message("error", f"{self.address.value!r} is not an e-mail address")
            return
        declared = context.loaded.spec.account(address)
        if declared is not None and not actor.may_see(declared.visible_to):
            self._discard_password()
            self.outcome.value = message("error", f"{address} is not visible to {actor.user} (its visible_to)")
            return
        if declared is not None and declared.provider != self.provider.value:
            self._discard_password()
            self.outcome.value = message("error", f"{address} is declared as a {declared.provider} account")
            return
        if self.provider.value == "manual":
            self._start_manual(context, address, declared)
        else:
            self._start_oauth(context, address, declared, reconnect=reconnect)

    def _start_oauth(self, context: Context, address: str, declared: Account | None, *, reconnect: bool) -> None:
        from mailops.providers.base import provider_for

        provider_name = str(self.provider.value)
        if declared is None:
            self.outcome.value = message(
                "error",
                f"{address} is not declared yet: add it to accounts.yaml (below), then press Connect again",
            )
            setup = provider_for(provider_name).missing_setup(context.loaded.spec.oauth)
            entry = {"address": address, "provider": provider_name}
            self.snippet.value = _snippet_html(entry, context, note=setup)
            return
        # Google offers no device flow for mail scopes (as `mailops connect` decides).
        method: ConsentMethod = "browser" if provider_name == "google" else "device-code"
        wanted = declared.delegate or declared.address
        self.sign_in.value = message("note", f"Starting the sign-in as {wanted} …")
        cancel = self._cancel = threading.Event()

        def work() -> None:
            from mailops.engine.connect import connect_account
            from mailops.providers.oauth import ConsentCancelled

            try:
                report = connect_account(
                    context.loaded,
                    context.store(create=True),
                    context.settings,
                    address,
                    method=method,
                    show=lambda text: self._show_sign_in(text, wanted),
                    reconnect=reconnect,
                    cancel=cancel,
                    consented=lambda identity: self._consented(identity),
                )
            except ConsentCancelled:
                self.sign_in.value = ""
                self.outcome.value = message("note", f"The sign-in as {wanted} was cancelled: nothing was stored.")
                return
            except MailopsError as exc:
                self.sign_in.value = ""
                self.outcome.value = error_message(exc, f"{address} is not connected")
                return
            finally:
                shown(self.cancel_button, False)
            self.sign_in.value = ""
            self.outcome.value = _connect_report_html(report)
            shown(self.reconnect_button, report.status == "needs_reconnect")

        self.cancel_button.disabled = False
        shown(self.cancel_button, True)
        if not self._task.start(work, name="connect"):
            shown(self.cancel_button, False)

    def _consented(self, identity: str) -> None:
        """The token is stored: nothing left to cancel; the logins and the test mail follow."""
        self._cancel = None
        shown(self.cancel_button, False)
        self.sign_in.value = message("note", f"Signed in as {identity}; logging in to IMAP and SMTP …")

    def _cancel_sign_in(self) -> None:
        """End the wait for the sign-in: the consent stops within a second or so and stores nothing."""
        cancel = self._cancel  # read once: the consent may end (and clear it) meanwhile
        if cancel is not None and self._task.running:
            cancel.set()
            self.cancel_button.disabled = True
            self.sign_in.value = message("note", "Cancelling the sign-in …")

    def _show_sign_in(self, text: str, wanted: str) -> None:
        """What the consent flow asks the person to do, with its link clickable and the code set apart."""
        cancel = self._cancel
        if cancel is not None and cancel.is_set():
            return  # cancelled before the flow got this far: "Cancelling" stays until it ends
        rendered = _CODE.sub(r"\1<b><code>\2</code></b>", linkified(text))
        self.sign_in.value = (
            f'<div style="border-left:3px solid #1f5f99;padding-left:0.6em">'
            f"<div><b>Sign in as {escape(wanted)}</b></div>"
            f'<div style="white-space:pre-wrap">{rendered}</div>'
            '<div style="color:#555">Waiting for the sign-in (Cancel stops waiting); the result appears here.</div>'
            "</div>"
        )

    def _start_manual(self, context: Context, address: str, declared: Account | None) -> None:
        password = self.password.value
        self._discard_password()  # from here on only the secret reference holds it
        try:
            account = self._manual_account(context, address)
            if password:
                where = _store_secret(account, password, context)
            else:
                where = ""
        except MailopsError as exc:
            self.outcome.value = error_message(exc)
            return
        note = message("note", where) if where else ""
        self.outcome.value = note + message("note", f"Logging in to IMAP and SMTP as {account.username} …")

        def work() -> None:
            from mailops.engine.credentials import credential_context
            from mailops.engine.verify import verify_account

            result = asyncio.run(
                verify_account(
                    account,
                    context=credential_context(context.loaded, context.settings, None),
                    settings=context.settings,
                    executor=None,
                    send_test_mail=True,
                    test_mail_to=context.loaded.spec.policies.test_mail.to,
                )
            )
            self.outcome.value = note + _verify_html(result)
            self.snippet.value = _manual_snippet(account, declared, context)

        self._task.start(work, name="verify")

    def _manual_account(self, context: Context, address: str) -> Account:
        from pydantic import ValidationError

        from mailops.spec.models import Account

        kind = str(self.secret_kind.value)
        raw = {
            "address": address,
            "provider": "manual",
            "display_name": self.display_name.value.strip() or None,
            "username": self.username.value.strip() or None,
            "password": {kind: self.secret_name.value.strip()},
            "imap": {
                "host": self.imap_host.value.strip(),
                "port": int(self.imap_port.value),
                "encryption": self.imap_encryption.value,
            },
            "smtp": {
                "host": self.smtp_host.value.strip(),
                "port": int(self.smtp_port.value),
                "encryption": self.smtp_encryption.value,
            },
        }
        try:
            account = Account.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(step) for step in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)
            )
            raise MailopsError(f"the account cannot be used: {problems}") from None
        missing = [name for name in ("display_name", "username") if getattr(account, name) is None]
        if missing:
            raise MailopsError(f"required for IMAP-SMTP accounts: {', '.join(missing)}")
        policies = context.loaded.spec.policies
        if policies.require_encryption and "none" in (self.imap_encryption.value, self.smtp_encryption.value):
            raise MailopsError("policies.require_encryption is true: choose ssl or starttls for IMAP and SMTP")
        return account

    def _discard_password(self) -> None:
        # The widget's value is synced to the front end and may be saved with the notebook.
        self.password.value = ""

    def _crashed(self, exc: BaseException) -> None:
        self.sign_in.value = ""
        self.outcome.value = error_message(exc)


def _store_secret(account: Account, password: str, context: Context) -> str:
    """Put the password where the account's reference points; what to tell the person about it."""
    from mailops.fileio import atomic_write

    if _CONTROL.search(password):
        raise MailopsError("the password holds a line break or another control character; a password is one line")
    reference = account.password
    assert reference is not None
    if reference.env is not None:
        os.environ[reference.env] = password
        return (
            f"The password is in the environment variable {reference.env} of this notebook's kernel only; "
            "set it wherever mailops runs (CI, the worker) as well."
        )
    path = context.loaded.config_dir / str(reference.file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and not path.is_symlink():
        # atomic_write keeps the mode of a file it replaces: a readable one must be narrowed first.
        path.chmod(0o600)
    atomic_write(path, password + "\n", mode=0o600)
    return f"The password is in {path} (mode 0600)."


def _connect_report_html(report: ConnectReport) -> str:
    consent = ("Consent", f"by {report.identity}, token stored (encrypted)")
    if report.error is not None:
        return message(
            "error",
            f"{report.address} is {report.status}",
            [
                consent,
                ("Class", report.error.failure_class.value),
                ("Server", report.error.summary()),
                ("Remedy", report.error.remedy.replace("ADDRESS", report.address)),
            ],
        )
    mail = report.test_mail
    sent = f"; test mail sent to {mail.recipient}" if mail is not None else ""
    return message("ok", f"{report.address} is connected: IMAP and SMTP log in with XOAUTH2{sent}.", [consent])


def _verify_html(result: VerifyResult) -> str:
    if result.error is not None:
        error = result.error
        return message(
            "error",
            f"{result.address} does not work yet",
            [("Class", error.failure_class.value), ("Server", error.summary()), ("Remedy", error.remedy)],
        )
    mail = result.test_mail
    sent = f"; test mail sent to {mail.recipient}" if mail is not None else ""
    return message("ok", f"{result.address} works: IMAP and SMTP log in{sent}.")


def _manual_snippet(account: Account, declared: Account | None, context: Context) -> str:
    entry = account.model_dump(mode="json", include={"address", "provider", *MANUAL_FIELDS})
    if declared is None:
        return _snippet_html(entry, context, note=None)
    differs = [
        name
        for name in MANUAL_FIELDS
        if account.model_dump(mode="json", include={name}) != declared.model_dump(mode="json", include={name})
    ]
    if not differs:
        return message(
            "note",
            f"{account.address} is declared in accounts.yaml as tested. `mailops apply` (or the plan_apply "
            "notebook) records it in the live state.",
        )
    return _snippet_html(entry, context, note=f"accounts.yaml declares other values for: {', '.join(differs)}")


def _snippet_html(entry: dict[str, Any], context: Context, *, note: str | None) -> str:
    target = Path(context.loaded.config_dir) / "accounts.yaml"
    intro = f"Add this entry under `accounts:` in {target}, then run `mailops plan` and `mailops apply`:"
    if entry.get("provider") != "manual":
        intro = f"Add this entry under `accounts:` in {target}; then connect it here:"
    parts = [f"<div>{escape(intro)}</div>", preformatted(account_yaml(entry))]
    if note:
        parts.insert(0, message("note", note))
    return '<div class="mailops-snippet">' + "".join(parts) + "</div>"


def account_yaml(entry: dict[str, Any]) -> str:
    """``entry`` as an item of ``accounts:``, written as the example spec writes one (servers in flow style)."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    item = CommentedMap()
    for key, value in entry.items():
        if value is None:
            continue
        if isinstance(value, dict):
            nested = CommentedMap((k, v) for k, v in value.items() if v is not None)
            nested.fa.set_flow_style()
            item[key] = nested
        else:
            item[key] = value
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    stream = io.StringIO()
    yaml.dump({"accounts": CommentedSeq([item])}, stream)
    return stream.getvalue()
