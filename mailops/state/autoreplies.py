"""Auto-reply claims in the state store: the one place that decides whether a reply may go out.

A reply is claimed in the transaction that imports the message it answers, before anything is
sent. The claim's key is unique in the database: with `once_per_day_per_sender` it is (account,
sender, calendar day), so of any number of workers and restarts exactly one gets the day's claim;
without it, the answered message's own key. The insert skips a key that is taken (``ON CONFLICT DO
NOTHING``) instead of failing, so a lost claim never undoes the import around it.

A claim is ``claimed`` until the reply was handed to the outbox, then ``sent`` or ``failed`` with
its outbox entry. A worker killed in between leaves it ``claimed``: that reply is not sent later
(at most one reply is the promise; a late second one would break it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from mailops.state.accounts import aware, utcnow
from mailops.state.tables import AutoReplyRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailops.state.store import StateStore

ONCE_A_DAY = "day"  # the scope of a claim under once_per_day_per_sender


class ReplyStatus(StrEnum):
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class ReplyClaim:
    """The key a reply is claimed under."""

    account: str
    recipient: str  # the address answered
    day: dt.date
    scope: str  # ONCE_A_DAY, or the answered message's dedupe key


@dataclass(frozen=True)
class AutoReply:
    id: int
    account: str
    recipient: str
    day: dt.date
    scope: str
    message_row: int
    claimed_at: dt.datetime
    status: str
    outbox_id: int | None


def claim_in(session: Session, claim: ReplyClaim, message_row: int) -> int | None:
    """Within the caller's transaction, claim the reply ``claim`` names for the message ``message_row``;
    the claim's id, or None when the key is taken (answered already)."""
    values = {
        "account": claim.account.lower(),
        "recipient": claim.recipient.lower(),
        "day": claim.day,
        "scope": claim.scope,
        "message_row": message_row,
        "claimed_at": utcnow(),
        "status": ReplyStatus.CLAIMED.value,
    }
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        statement = _insert_unless_taken(dialect, values)
        return session.execute(statement).scalar_one_or_none()
    try:  # other databases: a savepoint keeps the surrounding import when the key is taken
        with session.begin_nested():
            row = AutoReplyRow(**values)
            session.add(row)
        return row.id
    except IntegrityError:
        return None


def _insert_unless_taken(dialect: str, values: dict[str, Any]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(AutoReplyRow).values(**values).on_conflict_do_nothing().returning(AutoReplyRow.id)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(AutoReplyRow).values(**values).on_conflict_do_nothing().returning(AutoReplyRow.id)


class AutoReplies:
    """The auto-reply claims of one state store."""

    def __init__(self, store: StateStore):
        self._store = store

    def finish(self, outcomes: Sequence[tuple[int, ReplyStatus, int | None]]) -> None:
        """Record how claimed replies went, as ``(claim id, sent or failed, outbox entry)``, in one transaction."""
        if not outcomes:
            return
        values = [{"b_id": claim, "b_status": status.value, "b_outbox": outbox} for claim, status, outbox in outcomes]
        statement = (
            update(AutoReplyRow)
            .where(AutoReplyRow.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), outbox_id=bindparam("b_outbox"))
        )
        with self._store.session() as session:
            session.connection().execute(statement, values)

    def claims(self, account: str | None = None) -> list[AutoReply]:
        """The claims, oldest first (all, or ``account``'s)."""
        if not self._store.exists:
            return []
        query = select(AutoReplyRow).order_by(AutoReplyRow.id)
        if account is not None:
            query = query.where(AutoReplyRow.account == account.lower())
        with self._store.session() as session:
            return [
                AutoReply(
                    id=row.id,
                    account=row.account,
                    recipient=row.recipient,
                    day=row.day,
                    scope=row.scope,
                    message_row=row.message_row,
                    claimed_at=aware(row.claimed_at),
                    status=row.status,
                    outbox_id=row.outbox_id,
                )
                for row in session.scalars(query)
            ]
