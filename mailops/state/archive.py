"""The archive (the seed's "Webmail-Archiv") in the state store: index entries marked ``archived``.

There is one copy of a message: its index row and its .eml file serve the ticket and the archive
alike (:mod:`mailops.state.tickets`). Retention empties an entry instead of deleting its row: the
row's dedupe key keeps the message from being imported again when a mailbox is rebuilt, while
its file and the index's text (From, To, Cc, Subject, Message-ID) are gone. An entry whose ticket
is still open is never purged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update

from mailops.state.tables import MessageRow, TicketRow
from mailops.state.tickets import QUERY_CHUNK, ArchiveState, IndexedMessage, TicketStatus, message_view

if TYPE_CHECKING:
    from mailops.state.store import StateStore


@dataclass(frozen=True)
class Purged:
    """What one retention purge of an account did."""

    entries: int  # emptied now
    kept_open: int  # past retention, kept because their ticket is open
    files: frozenset[str]  # the SHA-256 of the .eml files those entries had (others may still use one)


class Archive:
    """The archive entries of one state store."""

    def __init__(self, store: StateStore):
        self._store = store

    def purge(self, account: str, before: dt.datetime) -> Purged:
        """Empty ``account``'s archive entries received before ``before`` whose ticket is not open, in
        transactions of a bounded size. A reply that reopens a ticket meanwhile keeps its thread's
        entries: each update checks the ticket again."""
        open_tickets = select(TicketRow.id).where(TicketRow.status == TicketStatus.OPEN.value)
        expired = and_(
            MessageRow.account == account.lower(),
            MessageRow.archive_state == ArchiveState.ARCHIVED.value,
            MessageRow.received_at < before.astimezone(dt.UTC),
        )
        purgeable = and_(expired, or_(MessageRow.ticket_id.is_(None), MessageRow.ticket_id.not_in(open_tickets)))
        emptied = {
            "archive_state": ArchiveState.PURGED.value,
            "raw_kept": False,
            "message_id": None,
            "sender": "",
            "to_addresses": [],
            "cc_addresses": [],
            "subject": "",
        }
        entries, files = 0, set[str]()
        while True:
            with self._store.session() as session:
                query = select(MessageRow.id, MessageRow.raw_sha256).where(purgeable).limit(QUERY_CHUNK)
                found = {row_id: sha256 for row_id, sha256 in session.execute(query)}
                if not found:
                    break
                result = session.execute(
                    update(MessageRow).where(MessageRow.id.in_(list(found)), purgeable).values(**emptied)
                )
                entries += int(getattr(result, "rowcount", 0) or 0)
                files.update(found.values())
        with self._store.session() as session:
            kept = session.scalar(
                select(func.count(MessageRow.id)).where(expired, MessageRow.ticket_id.in_(open_tickets))
            )
        return Purged(entries, int(kept or 0), frozenset(files))

    def unreferenced(self, files: Sequence[str]) -> list[str]:
        """Those of ``files`` (SHA-256) that no index entry keeps any more: their .eml may go."""
        wanted = sorted(set(files))
        used: set[str] = set()
        with self._store.session() as session:
            for start in range(0, len(wanted), QUERY_CHUNK):
                chunk = wanted[start : start + QUERY_CHUNK]
                query = select(MessageRow.raw_sha256).where(MessageRow.raw_sha256.in_(chunk), MessageRow.raw_kept)
                used.update(session.scalars(query))
        return [sha256 for sha256 in wanted if sha256 not in used]

    # -- reading ----------------------------------------------------------------------------

    def entries(
        self,
        *,
        accounts: set[str] | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[IndexedMessage]:
        """Archive entries, the latest received first; ``accounts`` (lower-cased) limits them to what the
        acting user may see, ``since`` to mail received from then on."""
        if not self._store.exists:
            return []
        query = self._query(accounts, account, since).order_by(MessageRow.received_at.desc(), MessageRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._store.session() as session:
            return [message_view(row) for row in session.scalars(query)]

    def walk(
        self,
        *,
        accounts: set[str] | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
    ) -> Iterator[IndexedMessage]:
        """Every archive entry, the latest imported first, read in chunks (for a search that reads each one)."""
        if not self._store.exists:
            return
        below: int | None = None
        while True:
            query = self._query(accounts, account, since).order_by(MessageRow.id.desc()).limit(QUERY_CHUNK)
            if below is not None:
                query = query.where(MessageRow.id < below)
            with self._store.session() as session:
                chunk = [message_view(row) for row in session.scalars(query)]
            if not chunk:
                return
            yield from chunk
            below = chunk[-1].id

    def entry(self, entry_id: int) -> IndexedMessage | None:
        """One archive entry (a purged one is no longer in the archive)."""
        if not self._store.exists:
            return None
        with self._store.session() as session:
            row = session.get(MessageRow, entry_id)
            if row is None or row.archive_state != ArchiveState.ARCHIVED.value:
                return None
            return message_view(row)

    @staticmethod
    def _query(accounts: set[str] | None, account: str | None, since: dt.datetime | None) -> Any:
        query = select(MessageRow).where(MessageRow.archive_state == ArchiveState.ARCHIVED.value)
        if accounts is not None:
            query = query.where(MessageRow.account.in_(sorted(accounts)))
        if account is not None:
            query = query.where(MessageRow.account == account.lower())
        if since is not None:
            query = query.where(MessageRow.received_at >= since.astimezone(dt.UTC))
        return query
