"""The worker's pass over the accounts: which ones it works on, concurrently, each failure kept to its account.

An account is worked on when the spec enables its ticket import, archive or auto-reply and the
live state has it applied and connected. After its import, an archiving account's retention is
applied (also when the import failed: retention does not wait for a mail server), and, once a day,
the .eml files that no index entry keeps are swept (:func:`remove_orphaned_files`). Accounts run
at the same time, at most ``MAILOPS_CONCURRENCY`` of them (imapclient is synchronous: one thread
each); whatever goes wrong with one account is reported as its classified failure and never
stops the others.

A :class:`Worker` is one `mailops run` process: it works only on the accounts whose lease it holds
(mailops.state.leases), a share of them on PostgreSQL, all of them on SQLite, where it is the only
worker. What it does is told to a :class:`~mailops.runtime.worker_log.WorkerLog`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from mailops.engine.credentials import credential_context
from mailops.errors import MailopsError, quoted
from mailops.providers.base import CredentialContext
from mailops.runtime.archive import RetentionReport, purge_expired, remove_orphaned_files
from mailops.runtime.leases import HELD_BY_ANOTHER, AccountStop, LeaseKeeper
from mailops.runtime.rawstore import RawStore, message_dir_of
from mailops.runtime.ticket_import import ImportReport, import_mail
from mailops.runtime.worker_log import Event, Level, WorkerEvent, WorkerLog, account_event, pass_counts
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.spec.models import Account
from mailops.state.accounts import AccountStatus
from mailops.state.leases import WHOLE_STORE, Claim, Lease, LeaseOwner, Leases
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
    """One pass over the chosen accounts, without leases (see :class:`Worker` for those); one
    :class:`AccountRun` each, in spec order.

    Without ``addresses`` the accounts with ticket import, archive or auto-reply enabled are chosen,
    and the others are left out silently; a named account with all three off is reported idle.
    ``on_done`` hears of each account as it finishes.
    """
    accounts = accounts_to_run(loaded, addresses)
    return run_accounts(accounts, loaded, store, settings, stop_of=lambda _address: stop, on_done=on_done)


def accounts_to_run(loaded: LoadedSpec, addresses: Sequence[str]) -> list[Account]:
    """The accounts a pass looks at: those ``addresses`` name, else every one with something to do."""
    named = bool(addresses)
    return [account for account in chosen_accounts(loaded, addresses) if named or worked_on(account)]


def run_accounts(
    accounts: Sequence[Account],
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    *,
    stop_of: Callable[[str], threading.Event | None],
    on_done: Callable[[AccountRun], None] | None = None,
) -> list[AccountRun]:
    """Work on ``accounts`` at the same time (at most ``settings.concurrency``); ``stop_of(address)`` is
    the signal that ends an account's work after its current batch."""
    if not accounts:
        return []
    context = credential_context(loaded, settings, store)
    raw_store = RawStore(message_dir_of(settings))
    lock = threading.Lock()

    def work(account: Account) -> AccountRun:
        outcome = _run_account(account, loaded, store, raw_store, settings, context, stop_of(account.address))
        if on_done is not None:
            with lock:
                on_done(outcome)
        return outcome

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
        why = "its lease was lost" if isinstance(stop, AccountStop) and stop.lease_lost else "the worker is stopping"
        return AccountRun(address, idle=f"not started: {why}")
    outcome = _import(account, loaded, store, raw_store, settings, context, stop)
    try:
        retention = purge_expired(account, store, raw_store)
        remove_orphaned_files(store, raw_store)  # of every account: whichever gets here first when one is due
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
        if error.failure_class is FailureClass.TOKEN:
            _needs_reconnect(store, address, error)
        return AccountRun(address, error=error)
    except MailopsError as error:  # the state store or the raw store failed: this account only
        return AccountRun(address, error=TransportError(FailureClass.LOCAL, str(error)))
    except Exception as error:  # noqa: BLE001 - one account's surprise must not end the others' pass
        detail = f"{type(error).__name__}: {error}"
        return AccountRun(address, error=TransportError(FailureClass.LOCAL, detail))
    return AccountRun(address, report=report)


def _needs_reconnect(store: StateStore, address: str, error: TransportError) -> None:
    """The OAuth grant died: no pass can log in until a person reconnects. Record it where `mailops check`,
    the plan and the report look, as `check` would, and the next passes skip the account instead of asking
    the identity provider again and again."""
    try:
        store.set_status(
            address, AccountStatus.NEEDS_RECONNECT, error_class=error.failure_class.value, error=error.summary()
        )
    except MailopsError:
        pass  # the store failed too: the pass reports the login's error, the next one tries again


