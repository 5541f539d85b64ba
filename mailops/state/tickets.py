"""Tickets and the index of imported messages in the state store, as read-only views and their queries.

The importer (:mod:`mailops.runtime.ticket_import`) records each message in one transaction:
its ticket (new, or the thread it answers; none for an account without ticket import, or for a
delivery report), its index row (an archive entry too, where the account archives), whatever else
belongs to the message (a bounce, an auto-reply claim) and the highest UID of its folder dealt
with. Plain mail (nothing else to write) is recorded a group at a time (:meth:`Tickets.record_group`):
one transaction holds each message's ticket and row, and the group commits whole or not at all, so
each message is still imported entirely or not at all, for one commit instead of one per message.
What makes a message the same as one already stored is its ``dedupe_key`` (see
:func:`message_key`), unique per account in the database: a message is never imported twice,
even by two workers at once or after a crash at any point.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailops.state.accounts import aware, utcnow
from mailops.state.schema import StateError
from mailops.state.tables import MailSyncRow, MessageRow, TicketRow

if TYPE_CHECKING:
    from mailops.state.store import StateStore

QUERY_CHUNK = 500  # SQLite's bound on query parameters
# The tables, for the statements of the import (a batch at a time, of every pass): on an ORM entity, a statement
# goes through the ORM's bulk and synchronisation steps, which cost more than the rows they write.
_MESSAGES, _TICKETS = cast(Table, MessageRow.__table__), cast(Table, TicketRow.__table__)
_SYNC = cast(Table, MailSyncRow.__table__)


class TicketStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ArchiveState(StrEnum):
    """Where an index entry stands in the account's archive (None: it is not in it)."""

    ARCHIVED = "archived"
    PURGED = "purged"  # its retention ended: the file and the index's text are gone, the row stays


class ServerState(StrEnum):
    """Where an imported message stands on the mail server."""

    KEPT = "kept"
    DELETE_PENDING = "delete_pending"  # stored; to be deleted on the server (`delete_after_import`)
    DELETED = "deleted"


def message_key(message_id: str) -> str:
    """The dedupe key of a message with a Message-ID: two messages with the same Message-ID are one."""
    return hashlib.sha256(b"message-id:" + message_id.encode("utf-8", "surrogatepass")).hexdigest()


