"""Which database schemas this mailops can read, and refusing the ones it cannot.

Shared by both ways of opening the state, so a store from a newer mailops, or another
application's database, is refused the same way before anything is read or written.
"""

from __future__ import annotations

from enum import Enum

from mailops.errors import MailopsError

# The migrations in migrations/versions, oldest first; a test keeps the two in step.
KNOWN_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")
SCHEMA_REVISION = KNOWN_REVISIONS[-1]
MAILOPS_TABLES = frozenset(
    {
        "accounts",
        "apply_lock",
        "alembic_version",
        "token_caches",
        "consents",
        "outbox",
        "tickets",
        "messages",
        "mail_sync",
        "autoreplies",
        "bounces",
        "leases",
        "workers",
    }
)


class StateError(MailopsError):
    """The state store cannot be opened or used."""


class SchemaStatus(Enum):
    EMPTY = "empty"  # a new store: nothing in it yet
    CURRENT = "current"
    OLDER = "older"  # needs a migration (done by a command that writes)


def judge_schema(tables: set[str], revision: str | None, shown_url: str, *, will_migrate: bool) -> SchemaStatus:
    """Say what the store at ``shown_url`` holds, or raise :class:`StateError` when mailops must not touch it.

    An older schema is upgraded only by a command that writes (``will_migrate``); a
    read-only command refuses it rather than guess at its columns.
    """
    if revision is None:
        foreign = sorted(tables - MAILOPS_TABLES)
        if foreign:
            listed = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
            raise StateError(
                f"{shown_url} is not a mailops state store: it holds other tables ({listed}) and no mailops schema. "
                "Nothing was changed; point --state / MAILOPS_STATE_URL at a new file or database."
            )
        return SchemaStatus.EMPTY
    if revision == SCHEMA_REVISION:
        return SchemaStatus.CURRENT
    if revision in KNOWN_REVISIONS:
        if not will_migrate:
            raise StateError(f"the state store {shown_url} has an older schema; run `mailops apply` once to upgrade it")
        return SchemaStatus.OLDER
    raise StateError(
        f"the state store {shown_url} has schema revision {revision!r}, which this mailops does not know "
        f"(it knows {', '.join(KNOWN_REVISIONS)}): it was written by a newer mailops. "
        "Upgrade mailops; nothing was changed."
    )
