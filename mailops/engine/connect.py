"""Connecting OAuth accounts (consent, identity check, token stored) and checking every live account.

`connect` is what a person does once per OAuth mailbox (and `reconnect` when its grant
died); `check` is what cron or monitoring runs: it logs in to every live account,
refreshes its token, and says which ones need a person.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mailops.engine.apply import status_after
from mailops.engine.credentials import credential_context
from mailops.engine.plan import desired_settings
from mailops.engine.verify import TestMailResult, verify_account
from mailops.errors import MailopsError
from mailops.providers.base import provider_for
from mailops.providers.oauth import ConsentMethod, OAuthProvider, Show
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.state.accounts import AccountStatus
from mailops.state.store import StateStore
from mailops.state.tokens import cipher_for
from mailops.transport.failures import TransportError


@dataclass(frozen=True)
class ConnectReport:
    address: str
    identity: str  # who consented
    status: str
    error: TransportError | None
    test_mail: TestMailResult | None


def connect_account(
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    address: str,
    *,
    method: ConsentMethod,
    show: Show,
    reconnect: bool = False,
    cancel: threading.Event | None = None,
    consented: Callable[[str], None] | None = None,
) -> ConnectReport:
    """Consent for ``address``, store its token, then verify IMAP and SMTP and send the test mail.

    A sign-in as anyone but the declared address (or its aliases, or the delegate of a
    shared mailbox) stores nothing; so does setting ``cancel`` while the consent waits for the
    sign-in (:class:`~mailops.providers.oauth.ConsentCancelled`). ``consented`` hears the identity
    once its token is stored: from then on there is nothing left to cancel.
    """
    account = loaded.spec.account(address)
    if account is None:
        raise MailopsError(f"{address!r} is not an account in {loaded.config_dir}; declare it first")
    provider = provider_for(account.provider)
    if not isinstance(provider, OAuthProvider):
        raise MailopsError(
            f"{account.address} is a {account.provider} account: it logs in with its password (`mailops apply`)"
        )
    live = store.account(account.address)
    if reconnect and live is None:
        raise MailopsError(f"{account.address} is not connected yet; run `mailops connect {account.address}`")
    cipher_for(settings.token_key())  # no key: say how to make one before anyone signs in
    context = credential_context(loaded, settings, store)
    identity = provider.connect(account, context, method=method, show=show, cancel=cancel)
    if consented is not None:
        consented(identity)
    result = asyncio.run(
        verify_account(
            account,
            context=context,
            settings=settings,
            executor=None,
            send_test_mail=True,
            test_mail_to=loaded.spec.policies.test_mail.to,
        )
    )
    status = status_after(result.error)
    mail = result.test_mail
    with store.locked(wait=settings.lock_wait):  # apply writes accounts too
        store.record_account(
            account.address,
            account.provider,
            desired_settings(account),
            status,
            verified=True,
            error_class=result.error.failure_class.value if result.error else None,
            error=result.error.summary() if result.error else None,
            test_mail=(mail.recipient, mail.error.summary() if mail.error else None) if mail else None,
        )
    return ConnectReport(account.address, identity, status, result.error, mail)


@dataclass(frozen=True)
class CheckResult:
    address: str
    status: str
    error: TransportError | None = None
    fix: str = ""  # what a person must do, when anything

    @property
    def ok(self) -> bool:
        return self.status == AccountStatus.CONNECTED


def check_accounts(loaded: LoadedSpec, store: StateStore, settings: Settings) -> list[CheckResult]:
    """Log in to every live account (refreshing OAuth tokens) and record what was found."""
    return asyncio.run(_check_all(loaded, store, settings))


async def _check_all(loaded: LoadedSpec, store: StateStore, settings: Settings) -> list[CheckResult]:
    context = credential_context(loaded, settings, store)
    semaphore = asyncio.Semaphore(settings.concurrency)
    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="mailops-check") as executor:

        async def check(address: str, status: str) -> CheckResult:
            account = loaded.spec.account(address)
            if account is None:
                return CheckResult(address, status, fix="not in the spec any more: `mailops apply` deletes it")
            if status == AccountStatus.PENDING_CONSENT:
                return CheckResult(address, status, fix=f"run `mailops connect {address}`")
            async with semaphore:
                result = await verify_account(
                    account, context=context, settings=settings, executor=executor, send_test_mail=False
                )
            new_status = status_after(result.error)
            error = result.error
            store.set_status(
                address,
                new_status,
                error_class=error.failure_class.value if error else None,
                error=error.summary() if error else None,
            )
            fix = error.remedy.replace("ADDRESS", address) if error is not None else ""
            return CheckResult(address, new_status, error, fix)

        return list(await asyncio.gather(*(check(state.address, state.status) for state in store.accounts())))
