"""Importing an account's INBOX, each message exactly once, whatever is killed when: into tickets, the
archive, bounces matched to the outbox, and auto-replies.

The order of things, and why it loses and doubles nothing:

1. Select the folder and compare its UIDVALIDITY with the stored one. Unchanged: only UIDs
   above the highest one dealt with are new. Changed (the mailbox was rebuilt, its UIDs mean
   nothing now): the scan starts over from UID 1, and each message's dedupe key (its
   Message-ID, or for a message without one its bytes' hash) tells what is stored already.
   The key is unique per account in the state store, so nothing is imported twice, also when
   the resync itself is interrupted and run again.
2. Walk the new UIDs in windows (UID SEARCH over a bounded UID range) and batches: first date,
   size and Message-ID of a batch, so that mail before ``import_since`` and mail stored already
   is never downloaded; then the rest with ``UID FETCH … BODY.PEEK[]``, which leaves ``\\Seen``
   alone. A batch is also bounded in bytes: memory depends on the batch, not on the mailbox.
3. Per message: write the raw .eml (synced and renamed into place), then commit in ONE
   transaction the ticket (new in the default queue and project, closed with ``auto_close``, or
   the thread's ticket when In-Reply-To/References name a stored message), its index row and
   the folder's highest UID. A crash before the commit leaves the message for the next run
   (the raw file is simply written again); after it, the message is done.
4. With ``delete_after_import``, delete on the server only what is committed: the index rows
   marked for deletion, by UID, after each batch (and those an interrupted run left, first).
   A crash between the delete and its record deletes again next time; a UID that is gone
   already is no error.

What a message becomes, decided before its transaction: a delivery status notification
(:mod:`mailops.runtime.dsn`) marks its outbox entry (:mod:`mailops.runtime.bounces`) and is
neither a ticket nor answered; other mail becomes a ticket where ticket import is on. Where the
account archives, the same index row is its archive entry: one copy. The .eml file is kept for a
ticket, an archive entry or a DSN; mail read only to be answered leaves just its index row (which
keeps it from being read twice). An auto-reply (:mod:`mailops.runtime.autoreply`) is claimed in
the message's transaction and sent after the batch: a kill in between leaves it unsent, never
sent twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from imapclient import IMAPClient

from mailops.engine.verify import endpoints, timeouts_of
from mailops.errors import MailopsError
from mailops.providers.base import CredentialContext, provider_for
from mailops.runtime.autoreply import AutoReplier, ReplyCounts
from mailops.runtime.bounces import bounce_of
from mailops.runtime.dsn import read_delivery_report
from mailops.runtime.faults import crash_point
from mailops.runtime.headers import message_id_in_header, read_headers
from mailops.runtime.rawstore import RawStore
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.spec.models import Account
from mailops.state.store import StateStore
from mailops.state.tickets import AlsoRecord, NewMessage, ServerState, SyncPoint, Tickets, message_key, raw_key
from mailops.transport.connection import Credential
from mailops.transport.failures import FailureClass, TransportError
from mailops.transport.imap import (
    MailboxStatus,
    MessageSummary,
    delete_by_uid,
    fetch_raw,
    fetch_summaries,
    imap_session,
    open_mailbox,
    uids_between,
)

FOLDER = "INBOX"
BATCH_MESSAGES = 200  # messages per UID FETCH
BATCH_BYTES = 32 * 1024 * 1024  # and at most this much mail per UID FETCH (one larger message goes alone)
WINDOW_UIDS = 5000  # UIDs per UID SEARCH: the UID list held at once
DELETE_CHUNK = 500  # UIDs per UID STORE/EXPUNGE


@dataclass
class ImportReport:
    """What one pass over an account's folder did."""

    address: str
    imported: int = 0  # messages stored (tickets, archive entries, DSNs, mail read to be answered)
    new_tickets: int = 0
    joined: int = 0  # replies that joined the ticket of their thread
    archived: int = 0  # archive entries made
    bounced: int = 0  # DSNs that marked their outbox entry bounced
    reports_unmatched: int = 0  # DSNs that name no outbox entry of the account (archived)
    reports_other: int = 0  # DSNs of a delay or a success, matched to their entry
    replies: ReplyCounts | None = None  # where the account auto-replies
    before_since: int = 0  # skipped: received before import_since
    already_stored: int = 0  # skipped: the same message is stored already
    vanished: int = 0  # expunged by someone else between the look and the download
    deleted: int = 0  # deleted on the server after they were stored
    left_flagged: int = 0  # flagged \Deleted but not expunged: no UIDPLUS, and others' flags in the way
    resynced_from: int | None = None  # the UIDVALIDITY before, when it changed
    rescanned: bool = False  # import_since moved earlier: older mail was looked at again
    stopped: bool = False  # asked to stop: the rest waits for the next pass

    @property
    def skipped(self) -> int:
        return self.before_since + self.already_stored + self.vanished


