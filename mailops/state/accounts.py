"""The account records of the live state, as read-only views (no database code here).

Both ways of reading the state produce these: the SQLAlchemy store and the fast
read-only SQLite snapshot that `mailops plan` uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, overload


class AccountStatus(StrEnum):
    CONNECTED = "connected"
    ERROR = "error"
    NEEDS_RECONNECT = "needs_reconnect"
    PENDING_CONSENT = "pending_consent"


STATUSES = tuple(status.value for status in AccountStatus)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@overload
def aware(value: dt.datetime) -> dt.datetime: ...
@overload
def aware(value: None) -> None: ...
@overload
def aware(value: dt.datetime | None) -> dt.datetime | None: ...


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite drops the time zone; everything stored is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass(frozen=True)
class AccountState:
    """A read-only view of one applied account."""

    address: str
    provider: str
    settings: dict[str, Any]
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    last_verified_at: dt.datetime | None
    last_error_class: str | None
    last_error: str | None
    last_test_mail_at: dt.datetime | None
    last_test_mail_to: str | None
    last_test_mail_error: str | None


def broken_record(shown_url: str, address: object, reason: str) -> Exception:
    """The error for a stored account that cannot be read (edited by hand, or damaged)."""
    from mailops.errors import quoted
    from mailops.state.schema import StateError

    return StateError(
        f"the state store {shown_url} holds a broken record for account {quoted(address)} ({reason}); "
        "restore the store from a backup, or delete that account's row and apply again"
    )


class LiveAccounts(Protocol):
    """What reading the live state offers: the applied accounts."""

    def accounts(self, *, include_deleted: bool = False) -> list[AccountState]: ...


def state_fingerprint(accounts: list[AccountState]) -> str:
    """A digest of everything a plan is based on: which accounts exist, as what, in which status."""
    from pydantic_core import to_json  # several times faster than json.dumps on ten thousand accounts

    # Keys keep the order of the stored JSON, which plan and apply both read alike: no sorting needed.
    payload = [[a.address, a.provider, a.settings, a.status] for a in sorted(accounts, key=lambda a: a.address)]
    return hashlib.sha256(to_json(payload)).hexdigest()
