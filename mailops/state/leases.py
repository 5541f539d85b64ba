"""Worker leases: which `mailops run` process works on which account, until when.

A lease is a row of ``leases``: an account (lower-cased address) and its owner, a worker named by
host, process id and a random token (two processes with the same pid, say in two containers, are
still two owners), with the time it expires. The owner renews its leases while it works and frees
them when it stops cleanly; a worker that dies keeps them only until they expire, and then another
worker takes them over. Nothing else coordinates the workers.

**PostgreSQL** shares the accounts among any number of workers, on any number of machines. A claim
is one transaction: ``SELECT … FOR UPDATE SKIP LOCKED`` picks rows that are free or expired, so two
workers claiming at once never wait for each other and never take the same row. Each worker also
keeps a row in ``workers``, renewed with its leases, and claims at most its *fair share*:
``ceil(accounts / live workers)``. A worker that holds more than that (it started first and took
everything) frees the rest at its next claim, for the newcomers to take; one that dies no longer
counts once its row expires, and the others' shares grow by what it held. On PostgreSQL a lease
ends only when it is freed or expires: the database cannot know whether a process on another
machine is alive. Times come from the database server's clock, which all machines share.

**SQLite** runs one worker: a single lease on the whole store (``resource`` ``*``), taken with a
compare-and-set update. It is also free when its owner ran on this machine and that process is gone
(a SQLite file is local to one machine), so a worker killed with SIGKILL is not in the way of the
next one.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, event, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from mailops.state.accounts import aware, utcnow
from mailops.state.tables import LeaseRow, WorkerRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailops.state.store import StateStore

WHOLE_STORE = "*"  # the resource of the one lease of a store that runs one worker (no address is "*")
_FREE: dict[str, object] = {
    "owner_host": None,
    "owner_pid": None,
    "owner_token": None,
    "acquired_at": None,
    "expires_at": None,
}


@dataclass(frozen=True)
class LeaseOwner:
    """A worker process as its leases name it."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> LeaseOwner:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(16))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}"


@dataclass(frozen=True)
class Lease:
    """A lease as stored: owner None when it is free."""

    resource: str
    owner: LeaseOwner | None
    acquired_at: dt.datetime | None
    expires_at: dt.datetime | None

    def is_free(self, now: dt.datetime) -> bool:
        return self.owner is None or self.expires_at is None or self.expires_at < now

    def describe(self) -> str:
        """Whose it is, for a message: host, pid and the times (no token)."""
        if self.owner is None:
            return "nobody"
        times = ""
        if self.acquired_at is not None and self.expires_at is not None:
            times = f", since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC until {self.expires_at:%H:%M:%S} UTC"
        return self.owner.describe() + times


@dataclass(frozen=True)
class Claim:
    """What one claim did for a worker, and the share it was entitled to."""

    held: tuple[str, ...]  # the accounts the worker holds now, sorted
    claimed: tuple[str, ...]  # of those, the ones that were free before this claim
    taken_over: tuple[Lease, ...]  # of those, expired leases of another owner, as they were
    released: tuple[str, ...]  # freed: beyond the fair share, or no longer wanted
    held_elsewhere: tuple[Lease, ...]  # wanted accounts that live other workers hold
    workers: int  # the live workers, this one included
    share: int  # ceil(wanted accounts / workers)


def fair_share(accounts: int, workers: int) -> int:
    """How many of ``accounts`` one of ``workers`` live workers may hold: together they hold all of them."""
    return math.ceil(accounts / max(workers, 1))


