"""Delivery status notifications (bounces) in the state store, and the outbox entries they mark.

A DSN is recorded in the transaction that imports it (:mod:`mailops.state.tickets`): its row here,
and, when it reports a failure, its outbox entry marked ``bounced``. Only an entry of the account
whose inbox the DSN arrived in can be marked: a report cannot reach another account's log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mailops.state.accounts import aware
from mailops.state.outbox import Outcome, mark_bounced
from mailops.state.tables import BounceRow, OutboxRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailops.state.store import StateStore


@dataclass(frozen=True)
class NewBounce:
    """What a DSN says, as it is recorded."""

    account: str  # the inbox it arrived in
    original_message_ids: Sequence[str]  # the returned Message-ID first, then the envelope id's forms
    envelope_id: str | None
    recipient: str
    action: str
    status: str | None
    diagnostic: str | None
    reporting_mta: str | None
    received_at: dt.datetime
    recipients: Sequence[dict[str, Any]] = field(default_factory=tuple)
    # How the outbox entry ends, when the report is of a failure (None: a delay or a success).
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Bounce:
    id: int
    account: str
    message_row: int
    outbox_id: int | None
    original_message_id: str | None
    envelope_id: str | None
    recipient: str
    action: str
    status: str | None
    diagnostic: str | None
    reporting_mta: str | None
    error_class: str | None
    received_at: dt.datetime


def record_in(session: Session, bounce: NewBounce, message_row: int) -> int | None:
    """Within the caller's transaction, record ``bounce`` (the DSN of index row ``message_row``) and mark
    the outbox entry it reports a failure of; that entry's id (for a failure) or the entry it names
    (for a delay or a success), None when it names none of this account's."""
    account = bounce.account.lower()
    if bounce.outcome is not None:
        entry = mark_bounced(session, account, bounce.original_message_ids, bounce.outcome)
    else:
        entry = _sent_as(session, account, bounce.original_message_ids)
    session.add(
        BounceRow(
            account=account,
            message_row=message_row,
            outbox_id=entry,
            original_message_id=next(iter(bounce.original_message_ids), None),
            envelope_id=bounce.envelope_id,
            recipient=bounce.recipient,
            action=bounce.action,
            status=bounce.status,
            diagnostic=bounce.diagnostic,
            reporting_mta=bounce.reporting_mta,
            error_class=bounce.outcome.error_class if bounce.outcome is not None else None,
            recipients=list(bounce.recipients),
            received_at=bounce.received_at.astimezone(dt.UTC),
        )
    )
    return entry


def _sent_as(session: Session, account: str, message_ids: Sequence[str]) -> int | None:
    wanted = [message_id for message_id in message_ids if message_id][:20]
    if not wanted:
        return None
    query = (
        select(OutboxRow.id)
        .where(OutboxRow.account == account, OutboxRow.message_id.in_(wanted))
        .order_by(OutboxRow.id.desc())
        .limit(1)
    )
    return session.scalar(query)


class Bounces:
    """The recorded DSNs of one state store."""

    def __init__(self, store: StateStore):
        self._store = store

    def bounces(self, *, account: str | None = None, outbox_id: int | None = None) -> list[Bounce]:
        """The DSNs recorded, oldest first; of ``account``, or about the outbox entry ``outbox_id``."""
        if not self._store.exists:
            return []
        query = select(BounceRow).order_by(BounceRow.id)
        if account is not None:
            query = query.where(BounceRow.account == account.lower())
        if outbox_id is not None:
            query = query.where(BounceRow.outbox_id == outbox_id)
        with self._store.session() as session:
            return [
                Bounce(
                    id=row.id,
                    account=row.account,
                    message_row=row.message_row,
                    outbox_id=row.outbox_id,
                    original_message_id=row.original_message_id,
                    envelope_id=row.envelope_id,
                    recipient=row.recipient,
                    action=row.action,
                    status=row.status,
                    diagnostic=row.diagnostic,
                    reporting_mta=row.reporting_mta,
                    error_class=row.error_class,
                    received_at=aware(row.received_at),
                )
                for row in session.scalars(query)
            ]