def import_mail(
    account: Account,
    loaded: LoadedSpec,
    store: StateStore,
    raw_store: RawStore,
    settings: Settings,
    context: CredentialContext,
    *,
    stop: threading.Event | None = None,
    batch_messages: int = BATCH_MESSAGES,
) -> ImportReport:
    """Import the new mail of ``account``'s INBOX (see the module doc); ``stop`` ends the pass after the
    current batch. Failures come out as :class:`TransportError`."""
    credential = _credential(account, context)
    imap, _smtp = endpoints(account)
    replier = AutoReplier(account, loaded, store, settings) if account.autoreply.enabled else None
    local_failure: MailopsError | None = None
    try:
        with imap_session(imap, credential, timeouts_of(settings), settings.ca_file) as client:
            try:
                return _Import(account, store, raw_store, client, stop, batch_messages, replier).run()
            except TransportError:
                raise
            except MailopsError as exc:  # the state or the raw store: raised here, the session would call it IMAP's
                local_failure = exc
    finally:
        if replier is not None:
            replier.send()  # what was claimed before a failure still goes out
    assert local_failure is not None  # the session returned or raised otherwise
    raise local_failure


def _credential(account: Account, context: CredentialContext) -> Credential:
    try:
        return provider_for(account.provider).credential(account, context)
    except TransportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a secret that cannot be read fails this account, not the run
        raise TransportError(FailureClass.SECRET, f"the credential of {account.address}: {exc}") from None


