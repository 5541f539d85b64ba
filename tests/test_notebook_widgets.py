"""The notebook widgets driven in-process as a person would: values set on their child widgets, buttons
clicked, against the real local servers (Dovecot, aiosmtpd) and the local identity provider. Each test
asserts what the widget then shows."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from ruamel.yaml import YAML
from sqlalchemy import update

from mailops.engine.connect import check_accounts
from mailops.notebook import ConnectAccount, OutboxExplorer, PlanApply, TestMail, visible_text
from mailops.outbox.analysis import filter_frame, load_store
from mailops.outbox.classify import remedy
from mailops.settings import load_settings
from mailops.spec import load_spec
from mailops.state import StateStore
from mailops.state.outbox import ImportedAttempt, NewAttempt, Outbox, OutboxStatus, Outcome
from mailops.state.tables import OutboxRow
from mailops.state.tokens import TokenVault, make_key
from tests.conftest import ServerAccount
from tests.servers import HOST

CLIENT_ID = "mailops-widget-tests"
GOOGLE_CLIENT_ID = "mailops-widget-tests-google"
WAIT = 60  # seconds a background job may take before the test gives up (a hang, not a slow run)


@pytest.fixture
def idp(identity_provider):
    interval, lifetime = identity_provider.device_interval, identity_provider.token_lifetime
    identity_provider.device_interval = 1  # msal polls once a second
    # msal refreshes a token with less than five minutes left: every later login refreshes, as a day later would.
    identity_provider.token_lifetime = 60
    identity_provider.add_client(CLIENT_ID)
    identity_provider.add_client(GOOGLE_CLIENT_ID, public=False, secret="widget-tests-secret")
    yield identity_provider
    identity_provider.device_interval, identity_provider.token_lifetime = interval, lifetime


@pytest.fixture
def env(engine_env: Path, monkeypatch: pytest.MonkeyPatch, idp) -> Path:
    """A working directory with its own state store, a token key, acting as alice."""
    monkeypatch.setenv("MAILOPS_SECRET_KEY", make_key())
    monkeypatch.setenv("MAILOPS_USER", "alice")
    return engine_env


def write_spec(directory: Path, idp, accounts: str, *, projects: str = "", policies: str = "") -> Path:
    """accounts.yaml with ``accounts`` (the first is the default sender), defaults.yaml with alice and bob."""
    config = directory / "config"
    config.mkdir(exist_ok=True)
    first = accounts.split("address: ", 1)[1].split("\n", 1)[0].strip()
    (config / "accounts.yaml").write_text(f"accounts:\n{accounts}{projects}", encoding="utf-8")
    (config / "google.json").write_text(json.dumps(idp.google_client_config(GOOGLE_CLIENT_ID)), encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults: {{email: {first}, sender_name: Test}}\n"
        "employees:\n  alice: {name: Alice, groups: [support-team]}\n  bob: {name: Bob}\n"
        "oauth:\n"
        f"  microsoft: {{client_id: {CLIENT_ID}, authority: '{idp.base_url}', tenant: organizations}}\n"
        "  google: {client_secrets: {file: google.json}}\n" + policies,
        encoding="utf-8",
    )
    return config


def oauth_yaml(mail_servers, address: str, provider: str = "microsoft") -> str:
    imap, smtp = mail_servers.ports("ssl", "starttls")
    return (
        f"  - address: {address}\n    provider: {provider}\n"
        f"    imap: {{host: {HOST}, port: {imap}, encryption: ssl}}\n"
        f"    smtp: {{host: {HOST}, port: {smtp}, encryption: starttls}}\n"
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll until ``condition()`` is truthy (a background job is running); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def device_code(widget: ConnectAccount) -> tuple[str, str]:
    """The verification link and the code the widget shows."""
    shown = wait_for(lambda: re.search(r'href="([^"]+)".*<code>(\w+)</code>', widget.sign_in.value), "the code")
    return html.unescape(shown.group(1)), shown.group(2)


def sign_in_in_browser(widget: ConnectAccount, idp, login: str) -> threading.Thread:
    """The person clicks the consent link and signs in as ``login``; the flow's loopback port gets the code."""
    link = wait_for(lambda: re.search(r'href="([^"]+)"', widget.sign_in.value), "the consent link")
    url = html.unescape(link.group(1))

    def browse() -> None:
        session = requests.Session()
        session.verify, session.trust_env = str(idp.ca_file), False
        answer = session.get(url, params={"login": login}, allow_redirects=False, timeout=10)
        requests.get(answer.headers["Location"], timeout=10)

    thread = threading.Thread(target=browse, daemon=True)
    thread.start()
    return thread


