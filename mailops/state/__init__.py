"""The live state: what has been applied, and how each account is doing.

Reading for a plan goes through :func:`read_live_state`, which never creates or
changes a store; writing goes through :class:`StateStore` (SQLAlchemy, imported
only when needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailops.state.accounts import AccountState, AccountStatus, LiveAccounts
from mailops.state.schema import StateError

if TYPE_CHECKING:
    from mailops.state.store import LockHeld, StateStore

__all__ = ["AccountState", "AccountStatus", "LiveAccounts", "LockHeld", "StateError", "StateStore", "read_live_state"]


def read_live_state(url: str) -> LiveAccounts:
    """The live accounts at ``url`` for a read-only command; a store that does not exist reads as empty."""
    from mailops.state.location import check_url, shown_url, sqlite_file

    check_url(url)
    path = sqlite_file(url)
    if path is not None:
        from mailops.state.snapshot import SqliteSnapshot

        return SqliteSnapshot.read(path, shown_url(url))
    from mailops.state.store import StateStore

    return StateStore.open(url, create=False)


def __getattr__(name: str) -> Any:
    # The SQLAlchemy store is imported on first use: read-only commands never need it.
    if name in ("StateStore", "LockHeld"):
        from mailops.state import store

        return getattr(store, name)
    raise AttributeError(name)
