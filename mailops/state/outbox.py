"""The outbox log in the state store: every attempt to send a mail, as a read-only view and its queries.

An attempt is written `queued` before a byte goes to the server, then updated to
`sent` or `failed`; a process that dies in between leaves `queued` rows, which
`mailops outbox retry` sends again (delivery is at least once). Writes come in batches
(one transaction for many rows), so that logging keeps up with sending.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, Select, bindparam, case, func, select, update

from mailops.state.accounts import aware, utcnow
from mailops.state.tables import OutboxRow

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.orm import Session

    from mailops.state.store import StateStore


class OutboxStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    # The server took it, and a delivery status notification (RFC 3464) came back later: see
    # mailops.runtime.bounces. Last, so that the others keep their positions.
    BOUNCED = "bounced"


@dataclass(frozen=True)
class NewAttempt:
    """What is known of an attempt before it is sent."""

    account: str
    sender: str
    sender_name: str
    to: Sequence[str]
    cc: Sequence[str]
    bcc: Sequence[str]
    subject: str
    preview: str
    message_id: str
    project: str | None = None
    acting_user: str | None = None
    attempt: int = 1
    retry_of: int | None = None
    raw: bytes | None = None  # the whole message: needed until it is sent, kept after only by policy
    raw_expires_at: dt.datetime | None = None  # until when the policy keeps it after sending


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended; ``retry_later``: a passing failure, kept whole for `outbox retry`."""

    status: OutboxStatus
    reply: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    error_class: str | None = None
    remedy: str | None = None
    retry_later: bool = False


@dataclass(frozen=True)
class ImportedAttempt:
    """A finished attempt from another system's outbox log; ``key`` tells one row from another."""

    key: str
    created_at: dt.datetime
    sender: str
    to: Sequence[str]
    cc: Sequence[str]
    bcc: Sequence[str]
    subject: str
    status: OutboxStatus
    reply: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    error_class: str | None = None
    remedy: str | None = None


