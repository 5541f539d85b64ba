"""The live state: what has been applied, and how each account is doing (SQLAlchemy)."""

from mailops.state.store import AccountState, LockHeld, StateStore

__all__ = ["AccountState", "LockHeld", "StateStore"]
