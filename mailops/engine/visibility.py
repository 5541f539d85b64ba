"""Who acts, and which accounts they may see and send from (`visible_to` in the spec).

An account with an empty `visible_to` is visible to everyone; otherwise to the
employees and groups it names. The command line acts as the employee named by `--as`
or MAILOPS_USER; without one it acts as an administrator (who sees everything) only
when `policies.cli_user_is_admin` says so, and otherwise refuses to guess.

For an account that is no longer in the spec (deleted), its last applied `visible_to`
from the state decides, so its history stays readable to exactly those who could see
it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailops.errors import MailopsError, quoted
from mailops.spec.models import Spec
from mailops.state.accounts import AccountState


class NotAllowed(MailopsError):
    """The acting user may not do this, or nobody was named to act."""


@dataclass(frozen=True)
class Actor:
    user: str | None  # an employee key of the spec; None for the administrator
    groups: frozenset[str] = frozenset()

    @property
    def admin(self) -> bool:
        return self.user is None

    def may_see(self, visible_to: Iterable[str]) -> bool:
        names = set(visible_to)
        return self.admin or not names or self.user in names or bool(self.groups & names)

    def may_not_send_from(self, address: str) -> NotAllowed:
        """The refusal of a mail from ``address``, an account this actor may not see."""
        return NotAllowed(f"{self.user} may not send from {address} (it is not in its visible_to)")


def acting(spec: Spec, user: str | None) -> Actor:
    """The actor for ``user`` (from --as / MAILOPS_USER)."""
    if user is None:
        if spec.policies.cli_user_is_admin:
            return Actor(None)
        raise NotAllowed(
            "say who acts: --as EMPLOYEE or MAILOPS_USER (policies.cli_user_is_admin is false, so the "
            "command line does not act as an administrator)"
        )
    employee = spec.employees.get(user)
    if employee is None:
        raise NotAllowed(f"{quoted(user)} is not an employee declared under `employees:`")
    return Actor(user, frozenset(employee.groups))


def visible_addresses(spec: Spec, actor: Actor, states: Iterable[AccountState]) -> set[str]:
    """The accounts (lower-cased) whose entries ``actor`` may read: the declared ones, and deleted ones
    by their last state."""
    visible = {account.address.lower() for account in spec.accounts if actor.may_see(account.visible_to)}
    declared = {account.address.lower() for account in spec.accounts}
    for state in states:
        if state.address not in declared and actor.may_see(state.settings.get("visible_to") or []):
            visible.add(state.address)
    return visible