def _chunks(items: Iterable[ImportedAttempt], size: int) -> Iterator[list[ImportedAttempt]]:
    """``items`` in lists of ``size`` (the last shorter); itertools.batched from Python 3.12 on."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@functools.cache
def _import_stage() -> Table:
    """The temporary table that :meth:`Outbox.record_imported` writes the rows of an import to first: the outbox's
    columns but its id, without their defaults (:func:`_imported_row` sets what the outbox needs)."""
    from sqlalchemy import Column, MetaData, Table

    columns = [Column(column.name, column.type) for column in OutboxRow.__table__.columns if column.name != "id"]
    return Table("outbox_import_stage", MetaData(), *columns, prefixes=["TEMPORARY"])


def _imported_row(attempt: ImportedAttempt, now: dt.datetime) -> dict[str, Any]:
    return {
        "created_at": attempt.created_at,
        "updated_at": now,
        "source": IMPORTED,
        "account": attempt.sender.lower(),
        "sender": attempt.sender,
        "sender_name": "",
        "to_addresses": list(attempt.to),
        "cc_addresses": list(attempt.cc),
        "bcc_addresses": list(attempt.bcc),
        "subject": attempt.subject,
        "preview": "",
        "message_id": attempt.key,
        "status": attempt.status.value,
        "reply": attempt.reply,
        "smtp_code": attempt.smtp_code,
        "enhanced_code": attempt.enhanced_code,
        "error_class": attempt.error_class,
        "remedy": attempt.remedy,
        "attempt": 1,
    }


IMPORTED = "import"
_IMPORT_CHUNK = 500  # imported rows looked up and written at a time (SQLite's bound on a statement's parameters)
OWNER = f"{socket.gethostname()} {os.getpid()}"
ORPHANED_AFTER = dt.timedelta(hours=1)


HEARTBEAT = dt.timedelta(minutes=1)  # how often a sending process shows it is alive


def _abandoned(owner: str | None, updated_at: dt.datetime, now: dt.datetime) -> bool:
    """An attempt no process looks after: none owns it, its owner on this host no longer runs,
    or its owner has been silent for an hour (a live sender beats every minute; a process
    number may have been taken by another program since)."""
    if owner is None:
        return True
    if now - updated_at > ORPHANED_AFTER:
        return True
    host, _, pid = owner.rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive, someone else's; or no process number at all
        return False
    return False


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    created_at: dt.datetime
    updated_at: dt.datetime
    source: str
    account: str
    project: str | None
    acting_user: str | None
    sender: str
    sender_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str
    preview: str
    message_id: str
    status: str
    attempt: int
    retry_of: int | None
    reply: str | None
    smtp_code: int | None
    enhanced_code: str | None
    error_class: str | None
    remedy: str | None
    has_raw: bool = field(default=False)
    owner: str | None = field(default=None, repr=False)  # the process looking after it; internal

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "owner"}


def _view(row: OutboxRow | Row[Any], has_raw: bool | None = None) -> OutboxEntry:
    """The entry of ``row``, mapped or plain; ``has_raw`` is given when it was read without its bytes
    (:func:`_listing`)."""
    return OutboxEntry(
        id=row.id,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        source=row.source,
        account=row.account,
        project=row.project,
        acting_user=row.acting_user,
        sender=row.sender,
        sender_name=row.sender_name,
        to=tuple(row.to_addresses),
        cc=tuple(row.cc_addresses),
        bcc=tuple(row.bcc_addresses),
        subject=row.subject,
        preview=row.preview,
        message_id=row.message_id,
        status=row.status,
        attempt=row.attempt,
        retry_of=row.retry_of,
        reply=row.reply,
        smtp_code=row.smtp_code,
        enhanced_code=row.enhanced_code,
        error_class=row.error_class,
        remedy=row.remedy,
        has_raw=row.raw is not None if has_raw is None else has_raw,
        owner=row.owner,
    )


# The fields of OutboxEntry named otherwise than their columns.
_ENTRY_FIELD = {"to_addresses": "to", "cc_addresses": "cc", "bcc_addresses": "bcc"}


def _listing() -> Select[Any]:
    """Every column but the message's bytes (and when they expire), and whether they are kept, as plain
    rows: a list never shows the bytes, and they are most of a row (a million entries with them would not
    fit in memory); plain rows cost a third of what mapped objects do. :func:`_view` reads them by name,
    as it reads a mapped row."""
    columns = [column for column in OutboxRow.__table__.c if column.name not in ("raw", "raw_expires_at")]
    return select(*columns, OutboxRow.raw.is_not(None).label("has_raw"))


def _new_row(attempt: NewAttempt, source: str, now: dt.datetime) -> OutboxRow:
    return OutboxRow(
        created_at=now,
        updated_at=now,
        source=source,
        account=attempt.account.lower(),
        project=attempt.project,
        acting_user=attempt.acting_user,
        sender=attempt.sender,
        sender_name=attempt.sender_name,
        to_addresses=list(attempt.to),
        cc_addresses=list(attempt.cc),
        bcc_addresses=list(attempt.bcc),
        subject=attempt.subject,
        preview=attempt.preview,
        message_id=attempt.message_id,
        status=OutboxStatus.QUEUED.value,
        attempt=attempt.attempt,
        retry_of=attempt.retry_of,
        raw=attempt.raw,
        raw_expires_at=attempt.raw_expires_at,
        owner=OWNER,
    )


def _outcome_values(outcome: Outcome) -> dict[str, Any]:
    return {
        "status": outcome.status.value,
        "owner": None,
        "reply": outcome.reply,
        "smtp_code": outcome.smtp_code,
        "enhanced_code": outcome.enhanced_code,
        "error_class": outcome.error_class,
        "remedy": outcome.remedy,
    }


def _still_left(entry: OutboxEntry) -> list[Any]:
    """The conditions under which ``entry`` is still as :meth:`Outbox.orphans` saw it: not tried again, and with
    the same status and owner (another `outbox retry` may have taken it meanwhile)."""
    retried = select(OutboxRow.retry_of).where(OutboxRow.retry_of.is_not(None)).scalar_subquery()
    owner = OutboxRow.owner.is_(None) if entry.owner is None else OutboxRow.owner == entry.owner
    return [OutboxRow.id == entry.id, OutboxRow.status == entry.status, OutboxRow.id.not_in(retried), owner]


class Outbox:
    """The outbox log of one state store."""

    def __init__(self, store: StateStore):
        self._store = store

    def queue(self, attempts: Sequence[NewAttempt], *, source: str = "mailops") -> list[int]:
        """Write ``attempts`` as `queued`, in one transaction; their ids, in order."""
        if not attempts or not self._store.exists:
            return []
        now = utcnow()
        rows = [_new_row(attempt, source, now) for attempt in attempts]
        with self._store.session() as session:
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def finish(self, outcomes: Iterable[tuple[int, Outcome]]) -> None:
        """Record how attempts ended, in one transaction.

        The whole message is dropped once it needs no further try, unless the policy
        keeps it (its ``raw_expires_at``).
        """
        now = utcnow()
        values: list[dict[str, Any]] = []
        finished: list[dict[str, Any]] = []  # the attempts that need no further try
        for entry_id, outcome in outcomes:
            values.append({"b_id": entry_id} | {f"b_{name}": value for name, value in _outcome_values(outcome).items()})
            if not outcome.retry_later:
                finished.append({"b_id": entry_id})
        if not values:
            return
        by_id = OutboxRow.id == bindparam("b_id")
        columns: dict[str, Any] = {name: bindparam(f"b_{name}") for name in _outcome_values(Outcome(OutboxStatus.SENT))}
        outcome_of = update(OutboxRow).where(by_id).values(updated_at=now, **columns)
        drop_raw = update(OutboxRow).where(by_id, OutboxRow.raw_expires_at.is_(None)).values(raw=None)
        with self._store.session() as session:  # one statement for many rows (executemany), each
            connection = session.connection()
            connection.execute(outcome_of, values)
            if finished:
                connection.execute(drop_raw, finished)

    def record_imported(self, attempts: Iterable[ImportedAttempt]) -> int:
        """Add another system's finished attempts, marked as imported, in one transaction; how many were new (a
        row imported before, by its ``key``, is not added again). The keys of one call must differ.

        The rows are first written a chunk at a time to a temporary table of this connection, which locks nothing
        that another process uses; then one statement under the import lock adds those whose key the outbox does
        not hold yet. So SQLite's one write lock is held only for that statement, not while the rows are made, and
        two imports at once take turns: the second finds the first's rows.
        """
        from sqlalchemy import exists, insert

        from mailops.state.store import IMPORT_LOCK, lock_writers

        stage = _import_stage()
        with self._store.connection() as connection:
            stage.create(connection, checkfirst=True)  # a connection of the pool may hold one left by a failure
            connection.execute(stage.delete())
            try:
                now = utcnow()
                for chunk in _chunks(attempts, _IMPORT_CHUNK):
                    connection.execute(stage.insert(), [_imported_row(attempt, now) for attempt in chunk])
                connection.commit()
                lock_writers(connection, IMPORT_LOCK)
                known = exists().where(OutboxRow.source == IMPORTED, OutboxRow.message_id == stage.c.message_id)
                added = connection.execute(select(func.count()).select_from(stage).where(~known)).scalar_one()
                names = [column.name for column in stage.c]  # (drivers differ in the rowcount of INSERT ... SELECT)
                connection.execute(insert(OutboxRow).from_select(names, select(*stage.c).where(~known)))
                connection.commit()
            finally:
                connection.rollback()
                stage.drop(connection)
                connection.commit()
        return int(added)

    def orphans(self) -> list[OutboxEntry]:
        """Attempts left behind: queued by a process that is gone (or silent for an hour), and
        failed ones that are worth another try and not tried again yet. Oldest first."""
        if not self._store.exists:
            return []
        retried = select(OutboxRow.retry_of).where(OutboxRow.retry_of.is_not(None))
        query = (
            select(OutboxRow)
            .where(OutboxRow.raw.is_not(None), OutboxRow.id.not_in(retried))
            .where(OutboxRow.status.in_([OutboxStatus.QUEUED.value, OutboxStatus.FAILED.value]))
            .order_by(OutboxRow.id)
        )
        now = utcnow()
        with self._store.session() as session:
            rows = list(session.scalars(query))
            return [_view(row) for row in rows if _abandoned(row.owner, aware(row.updated_at), now)]

    def take_over(self, entry: OutboxEntry, attempt: NewAttempt, interrupted: Outcome | None = None) -> int | None:
        """Queue ``attempt`` as the next try of the left-behind ``entry``; its id, or None when another
        process took ``entry`` over first. One transaction: ``entry`` is claimed only if it is still as
        :meth:`orphans` saw it (compare and set), closed with ``interrupted`` if it was still queued,
        and its whole message dropped unless the policy keeps it (the new attempt carries it).
        """
        values: dict[str, Any] = {"owner": OWNER, "updated_at": utcnow()}
        if interrupted is not None:
            values |= _outcome_values(interrupted)
        with self._store.session() as session:
            claimed = session.execute(update(OutboxRow).where(*_still_left(entry)).values(**values))
            if not getattr(claimed, "rowcount", 0):
                session.rollback()
                return None
            session.execute(
                update(OutboxRow).where(OutboxRow.id == entry.id, OutboxRow.raw_expires_at.is_(None)).values(raw=None)
            )
            row = _new_row(attempt, "mailops", utcnow())
            session.add(row)
            session.flush()
            return row.id

    def close_orphan(self, entry: OutboxEntry, outcome: Outcome | None = None) -> bool:
        """Close the left-behind ``entry`` with no next try, and ``outcome`` when given (a queued one needs
        one): its whole message is dropped, so that nothing sends it again. False when another process took it
        over first (compare and set, as :meth:`take_over`)."""
        values = {"updated_at": utcnow(), "raw": None, "raw_expires_at": None}
        if outcome is not None:
            values |= _outcome_values(outcome)
        with self._store.session() as session:
            closed = session.execute(update(OutboxRow).where(*_still_left(entry)).values(**values))
            return bool(getattr(closed, "rowcount", 0))

    def heartbeat(self) -> None:
        """Show that this process still looks after the attempts it queued (see :func:`_abandoned`)."""
        with self._store.session() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.owner == OWNER, OutboxRow.status == OutboxStatus.QUEUED.value)
                .values(updated_at=utcnow())
            )

    def entries(
        self,
        *,
        accounts: set[str] | None = None,
        status: str | None = None,
        account: str | None = None,
        project: str | None = None,
        error_class: str | None = None,
        since: dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[OutboxEntry]:
        """The attempts, newest first (by time: a log imported later may hold older mail); ``accounts``
        (lower-cased) limits them to what the acting user may see."""
        if not self._store.exists:
            return []
        query = _listing().order_by(OutboxRow.created_at.desc(), OutboxRow.id.desc())
        if accounts is not None:
            query = query.where(OutboxRow.account.in_(sorted(accounts)))
        if status is not None:
            query = query.where(OutboxRow.status == status)
        if account is not None:
            query = query.where(OutboxRow.account == account.lower())
        if project is not None:
            query = query.where(OutboxRow.project == project)
        if error_class is not None:
            query = query.where(OutboxRow.error_class == error_class)
        if since is not None:
            query = query.where(OutboxRow.created_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._store.session() as session:
            return [_view(row, row.has_raw) for row in session.execute(query)]

    def chunks(
        self, *, accounts: set[str] | None = None, since: dt.datetime | None = None, size: int = 10_000
    ) -> Iterator[dict[str, list[Any]]]:
        """The attempts in the order they were logged (by id), read ``size`` at a time, each chunk on its own: what
        ``outbox export`` writes, in memory bounded by the chunk, not by the log (an entry that changes while
        the chunks are read shows as it was when its chunk was). Given as columns, named and holding values as
        the fields of :class:`OutboxEntry` (``owner`` left out); ``accounts`` as in :meth:`entries`.

        Each chunk is asked for by its ids alone and filtered here: a filter in the query may lead the
        database to another index than the ids', and each chunk would then read all the rest."""
        if not self._store.exists:
            return
        after = 0
        if since is not None:  # nothing logged before the first attempt since then is
            with self._store.session() as session:
                first = session.scalar(select(func.min(OutboxRow.id)).where(OutboxRow.created_at >= since))
            if first is None:
                return
            after = first - 1
        while True:
            query = _listing().where(OutboxRow.id > after).order_by(OutboxRow.id).limit(size)
            with self._store.session() as session:
                result = session.connection().execute(query)  # plain rows: no need of the ORM's bookkeeping
                names, rows = [str(name) for name in result.keys()], result.all()
            if not rows:
                return
            after = rows[-1].id
            rows = [
                row
                for row in rows
                if (accounts is None or row.account in accounts) and (since is None or aware(row.created_at) >= since)
            ]
            if not rows:
                continue
            columns = dict(zip(names, (list(values) for values in zip(*rows, strict=True)), strict=True))
            chunk = {_ENTRY_FIELD.get(name, name): values for name, values in columns.items() if name != "owner"}
            for name in ("created_at", "updated_at"):
                chunk[name] = [aware(value) for value in chunk[name]]
            for name in ("to", "cc", "bcc"):
                chunk[name] = [tuple(value) for value in chunk[name]]
            yield chunk

    def entry(self, entry_id: int) -> OutboxEntry | None:
        if not self._store.exists:
            return None
        with self._store.session() as session:
            row = session.get(OutboxRow, entry_id)
            return _view(row) if row is not None else None

    def raw(self, entry_id: int) -> bytes | None:
        """The whole message of an attempt, while the policy keeps it."""
        with self._store.session() as session:
            row = session.get(OutboxRow, entry_id)
            if row is None or row.raw is None:
                return None
            expires = aware(row.raw_expires_at)
            return row.raw if expires is None or expires > utcnow() else None

    def forget_expired_bodies(self) -> int:
        """Drop the kept messages whose time is up; how many."""
        if not self._store.exists:
            return 0
        with self._store.session() as session:
            result = session.execute(
                update(OutboxRow)
                .where(OutboxRow.raw.is_not(None), OutboxRow.raw_expires_at < utcnow())
                .values(raw=None, raw_expires_at=None)
            )
            return int(getattr(result, "rowcount", 0) or 0)