class _Import:
    """One pass over one account's folder, on one logged-in IMAP connection."""

    def __init__(
        self,
        account: Account,
        store: StateStore,
        raw_store: RawStore,
        client: IMAPClient,
        stop: threading.Event | None,
        batch_messages: int,
        replier: AutoReplier | None,
    ):
        self.account, self.settings = account, account.ticket
        self.tickets, self.raw_store, self.client = Tickets(store), raw_store, client
        self.stop, self.batch_messages, self.replier = stop, batch_messages, replier
        # `delete_after_import` is a setting of the ticket import: it deletes only while that is on.
        self.deleting = self.settings.enabled and self.settings.delete_after_import
        self.report = ImportReport(account.address, replies=replier.counts if replier is not None else None)
        self.box: MailboxStatus
        self.sync: SyncPoint

    def run(self) -> ImportReport:
        self.box = open_mailbox(self.client, FOLDER, writable=self.deleting)
        self.sync = self.tickets.start_sync(
            self.account.address, FOLDER, self.box.uidvalidity, self.settings.import_since
        )
        self.report.resynced_from = self.sync.previous_uidvalidity
        self.report.rescanned = self.sync.rescan
        self._delete_stored()  # what an interrupted pass stored but did not delete yet
        last = self.box.uidnext - 1  # mail arriving meanwhile gets a higher UID: the next pass takes it
        for first in range(self.sync.last_uid + 1, last + 1, WINDOW_UIDS):
            window_end = min(first + WINDOW_UIDS - 1, last)
            uids = uids_between(self.client, first, window_end)
            for start in range(0, len(uids), self.batch_messages):
                batch = uids[start : start + self.batch_messages]
                self._import_batch(batch)
                self.tickets.advance(self.account.address, FOLDER, self.box.uidvalidity, batch[-1])
                self._delete_stored()
                if self.replier is not None:
                    self.replier.send()
                if self.stop is not None and self.stop.is_set():
                    self.report.stopped = True
                    return self.report
            # No message can appear at a UID below UIDNEXT later: the window's gaps are done too.
            self.tickets.advance(self.account.address, FOLDER, self.box.uidvalidity, window_end)
        return self.report

    def _import_batch(self, uids: list[int]) -> None:
        wanted = self._not_stored(fetch_summaries(self.client, uids))
        for part in _by_size(wanted, BATCH_BYTES):
            raws = fetch_raw(self.client, [summary.uid for summary in part])
            crash_point("after-fetch")
            for summary in part:
                raw = raws.pop(summary.uid, None)  # dropped as soon as it is stored
                if raw is None:
                    self.report.vanished += 1
                    continue
                self._import_one(summary, raw)

    def _not_stored(self, summaries: list[MessageSummary]) -> list[MessageSummary]:
        """The summaries worth downloading: on or after import_since, and not stored already.

        A stored message that is still to be deleted on the server, found at a new UID after a
        UIDVALIDITY change, is moved there, so that it is deleted (only when the size matches:
        the same Message-ID on different content is not the message that was stored).
        """
        since = self.settings.import_since
        keys: dict[int, str] = {}
        for summary in summaries:
            message_id = message_id_in_header(summary.message_id_header)
            if message_id is not None:
                keys[summary.uid] = message_key(message_id)
        known = self.tickets.known(self.account.address, sorted(set(keys.values())))
        wanted, moves = [], []
        for summary in summaries:
            # IMAP's rule for SINCE: the internal date's own calendar day, whatever its time and zone.
            if since is not None and summary.internal_date.date() < since:
                self.report.before_since += 1
                continue
            stored = known.get(keys.get(summary.uid, ""))
            if stored is None:
                wanted.append(summary)
                continue
            self.report.already_stored += 1
            moved = stored.uidvalidity != self.box.uidvalidity
            if stored.server_state == ServerState.DELETE_PENDING and moved and stored.size == summary.size:
                moves.append((stored.id, summary.uid))
        self.tickets.relocate(moves, self.box.uidvalidity)
        return wanted

    def _import_one(self, summary: MessageSummary, raw: bytes) -> None:
        headers = read_headers(raw)
        received_at = summary.internal_date.astimezone(dt.UTC)
        report = read_delivery_report(raw)  # None: not a DSN
        ticket = self.settings.enabled and report is None
        archive = self.account.archive.enabled
        keep_raw = ticket or archive or report is not None
        sha256 = self.raw_store.put(raw) if keep_raw else hashlib.sha256(raw).hexdigest()
        crash_point("after-raw-write")
        dedupe_key = message_key(headers.message_id) if headers.message_id else raw_key(sha256)
        also: list[AlsoRecord] = []
        bounce = bounce_of(report, self.account.address, received_at) if report is not None else None
        if bounce is not None:
            also.append(bounce)
        reply = None
        if report is None and self.replier is not None:
            reply = self.replier.consider(raw, received_at, dedupe_key)
            if reply is not None:
                also.append(reply)
        message = NewMessage(
            account=self.account.address,
            folder=FOLDER,
            uidvalidity=self.box.uidvalidity,
            uid=summary.uid,
            dedupe_key=dedupe_key,
            message_id=headers.message_id,
            sender=headers.sender,
            to=headers.to,
            cc=headers.cc,
            subject=headers.subject,
            sent_at=headers.sent_at,
            received_at=received_at,
            size=len(raw),
            raw_sha256=sha256,
            thread_keys=tuple(message_key(answered) for answered in headers.answers),
        )
        recorded = self.tickets.record(
            message,
            queue=self.settings.default_queue,
            project=self.settings.default_project,
            close=self.settings.auto_close,
            delete_on_server=self.deleting and keep_raw,  # mail that is not kept stays on the server
            ticket=ticket,
            archive=archive,
            raw_kept=keep_raw,
            also=also,
        )
        if recorded is None:  # stored meanwhile (another worker, or a Message-ID the server's look missed)
            self.report.already_stored += 1
            return
        if keep_raw and not self.raw_store.has(sha256):  # a retention purge took the shared file meanwhile
            self.raw_store.put(raw)
        crash_point("after-commit")
        self.report.imported += 1
        if recorded.new_ticket:
            self.report.new_tickets += 1
        elif recorded.ticket_id is not None:
            self.report.joined += 1
        if archive or (bounce is not None and bounce.outbox_id is None):
            self.report.archived += 1
        if bounce is not None:
            self._count_bounce(bounce.outbox_id, bounce.is_failure)
        if reply is not None and self.replier is not None:
            self.replier.claimed(reply)

    def _count_bounce(self, outbox_id: int | None, failure: bool) -> None:
        if outbox_id is None:
            self.report.reports_unmatched += 1
        elif failure:
            self.report.bounced += 1
        else:
            self.report.reports_other += 1

    def _delete_stored(self) -> None:
        """Delete on the server what is stored and marked for deletion, and record that it is gone."""
        if not self.deleting:
            return
        while True:
            pending = self.tickets.pending_deletions(
                self.account.address, FOLDER, self.box.uidvalidity, limit=DELETE_CHUNK
            )
            if not pending:
                return
            crash_point("before-delete")
            expunged = delete_by_uid(self.client, [uid for _row, uid in pending], uidplus=self.box.uidplus)
            crash_point("after-delete")
            if not expunged:  # they stay marked: a later pass expunges them once nothing else is in the way
                self.report.left_flagged = len(pending)
                return
            self.tickets.mark_deleted([row for row, _uid in pending])
            self.report.deleted += len(pending)


def _by_size(summaries: Sequence[MessageSummary], limit: int) -> Iterator[list[MessageSummary]]:
    """``summaries`` in runs of at most ``limit`` bytes (a larger message alone)."""
    part: list[MessageSummary] = []
    size = 0
    for summary in summaries:
        if part and size + summary.size > limit:
            yield part
            part, size = [], 0
        part.append(summary)
        size += summary.size
    if part:
        yield part