def all_widget_values(root: Any) -> list[str]:
    """Every value and description in a widget tree (what the front end and a saved notebook may hold)."""
    values = []
    for name in ("value", "description", "placeholder", "options"):
        values.append(repr(getattr(root, name, "")))
    for child in getattr(root, "children", ()):
        values.extend(all_widget_values(child))
    return values


# --- ConnectAccount: Microsoft ------------------------------------------------------------------


def test_microsoft_connects_by_device_code_without_blocking_then_reconnects(
    env, mail_servers, idp, new_oauth_account
) -> None:
    address = new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, address))
    widget = ConnectAccount()
    widget.address.value = address
    assert widget.provider.value == "microsoft"
    widget.connect_button.click()
    assert widget.running  # click() returned while the flow waits for the person
    assert widget.connect_button.disabled
    link, code = device_code(widget)
    assert link == f"{idp.base_url}/organizations/device"
    assert f"Sign in as {address}" in visible_text(widget.sign_in)
    idp.approve_device_code(code, address)
    widget.wait(WAIT)
    shown = visible_text(widget.outcome)
    assert f"✔ {address} is connected: IMAP and SMTP log in with XOAUTH2; test mail sent to {address}." in shown
    assert f"Consent: by {address}, token stored (encrypted)" in shown
    assert widget.sign_in.value == ""
    assert not widget.connect_button.disabled
    assert [m["Subject"] for m in mail_servers.users.messages(address)] == [f"mailops test mail for {address}"]

    # The grant dies (a password reset): `check` marks the account, the widget offers Reconnect.
    idp.revoke(address)
    settings = load_settings()
    [checked] = check_accounts(load_spec(settings.config_dir), StateStore.open(settings.state_url), settings)
    assert checked.status == "needs_reconnect"
    again = ConnectAccount()
    assert again.reconnect_button.layout.display == "none"
    again.address.value = address
    assert again.reconnect_button.layout.display is None
    again.reconnect_button.click()
    _, code = device_code(again)
    idp.approve_device_code(code, address)
    again.wait(WAIT)
    assert f"✔ {address} is connected" in visible_text(again.outcome)
    assert again.reconnect_button.layout.display == "none"
    assert StateStore.open(settings.state_url).account(address).status == "connected"


def test_a_sign_in_as_someone_else_stores_nothing_and_says_so(env, mail_servers, idp, new_oauth_account) -> None:
    address, other = new_oauth_account(), new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, address))
    widget = ConnectAccount()
    widget.address.value = address
    widget.connect_button.click()
    _, code = device_code(widget)
    idp.approve_device_code(code, other)
    widget.wait(WAIT)
    shown = visible_text(widget.outcome)
    assert f"✘ {address} is not connected: the sign-in was as {other}, not as {address}: nothing was stored" in shown
    assert StateStore.open(load_settings().state_url).accounts() == []


def test_cancel_ends_the_wait_for_a_device_code_and_stores_nothing(env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, address))
    widget = ConnectAccount()
    assert widget.cancel_button.layout.display == "none"  # nothing to cancel yet
    widget.address.value = address
    widget.connect_button.click()
    _, code = device_code(widget)
    assert widget.cancel_button.layout.display is None and not widget.cancel_button.disabled
    widget.cancel_button.click()
    widget.wait(WAIT)  # msal stops polling within a second; the code would have been valid for minutes
    assert visible_text(widget.outcome) == f"• The sign-in as {address} was cancelled: nothing was stored."
    assert widget.sign_in.value == "" and widget.cancel_button.layout.display == "none"
    assert not widget.connect_button.disabled
    idp.approve_device_code(code, address)  # approved too late: nobody waits for it any more
    store = StateStore.open(load_settings().state_url)
    assert store.accounts() == [] and TokenVault(store, os.environ["MAILOPS_SECRET_KEY"]).consent(address) is None

    # The widget is ready for the next attempt. Once the token is stored there is nothing left to cancel: a click
    # then (while IMAP, SMTP and the test mail are checked) changes nothing.
    shown: list[tuple[str, str | None]] = []

    def signed_in(change: dict) -> None:
        shown.append((visible_text(widget.sign_in), widget.cancel_button.layout.display))
        if "Signed in as" in change["new"]:
            widget.cancel_button.click()

    widget.sign_in.observe(signed_in, names="value")
    widget.connect_button.click()
    _, code = device_code(widget)
    idp.approve_device_code(code, address)
    widget.wait(WAIT)
    assert f"✔ {address} is connected" in visible_text(widget.outcome)
    assert (f"• Signed in as {address}; logging in to IMAP and SMTP …", "none") in shown
    assert not any("Cancelling" in text for text, _ in shown)


