"""Table definitions of the state store. Change them only together with a new migration."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
    type_coerce,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    """One account as applied. ``settings`` holds secret *references* only, never secrets."""

    __tablename__ = "accounts"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    provider: Mapped[str] = mapped_column(String(20))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))  # see mailops.state.store.STATUSES
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_error_class: Mapped[str | None] = mapped_column(String(40), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_test_mail_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_test_mail_to: Mapped[str | None] = mapped_column(String(320), default=None)
    last_test_mail_error: Mapped[str | None] = mapped_column(Text, default=None)


class ApplyLockRow(Base):
    """At most one row: the apply that currently holds the lock."""

    __tablename__ = "apply_lock"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)  # always "apply"
    lock_id: Mapped[str] = mapped_column(String(36))
    owner: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class TokenCacheRow(Base):
    """An OAuth token cache (msal's, shared by the accounts of one app; or one Google account's
    credentials), encrypted with MAILOPS_SECRET_KEY. ``version`` counts saves, so that two
    processes that refreshed at once do not overwrite each other's rotated refresh token."""

    __tablename__ = "token_caches"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ConsentRow(Base):
    """Who consented for an OAuth account, and when (a Google app in testing loses tokens after 7 days)."""

    __tablename__ = "consents"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    identity: Mapped[str] = mapped_column(String(320))  # the account the token belongs to
    cache: Mapped[str] = mapped_column(String(400))  # TokenCacheRow.name
    consented_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


def recipient_domain_text(to_addresses: Any, *, find: Any = func.instr) -> ColumnElement[str]:
    """The domain of the first address of a To list (its JSON text) as written: the text between its first ``@``
    and the quote that closes the JSON string (or the end); NULL without an ``@``. The analysis cuts it at the end
    of the domain and lower-cases it (``mailops.outbox.analysis``), over the few distinct spellings.

    The constants are literals, not parameters, and the expression is spelt as migration 0007 indexes it on
    SQLite: the index serves only a query that spells the same expression. ``find`` is the dialect's function
    for the position of a text in another (SQLite ``instr``, PostgreSQL ``strpos``)."""
    at = func.nullif(find(to_addresses, literal_column("'@'")), literal_column("0"))
    tail = func.substr(to_addresses, at + literal_column("1"))
    quote = func.nullif(find(tail, literal_column("'\"'")), literal_column("0"))
    return func.substr(tail, literal_column("1"), func.coalesce(quote - literal_column("1"), func.length(tail)))


