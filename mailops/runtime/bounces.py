"""Bounces: a delivery status notification in an account's inbox marks the outbox entry it reports on.

Many failures come after the SMTP server took the mail: the receiving side refuses it later and
the sending side's server mails a DSN back to the envelope sender, which is the account. The
importer hands every DSN it reads to :class:`BounceWrite`, which, in the DSN's own import
transaction, finds the account's outbox entry by the original Message-ID (from the returned
message or header, else ``Original-Envelope-Id``) and marks it ``bounced`` with the report's
Status, Diagnostic-Code and Reporting-MTA, classified like any other failure. A DSN never becomes a
ticket or gets an auto-reply; one that names no entry of the account goes to its archive, for a
person to look at.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailops.runtime.dsn import DeliveryReport, RecipientStatus
from mailops.state.bounces import NewBounce, record_in
from mailops.state.outbox import OutboxStatus, Outcome
from mailops.state.tickets import ArchiveState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailops.state.tables import MessageRow

MAX_REPLY = 2000  # characters of the outbox entry's reply text


@dataclass
class BounceWrite:
    """The writes of one DSN's import transaction (see the module doc); afterwards ``outbox_id`` is the
    entry it matched (None: none, and the DSN is archived)."""

    bounce: NewBounce
    outbox_id: int | None = None

    @property
    def is_failure(self) -> bool:
        return self.bounce.outcome is not None

    def __call__(self, session: Session, row: MessageRow) -> None:
        self.outbox_id = record_in(session, self.bounce, row.id)
        if self.outbox_id is None:
            row.archive_state = ArchiveState.ARCHIVED.value


def bounce_of(report: DeliveryReport, account: str, received_at: dt.datetime) -> BounceWrite:
    """What the DSN ``report``, arrived in ``account``'s inbox, records."""
    failed = report.failed
    first = failed[0] if failed else (report.recipients[0] if report.recipients else None)
    return BounceWrite(
        NewBounce(
            account=account,
            original_message_ids=report.original_ids(),
            envelope_id=report.envelope_id,
            recipient=first.recipient if first is not None else "",
            action=(first.action or ("failed" if first.failed else "")) if first is not None else "",
            status=first.status if first is not None else None,
            diagnostic=first.diagnostic if first is not None else None,
            reporting_mta=report.reporting_mta,
            received_at=received_at,
            recipients=[recipient.as_dict() for recipient in report.recipients],
            outcome=_outcome(failed, report.reporting_mta) if failed else None,
        )
    )


def _outcome(failed: tuple[RecipientStatus, ...], reporting_mta: str | None) -> Outcome:
    """How the outbox entry ends: the first failed recipient's codes, every failed recipient in the text."""
    from mailops.outbox.classify import classify, remedy  # pandas: paid only when a DSN arrives

    first = failed[0]
    reply = "; ".join(f"{r.recipient or 'a recipient'}: {r.diagnostic or _status_text(r)}" for r in failed)
    if reporting_mta:
        reply += f" (reported by {reporting_mta})"
    reply = f"Delivery failed after sending: {reply}"[:MAX_REPLY]
    # RFC 3463 X.1.X is an addressing status: the recipient, as a refusal at RCPT would be.
    hint = "recipient_refused" if first.status is not None and first.status[2:4] == "1." else None
    error_class = classify(first.diagnostic or reply, first.smtp_code, first.status, hint)
    return Outcome(
        OutboxStatus.BOUNCED,
        reply=reply,
        smtp_code=first.smtp_code,
        enhanced_code=first.status,
        error_class=error_class,
        remedy=remedy(error_class).long,
    )


def _status_text(recipient: RecipientStatus) -> str:
    return f"Status {recipient.status}" if recipient.status else "no reason given"