def test_cancel_declines_a_google_consent_waiting_on_its_loopback_port(env, mail_servers, idp, new_oauth_account):
    address = new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, address, provider="google"))
    widget = ConnectAccount()
    widget.address.value = address
    widget.connect_button.click()
    link = html.unescape(wait_for(lambda: re.search(r'href="([^"]+)"', widget.sign_in.value), "the link").group(1))
    redirect = parse_qs(urlsplit(link).query)["redirect_uri"][0]
    assert urlsplit(redirect).hostname == "localhost"
    widget.cancel_button.click()
    widget.wait(WAIT)  # the consent waited on its loopback port for up to ten minutes
    assert visible_text(widget.outcome) == f"• The sign-in as {address} was cancelled: nothing was stored."
    with pytest.raises(requests.ConnectionError):  # the loopback port is closed: nobody waits any more
        requests.get(redirect, timeout=5)
    widget.connect_button.click()
    widget.cancel_button.click()  # at once, while the flow may still be setting up
    widget.wait(WAIT)
    assert visible_text(widget.outcome) == f"• The sign-in as {address} was cancelled: nothing was stored."
    assert StateStore.open(load_settings().state_url).accounts() == []


def test_an_undeclared_account_gets_the_entry_to_declare(env, mail_servers, idp, new_oauth_account) -> None:
    declared, address = new_oauth_account(), new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, declared))
    widget = ConnectAccount()
    widget.provider.value = "google"
    widget.address.value = address
    widget.connect_button.click()
    assert not widget.running
    assert f"{address} is not declared yet: add it to accounts.yaml" in visible_text(widget.outcome)
    snippet = visible_text(widget.snippet)
    assert f"Add this entry under `accounts:` in {Path('config') / 'accounts.yaml'}" in snippet
    entry = YAML(typ="safe").load(snippet.split("connect it here:", 1)[1])
    assert entry == {"accounts": [{"address": address, "provider": "google"}]}