class OutboxRow(Base):
    """One attempt to send a mail: written `queued` before it is sent, then `sent` or `failed`.

    To, CC and BCC are kept apart, as the outbox log shows them. ``raw`` holds the whole
    message while it may still be sent (queued, or failed for a passing reason), and
    after that only while `policies.outbox.keep_bodies_days` allows (for `outbox resend`).
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status", "status"),
        Index("ix_outbox_account_time", "account", "created_at"),
        # Migration 0007: what `mailops report` and the notebook's explorer count and page through.
        # Partial on PostgreSQL too (the migration says so): its keyword here would import the PostgreSQL dialect
        # at every start of a command, a fifth of a second.
        Index("ix_outbox_retry_of", "retry_of", sqlite_where=text("retry_of IS NOT NULL")),
        Index("ix_outbox_time", "created_at"),
        Index("ix_outbox_account_project_time", "account", "project", "created_at"),
        Index("ix_outbox_message_id", "message_id"),  # migration 0008: imports' keys, bounces' Message-IDs
        # SQLite only: PostgreSQL has no btree for a JSON column, nor for an expression over one.
        Index(
            "ix_outbox_unsent",
            "status",
            "account",
            "project",
            "error_class",
            "created_at",
            "to_addresses",
            sqlite_where=text("status <> 'sent'"),
        ).ddl_if(dialect="sqlite"),
        Index(
            "ix_outbox_recipient_domain",
            recipient_domain_text(type_coerce(literal_column("to_addresses"), Text)),
            "account",
            "project",
            "created_at",
        ).ddl_if(dialect="sqlite"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(20))  # "mailops", or "import" for another system's log
    account: Mapped[str] = mapped_column(String(320))  # lower-cased
    project: Mapped[str | None] = mapped_column(String(100), default=None)
    acting_user: Mapped[str | None] = mapped_column(String(200), default=None)
    sender: Mapped[str] = mapped_column(String(320))
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    to_addresses: Mapped[list[str]] = mapped_column(JSON)
    cc_addresses: Mapped[list[str]] = mapped_column(JSON)
    bcc_addresses: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    preview: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(250))
    status: Mapped[str] = mapped_column(String(10))  # queued | sent | failed
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    retry_of: Mapped[int | None] = mapped_column(Integer, default=None)  # the attempt this one repeats
    reply: Mapped[str | None] = mapped_column(Text, default=None)  # the server's text
    smtp_code: Mapped[int | None] = mapped_column(Integer, default=None)
    enhanced_code: Mapped[str | None] = mapped_column(String(20), default=None)
    error_class: Mapped[str | None] = mapped_column(String(40), default=None)
    remedy: Mapped[str | None] = mapped_column(Text, default=None)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    raw_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    owner: Mapped[str | None] = mapped_column(String(250), default=None)  # "host pid" of the process sending it


class TicketRow(Base):
    """A ticket made from imported mail: one per thread, in the account's default queue and project."""

    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_account", "account"), Index("ix_tickets_queue_project", "queue", "project"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(320))  # lower-cased; its visible_to decides who sees the ticket
    queue: Mapped[str | None] = mapped_column(String(100), default=None)
    project: Mapped[str | None] = mapped_column(String(100), default=None)
    status: Mapped[str] = mapped_column(String(10))  # open | closed
    subject: Mapped[str] = mapped_column(Text)  # of the message that opened it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class MessageRow(Base):
    """One imported message: its index entry. The message itself is a content-addressed .eml file
    (``raw_sha256``) outside the database.

    ``dedupe_key`` says what makes two messages of an account the same (a hash of the Message-ID,
    or of the raw bytes for a message without one); the unique constraint on it is what keeps a
    message from being imported twice, whatever else goes wrong. ``uidvalidity``/``uid`` are where
    the message was last seen on the server; ``server_state`` says whether it is still to be
    deleted there (`delete_after_import`).
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("account", "dedupe_key", name="uq_messages_account_key"),
        Index("ix_messages_ticket", "ticket_id"),
        Index("ix_messages_server_state", "account", "folder", "server_state"),
        Index("ix_messages_archive", "account", "archive_state", "received_at"),
        Index("ix_messages_raw", "raw_sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(320))  # lower-cased
    folder: Mapped[str] = mapped_column(String(200))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)  # 32-bit unsigned in IMAP: beyond a signed INTEGER
    uid: Mapped[int] = mapped_column(BigInteger)
    dedupe_key: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(Text, default=None)
    sender: Mapped[str] = mapped_column(Text)  # the From header, decoded
    to_addresses: Mapped[list[str]] = mapped_column(JSON)
    cc_addresses: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)  # the Date header
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # the server's INTERNALDATE
    size: Mapped[int] = mapped_column(BigInteger)
    raw_sha256: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), default=None)
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    server_state: Mapped[str] = mapped_column(String(16))  # kept | delete_pending | deleted
    archive_state: Mapped[str | None] = mapped_column(String(10), default=None)  # archived | purged
    raw_kept: Mapped[bool] = mapped_column(Boolean, default=True)


class MailSyncRow(Base):
    """How far the import of one account's folder got: the folder's UIDVALIDITY and the highest UID
    dealt with (imported, or skipped for good). ``import_since`` is the date the scan used, so that
    an earlier date later scans the folder again."""

    __tablename__ = "mail_sync"

    account: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    folder: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    import_since: Mapped[dt.date | None] = mapped_column(Date, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class AutoReplyRow(Base):
    """An auto-reply claimed for a message, before it is sent: the unique key is what allows one reply
    per sender and calendar day (``scope`` ``day``), whatever the number of workers, or one per message
    (``scope`` the message's dedupe key) without `once_per_day_per_sender`."""

    __tablename__ = "autoreplies"
    __table_args__ = (UniqueConstraint("account", "recipient", "day", "scope", name="uq_autoreplies_claim"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(320))  # lower-cased
    recipient: Mapped[str] = mapped_column(String(320))  # the address answered, lower-cased
    day: Mapped[dt.date] = mapped_column(Date)  # the calendar day of the claim, in MAILOPS_TIMEZONE
    scope: Mapped[str] = mapped_column(String(64))
    message_row: Mapped[int] = mapped_column(ForeignKey("messages.id"))  # the message answered
    claimed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(10))  # claimed | sent | failed
    outbox_id: Mapped[int | None] = mapped_column(Integer, default=None)  # the reply's outbox entry


class BounceRow(Base):
    """A delivery status notification (RFC 3464) read from an account's inbox, and the outbox entry it
    reports on (None: no entry matched; the DSN is then in the archive)."""

    __tablename__ = "bounces"
    __table_args__ = (Index("ix_bounces_account", "account"), Index("ix_bounces_outbox", "outbox_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(320))  # lower-cased: the inbox it arrived in
    message_row: Mapped[int] = mapped_column(ForeignKey("messages.id"))  # the DSN itself
    outbox_id: Mapped[int | None] = mapped_column(Integer, default=None)
    original_message_id: Mapped[str | None] = mapped_column(Text, default=None)
    envelope_id: Mapped[str | None] = mapped_column(Text, default=None)
    recipient: Mapped[str] = mapped_column(Text)  # the first failed recipient (else the first reported)
    action: Mapped[str] = mapped_column(String(20))  # failed | delayed | delivered | relayed | expanded
    status: Mapped[str | None] = mapped_column(String(20), default=None)  # e.g. 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text, default=None)
    reporting_mta: Mapped[str | None] = mapped_column(Text, default=None)
    error_class: Mapped[str | None] = mapped_column(String(40), default=None)
    recipients: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # every recipient the report names
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class LeaseRow(Base):
    """Which worker (`mailops run` process) works on an account, until when: one row per account, and on
    SQLite one row for the whole store (``resource`` ``*``). A free lease has no owner; an expired one is
    free to take over (see mailops.state.leases)."""

    __tablename__ = "leases"

    resource: Mapped[str] = mapped_column(String(320), primary_key=True)  # an address, lower-cased, or "*"
    owner_host: Mapped[str | None] = mapped_column(String(200), default=None)
    owner_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    owner_token: Mapped[str | None] = mapped_column(String(32), default=None)  # tells processes with one pid apart
    acquired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class WorkerRow(Base):
    """A worker sharing the accounts of a PostgreSQL store, renewed with its leases: the live ones
    (``expires_at`` not past) decide each worker's fair share."""

    __tablename__ = "workers"

    token: Mapped[str] = mapped_column(String(32), primary_key=True)  # LeaseRow.owner_token
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
