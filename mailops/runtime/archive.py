"""The archive's retention, and searching it.

Retention (``archive.retention_days``; 0 keeps forever): an entry whose mail was received more
than that many days ago is purged, unless its ticket is still open; its .eml file is deleted once
no other index entry keeps the same file (see :mod:`mailops.state.archive`). The age is the mail's
INTERNALDATE, when the server received it, so that mail imported late is not kept longer.

A file can be shared: the same bytes in two accounts are one file. An importer that finds the
file present skips writing it, and re-writes it after its commit if a purge deleted it meanwhile
(:mod:`mailops.runtime.ticket_import`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

from mailops.fileio import FileReadError
from mailops.runtime.headers import parts_are_bounded
from mailops.runtime.rawstore import RawStore
from mailops.spec.models import Account
from mailops.state.archive import Archive
from mailops.state.store import StateStore
from mailops.state.tickets import IndexedMessage

MAX_SEARCHED_TEXT = 4 * 1024 * 1024  # characters of one message's text parts that a search reads
# Characters of one message's HTML that are turned into text: markup converts at about three seconds a million
# characters when it is all tags (and gives no text), so more would make a show or a search wait for minutes.
MAX_CONVERTED_HTML = 512 * 1024


@dataclass(frozen=True)
class RetentionReport:
    purged: int  # entries purged now
    kept_open: int  # past retention, kept for their open ticket
    files_removed: int
    retention_days: int


def purge_expired(
    account: Account, store: StateStore, raw_store: RawStore, *, now: dt.datetime | None = None
) -> RetentionReport | None:
    """Purge ``account``'s archive entries past its retention; None when it keeps its mail forever."""
    days = account.archive.retention_days
    if not account.archive.enabled or days == 0:
        return None
    archive = Archive(store)
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    purged = archive.purge(account.address, cutoff)
    removed = sum(raw_store.remove(sha256) for sha256 in archive.unreferenced(sorted(purged.files)))
    return RetentionReport(purged.entries, purged.kept_open, removed, days)


def remove_orphaned_files(store: StateStore, raw_store: RawStore) -> int | None:
    """Delete the .eml files that no index entry keeps and that an importer, killed between writing them and
    committing their rows, left behind; at most once a day (:meth:`RawStore.remove_orphans_when_due`). The
    number deleted, None when no sweep was due."""
    return raw_store.remove_orphans_when_due(Archive(store).unreferenced)


def search(
    store: StateStore,
    raw_store: RawStore,
    text: str,
    *,
    accounts: set[str] | None = None,
    account: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 50,
) -> list[IndexedMessage]:
    """The archive entries whose From, To, Cc, Subject, Message-ID or text contain ``text`` (ignoring
    case), at most ``limit``, the latest imported first. The index is looked at first; the text of
    the message (its text and HTML parts) only when the index does not match."""
    needle = text.casefold()
    found: list[IndexedMessage] = []
    for entry in Archive(store).walk(accounts=accounts, account=account, since=since):
        indexed = " ".join((entry.sender, *entry.to, *entry.cc, entry.subject, entry.message_id or ""))
        if needle in indexed.casefold() or needle in message_text(raw_store, entry.raw_sha256).casefold():
            found.append(entry)
            if len(found) >= limit:
                break
    return found


def message_text(raw_store: RawStore, sha256: str) -> str:
    """The readable text of a stored message (text parts, HTML as text); "" when it cannot be read."""
    try:
        raw = raw_store.read(sha256)
    except FileReadError:
        return ""
    if not parts_are_bounded(raw):
        return ""  # a MIME bomb: parsing it would take minutes
    try:
        message = message_from_bytes(raw, policy=default)
    except Exception:  # noqa: BLE001 - mail from anywhere: what cannot be parsed has no text to search
        return ""
    return "\n".join(_texts(message))[:MAX_SEARCHED_TEXT]


def _texts(message: object) -> Iterator[str]:
    from mailops.compose.htmlbody import html_to_text

    if not isinstance(message, EmailMessage):
        return
    read, html_left = 0, MAX_CONVERTED_HTML  # what the parts hold counts, not what their text comes to
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.is_attachment():
            continue
        try:
            content = part.get_content()
        except Exception:  # noqa: BLE001 - an unknown charset or broken encoding: skip the part
            continue
        if not isinstance(content, str):
            continue
        if part.get_content_subtype() == "html":
            if html_left <= 0:
                continue
            content = content[:html_left]
            html_left -= len(content)
            yield html_to_text(content, layout_tables=False)  # HTML from anywhere: no layout to blow up
        else:
            yield content
        read += len(content)
        if read >= MAX_SEARCHED_TEXT:
            return
