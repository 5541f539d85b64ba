"""The state store: applied accounts, their health, and the apply lock.

A SQLite file by default; any SQLAlchemy URL (e.g. PostgreSQL) works the same way.
The schema is created and upgraded by Alembic migrations when a command that writes
opens it, so a newer release upgrades an existing state file in place.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailops.errors import MailopsError
from mailops.state.accounts import STATUSES, AccountState, aware, broken_record, state_fingerprint, utcnow
from mailops.state.location import check_url, redact, secrets_of, shown_url, sqlite_file
from mailops.state.schema import SchemaStatus, StateError, judge_schema
from mailops.state.tables import AccountRow, ApplyLockRow

LOCK_NAME = "apply"


def _view(row: AccountRow, shown_url: str) -> AccountState:
    created_at, updated_at = aware(row.created_at), aware(row.updated_at)
    if not isinstance(row.settings, dict) or created_at is None or updated_at is None:
        raise broken_record(shown_url, row.address, "its settings or timestamps are missing")
    return AccountState(
        address=row.address,
        provider=row.provider,
        settings=row.settings,
        status=row.status,
        created_at=created_at,
        updated_at=updated_at,
        deleted_at=aware(row.deleted_at),
        last_verified_at=aware(row.last_verified_at),
        last_error_class=row.last_error_class,
        last_error=row.last_error,
        last_test_mail_at=aware(row.last_test_mail_at),
        last_test_mail_to=row.last_test_mail_to,
        last_test_mail_error=row.last_test_mail_error,
    )


@dataclass(frozen=True)
class LockInfo:
    lock_id: str
    owner: str
    host: str
    pid: int
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def describe(self) -> str:
        return (
            f"lock {self.lock_id} held by {self.owner} on {self.host} (pid {self.pid}) "
            f"since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, expires {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )


class LockHeld(MailopsError):
    def __init__(self, holder: LockInfo):
        self.holder = holder
        super().__init__(
            f"another apply is running: {holder.describe()}. "
            f"If it is gone, release it with `mailops force-unlock {holder.lock_id}`."
        )


def _sqlite_journal_mode(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # A rollback journal, not WAL: a WAL database cannot be read without creating files
    # beside it, and `plan` reads read-only (also from a read-only directory). Writes are
    # one short transaction per account; the busy timeout rides out the overlaps.
    cursor.execute("PRAGMA journal_mode=DELETE")
    cursor.close()


def _sqlite_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    # Readers too wait for a writer (another mailops sending or applying) instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class StateStore:
    """The live state in a SQL database, read and written through SQLAlchemy."""

    def __init__(self, engine: Engine, *, shown_url: str = "", secrets: list[str] | None = None, empty: bool = False):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._empty = empty  # opened without creating: the store does not exist yet
        self._shown_url = shown_url
        self._secrets = secrets or []

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> StateStore:
        """Open the state store at ``url``.

        With ``create`` (commands that write), a missing store is created and an older
        schema upgraded. Without it, nothing is created or changed: a store that does not
        exist yet reads as empty. Either way a store of another application, or of a newer
        mailops, is refused before anything is touched.
        """
        check_url(url)
        shown, hide = shown_url(url), secrets_of(url)
        try:
            sqlite = sqlite_file(url)
            if sqlite is not None and not sqlite.exists() and not create:
                return cls(create_engine("sqlite://"), shown_url=shown, empty=True)
            if sqlite is not None and create:
                sqlite.parent.mkdir(parents=True, exist_ok=True)
                _create_private(sqlite)
            engine = create_engine(url)
            sqlite_engine = engine.dialect.name == "sqlite"
            if sqlite_engine:  # readers too wait for a writer, such as another process migrating the store
                event.listen(engine, "connect", _sqlite_busy_timeout)
            # Judge the schema before anything else touches the database.
            status = _schema_status(engine, shown, will_migrate=create)
            engine.dispose()
            if sqlite_engine and create:  # journal_mode rewrites the file's header: only a store mailops writes
                event.listen(engine, "connect", _sqlite_journal_mode)
            store = cls(engine, shown_url=shown, secrets=hide, empty=status is SchemaStatus.EMPTY and not create)
            if create and status is not SchemaStatus.CURRENT:
                store._migrate()
        except StateError:
            raise
        except (SQLAlchemyError, OSError, ImportError, ValueError) as exc:
            raise StateError(f"cannot open the state store {shown}: {redact(_first_line(exc), *hide)}") from None
        return store

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", "mailops.state:migrations")
        with self.engine.begin() as connection:
            lock_writers(connection, MIGRATION_LOCK)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @property
    def exists(self) -> bool:
        """False for a store opened without creating it, that does not exist yet."""
        return not self._empty

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction; a database failure comes out as a :class:`StateError` without the password."""
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError:
            raise  # the lock's race, handled by acquire_lock
        except (SQLAlchemyError, ValueError) as exc:  # ValueError: a record that does not decode
            raise self._failed(exc) from None

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection whose transactions the caller commits (what is not committed is rolled back); failures
        as in :meth:`session`."""
        try:
            with self.engine.connect() as connection:
                yield connection
        except (SQLAlchemyError, ValueError) as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: BaseException) -> StateError:
        detail = redact(_first_line(exc), *self._secrets)
        return StateError(f"the state store {self._shown_url} failed: {detail}")

    # -- accounts -------------------------------------------------------------

    def accounts(self, *, include_deleted: bool = False) -> list[AccountState]:
        if self._empty:
            return []
        with self.session() as session:
            query = select(AccountRow).order_by(AccountRow.address)
            if not include_deleted:
                query = query.where(AccountRow.deleted_at.is_(None))
            return [_view(row, self._shown_url) for row in session.scalars(query)]

    def account(self, address: str) -> AccountState | None:
        if self._empty:
            return None
        with self.session() as session:
            row = session.get(AccountRow, address.lower())
            return _view(row, self._shown_url) if row is not None and row.deleted_at is None else None

    def record_account(
        self,
        address: str,
        provider: str,
        settings: dict[str, Any],
        status: str,
        *,
        verified: bool = False,
        error_class: str | None = None,
        error: str | None = None,
        test_mail: tuple[str, str | None] | None = None,
    ) -> None:
        """Store an account's applied settings, verification and test-mail result in one transaction.

        ``test_mail`` is (recipient, error text or None).
        """
        assert status in STATUSES, status
        now = utcnow()
        with self.session() as session:
            row = session.get(AccountRow, address.lower())
            if row is None:
                row = AccountRow(address=address.lower(), created_at=now)
                session.add(row)
            row.provider = provider
            row.settings = settings
            row.status = status
            row.updated_at = now
            row.deleted_at = None
            if verified:
                row.last_verified_at = now
            row.last_error_class = error_class
            row.last_error = error
            if test_mail is not None:
                row.last_test_mail_at = now
                row.last_test_mail_to, row.last_test_mail_error = test_mail

    def record_test_mail(self, address: str, recipient: str, error: str | None) -> None:
        """Record a test mail's result on an applied account; an account not applied yet has no row to record on."""
        if self._empty:
            return
        with self.session() as session:
            row = session.get(AccountRow, address.lower())
            if row is None:
                return
            row.last_test_mail_at = utcnow()
            row.last_test_mail_to = recipient
            row.last_test_mail_error = error

    def set_status(self, address: str, status: str, *, error_class: str | None, error: str | None) -> None:
        assert status in STATUSES, status
        with self.session() as session:
            row = session.get(AccountRow, address.lower())
            if row is not None:
                row.status, row.last_error_class, row.last_error = status, error_class, error
                row.updated_at = utcnow()

    def delete_account(self, address: str) -> None:
        """Remove the account from use; its row (and any history pointing to it) stays."""
        with self.session() as session:
            row = session.get(AccountRow, address.lower())
            if row is not None and row.deleted_at is None:
                row.deleted_at = utcnow()
                row.updated_at = row.deleted_at

    def fingerprint(self) -> str:
        return state_fingerprint(self.accounts())

    # -- apply lock -----------------------------------------------------------

    def current_lock(self) -> LockInfo | None:
        if self._empty:
            return None
        with self.session() as session:
            row = session.get(ApplyLockRow, LOCK_NAME)
            return _lock_info(row) if row is not None else None

    def acquire_lock(self, *, ttl: float = 3600, wait: float = 5.0, owner: str | None = None) -> LockInfo:
        """Take the apply lock, waiting up to ``wait`` seconds; an expired lock is taken over."""
        deadline = time.monotonic() + wait
        while True:
            now = utcnow()
            info = LockInfo(
                lock_id=str(uuid.uuid4()),
                owner=owner or _current_user(),
                host=socket.gethostname(),
                pid=os.getpid(),
                acquired_at=now,
                expires_at=now + dt.timedelta(seconds=ttl),
            )
            try:
                with self.session() as session:
                    existing = session.get(ApplyLockRow, LOCK_NAME)
                    if existing is not None and _is_abandoned(existing, now):
                        session.delete(existing)
                        session.flush()
                        existing = None
                    if existing is None:
                        session.add(ApplyLockRow(name=LOCK_NAME, **info.__dict__))
                        return info
                    holder = _lock_info(existing)
            except IntegrityError:  # another process inserted first
                current = self.current_lock()
                if current is None:
                    continue
                holder = current
            if time.monotonic() >= deadline:
                raise LockHeld(holder)
            time.sleep(0.2)

    def release_lock(self, lock_id: str) -> bool:
        """Release the lock if ``lock_id`` holds it; True when something was released."""
        if self._empty:
            return False
        with self.session() as session:
            row = session.get(ApplyLockRow, LOCK_NAME)
            if row is not None and row.lock_id == lock_id:
                session.delete(row)
                return True
            return False

    @contextmanager
    def locked(self, **kwargs: Any) -> Iterator[LockInfo]:
        info = self.acquire_lock(**kwargs)
        try:
            yield info
        finally:
            self.release_lock(info.lock_id)