class Leases:
    """The worker leases of one state store."""

    def __init__(self, store: StateStore):
        self._store = store
        # SKIP LOCKED and a server clock are PostgreSQL's; any other store runs one worker.
        self.shared = store.engine.dialect.name == "postgresql"

    def end_stalled_transactions(self, seconds: float) -> None:
        """Have PostgreSQL end any transaction of this process that stays idle for ``seconds`` (a lease).

        A worker that stalls (a frozen VM, SIGSTOP, a network partition) inside a transaction keeps its
        row locks, and the worker that takes its accounts over would wait for them forever: the server
        ends such a session instead. The stalled worker's next statement then fails, and what that
        transaction held was never committed."""
        if not self.shared:
            return
        engine, milliseconds = self._store.engine, max(1, int(seconds * 1000))

        def limit_idle_transactions(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
            cursor.close()
            dbapi_connection.commit()  # a rollback of the first transaction must not undo the setting

        event.listen(engine, "connect", limit_idle_transactions)
        engine.dispose()  # connections opened before (the migration's) reconnect with the setting

    # -- one worker for the whole store ---------------------------------------------------------------

    def take_whole_store(self, owner: LeaseOwner, seconds: float) -> Lease | None:
        """Take the lease on the whole store for ``owner``; the lease of the worker in the way, or None
        when ``owner`` holds it now. A free, expired or abandoned lease (see the module doc) is taken."""
        for _attempt in range(10):  # each retry means another worker changed the row meanwhile
            with self._store.session() as session:
                row = session.get(LeaseRow, WHOLE_STORE)
                current = _lease_of(row) if row is not None else None
                now = _now(session)
            if current is not None and not current.is_free(now) and not _abandoned(current, owner):
                return current
            try:
                if self._compare_and_take(owner, current, seconds):
                    return None
            except IntegrityError:  # another worker inserted the row first
                continue
        with self._store.session() as session:
            row = session.get(LeaseRow, WHOLE_STORE)
            return _lease_of(row) if row is not None else None

    def _compare_and_take(self, owner: LeaseOwner, seen: Lease | None, seconds: float) -> bool:
        """Take the whole-store lease if it is still as ``seen``: one statement, so no other worker's
        update can come between the look and the write."""
        with self._store.session() as session:
            now = _now(session)
            values = _owned_by(owner, now, seconds)
            if seen is None:
                session.add(LeaseRow(resource=WHOLE_STORE, **values))
                return True
            unchanged = (
                LeaseRow.owner_token.is_(None) if seen.owner is None else LeaseRow.owner_token == seen.owner.token,
                LeaseRow.expires_at.is_(None) if seen.expires_at is None else LeaseRow.expires_at == seen.expires_at,
            )
            statement = (
                update(LeaseRow)
                .where(LeaseRow.resource == WHOLE_STORE, *unchanged)
                .values(**values)
                .returning(LeaseRow.resource)
            )
            taken = session.scalars(statement, execution_options={"synchronize_session": False}).one_or_none()
            return taken is not None

    # -- accounts shared by several workers (PostgreSQL) ----------------------------------------------

    def claim(self, owner: LeaseOwner, accounts: Collection[str], seconds: float) -> Claim:
        """Renew ``owner``'s leases on ``accounts`` and claim free or expired ones up to its fair share;
        free what it holds beyond that share or outside ``accounts``. PostgreSQL only."""
        assert self.shared, "only a PostgreSQL store shares accounts between workers"
        wanted = sorted({address.lower() for address in accounts})
        self._add_missing(wanted)
        with self._store.session() as session:
            now = _now(session)
            _beat(session, owner, now, seconds)
            workers = session.scalar(select(func.count()).select_from(WorkerRow).where(WorkerRow.expires_at >= now))
            share = fair_share(len(wanted), workers or 1)
            mine = session.scalars(
                select(LeaseRow)
                .where(LeaseRow.owner_token == owner.token)
                .order_by(LeaseRow.resource)
                .with_for_update()
            ).all()
            wanted_set = set(wanted)
            keep = [row for row in mine if row.resource in wanted_set][:share]
            kept = {id(row) for row in keep}
            released = [row.resource for row in mine if id(row) not in kept]
            for row in mine:
                if id(row) in kept:
                    row.expires_at = now + dt.timedelta(seconds=seconds)
                else:
                    _set(row, _FREE)
            taken: list[LeaseRow] = []
            if len(keep) < share:
                taken = list(
                    session.scalars(
                        select(LeaseRow)
                        .where(
                            LeaseRow.resource.in_(wanted),
                            or_(LeaseRow.owner_token.is_(None), LeaseRow.expires_at < now),
                        )
                        .order_by(LeaseRow.resource)
                        .limit(share - len(keep))
                        .with_for_update(skip_locked=True)
                    )
                )
            taken_over = tuple(_lease_of(row) for row in taken if row.owner_token is not None)
            for row in taken:
                _set(row, _owned_by(owner, now, seconds))
            elsewhere = session.scalars(
                select(LeaseRow)
                .where(
                    LeaseRow.resource.in_(wanted),
                    LeaseRow.owner_token != owner.token,
                    LeaseRow.expires_at >= now,
                )
                .order_by(LeaseRow.resource)
            ).all()
            return Claim(
                held=tuple(sorted(row.resource for row in keep + taken)),
                claimed=tuple(row.resource for row in taken),
                taken_over=taken_over,
                released=tuple(released),
                held_elsewhere=tuple(_lease_of(row) for row in elsewhere),
                workers=workers or 1,
                share=share,
            )

    def _add_missing(self, wanted: Sequence[str]) -> None:
        """A lease row for each wanted account, in a transaction of its own: the claim then only locks rows."""
        if not wanted:
            return
        with self._store.session() as session:
            existing = set(session.scalars(select(LeaseRow.resource).where(LeaseRow.resource.in_(wanted))))
            missing = [{"resource": resource} for resource in wanted if resource not in existing]
            if missing:
                from sqlalchemy.dialects import postgresql

                session.execute(postgresql.insert(LeaseRow).values(missing).on_conflict_do_nothing())

    # -- renewing and freeing -------------------------------------------------------------------------

    def renew(self, owner: LeaseOwner, resources: Collection[str], seconds: float) -> set[str]:
        """Extend ``owner``'s leases on ``resources`` (and, shared, its worker row); the ones it still
        holds. A lease another worker took over after it expired is not among them."""
        with self._store.session() as session:
            now = _now(session)
            if self.shared:
                _beat(session, owner, now, seconds)
            if not resources:
                return set()
            statement = (
                update(LeaseRow)
                .where(LeaseRow.resource.in_(sorted(resources)), LeaseRow.owner_token == owner.token)
                .values(expires_at=now + dt.timedelta(seconds=seconds))
                .returning(LeaseRow.resource)
            )
            return set(session.scalars(statement, execution_options={"synchronize_session": False}))

    def release(
        self, owner: LeaseOwner, resources: Collection[str] | None = None, *, retire: bool = False
    ) -> list[str]:
        """Free ``owner``'s leases (on ``resources``, else all of them); the ones freed. ``retire``
        also removes its worker row: it no longer counts for the fair share."""
        with self._store.session() as session:
            statement = update(LeaseRow).where(LeaseRow.owner_token == owner.token)
            if resources is not None:
                statement = statement.where(LeaseRow.resource.in_(sorted(resources)))
            freed = session.scalars(
                statement.values(**_FREE).returning(LeaseRow.resource),
                execution_options={"synchronize_session": False},
            ).all()
            if retire and self.shared:
                session.execute(delete(WorkerRow).where(WorkerRow.token == owner.token))
            return sorted(freed)

    # -- reading ---------------------------------------------------------------------------------------

    def leases(self) -> list[Lease]:
        """Every lease row, by resource (free ones too)."""
        if not self._store.exists:
            return []
        with self._store.session() as session:
            return [_lease_of(row) for row in session.scalars(select(LeaseRow).order_by(LeaseRow.resource))]

    def live_workers(self) -> list[LeaseOwner]:
        """The workers sharing a PostgreSQL store whose row has not expired."""
        if not self._store.exists or not self.shared:
            return []
        with self._store.session() as session:
            now = _now(session)
            rows = session.scalars(select(WorkerRow).where(WorkerRow.expires_at >= now).order_by(WorkerRow.started_at))
            return [LeaseOwner(row.host, row.pid, row.token) for row in rows]


def _now(session: Session) -> dt.datetime:
    """The database server's clock where there is a server (workers on several machines agree on it),
    else this machine's."""
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    return aware(session.scalars(select(func.now())).one())


def _beat(session: Session, owner: LeaseOwner, now: dt.datetime, seconds: float) -> None:
    """Create or extend ``owner``'s worker row, and drop rows of workers that are gone."""
    from sqlalchemy.dialects import postgresql

    expires = now + dt.timedelta(seconds=seconds)
    values = {"token": owner.token, "host": owner.host, "pid": owner.pid, "started_at": now, "expires_at": expires}
    insert = postgresql.insert(WorkerRow).values(**values)
    session.execute(insert.on_conflict_do_update(index_elements=["token"], set_={"expires_at": expires}))
    session.execute(delete(WorkerRow).where(WorkerRow.expires_at < now))


def _owned_by(owner: LeaseOwner, now: dt.datetime, seconds: float) -> dict[str, object]:
    return {
        "owner_host": owner.host,
        "owner_pid": owner.pid,
        "owner_token": owner.token,
        "acquired_at": now,
        "expires_at": now + dt.timedelta(seconds=seconds),
    }


def _set(row: LeaseRow, values: Mapping[str, object]) -> None:
    for name, value in values.items():
        setattr(row, name, value)


def _lease_of(row: LeaseRow) -> Lease:
    owner = None
    if row.owner_token is not None:
        owner = LeaseOwner(row.owner_host or "", row.owner_pid or 0, row.owner_token)
    return Lease(row.resource, owner, aware(row.acquired_at), aware(row.expires_at))


def _abandoned(lease: Lease, taker: LeaseOwner) -> bool:
    """Whether ``lease``'s owner ran on this machine and is gone (killed, say), so that ``taker`` may take
    the lease before it expires. A live process with the taker's own pid is the taker, so an owner with
    that pid but another token is a predecessor (a restarted container's pid 1, say)."""
    owner = lease.owner
    if owner is None or owner.host != taker.host:
        return False
    if owner.pid == taker.pid:
        return owner.token != taker.token
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