# The failures after which a login can only fail again until a person acts: trying on every pass would
# repeat the refusal, and a server may lock an account out after repeated failed logins.
_NEEDS_A_PERSON = frozenset({FailureClass.AUTH, FailureClass.SECRET, FailureClass.TOKEN})


def _not_ready(store: StateStore, address: str) -> TransportError | None:
    """Why ``address`` cannot be worked on now (not applied, not connected); None when it can. An account in
    `error` is worked on unless its failure needs a person (a refused login, a missing secret): a timeout or a
    lost connection that `mailops check` saw, or a failure of its SMTP side, does not keep the worker away. A
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
    if live.status == AccountStatus.ERROR and failure not in _NEEDS_A_PERSON:
        return None
    reason = f": {live.last_error}" if live.last_error else ""
    return TransportError(
        failure,
        f"{address} is not connected (status {live.status}){reason}",
        remedy="`mailops check` says what the account needs; `mailops reconnect` repairs an OAuth account.",
    )


# -- the worker process and its leases ------------------------------------------------------------------


class OneWorkerOnly(MailopsError):
    """A second worker on a state store that runs one (SQLite)."""

    def __init__(self, holder: Lease, dialect: str):
        self.holder = holder
        kind = "SQLite runs" if dialect == "sqlite" else f"A {dialect} state store runs"
        super().__init__(
            f"{kind} one worker, and another `mailops run` is working on this state store ({holder.describe()}). "
            "Stop that one first, or keep the state in PostgreSQL (MAILOPS_STATE_URL) to run several workers."
        )


class Worker:
    """One `mailops run` process as the state store knows it: its leases and its passes.

    :meth:`start` takes the lease on the whole store (SQLite; :class:`OneWorkerOnly` when another worker
    holds it) or registers the worker among those that share the accounts (PostgreSQL), and starts
    renewing on a thread; :meth:`run_pass` claims this worker's share of the accounts and works on
    those alone; :meth:`finish` frees every lease (a clean stop). See :mod:`mailops.state.leases`.
    """

    def __init__(self, store: StateStore, settings: Settings, *, log: WorkerLog, stop: threading.Event):
        self.store, self.settings, self.log = store, settings, log
        self.leases = Leases(store)
        self.owner = LeaseOwner.this_process()
        # Set when the worker must stop on its own (it lost the whole store's lease); part of every
        # account's stop signal, as the CLI's stop (SIGTERM) is.
        self.halt = AccountStop(stop)
        self.lost_store: str | None = None  # why this worker lost the whole store's lease
        self.keeper = LeaseKeeper(
            self.leases,
            self.owner,
            settings.worker_lease,
            stop=self.halt,
            on_lost=self._lost,
            on_renewal_failed=self._renewal_failed,
        )

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.finish()

    def start(self) -> None:
        seconds = self.settings.worker_lease
        with self.keeper.lock:
            since = time.monotonic()
            if self.leases.shared:
                self.leases.end_stalled_transactions(seconds)
                self.leases.renew(self.owner, (), seconds)  # registers the worker: it counts for the shares
                self.keeper.hold((), since)
            else:
                holder = self.leases.take_whole_store(self.owner, seconds)
                if holder is not None:
                    raise OneWorkerOnly(holder, self.store.engine.dialect.name)
                self.keeper.hold((WHOLE_STORE,), since)
        self.keeper.start()
        how = "sharing the accounts with other workers" if self.leases.shared else "the only worker on this store"
        self.log.emit(
            WorkerEvent(
                Event.WORKER_STARTED,
                f"worker {self.owner.describe()} started, {how}; leases last {seconds:g} s",
                extra={"lease_seconds": seconds, "shared": self.leases.shared},
            )
        )

    def finish(self) -> None:
        """Stop renewing and free every lease, so that other workers need not wait for them to expire."""
        self.keeper.close()
        try:
            freed = self.leases.release(self.owner, retire=True)
        except MailopsError as error:  # they expire on their own
            message = f"could not free the leases, they expire within {self.settings.worker_lease:g} s: {error}"
            self.log.emit(WorkerEvent(Event.LEASE_RENEWAL_FAILED, message, Level.WARNING))
            return
        for resource in freed:
            if resource != WHOLE_STORE:
                self.log.emit(WorkerEvent(Event.LEASE_RELEASED, "lease freed: the worker stops", account=resource))

    def run_pass(self, loaded: LoadedSpec, addresses: Sequence[str] = ()) -> list[AccountRun]:
        """One pass over this worker's share of the chosen accounts (see :func:`run_once` for the choice);
        an account named in ``addresses`` that another worker holds is reported idle."""
        accounts = accounts_to_run(loaded, addresses)
        if not accounts:
            message = "No account has ticket import, the archive or auto-replies enabled in the spec."
            self.log.emit(WorkerEvent(Event.NO_ACCOUNTS, message))
            return []
        leased = [account.address.lower() for account in accounts if worked_on(account)]
        claim = self._claim(leased)
        held = set(claim.held) if claim is not None else set(leased)
        runnable = [account for account in accounts if not worked_on(account) or account.address.lower() in held]
        left = [] if not addresses else [account for account in accounts if account not in runnable]
        self.log.emit(self._pass_started(len(runnable) + len(left), len(held), len(leased), claim))
        runs = run_accounts(
            runnable, loaded, self.store, self.settings, stop_of=self._stop_of, on_done=self._account_done
        )
        elsewhere = {lease.resource: lease for lease in claim.held_elsewhere} if claim is not None else {}
        for account in left:
            lease = elsewhere.get(account.address.lower())
            why = f"another worker holds it ({lease.describe()})" if lease else "left to the other workers"
            runs.append(AccountRun(account.address, idle=why))
            self._account_done(runs[-1])
        order = {account.address: number for number, account in enumerate(accounts)}
        runs.sort(key=lambda run: order[run.address])
        counts = pass_counts(runs, len(held), len(leased))
        failed = counts["failed"]
        level = Level.ERROR if failed else Level.INFO
        message = f"pass done: {len(runs)} account(s), {counts['imported']} message(s) imported, {failed} failed"
        self.log.emit(WorkerEvent(Event.PASS_DONE, message, level, counts=counts))
        return runs

    def _claim(self, leased: list[str]) -> Claim | None:
        """Claim this worker's share of ``leased`` (PostgreSQL; None on a store that runs one worker)."""
        if not self.leases.shared:
            return None
        with self.keeper.lock:
            since = time.monotonic()
            before = set(self.keeper.held)
            claim = self.leases.claim(self.owner, leased, self.settings.worker_lease)
            self.keeper.hold(claim.held, since)
        # Taken over while this worker stalled, and not noticed by a renewal yet.
        for resource in sorted(before - set(claim.held) - set(claim.released)):
            self._lost(resource, HELD_BY_ANOTHER)
        taken_over = {lease.resource for lease in claim.taken_over}
        for lease in claim.taken_over:
            assert lease.owner is not None and lease.expires_at is not None
            expired = f"{lease.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            self.log.emit(
                WorkerEvent(
                    Event.LEASE_TAKEN_OVER,
                    f"taken over from {lease.owner.describe()}: its lease expired at {expired}",
                    account=lease.resource,
                    extra={
                        "previous_owner": {"host": lease.owner.host, "pid": lease.owner.pid},
                        "expired_at": lease.expires_at.isoformat(),
                    },
                )
            )
        for resource in claim.claimed:
            if resource not in taken_over:
                self.log.emit(WorkerEvent(Event.LEASE_CLAIMED, "lease claimed", account=resource))
        for resource in claim.released:
            why = "beyond this worker's fair share" if resource in leased else "no longer worked on"
            self.log.emit(WorkerEvent(Event.LEASE_RELEASED, f"lease freed: {why}", account=resource))
        return claim

    def _pass_started(self, accounts: int, held: int, declared: int, claim: Claim | None) -> WorkerEvent:
        counts = {"accounts": accounts, "held": held, "declared": declared}
        if claim is None:
            return WorkerEvent(Event.PASS_STARTED, f"pass over {accounts} account(s)", counts=counts)
        counts |= {"workers": claim.workers, "share": claim.share, "held_elsewhere": len(claim.held_elsewhere)}
        message = (
            f"Working on {held} of {declared} account(s) (fair share with {claim.workers} worker(s): {claim.share}); "
            f"{len(claim.held_elsewhere)} held by other workers."
        )
        return WorkerEvent(Event.PASS_STARTED, message, counts=counts)

    def _stop_of(self, address: str) -> threading.Event:
        # On a store of one worker, every account goes with the whole store's lease.
        return self.keeper.stop_of(address.lower() if self.leases.shared else WHOLE_STORE)

    def _account_done(self, run: AccountRun) -> None:
        self.log.emit(account_event(run))

    def _lost(self, resource: str, why: str) -> None:
        if resource == WHOLE_STORE:
            self.lost_store = why
            self.halt.set()
            message = f"this worker lost its lease on the state store: {why}; it stops after the current batch"
            self.log.emit(WorkerEvent(Event.LEASE_LOST, message, Level.ERROR))
            return
        message = f"lease lost: {why}; work on this account stops after the current batch"
        self.log.emit(WorkerEvent(Event.LEASE_LOST, message, Level.WARNING, account=resource))

    def _renewal_failed(self, why: str) -> None:
        message = f"cannot renew the leases (retrying): {why}"
        self.log.emit(WorkerEvent(Event.LEASE_RENEWAL_FAILED, message, Level.WARNING))