def test_google_shows_the_consent_link_and_connects(env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(env, idp, oauth_yaml(mail_servers, address, provider="google"))
    widget = ConnectAccount()
    widget.address.value = address
    assert widget.provider.value == "google"  # taken from accounts.yaml
    widget.connect_button.click()
    browser = sign_in_in_browser(widget, idp, address)
    assert "Open this address in a browser and sign in as" in visible_text(widget.sign_in)
    widget.wait(WAIT)
    browser.join(WAIT)
    assert f"✔ {address} is connected: IMAP and SMTP log in with XOAUTH2" in visible_text(widget.outcome)


# --- ConnectAccount: IMAP-SMTP -------------------------------------------------------------------


def test_server_fields_follow_the_preset_of_the_domain_being_typed(env, mail_servers, idp, new_account) -> None:
    write_spec(env, idp, new_account().yaml(mail_servers))
    widget = ConnectAccount()
    widget.provider.value = "manual"
    assert widget.manual_box.layout.display is None
    for typed in ("info@w", "info@web.d", "info@web.de"):
        widget.address.value = typed
    fields = (widget.imap_host, widget.imap_port, widget.imap_encryption, widget.smtp_host, widget.smtp_port)
    assert [f.value for f in fields] == ["imap.web.de", 993, "ssl", "smtp.web.de", 587]
    assert "preset web.de" in visible_text(widget.preset_note)
    assert (widget.username.value, widget.secret_name.value) == ("info@web.de", "INFO_PASSWORD")
    widget.username.value = "info-login"  # the person's own value stays
    widget.address.value = "info@t-online.de"
    fields = (widget.imap_host, widget.smtp_host, widget.smtp_port, widget.smtp_encryption, widget.username)
    assert [f.value for f in fields] == [
        "secureimap.t-online.de",
        "securesmtp.t-online.de",
        465,
        "ssl",
        "info-login",
    ]
    widget.secret_kind.value = "file"
    assert widget.secret_name.value == "secrets/info.password"


def fill_manual(widget: ConnectAccount, mail_servers, account: ServerAccount) -> None:
    imap_port, smtp_port = mail_servers.ports("ssl", "starttls")
    widget.provider.value = "manual"
    widget.address.value = account.address
    widget.imap_host.value = widget.smtp_host.value = HOST
    widget.imap_port.value, widget.smtp_port.value = imap_port, smtp_port
    widget.imap_encryption.value, widget.smtp_encryption.value = "ssl", "starttls"


def test_the_password_goes_into_the_chosen_file_only_then_login_and_test_mail(
    env, mail_servers, idp, new_account
) -> None:
    declared, account = new_account(), new_account()
    write_spec(env, idp, declared.yaml(mail_servers))
    widget = ConnectAccount()
    fill_manual(widget, mail_servers, account)
    widget.secret_kind.value = "file"
    widget.secret_name.value = "secrets/new.password"
    widget.password.value = account.password
    widget.connect_button.click()
    assert widget.password.value == ""
    widget.wait(WAIT)
    shown = visible_text(widget.outcome)
    secret = Path("config", "secrets", "new.password")  # the config dir as MAILOPS_CONFIG_DIR names it
    assert f"The password is in {secret} (mode 0600)." in shown
    assert f"✔ {account.address} works: IMAP and SMTP log in; test mail sent to {account.address}." in shown
    assert secret.read_text(encoding="utf-8") == account.password + "\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert [m["Subject"] for m in mail_servers.users.messages(account.address)] == [
        f"mailops test mail for {account.address}"
    ]
    entry = YAML(typ="safe").load(visible_text(widget.snippet).split("`mailops apply`:", 1)[1])["accounts"][0]
    assert entry["password"] == {"file": "secrets/new.password"}
    assert entry["imap"] == {"host": HOST, "port": mail_servers.ports("ssl", "starttls")[0], "encryption": "ssl"}
    assert all(account.password not in value for value in all_widget_values(widget.view))
    # The entry, once declared, loads, and the next test reads the password from the file.
    accounts = (env / "config" / "accounts.yaml").read_text(encoding="utf-8")
    (env / "config" / "accounts.yaml").write_text(
        accounts + visible_text(widget.snippet).split("accounts:\n", 1)[1], encoding="utf-8"
    )
    again = ConnectAccount()
    again.provider.value = "manual"
    again.address.value = account.address
    assert (again.secret_kind.value, again.secret_name.value) == ("file", "secrets/new.password")
    again.connect_button.click()
    again.wait(WAIT)
    assert f"✔ {account.address} works" in visible_text(again.outcome)
    assert f"{account.address} is declared in accounts.yaml as tested" in visible_text(again.snippet)


def test_a_refused_login_shows_its_class_and_remedy(env, mail_servers, idp, new_account, monkeypatch) -> None:
    declared = new_account()
    write_spec(env, idp, declared.yaml(mail_servers))
    monkeypatch.setenv("WIDGET_TEST_PASSWORD", "")  # restored (removed) after the test
    widget = ConnectAccount()
    fill_manual(widget, mail_servers, declared)
    widget.address.value = "someone-else@example.com"
    widget.secret_kind.value = "env"
    widget.secret_name.value = "WIDGET_TEST_PASSWORD"
    widget.password.value = "not-the-password"
    widget.connect_button.click()
    widget.wait(WAIT)
    shown = visible_text(widget.outcome)
    assert "environment variable WIDGET_TEST_PASSWORD of this notebook's kernel only" in shown
    assert "✘ someone-else@example.com does not work yet" in shown
    assert "Class: auth" in shown
    assert "Remedy: The server refused the login. Check the username and the password" in shown
    assert os.environ["WIDGET_TEST_PASSWORD"] == "not-the-password"


