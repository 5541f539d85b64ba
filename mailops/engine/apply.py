"""Apply: execute a plan under the apply lock, account by account, concurrently.

Each account's result is committed as soon as that account is done, so an apply
that is killed leaves a consistent state and the next apply picks up the rest.
One account's failure never stops the others.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailops.engine.credentials import credential_context
from mailops.engine.plan import AccountChange, Action, Plan, plan_for
from mailops.engine.verify import TestMailResult, verify_account
from mailops.errors import MailopsError
from mailops.providers.base import CredentialContext, provider_for
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.state.store import StateStore
from mailops.transport.failures import FailureClass, TransportError

EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


class ApplyRefused(MailopsError):
    """The plan breaks a policy (e.g. an unconfirmed delete); nothing was applied."""


@dataclass(frozen=True)
class AccountOutcome:
    change: AccountChange
    status: str | None  # the account's status afterwards; None when deleted
    error: TransportError | None = None
    test_mail: TestMailResult | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ApplyResult(StrEnum):
    NO_CHANGES = "no_changes"
    CANCELLED = "cancelled"  # not approved
    DONE = "done"
    INTERRUPTED = "interrupted"  # Ctrl-C: running accounts finished, the rest not started


@dataclass(frozen=True)
class ApplyReport:
    plan: Plan
    result: ApplyResult
    outcomes: tuple[AccountOutcome, ...] = ()
    not_started: tuple[AccountChange, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result is not ApplyResult.INTERRUPTED and all(outcome.ok for outcome in self.outcomes)

    @property
    def failed(self) -> list[AccountOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]


class ApplyHooks:
    """What a front end (the CLI, a notebook widget) learns and decides during an apply.

    Every method has a do-nothing default; override what the front end shows.
    """

    def approve(self, plan: Plan) -> bool:
        """Called with the plan under the lock; False cancels without changing anything."""
        return True

    def started(self, plan: Plan) -> None:
        """Execution begins."""

    def account_done(self, outcome: AccountOutcome) -> None:
        """One account is done and its result stored."""

    def interrupted(self) -> None:
        """Ctrl-C: no further account starts; those running finish."""

    def stopping_now(self) -> None:
        """A second Ctrl-C, after the lock was released: stop at once (a command line ends the
        process); accounts still running are not recorded, the next apply does them again."""
        raise KeyboardInterrupt


def status_after(error: TransportError | None) -> str:
    """An account's status after a login: connected, or why not (a refused OAuth grant needs a person)."""
    if error is None:
        return "connected"
    return "needs_reconnect" if error.failure_class is FailureClass.TOKEN else "error"


def apply(
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    *,
    saved_plan: dict[str, Any] | None = None,
    confirmed_deletes: frozenset[str] = frozenset(),
    force: bool = False,
    hooks: ApplyHooks | None = None,
) -> ApplyReport:
    """Plan under the lock, check it against ``saved_plan`` and the policies, then execute it."""
    hooks = hooks or ApplyHooks()
    with store.locked(wait=settings.lock_wait) as lock:
        plan = plan_for(loaded, store, confirmed_deletes=confirmed_deletes, force=force)
        if saved_plan is not None:
            plan.check_matches(saved_plan)
        if plan.blocked:
            reasons = "\n".join(f"  - {change.address}: {change.blocked}" for change in plan.blocked)
            raise ApplyRefused(f"refusing to apply; nothing was changed:\n{reasons}")
        if not plan.has_changes:
            return ApplyReport(plan, ApplyResult.NO_CHANGES)
        if not hooks.approve(plan):
            return ApplyReport(plan, ApplyResult.CANCELLED)
        hooks.started(plan)
        outcomes, not_started, interrupted = asyncio.run(
            _execute(plan, loaded, store, settings, hooks, release_lock=lambda: store.release_lock(lock.lock_id))
        )
    return ApplyReport(
        plan,
        ApplyResult.INTERRUPTED if interrupted else ApplyResult.DONE,
        tuple(sorted(outcomes, key=lambda o: o.change.address)),
        tuple(not_started),
    )


async def _execute(
    plan: Plan,
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    hooks: ApplyHooks,
    *,
    release_lock: Callable[[], object],
) -> tuple[list[AccountOutcome], list[AccountChange], bool]:
    semaphore = asyncio.Semaphore(settings.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Ctrl-C stops new accounts from starting; a second one ends the process at once (the
    # threads blocked in an IMAP login cannot be interrupted). Every account already
    # recorded stays; those in flight are simply done again by the next apply.
    catch_interrupt = threading.current_thread() is threading.main_thread()

    def stop_now() -> None:
        release_lock()
        hooks.stopping_now()

    def on_interrupt() -> None:
        stop.set()
        loop.add_signal_handler(signal.SIGINT, stop_now)
        hooks.interrupted()

    if catch_interrupt:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    not_started: list[AccountChange] = []
    context = credential_context(loaded, settings, store)
    # imapclient blocks: give it as many threads as accounts may run at once.
    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="mailops-imap") as executor:

        async def run(change: AccountChange) -> AccountOutcome | None:
            async with semaphore:
                if stop.is_set():
                    not_started.append(change)
                    return None
                outcome = await _execute_change(change, loaded, store, settings, executor, context)
            hooks.account_done(outcome)
            return outcome

        actionable = [c for c in plan.changes if c.action in (Action.CREATE, Action.UPDATE, Action.DELETE)]
        try:
            results = await asyncio.gather(*(run(change) for change in actionable))
        finally:
            if catch_interrupt:
                loop.remove_signal_handler(signal.SIGINT)
    outcomes = [outcome for outcome in results if outcome is not None]
    return outcomes, sorted(not_started, key=lambda c: c.address), stop.is_set()


async def _execute_change(
    change: AccountChange,
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    executor: ThreadPoolExecutor,
    context: CredentialContext,
) -> AccountOutcome:
    if change.action is Action.DELETE:
        store.delete_account(change.address)
        return AccountOutcome(change, status=None)
    account = loaded.spec.account(change.address)
    assert account is not None and change.after is not None
    needs_consent = provider_for(account.provider).needs_consent
    if not change.verify:
        # Nothing to log in to (yet): store the settings, keep the status it has.
        current = store.account(change.address)
        if needs_consent and (current is None or current.provider != account.provider):
            status = "pending_consent"  # new to this provider: no token yet
        else:
            status = current.status if current is not None else "error"
        store.record_account(
            change.address,
            account.provider,
            change.after,
            status,
            error_class=current.last_error_class if current else None,
            error=current.last_error if current else None,
        )
        return AccountOutcome(change, status=status)
    policy = loaded.spec.policies.test_mail
    result = await verify_account(
        account,
        context=context,
        settings=settings,
        executor=executor,
        send_test_mail=policy.on_apply,
        test_mail_to=policy.to,
    )
    status = status_after(result.error)
    mail = result.test_mail
    store.record_account(
        change.address,
        account.provider,
        change.after,
        status,
        verified=True,
        error_class=result.error.failure_class.value if result.error else None,
        error=result.error.summary() if result.error else None,
        test_mail=(mail.recipient, mail.error.summary() if mail.error else None) if mail else None,
    )
    return AccountOutcome(change, status=status, error=result.error, test_mail=result.test_mail)
