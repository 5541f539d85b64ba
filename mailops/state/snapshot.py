"""A read-only snapshot of a SQLite state file, read with the standard library's sqlite3.

`mailops plan` reads one table. SQLAlchemy would cost more to import than the whole
plan of a thousand accounts takes, so a read-only command on a SQLite file reads it
here instead: opened read-only, never created, never migrated. Every other store
(and every write) goes through :class:`mailops.state.store.StateStore`, whose tables
this module reads as they are defined in :mod:`mailops.state.tables`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from urllib.parse import quote

from pydantic_core import from_json

from mailops.bulk import cycle_collector_paused
from mailops.state.accounts import AccountState, aware, broken_record
from mailops.state.schema import SchemaStatus, StateError, judge_schema

_COLUMNS = (
    "address, provider, settings, status, created_at, updated_at, deleted_at, last_verified_at, "
    "last_error_class, last_error, last_test_mail_at, last_test_mail_to, last_test_mail_error"
)


class SqliteSnapshot:
    """The accounts of a SQLite state file at one moment; an absent file is an empty state."""

    def __init__(self, accounts: list[AccountState]):
        self._accounts = accounts

    def accounts(self, *, include_deleted: bool = False) -> list[AccountState]:
        return [a for a in self._accounts if include_deleted or a.deleted_at is None]

    @classmethod
    def read(cls, path: Path, shown_url: str) -> SqliteSnapshot:
        if not path.exists():
            return cls([])
        try:
            connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state store {shown_url}: {exc}") from None
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = None
            if "alembic_version" in tables:
                revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = revision[0] if revision else None
            if judge_schema(tables, revision, shown_url, will_migrate=False) is SchemaStatus.EMPTY:
                return cls([])
            rows = connection.execute(f"SELECT {_COLUMNS} FROM accounts ORDER BY address").fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the state store {shown_url}: {exc}") from None
        finally:
            connection.close()
        with cycle_collector_paused():
            return cls([_account(row, shown_url) for row in rows])


def _account(row: tuple, shown_url: str) -> AccountState:  # type: ignore[type-arg]
    """One row as a view; a row that does not decode is a clear error, not a traceback."""
    try:
        settings = from_json(row[2])  # several times faster than json.loads on 10,000 rows
        times = [aware(dt.datetime.fromisoformat(value)) if value is not None else None for value in row[4:8]]
        test_mail_at = aware(dt.datetime.fromisoformat(row[10])) if row[10] is not None else None
    except (TypeError, ValueError) as exc:
        raise broken_record(shown_url, row[0], str(exc)) from None
    created_at, updated_at = times[0], times[1]
    if not isinstance(settings, dict) or created_at is None or updated_at is None:
        raise broken_record(shown_url, row[0], "its settings or timestamps are missing")
    return AccountState(
        address=row[0],
        provider=row[1],
        settings=settings,
        status=row[3],
        created_at=created_at,
        updated_at=updated_at,
        deleted_at=times[2],
        last_verified_at=times[3],
        last_error_class=row[8],
        last_error=row[9],
        last_test_mail_at=test_mail_at,
        last_test_mail_to=row[11],
        last_test_mail_error=row[12],
    )
