"""The worker's pass over the accounts: which ones it works on, concurrently, each failure kept to its account.

An account is worked on when the spec enables its ticket import, archive or auto-reply and the
live state has it applied and connected. After its import, an archiving account's retention is
applied (also when the import failed: retention does not wait for a mail server). Accounts run
at the same time, at most ``MAILOPS_CONCURRENCY`` of them (imapclient is synchronous: one thread
each); whatever goes wrong with one account is reported as its classified failure and never
stops the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from mailops.engine.credentials import credential_context
from mailops.errors import MailopsError, quoted
from mailops.providers.base import CredentialContext
from mailops.runtime.archive import RetentionReport, purge_expired
from mailops.runtime.rawstore import RawStore, message_dir_of
from mailops.runtime.ticket_import import ImportReport, import_mail
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.spec.models import Account
from mailops.state.accounts import AccountStatus
from mailops.state.store import StateStore
from mailops.transport.failures import FailureClass, TransportError


@dataclass(frozen=True)
class AccountRun:
    """How one account's pass went: a report, or the failure that ended it, or why there was nothing to do."""

    address: str
    report: ImportReport | None = None
    error: TransportError | None = None
    idle: str | None = None  # nothing to do, and why (not a failure)
    retention: RetentionReport | None = None  # the archive's purge, where the account archives with a limit

    @property
    def ok(self) -> bool:
        return self.error is None


class UnknownAccount(MailopsError):
    """``--account`` names an address that the spec does not declare."""


def chosen_accounts(loaded: LoadedSpec, addresses: Sequence[str]) -> list[Account]:
    """The accounts ``--account`` names (all declared ones when none), before anything runs."""
    spec = loaded.spec
    if not addresses:
        return list(spec.accounts)
    chosen: dict[str, Account] = {}
    for address in addresses:
        account = spec.account(address)
        if account is None:
            raise UnknownAccount(f"{quoted(address)} is not an account declared in the spec")
        chosen[account.address.lower()] = account
    return list(chosen.values())


def run_once(
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    *,
    addresses: Sequence[str] = (),
    stop: threading.Event | None = None,
    on_done: Callable[[AccountRun], None] | None = None,
) -> list[AccountRun]:
    """One pass over the chosen accounts; one :class:`AccountRun` each, in spec order.

    Without ``addresses`` the accounts with ticket import, archive or auto-reply enabled are chosen,
    and the others are left out silently; a named account with all three off is reported idle.
    ``on_done`` hears of each account as it finishes.
    """
    named = bool(addresses)
    accounts = [account for account in chosen_accounts(loaded, addresses) if named or worked_on(account)]
    context = credential_context(loaded, settings, store)
    raw_store = RawStore(message_dir_of(settings))
    lock = threading.Lock()

    def work(account: Account) -> AccountRun:
        outcome = _run_account(account, loaded, store, raw_store, settings, context, stop)
        if on_done is not None:
            with lock:
                on_done(outcome)
        return outcome

    if not accounts:
        return []
    with ThreadPoolExecutor(
        max_workers=min(settings.concurrency, len(accounts)), thread_name_prefix="mailops-worker"
    ) as executor:
        return list(executor.map(work, accounts))


def worked_on(account: Account) -> bool:
    """Whether the worker has anything to do for ``account``."""
    return account.ticket.enabled or account.archive.enabled or account.autoreply.enabled


def _run_account(
    account: Account,
    loaded: LoadedSpec,
    store: StateStore,
    raw_store: RawStore,
    settings: Settings,
    context: CredentialContext,
    stop: threading.Event | None,
) -> AccountRun:
    address = account.address
    if not worked_on(account):
        return AccountRun(address, idle="ticket import, archive and auto-reply are off")
    if stop is not None and stop.is_set():
        return AccountRun(address, idle="not started: the worker is stopping")
    outcome = _import(account, loaded, store, raw_store, settings, context, stop)
    try:
        retention = purge_expired(account, store, raw_store)
    except MailopsError as error:  # the state store or the raw store failed: report it, unless the import did
        failure = TransportError(FailureClass.LOCAL, f"the archive's retention: {error}")
        return outcome if outcome.error is not None else AccountRun(address, error=failure)
    return replace(outcome, retention=retention)


def _import(
    account: Account,
    loaded: LoadedSpec,
    store: StateStore,
    raw_store: RawStore,
    settings: Settings,
    context: CredentialContext,
    stop: threading.Event | None,
) -> AccountRun:
    address = account.address
    try:
        problem = _not_ready(store, address)
        if problem is not None:
            return AccountRun(address, error=problem)
        report = import_mail(account, loaded, store, raw_store, settings, context, stop=stop)
    except TransportError as error:
        return AccountRun(address, error=error)
    except MailopsError as error:  # the state store or the raw store failed: this account only
        return AccountRun(address, error=TransportError(FailureClass.LOCAL, str(error)))
    except Exception as error:  # noqa: BLE001 - one account's surprise must not end the others' pass
        detail = f"{type(error).__name__}: {error}"
        return AccountRun(address, error=TransportError(FailureClass.LOCAL, detail))
    return AccountRun(address, report=report)


def _not_ready(store: StateStore, address: str) -> TransportError | None:
    """Why ``address`` cannot be worked on now (not applied, not connected); None when it can. A
    disconnected account keeps the class of the failure that disconnected it."""
    live = store.account(address)
    if live is None:
        message = f"{address} is not applied yet"
        return TransportError(FailureClass.LOCAL, message, remedy="Run `mailops apply` first.")
    if live.status == AccountStatus.CONNECTED:
        return None
    try:
        failure = FailureClass(live.last_error_class or FailureClass.LOCAL)
    except ValueError:
        failure = FailureClass.LOCAL
    reason = f": {live.last_error}" if live.last_error else ""
    return TransportError(
        failure,
        f"{address} is not connected (status {live.status}){reason}",
        remedy="`mailops check` says what the account needs; `mailops reconnect` repairs an OAuth account.",
    )