def mark_bounced(session: Session, account: str, message_ids: Sequence[str], outcome: Outcome) -> int | None:
    """Within the caller's transaction, mark the attempt of ``account`` that sent the mail ``message_ids``
    names (the first one any attempt carries) as bounced with ``outcome``; its id, or None when no
    attempt of that account sent such a mail.

    Of several attempts of one mail (tries after a passing failure) the bounce belongs to the latest
    one the server took: sent (or bounced before, by another recipient's report, or left queued
    by a process killed after the server took it); a failed one only when no other exists.
    """
    wanted = [message_id for message_id in message_ids if message_id][:20]
    if not wanted:
        return None
    took_it = case((OutboxRow.status == OutboxStatus.FAILED.value, 0), else_=1)
    query = (
        select(OutboxRow.id, OutboxRow.message_id)
        .where(OutboxRow.account == account.lower(), OutboxRow.message_id.in_(wanted))
        .order_by(took_it.desc(), OutboxRow.id.desc())
    )
    preferred: dict[str, int] = {}
    for found_id, message_id in session.execute(query):
        preferred.setdefault(message_id, found_id)  # the query's order puts the preferred attempt first
    entry_id = next((preferred[message_id] for message_id in wanted if message_id in preferred), None)
    if entry_id is None:
        return None
    values = _outcome_values(replace(outcome, status=OutboxStatus.BOUNCED))
    session.execute(update(OutboxRow).where(OutboxRow.id == entry_id).values(updated_at=utcnow(), **values))
    return entry_id
