"""The plan: what apply would change to make the live state match the spec.

Reads like the algorithm: take the desired accounts, the live ones, compare them
account by account and field by field, then let the :class:`Plan` judge the deletes
against the policies. A plan is a value: it can be shown, saved and checked for
staleness, and apply executes exactly it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache, partial
from pathlib import Path
from typing import Any

from mailops.bulk import cycle_collector_paused
from mailops.errors import MailopsError, quoted
from mailops.fileio import atomic_write
from mailops.providers.base import provider_for
from mailops.spec import LoadedSpec
from mailops.spec.models import Account, Policies, Spec
from mailops.state.accounts import AccountState, AccountStatus, LiveAccounts, state_fingerprint

# 2: the body carries its own digest, and apply compares the changes, not only the inputs.
# 3: the fingerprints digest pydantic_core's JSON of the inputs.
PLAN_FORMAT_VERSION = 3
SENSITIVE = "(sensitive)"
SENSITIVE_FIELDS = frozenset({"password"})
# A change to any of these means the account must be verified (and test-mailed) again.
CONNECTION_FIELDS = frozenset({"provider", "username", "password", "imap", "smtp"})


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NEEDS_ACTION = "needs_action"
    NOOP = "noop"


SYMBOLS = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-", Action.NEEDS_ACTION: "!", Action.NOOP: " "}


class StalePlan(MailopsError):
    pass


def desired_settings(account: Account) -> dict[str, Any]:
    """The settings of an account as stored in the state: JSON, with secret *references* only."""
    return account.model_dump(mode="json")


def redact(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    return {
        key: (SENSITIVE if key in SENSITIVE_FIELDS and value is not None else value) for key, value in settings.items()
    }


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key not in SENSITIVE_FIELDS:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any
    after: Any

    @property
    def sensitive(self) -> bool:
        return self.path.split(".")[0] in SENSITIVE_FIELDS


@dataclass(frozen=True)
class AccountChange:
    address: str
    provider: str
    action: Action
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    fields: tuple[FieldChange, ...] = ()
    verify: bool = False  # log in and send a test mail after storing
    reason: str = ""
    blocked: str = ""  # why apply will refuse this change (deletes only)

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "provider": self.provider,
            "actions": [self.action.value],
            "before": redact(self.before),
            "after": redact(self.after),
            "fields": [
                {
                    "path": f.path,
                    "before": SENSITIVE if f.sensitive else f.before,
                    "after": SENSITIVE if f.sensitive else f.after,
                }
                for f in self.fields
            ],
            "verify": self.verify,
            "reason": self.reason,
            "blocked": self.blocked,
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[AccountChange, ...]
    spec_fingerprint: str
    state_fingerprint: str
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def by_action(self, action: Action) -> list[AccountChange]:
        return [change for change in self.changes if change.action is action]

    @property
    def counts(self) -> dict[str, int]:
        return {
            "add": len(self.by_action(Action.CREATE)),
            "change": len(self.by_action(Action.UPDATE)),
            "delete": len(self.by_action(Action.DELETE)),
            "needs_action": len(self.by_action(Action.NEEDS_ACTION)),
        }

    @property
    def has_changes(self) -> bool:
        """True when apply would change anything (accounts that need a person's action do not count)."""
        counts = self.counts
        return bool(counts["add"] or counts["change"] or counts["delete"])

    @property
    def blocked(self) -> list[AccountChange]:
        return [change for change in self.changes if change.blocked]

    def summary_line(self) -> str:
        if not self.has_changes:
            line = "No changes. The live state matches the spec."
        else:
            c = self.counts
            line = f"Plan: {c['add']} to add, {c['change']} to change, {c['delete']} to delete."
        if self.counts["needs_action"]:
            line += f" {self.counts['needs_action']} account(s) need action."
        return line

    def as_json(self) -> dict[str, Any]:
        body = {
            "format_version": PLAN_FORMAT_VERSION,
            "created_at": self.created_at.isoformat(),
            "spec_fingerprint": self.spec_fingerprint,
            "state_fingerprint": self.state_fingerprint,
            "summary": self.counts,
            "changes": self._changes_json(),
        }
        return {**body, BODY_DIGEST: body_digest(body)}

    def _changes_json(self) -> list[dict[str, Any]]:
        return [change.as_json() for change in self.changes if change.action is not Action.NOOP]

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n")

    def check_matches(self, saved: dict[str, Any]) -> None:
        """Refuse a saved plan unless applying it means executing exactly this plan.

        The saved file must be intact (its body digest), made from the same spec and live
        state (the fingerprints), and list the same changes: an edited plan is refused, not
        silently replaced by what the spec says now.
        """
        version = saved.get("format_version")
        if type(version) is not int or version != PLAN_FORMAT_VERSION:
            raise StalePlan(
                f"the saved plan has format {quoted(version)}; expected {PLAN_FORMAT_VERSION}. "
                "Run `mailops plan --out FILE` again"
            )
        body = {key: value for key, value in saved.items() if key != BODY_DIGEST}
        if saved.get(BODY_DIGEST) != body_digest(body) or set(saved) != set(self.as_json()):
            raise StalePlan("the plan file was changed after `mailops plan` wrote it; make a new plan")
        if saved.get("state_fingerprint") != self.state_fingerprint:
            raise StalePlan("the live state changed since the plan was made; run `mailops plan` again")
        if saved.get("spec_fingerprint") != self.spec_fingerprint:
            raise StalePlan("the spec changed since the plan was made; run `mailops plan` again")
        if (
            _comparable(saved.get("changes")) != _comparable(self._changes_json())
            or saved.get("summary") != self.counts
        ):
            raise StalePlan(
                "the plan file's changes differ from the plan for this spec and live state; make a new plan"
            )


BODY_DIGEST = "body_sha256"


def body_digest(body: dict[str, Any]) -> str:
    """SHA-256 of the plan's body in canonical JSON: detects any edit of a saved plan."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _comparable(changes: Any) -> Any:
    # Whether a delete is blocked depends on apply's own flags (--confirm-delete, --force).
    if not isinstance(changes, list):
        return changes
    return [{k: v for k, v in c.items() if k != "blocked"} if isinstance(c, dict) else c for c in changes]


def spec_fingerprint(desired: list[dict[str, Any]], policies: Policies) -> str:
    from pydantic_core import to_json  # several times faster than json.dumps on ten thousand accounts

    # Keys come in the models' field order: the same spec always gives the same bytes.
    payload = {"accounts": desired, "policies": policies.model_dump(mode="json")}
    return hashlib.sha256(to_json(payload)).hexdigest()


def plan_for(loaded: LoadedSpec, live_state: LiveAccounts, **judging: Any) -> Plan:
    """The plan for the current spec and live state (``judging``: confirmed_deletes, force)."""
    with cycle_collector_paused():
        live = live_state.accounts()
        return make_plan(loaded.spec, live, state_fingerprint(live), **judging)


def make_plan(
    spec: Spec,
    live: list[AccountState],
    state_fingerprint: str,
    *,
    confirmed_deletes: frozenset[str] = frozenset(),
    force: bool = False,
) -> Plan:
    """Compare the spec with the live accounts and judge the deletes against the policies."""
    live_by_address = {state.address: state for state in live}
    desired = [desired_settings(account) for account in spec.accounts]
    changes: list[AccountChange] = []
    for account, after in zip(spec.accounts, desired, strict=True):
        changes.append(_change_for(account, after, live_by_address.pop(account.address.lower(), None)))
    deletes = [
        AccountChange(
            address=state.address, provider=state.provider, action=Action.DELETE, before=state.settings, after=None
        )
        for state in live_by_address.values()
    ]
    changes += _judge_deletes(deletes, len(live), spec.policies, confirmed_deletes, force)
    return Plan(
        changes=tuple(sorted(changes, key=lambda c: c.address)),
        spec_fingerprint=spec_fingerprint(desired, spec.policies),
        state_fingerprint=state_fingerprint,
    )


def _change_for(account: Account, after: dict[str, Any], state: AccountState | None) -> AccountChange:
    change = partial(AccountChange, account.address.lower(), account.provider, after=after)
    provider = provider_for(account.provider)
    if state is None:
        if provider.needs_consent:
            return change(
                action=Action.CREATE,
                before=None,
                reason=f"then needs OAuth consent: run `mailops connect {account.address}`",
            )
        return change(action=Action.CREATE, before=None, verify=True)
    fields: tuple[FieldChange, ...] = ()
    if state.settings != after:  # most accounts are unchanged: compare field by field only when not
        # A field the stored settings lack (stored by a mailops that did not have it yet)
        # holds its default: a new field is no change to an account that leaves it unset.
        defaults = _default_settings()
        before_flat, after_flat = _flatten(state.settings), _flatten(after)
        fields = tuple(
            FieldChange(path, before, after_flat.get(path))
            for path in sorted(set(before_flat) | set(after_flat))
            if (before := before_flat.get(path, defaults.get(path))) != after_flat.get(path)
        )
    connection_changed = any(f.path.split(".")[0] in CONNECTION_FIELDS for f in fields)
    if provider.needs_consent and state.provider != account.provider:
        reason = f"then needs OAuth consent: run `mailops connect {account.address}`"
        return change(action=Action.UPDATE, before=state.settings, fields=fields, reason=reason)
    if provider.needs_consent and state.status in (AccountStatus.PENDING_CONSENT, AccountStatus.NEEDS_RECONNECT):
        # Nothing to log in with until a person consents: store what changed, say what to run.
        command = "connect" if state.status == AccountStatus.PENDING_CONSENT else "reconnect"
        reason = f"{state.status.replace('_', ' ')}: run `mailops {command} {account.address}`"
        if fields:
            return change(action=Action.UPDATE, before=state.settings, fields=fields, reason=reason)
        return change(action=Action.NEEDS_ACTION, before=state.settings, reason=reason)
    if fields:
        # A failed account is verified again with any change, not only a connection change.
        verify = connection_changed or state.status != "connected"
        return change(action=Action.UPDATE, before=state.settings, fields=fields, verify=verify)
    if state.status != "connected":
        return change(
            action=Action.UPDATE,
            before=state.settings,
            verify=True,
            reason=f"retry: last verification failed ({state.last_error_class or state.status})",
        )
    return change(action=Action.NOOP, before=state.settings)


@cache
def _default_settings() -> dict[str, Any]:
    """Every field's default, flattened as :func:`_flatten` does (address and provider have none)."""
    blank = Account.model_validate({"address": "blank@example.com", "provider": "manual"})
    flat = _flatten(desired_settings(blank))
    return {path: value for path, value in flat.items() if path not in ("address", "provider")}


def _judge_deletes(
    deletes: list[AccountChange], live_count: int, policies: Policies, confirmed: frozenset[str], force: bool
) -> list[AccountChange]:
    if not deletes:
        return []
    fraction = len(deletes) / live_count if live_count else 0.0
    judged = []
    for change in deletes:
        reasons = []
        if fraction > policies.max_delete_fraction and not force:
            reasons.append(
                f"deletes {len(deletes)} of {live_count} accounts ({fraction:.0%}), more than "
                f"policies.max_delete_fraction ({policies.max_delete_fraction:.0%}); use --force to override"
            )
        if not policies.allow_delete and change.address not in confirmed:
            reasons.append(f"needs --confirm-delete {change.address} (policies.allow_delete is false)")
        judged.append(replace(change, blocked="; ".join(reasons)) if reasons else change)
    return judged