def raw_key(raw_sha256: str) -> str:
    """The dedupe key of a message without a Message-ID: the same bytes are the same message."""
    return hashlib.sha256(b"raw:" + raw_sha256.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Ticket:
    id: int
    account: str
    queue: str | None
    project: str | None
    status: str
    subject: str
    created_at: dt.datetime
    updated_at: dt.datetime
    message_count: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class IndexedMessage:
    """One imported message as the index holds it; the message itself is the .eml file ``raw_sha256``."""

    id: int
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    sent_at: dt.datetime | None
    received_at: dt.datetime
    size: int
    raw_sha256: str
    ticket_id: int | None
    imported_at: dt.datetime
    server_state: str
    archive_state: str | None = None  # archived | purged | None (not in the archive)
    raw_kept: bool = True  # the .eml file ``raw_sha256`` is kept for this entry

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class NewMessage:
    """What the importer knows of a message it is about to record."""

    account: str
    folder: str
    uidvalidity: int
    uid: int
    dedupe_key: str
    message_id: str | None
    sender: str
    to: Sequence[str]
    cc: Sequence[str]
    subject: str
    sent_at: dt.datetime | None
    received_at: dt.datetime
    size: int
    raw_sha256: str
    # The dedupe keys of the messages it answers (In-Reply-To first, then References, newest first).
    thread_keys: Sequence[str] = ()


@dataclass(frozen=True)
class Recording:
    """A message of a group for :meth:`Tickets.record_group`, with what :meth:`Tickets.record` takes for one."""

    message: NewMessage
    ticket: bool  # it is a ticket's (new, or the one of its thread)
    archive: bool
    raw_kept: bool
    delete_on_server: bool


@dataclass(frozen=True)
class Recorded:
    message_row: int | None  # None: recorded in a group, whose row ids are not read back
    ticket_id: int | None  # None: the message is no ticket's
    new_ticket: bool


# More writes of a message's own transaction, given its new index row (a bounce, an auto-reply claim).
AlsoRecord = Callable[[Session, MessageRow], None]


@dataclass(frozen=True)
class KnownMessage:
    """A message already in the index, as a later look at the server needs it."""

    id: int
    dedupe_key: str
    size: int
    uidvalidity: int
    uid: int
    server_state: str


@dataclass(frozen=True)
class SyncPoint:
    """Where the import of a folder goes on from: UIDs above ``last_uid`` are new.

    ``resynced``: the folder's UIDVALIDITY changed since the last run (its UIDs mean nothing
    now), so the scan starts over and the dedupe keys tell what is stored already.
    ``rescan``: ``import_since`` moved earlier, so older mail is looked at again.
    """

    uidvalidity: int
    last_uid: int
    resynced: bool = False
    previous_uidvalidity: int | None = None
    rescan: bool = False


def _ticket_view(row: TicketRow, message_count: int) -> Ticket:
    return Ticket(
        id=row.id,
        account=row.account,
        queue=row.queue,
        project=row.project,
        status=row.status,
        subject=row.subject,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        message_count=message_count,
    )


def message_view(row: MessageRow) -> IndexedMessage:
    return IndexedMessage(
        id=row.id,
        account=row.account,
        folder=row.folder,
        uidvalidity=row.uidvalidity,
        uid=row.uid,
        message_id=row.message_id,
        sender=row.sender,
        to=tuple(row.to_addresses),
        cc=tuple(row.cc_addresses),
        subject=row.subject,
        sent_at=aware(row.sent_at),
        received_at=aware(row.received_at),
        size=row.size,
        raw_sha256=row.raw_sha256,
        ticket_id=row.ticket_id,
        imported_at=aware(row.imported_at),
        server_state=row.server_state,
        archive_state=row.archive_state,
        raw_kept=row.raw_kept,
    )


def _scanned_less(since: dt.date | None, scanned_since: dt.date | None) -> bool:
    """Whether ``since`` asks for older mail than the scan so far looked at (None: no limit)."""
    return scanned_since is not None and (since is None or since < scanned_since)


class Tickets:
    """The tickets and message index of one state store."""

    def __init__(self, store: StateStore):
        self._store = store

    # -- the importer's writes ------------------------------------------------------------

    def start_sync(self, account: str, folder: str, uidvalidity: int, import_since: dt.date | None) -> SyncPoint:
        """Where to go on in ``folder`` whose UIDVALIDITY is now ``uidvalidity``; starts over when it changed,
        or when ``import_since`` asks for older mail than scanned so far."""
        account = account.lower()
        try:
            with self._store.session() as session:
                row = session.get(MailSyncRow, (account, folder), with_for_update=True)
                now = utcnow()
                if row is None:
                    session.add(
                        MailSyncRow(
                            account=account,
                            folder=folder,
                            uidvalidity=uidvalidity,
                            last_uid=0,
                            import_since=import_since,
                            updated_at=now,
                        )
                    )
                    return SyncPoint(uidvalidity, 0)
                if row.uidvalidity != uidvalidity:
                    previous = row.uidvalidity
                    row.uidvalidity, row.last_uid, row.import_since, row.updated_at = uidvalidity, 0, import_since, now
                    return SyncPoint(uidvalidity, 0, resynced=True, previous_uidvalidity=previous)
                rescan = _scanned_less(import_since, row.import_since)
                if rescan:
                    row.last_uid = 0
                # A later date narrows what the rest of the scan takes: the stored one must say so. Written
                # only when it changes: a pass that finds nothing new then commits nothing (no disk sync).
                if rescan or row.import_since != import_since:
                    row.import_since, row.updated_at = import_since, now
                return SyncPoint(uidvalidity, row.last_uid, rescan=rescan)
        except IntegrityError:  # another worker made the row first
            return self.start_sync(account, folder, uidvalidity, import_since)

    def known(self, account: str, keys: Sequence[str]) -> dict[str, KnownMessage]:
        """The messages of ``account`` already stored, by dedupe key, among ``keys``."""
        found: dict[str, KnownMessage] = {}
        if not keys:
            return found
        # The columns it needs, not the rows: asked for every batch, and whole rows cost more to load.
        table = _MESSAGES.c
        columns = (table.id, table.dedupe_key, table.size, table.uidvalidity, table.uid, table.server_state)
        with self._store.session() as session:
            for start in range(0, len(keys), QUERY_CHUNK):
                chunk = list(keys[start : start + QUERY_CHUNK])
                query = select(*columns).where(table.account == account.lower(), table.dedupe_key.in_(chunk))
                for row_id, key, size, uidvalidity, uid, server_state in session.execute(query):
                    found[key] = KnownMessage(row_id, key, size, uidvalidity, uid, server_state)
        return found

    def record(
        self,
        message: NewMessage,
        *,
        queue: str | None,
        project: str | None,
        close: bool,
        delete_on_server: bool,
        ticket: bool = True,
        archive: bool = False,
        raw_kept: bool = True,
        also: Sequence[AlsoRecord] = (),
    ) -> Recorded | None:
        """Store ``message`` in one transaction: with ``ticket``, a new ticket (closed with ``close``) or
        the one of the thread it answers; its index row (an archive entry with ``archive``; ``raw_kept``:
        its .eml file is stored for it); what ``also`` writes; and its UID as the folder's highest dealt
        with. None when it is stored already (its dedupe key is taken): nothing is changed then.

        A reply reopens a closed ticket, unless ``close`` (auto_close) says imported tickets stay closed.
        """
        account = message.account.lower()
        now = utcnow()
        row_written = False
        try:
            with self._store.session() as session:
                ticket_row = self._thread_of(session, account, message.thread_keys) if ticket else None
                new_ticket = ticket and ticket_row is None
                if new_ticket:
                    status = TicketStatus.CLOSED if close else TicketStatus.OPEN
                    ticket_row = TicketRow(
                        account=account,
                        queue=queue,
                        project=project,
                        status=status.value,
                        subject=message.subject,
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(ticket_row)
                    session.flush()
                elif ticket_row is not None:
                    ticket_row.updated_at = now
                    if ticket_row.status == TicketStatus.CLOSED and not close:
                        ticket_row.status = TicketStatus.OPEN.value
                row = MessageRow(
                    account=account,
                    folder=message.folder,
                    uidvalidity=message.uidvalidity,
                    uid=message.uid,
                    dedupe_key=message.dedupe_key,
                    message_id=message.message_id,
                    sender=message.sender,
                    to_addresses=list(message.to),
                    cc_addresses=list(message.cc),
                    subject=message.subject,
                    sent_at=_utc(message.sent_at),
                    received_at=message.received_at.astimezone(dt.UTC),
                    size=message.size,
                    raw_sha256=message.raw_sha256,
                    ticket_id=ticket_row.id if ticket_row is not None else None,
                    imported_at=now,
                    server_state=(ServerState.DELETE_PENDING if delete_on_server else ServerState.KEPT).value,
                    archive_state=ArchiveState.ARCHIVED.value if archive else None,
                    raw_kept=raw_kept,
                )
                session.add(row)
                session.flush()  # the unique dedupe key is checked here, before the UID moves on
                row_written = True
                for write in also:
                    write(session, row)
                session.execute(_advance(account, message.folder, message.uidvalidity, message.uid, now))
                return Recorded(row.id, row.ticket_id, new_ticket)
        except IntegrityError:
            if row_written:  # not the dedupe key: something else is wrong, and nothing was stored
                raise
            return None

    def record_group(
        self, group: Sequence[Recording], *, queue: str | None, project: str | None, close: bool
    ) -> list[Recorded] | None:
        """Store the messages of ``group`` (one account's and folder's, in UID order, none with writes of
        its own beyond its rows) in ONE transaction, each as :meth:`record` would, in order: a reply joins
        the ticket of its thread also when that came earlier in the group. The highest UID moves to the
        group's last. None when a message of the group is stored already (its dedupe key is taken): then
        nothing is changed (:meth:`known` tells which ones are).

        Core statements, not the ORM, and a few for the whole group: per message, the ORM's unit of work
        costs more than the mail's own parsing.
        """
        if not group:
            return []
        first = group[0].message
        account, folder, uidvalidity = first.account.lower(), first.folder, first.uidvalidity
        now = utcnow()
        try:
            with self._store.session() as session:
                wanted = {key for item in group if item.ticket for key in item.message.thread_keys[:QUERY_CHUNK]}
                stored = self._tickets_by_key(session, account, sorted(wanted))
                # A ticket of this group is ("new", its index among the new ones); a stored one ("stored", id).
                in_group: dict[str, tuple[str, int]] = {}
                chosen: list[tuple[str, int] | None] = []
                opens: list[bool] = []  # the message opens its ticket
                new_subjects: list[str] = []
                for item in group:
                    ticket: tuple[str, int] | None = None
                    if item.ticket:
                        for key in item.message.thread_keys[:QUERY_CHUNK]:  # the nearest message named wins
                            if key in in_group:
                                ticket = in_group[key]
                                break
                            if key in stored:
                                ticket = ("stored", stored[key])
                                break
                    opens.append(item.ticket and ticket is None)
                    if opens[-1]:
                        ticket = ("new", len(new_subjects))
                        new_subjects.append(item.message.subject)
                    if ticket is not None:
                        in_group[item.message.dedupe_key] = ticket
                    chosen.append(ticket)
                new_ids = self._new_tickets(session, account, new_subjects, queue, project, close, now)
                rows, results = [], []
                for item, ticket, opened in zip(group, chosen, opens, strict=True):
                    ticket_id = None if ticket is None else new_ids[ticket[1]] if ticket[0] == "new" else ticket[1]
                    rows.append(_row_values(item, account, ticket_id, now))
                    results.append(Recorded(None, ticket_id, opened))
                session.execute(insert(_MESSAGES), rows)  # the unique dedupe key is checked here
                answered = sorted({ticket[1] for ticket in chosen if ticket is not None and ticket[0] == "stored"})
                self._touch(session, answered, close, now)
                last = max(item.message.uid for item in group)
                session.execute(_advance(account, folder, uidvalidity, last, now))
                return results
        except IntegrityError:
            return None

    @staticmethod
    def _tickets_by_key(session: Session, account: str, keys: Sequence[str]) -> dict[str, int]:
        """The tickets of the stored messages of ``account`` among ``keys``, by dedupe key."""
        found: dict[str, int] = {}
        for start in range(0, len(keys), QUERY_CHUNK):
            table = _MESSAGES.c
            query = select(table.dedupe_key, table.ticket_id).where(
                table.account == account,
                table.dedupe_key.in_(keys[start : start + QUERY_CHUNK]),
                table.ticket_id.is_not(None),
            )
            for key, ticket_id in session.execute(query):
                if ticket_id is not None:  # the query says so; the type cannot
                    found[key] = ticket_id
        return found

    @staticmethod
    def _new_tickets(
        session: Session,
        account: str,
        subjects: Sequence[str],
        queue: str | None,
        project: str | None,
        close: bool,
        now: dt.datetime,
    ) -> list[int]:
        """Insert one ticket per subject; their ids, in order."""
        if not subjects:
            return []
        status = (TicketStatus.CLOSED if close else TicketStatus.OPEN).value
        values = [
            {
                "account": account,
                "queue": queue,
                "project": project,
                "status": status,
                "subject": subject,
                "created_at": now,
                "updated_at": now,
            }
            for subject in subjects
        ]
        if session.get_bind().dialect.name != "sqlite":
            statement = insert(_TICKETS).returning(_TICKETS.c.id, sort_by_parameter_order=True)
            return [int(ticket_id) for ticket_id in session.scalars(statement, values)]
        # SQLite cannot say which returned id is which inserted row (SQLAlchemy would insert them one at a time,
        # at a cost per row above the row's own). But this transaction now holds the database's only write
        # lock, and a new row gets the largest id plus one: the new tickets are the last ids, in order.
        session.execute(insert(_TICKETS), values)
        query = select(_TICKETS.c.id, _TICKETS.c.account, _TICKETS.c.subject).order_by(_TICKETS.c.id.desc())
        last = session.execute(query.limit(len(values))).all()[::-1]
        if [(account, subject) for _id, account, subject in last] != [(account, subject) for subject in subjects]:
            raise StateError("the new tickets' ids could not be read back")  # the transaction is rolled back
        return [int(ticket_id) for ticket_id, _account, _subject in last]

    @staticmethod
    def _touch(session: Session, ticket_ids: Sequence[int], close: bool, now: dt.datetime) -> None:
        """Stored tickets that got a reply: updated now, and reopened unless ``close`` (auto_close)."""
        for start in range(0, len(ticket_ids), QUERY_CHUNK):
            chunk = list(ticket_ids[start : start + QUERY_CHUNK])
            session.execute(update(_TICKETS).where(_TICKETS.c.id.in_(chunk)).values(updated_at=now))
            if not close:
                reopen = _TICKETS.c.id.in_(chunk), _TICKETS.c.status == TicketStatus.CLOSED.value
                session.execute(update(_TICKETS).where(*reopen).values(status=TicketStatus.OPEN.value))

    @staticmethod
    def _thread_of(session: Any, account: str, thread_keys: Sequence[str]) -> TicketRow | None:
        if not thread_keys:
            return None
        keys = list(thread_keys)[:QUERY_CHUNK]
        query = select(MessageRow.dedupe_key, MessageRow.ticket_id).where(
            MessageRow.account == account, MessageRow.dedupe_key.in_(keys), MessageRow.ticket_id.is_not(None)
        )
        tickets = {key: ticket_id for key, ticket_id in session.execute(query)}
        for key in keys:  # the nearest message the new one names wins
            if key in tickets:
                row: TicketRow | None = session.get(TicketRow, tickets[key])
                return row
        return None

    def advance(self, account: str, folder: str, uidvalidity: int, uid: int) -> None:
        """Every UID up to ``uid`` is dealt with (imported, or skipped for good)."""
        with self._store.session() as session:
            session.execute(_advance(account.lower(), folder, uidvalidity, uid, utcnow()))

    def relocate(self, moves: Sequence[tuple[int, int]], uidvalidity: int) -> None:
        """Stored messages found again at new UIDs, as ``(row id, uid)``, after UIDVALIDITY changed."""
        if not moves:
            return
        with self._store.session() as session:
            for row_id, uid in moves:
                session.execute(
                    update(MessageRow).where(MessageRow.id == row_id).values(uidvalidity=uidvalidity, uid=uid)
                )

    def pending_deletions(
        self, account: str, folder: str, uidvalidity: int, *, limit: int
    ) -> list[tuple[int, int, str]]:
        """Stored messages still to be deleted on the server, as ``(row id, uid, raw SHA-256)``, lowest UID
        first."""
        query = (
            select(MessageRow.id, MessageRow.uid, MessageRow.raw_sha256)
            .where(
                MessageRow.account == account.lower(),
                MessageRow.folder == folder,
                MessageRow.uidvalidity == uidvalidity,
                MessageRow.server_state == ServerState.DELETE_PENDING.value,
            )
            .order_by(MessageRow.uid)
            .limit(limit)
        )
        with self._store.session() as session:
            return [(row_id, uid, sha256) for row_id, uid, sha256 in session.execute(query)]

    def mark_deleted(self, row_ids: Sequence[int]) -> None:
        with self._store.session() as session:
            for start in range(0, len(row_ids), QUERY_CHUNK):
                chunk = list(row_ids[start : start + QUERY_CHUNK])
                session.execute(
                    update(MessageRow).where(MessageRow.id.in_(chunk)).values(server_state=ServerState.DELETED.value)
                )

    # -- reading ----------------------------------------------------------------------------

    def tickets(
        self,
        *,
        accounts: set[str] | None = None,
        queue: str | None = None,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[Ticket]:
        """The tickets, newest first; ``accounts`` (lower-cased) limits them to what the acting user may see."""
        if not self._store.exists:
            return []
        count = select(func.count(MessageRow.id)).where(MessageRow.ticket_id == TicketRow.id).scalar_subquery()
        query = select(TicketRow, count).order_by(TicketRow.id.desc())
        if accounts is not None:
            query = query.where(TicketRow.account.in_(sorted(accounts)))
        if queue is not None:
            query = query.where(TicketRow.queue == queue)
        if project is not None:
            query = query.where(TicketRow.project == project)
        if status is not None:
            query = query.where(TicketRow.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self._store.session() as session:
            return [_ticket_view(row, messages) for row, messages in session.execute(query)]

    def ticket(self, ticket_id: int) -> Ticket | None:
        if not self._store.exists:
            return None
        with self._store.session() as session:
            row = session.get(TicketRow, ticket_id)
            if row is None:
                return None
            count = session.scalar(select(func.count(MessageRow.id)).where(MessageRow.ticket_id == ticket_id))
            return _ticket_view(row, int(count or 0))

    def messages(self, *, ticket_id: int | None = None, account: str | None = None) -> list[IndexedMessage]:
        """Indexed messages, oldest first: those of a ticket, or of an account."""
        if not self._store.exists:
            return []
        query = select(MessageRow).order_by(MessageRow.id)
        if ticket_id is not None:
            query = query.where(MessageRow.ticket_id == ticket_id)
        if account is not None:
            query = query.where(MessageRow.account == account.lower())
        with self._store.session() as session:
            return [message_view(row) for row in session.scalars(query)]


def _row_values(item: Recording, account: str, ticket_id: int | None, now: dt.datetime) -> dict[str, Any]:
    """The index row of a message of a group, as :meth:`Tickets.record` writes it."""
    message = item.message
    return {
        "account": account,
        "folder": message.folder,
        "uidvalidity": message.uidvalidity,
        "uid": message.uid,
        "dedupe_key": message.dedupe_key,
        "message_id": message.message_id,
        "sender": message.sender,
        "to_addresses": list(message.to),
        "cc_addresses": list(message.cc),
        "subject": message.subject,
        "sent_at": _utc(message.sent_at),
        "received_at": message.received_at.astimezone(dt.UTC),
        "size": message.size,
        "raw_sha256": message.raw_sha256,
        "ticket_id": ticket_id,
        "imported_at": now,
        "server_state": (ServerState.DELETE_PENDING if item.delete_on_server else ServerState.KEPT).value,
        "archive_state": ArchiveState.ARCHIVED.value if item.archive else None,
        "raw_kept": item.raw_kept,
    }


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite keeps a time without its offset, and everything stored is read back as UTC (``aware``).
    return value.astimezone(dt.UTC) if value is not None else None


def _advance(account: str, folder: str, uidvalidity: int, uid: int, now: dt.datetime) -> Any:
    # Only forward, and only while the folder is still the one these UIDs belong to.
    return (
        update(_SYNC)
        .where(
            _SYNC.c.account == account,
            _SYNC.c.folder == folder,
            _SYNC.c.uidvalidity == uidvalidity,
            _SYNC.c.last_uid < uid,
        )
        .values(last_uid=uid, updated_at=now)
    )