def test_what_a_person_typed_is_shown_escaped(env, mail_servers, idp, new_account) -> None:
    write_spec(env, idp, new_account().yaml(mail_servers))
    widget = ConnectAccount()
    widget.provider.value = "manual"
    widget.address.value = "<img src=x onerror=alert(1)>@example.com"
    widget.connect_button.click()
    assert "<img" not in widget.outcome.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in widget.outcome.value
    widget.address.value = "shop@example.com"
    widget.imap_host.value = widget.smtp_host.value = HOST
    widget.imap_encryption.value = "none"
    widget.connect_button.click()
    assert "policies.require_encryption is true" in visible_text(widget.outcome)


# --- TestMail ------------------------------------------------------------------------------------


def test_test_mail_waits_for_arrival_and_explains_a_refusal(env, mail_servers, idp, new_account) -> None:
    shop, hidden = new_account(), new_account()
    write_spec(env, idp, shop.yaml(mail_servers) + hidden.yaml(mail_servers, visible_to="[bob]"))
    widget = TestMail()
    assert widget.account.options == (shop.address,)  # alice may not send from the hidden one
    widget.account.value = shop.address
    widget.wait_for_arrival.value = True
    widget.send_button.click()
    widget.wait(WAIT)
    assert (
        visible_text(widget.outcome)
        == f"✔ Test mail from {shop.address} sent to {shop.address} and arrived in the inbox."
    )

    widget.wait_for_arrival.value = False
    widget.recipient.value = "unknown-person@example.com"
    widget.send_button.click()
    widget.wait(WAIT)
    shown = visible_text(widget.outcome)
    assert f"✘ Test mail from {shop.address} to unknown-person@example.com failed" in shown
    assert "Class: recipient_refused" in shown
    assert "Server: SMTP recipient_refused [550 5.1.1]" in shown
    assert "Remedy: The recipient's address is unknown or refused." in shown


def test_an_account_alice_may_not_see_is_not_connected_by_her(env, mail_servers, idp, new_account) -> None:
    hidden = new_account()
    write_spec(env, idp, hidden.yaml(mail_servers, visible_to="[bob]"))
    widget = ConnectAccount()
    widget.address.value = hidden.address
    assert widget.provider.value == "manual"
    widget.connect_button.click()
    assert not widget.running
    assert visible_text(widget.outcome) == f"✘ {hidden.address} is not visible to alice (its visible_to)"


def test_test_mail_needs_to_know_who_acts(env, mail_servers, idp, new_account, monkeypatch) -> None:
    write_spec(env, idp, new_account().yaml(mail_servers))
    monkeypatch.delenv("MAILOPS_USER")
    widget = TestMail()
    assert widget.account.options == ()
    assert "say who acts: --as EMPLOYEE or MAILOPS_USER" in visible_text(widget.outcome)


# --- PlanApply -----------------------------------------------------------------------------------


def test_plan_in_colour_then_apply_with_progress(env, mail_servers, idp, new_account) -> None:
    first, second = new_account(), new_account()
    write_spec(env, idp, first.yaml(mail_servers) + second.yaml(mail_servers))
    widget = PlanApply()
    text = visible_text(widget.plan_view)
    assert text.startswith("mailops will perform the following actions:\n  + create    ~ update in place")
    assert f"  + {first.address} (manual)" in text
    assert text.endswith("Plan: 2 to add, 0 to change, 0 to delete.")
    assert f'<span style="color:#1b7f3b;font-weight:bold">  + {first.address} (manual)</span>' in widget.plan_view.value
    assert widget.delete_box.layout.display == "none"
    widget.apply_button.click()
    widget.wait(WAIT)
    assert (widget.progress.value, widget.progress.max) == (2, 2)
    shown = visible_text(widget.outcome)
    assert f"+ | {first.address} | connected | sent to {first.address} |" in shown
    assert "✔ Apply complete: 2 account(s) done." in shown
    assert visible_text(widget.plan_view) == "No changes. The live state matches the spec."
    assert widget.apply_button.disabled