def _lock_info(row: ApplyLockRow) -> LockInfo:
    return LockInfo(
        lock_id=row.lock_id,
        owner=row.owner,
        host=row.host,
        pid=row.pid,
        acquired_at=aware(row.acquired_at),
        expires_at=aware(row.expires_at),
    )


def _is_abandoned(row: ApplyLockRow, now: dt.datetime) -> bool:
    """Expired, or held by a process on this host that no longer exists (e.g. after kill -9)."""
    if aware(row.expires_at) < now:
        return True
    if row.host != socket.gethostname():
        return False
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


# Any fixed numbers: the keys of PostgreSQL's advisory locks.
MIGRATION_LOCK = 0x6D61696C6F7073  # "mailops"
IMPORT_LOCK = MIGRATION_LOCK + 1  # `mailops outbox import`


def lock_writers(connection: Connection, key: int) -> None:
    """Make the transaction that begins on ``connection`` the only one at a time that takes the lock ``key``.

    Two mailops opening a new store at once would both create its tables, and the second
    fail; two importing the same log at once would both find its rows new. With the lock the
    second waits for the first to commit, and then finds its work done. SQLite has one lock
    for every writer: BEGIN IMMEDIATE takes it now (waiting out another writer for the busy
    timeout). The explicit BEGIN is also what makes a migration atomic there: its driver
    commits each CREATE on its own otherwise, and a kill in the middle would leave a half-made
    store that the next start refuses as another application's database. PostgreSQL takes the
    advisory lock ``key`` until the transaction ends.
    """
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _schema_status(engine: Engine, shown: str, *, will_migrate: bool) -> SchemaStatus:
    tables = set(inspect(engine).get_table_names())
    revision = None
    if "alembic_version" in tables:
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return judge_schema(tables, revision, shown, will_migrate=will_migrate)


def _first_line(exc: BaseException) -> str:
    # Driver messages run on with background links and SQL; the first line says what went wrong.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _create_private(path: Path) -> None:
    """Create the SQLite file ``path`` readable by its owner only, unless it exists: it holds who wrote to whom
    about what, and whole mails while the outbox keeps them. SQLite gives its journal and WAL files the
    mode of the database."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(descriptor)