def test_a_delete_needs_the_address_typed(env, mail_servers, idp, new_account) -> None:
    keep, gone = new_account(), new_account()
    write_spec(
        env, idp, keep.yaml(mail_servers) + gone.yaml(mail_servers), policies="policies: {max_delete_fraction: 1}\n"
    )
    applying = PlanApply()
    applying.apply_button.click()
    applying.wait(WAIT)
    write_spec(env, idp, keep.yaml(mail_servers), policies="policies: {max_delete_fraction: 1}\n")
    widget = PlanApply()
    assert f"  - {gone.address} (manual)  BLOCKED: needs --confirm-delete" in visible_text(widget.plan_view)
    assert widget.delete_box.layout.display is None
    widget.apply_button.click()
    assert not widget.running
    assert f"Not confirmed: {gone.address}" in visible_text(widget.outcome)
    store = StateStore.open(load_settings().state_url)
    assert store.account(gone.address) is not None
    widget.confirm_delete.value = f"  {gone.address.upper()} "
    widget.apply_button.click()
    widget.wait(WAIT)
    assert f"- | {gone.address} | deleted" in visible_text(widget.outcome)
    assert store.account(gone.address) is None


def test_apply_refuses_a_plan_the_spec_moved_away_from(env, mail_servers, idp, new_account) -> None:
    first, second = new_account(), new_account()
    write_spec(env, idp, first.yaml(mail_servers))
    widget = PlanApply()
    write_spec(env, idp, first.yaml(mail_servers) + second.yaml(mail_servers))
    widget.apply_button.click()
    widget.wait(WAIT)
    assert "Not applied: the spec changed since the plan was made" in visible_text(widget.outcome)
    assert f"+ {second.address}" in visible_text(widget.plan_view)  # made again from the spec as it is now
    assert StateStore.open(load_settings().state_url).accounts() == []


# --- OutboxExplorer ------------------------------------------------------------------------------

SHOP, INFO, HIDDEN = "shop@example.com", "info@example.com", "hidden@example.com"
EXPLORER_SPEC = (
    "".join(
        f"  - {{address: {address}, provider: manual, display_name: x, username: x, password: {{env: X}},"
        f" imap: {{host: imap.example.com, port: 993, encryption: ssl}},"
        f" smtp: {{host: smtp.example.com, port: 587, encryption: starttls}}{extra}}}\n"
        for address, extra in ((SHOP, ""), (INFO, ""), (HIDDEN, ", visible_to: [bob]"))
    ),
    "projects:\n  SHOP: {email: shop@example.com}\n",
)


def write_outbox(store: StateStore) -> None:
    """Seven attempts: six of alice's two accounts (one imported), one of the account she may not see."""
    outbox = Outbox(store)
    day = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    mails = [
        (SHOP, "SHOP", ["kunde@gmx.de"], ["office@example.com"], ["archiv@example.com"], "sent", None, 0),
        (SHOP, "SHOP", ["unknown@gmx.de"], [], [], "failed", "recipients_failed", 0),
        (SHOP, None, ["a@web.de"], [], [], "failed", "mailbox_full", 1),
        (INFO, None, ["b@web.de"], [], [], "sent", None, 1),
        (INFO, None, ["<b>x</b>@web.de"], [], [], "failed", "recipients_failed", 2),
        (HIDDEN, None, ["c@gmx.de"], [], [], "failed", "policy_rejection", 2),
    ]
    for number, (account, project, to, cc, bcc, status, error_class, days) in enumerate(mails):
        [entry] = outbox.queue(
            [
                NewAttempt(
                    account=account,
                    sender=account,
                    sender_name="",
                    to=to,
                    cc=cc,
                    bcc=bcc,
                    subject=f"<i>Mail {number}</i>",
                    preview="",
                    message_id=f"<m{number}@example.com>",
                    project=project,
                )
            ]
        )
        reply = f"550 5.1.1 <{to[0]}>: Recipient address rejected" if status == "failed" else None
        outbox.finish([(entry, Outcome(OutboxStatus(status), reply=reply, error_class=error_class))])
        with store.session() as session:
            moment = day + dt.timedelta(days=days, minutes=number)
            session.execute(update(OutboxRow).where(OutboxRow.id == entry).values(created_at=moment))
    # A failure from another system's log, imported.
    outbox.record_imported(
        [
            ImportedAttempt(
                key="seed-1",
                created_at=day + dt.timedelta(days=3),
                sender=INFO,
                to=["d@t-online.de"],
                cc=[],
                bcc=[],
                subject="Imported",
                status=OutboxStatus.FAILED,
                reply="451 4.7.1 Try again later",
                smtp_code=451,
                enhanced_code="4.7.1",
                error_class="throttled",
            )
        ]
    )


@pytest.fixture
def outbox_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state store with the outbox of `write_outbox`; the notebook acts as alice (no servers needed)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILOPS_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("MAILOPS_CONFIG_DIR", "config")
    monkeypatch.setenv("MAILOPS_USER", "alice")
    config = tmp_path / "config"
    config.mkdir()
    (config / "accounts.yaml").write_text(f"accounts:\n{EXPLORER_SPEC[0]}{EXPLORER_SPEC[1]}", encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults: {{email: {SHOP}, sender_name: Shop}}\nemployees:\n  alice: {{name: Alice}}\n  bob: {{name: Bob}}\n",
        encoding="utf-8",
    )
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", create=True)
    write_outbox(store)
    yield tmp_path


def test_the_explorer_shows_what_alice_may_see_and_follows_the_filters(outbox_env: Path) -> None:
    explorer = OutboxExplorer(page_size=3)
    assert explorer.rows == 6  # the hidden account's mail is not loaded at all
    assert [value for _, value in explorer.account.options] == [None, INFO, SHOP]
    summary = visible_text(explorer.summary).splitlines()
    assert summary[0] == "6 mails: 2 sent, 4 failed (66.7% failed)"
    assert summary[1:] == [
        "class | failures | share | remedy",
        f"recipients_failed | 2 | 50.0% | {remedy('recipients_failed').short}",
        f"mailbox_full | 1 | 25.0% | {remedy('mailbox_full').short}",
        f"throttled | 1 | 25.0% | {remedy('throttled').short}",
    ]
    charts = (explorer.class_chart, explorer.rate_chart, explorer.domain_chart, explorer.account_chart)
    assert all(bytes(chart.value).startswith(b"<svg") and b"no data" not in bytes(chart.value) for chart in charts)

    rows = visible_text(explorer.table).splitlines()
    assert rows[0] == "# | time | account | project | status | to | cc | bcc | subject | class | remedy"
    assert rows[1].startswith("7 | 2026-03-05 10:00 | info@example.com |  | failed | d@t-online.de |  |  | Imported |")
    assert rows[1].endswith(
        "| throttled | The server is holding this sender back for now: send again later, spread bulk mail."
    )
    assert "&lt;b&gt;x&lt;/b&gt;@web.de" in explorer.table.value and "<b>x</b>" not in explorer.table.value
    assert "&lt;i&gt;Mail" in explorer.table.value and "<i>" not in explorer.table.value
    assert explorer.page_label.value == "1–3 of 6 attempts"
    explorer.next_button.click()
    assert explorer.page_label.value == "4–6 of 6 attempts"
    assert explorer.next_button.disabled
    assert (
        visible_text(explorer.table)
        .splitlines()[3]
        .startswith(
            f"1 | 2026-03-02 10:00 | {SHOP} | SHOP | sent | kunde@gmx.de | office@example.com | archiv@example.com |"
        )
    )

    explorer.status.value = "failed"
    explorer.domain.value = "WEB.de"
    assert explorer.rows == 2
    assert visible_text(explorer.summary).splitlines()[0] == "2 mails: 0 sent, 2 failed (100.0% failed)"
    explorer.project.value = "SHOP"
    assert explorer.rows == 0
    assert visible_text(explorer.table) == "• No attempt."
    assert b"no data" in bytes(explorer.class_chart.value)
    explorer.project.value = ""  # mails without a project
    explorer.start.value = dt.date(2026, 3, 4)
    explorer.end.value = dt.date(2026, 3, 4)
    assert explorer.rows == 1

    explorer.selected.value = explorer.selected.options[0][1]
    detail = visible_text(explorer.detail)
    assert "to | <b>x</b>@web.de" in detail
    assert "server reply | 550 5.1.1 <<b>x</b>@web.de>: Recipient address rejected" in detail
    assert "remedy | " in detail and "<b>x</b>" not in explorer.detail.value


def test_the_filtered_rows_export_to_csv(outbox_env: Path) -> None:
    explorer = OutboxExplorer()
    explorer.account.value = SHOP
    explorer.export_path.value = str(outbox_env / "shop.csv")
    explorer.export_button.click()
    assert visible_text(explorer.export_outcome) == f"✔ Wrote 3 attempt(s) to {outbox_env / 'shop.csv'}."
    import pandas as pd

    exported = pd.read_csv(outbox_env / "shop.csv")
    assert list(exported["to"]) == ["kunde@gmx.de", "unknown@gmx.de", "a@web.de"]
    assert list(exported["cc"].fillna("")) == ["office@example.com", "", ""]
    assert list(exported["bcc"].fillna("")) == ["archiv@example.com", "", ""]
    assert exported["remedy"].fillna("").tolist()[2].startswith("The recipient's mailbox is full")
    assert not list(outbox_env.glob(".shop.csv.*"))  # no temp file left by the atomic write


def test_a_frame_handed_in_is_limited_to_what_the_user_may_see(outbox_env: Path) -> None:
    settings = load_settings()
    everything = load_store(StateStore.open(settings.state_url, create=False))
    assert len(everything) == 7
    assert len(filter_frame(everything, accounts=[HIDDEN])) == 1
    shuffled = everything.sample(frac=1, random_state=3)  # as an export or a seed log may come
    explorer = OutboxExplorer(shuffled)
    assert explorer.rows == 6
    numbers = [line.split(" | ")[0] for line in visible_text(explorer.table).splitlines()[1:]]
    assert numbers == ["7", "5", "4", "3", "2", "1"]  # newest first


def test_the_store_explorer_shows_what_the_frame_explorer_shows_for_each_filter(outbox_env: Path) -> None:
    """The explorer counts the store in the database; on the loaded frame it filters in memory: each filter change
    must show the same figures, pages and details, and export the same rows."""
    settings = load_settings()
    store = StateStore.open(settings.state_url, create=False)
    counted = OutboxExplorer(page_size=2)
    loaded = OutboxExplorer(load_store(store), page_size=2)  # alice's accounts, limited as the store's are
    changes: list[tuple[str, object]] = [
        ("status", "failed"),
        ("domain", "web.de"),
        ("domain", ""),
        ("account", SHOP),
        ("project", ""),
        ("status", None),
        ("project", "SHOP"),
        ("start", dt.date(2026, 3, 3)),
        ("account", None),
        ("project", None),
        ("error_class", "throttled"),
        ("end", dt.date(2026, 3, 4)),
        ("error_class", None),
    ]

    def shown(explorer: OutboxExplorer) -> tuple[object, ...]:
        return (
            explorer.rows,
            visible_text(explorer.summary),
            visible_text(explorer.table),
            explorer.page_label.value,
            [label for label, _ in explorer.selected.options],
        )

    assert shown(counted) == shown(loaded)
    for name, value in changes:
        for explorer in (counted, loaded):
            getattr(explorer, name).value = value
        assert shown(counted) == shown(loaded), (name, value)
        if counted.selected.options:
            for explorer in (counted, loaded):
                explorer.selected.value = explorer.selected.options[-1][1]
            assert visible_text(counted.detail) == visible_text(loaded.detail)
        if not counted.next_button.disabled:
            for explorer in (counted, loaded):
                explorer.next_button.click()
            assert shown(counted) == shown(loaded), (name, value, "the next page")
    # Back to every attempt of the period: the newest of the store's six first.
    for explorer in (counted, loaded):
        explorer.end.value = None
        explorer.start.value = None
    assert counted.rows == 6 and visible_text(counted.table).splitlines()[1].startswith("7 | 2026-03-05 10:00 |")
    for explorer, name in ((counted, "counted.csv"), (loaded, "loaded.csv")):
        explorer.status.value = "failed"
        explorer.export_path.value = str(outbox_env / name)
        explorer.export_button.click()
    assert (outbox_env / "counted.csv").read_bytes() == (outbox_env / "loaded.csv").read_bytes()
