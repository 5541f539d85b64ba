"""Importing an account's INBOX, each message exactly once, whatever is killed when: into tickets, the
archive, bounces matched to the outbox, and auto-replies.

The order of things, and why it loses and doubles nothing:

1. Select the folder and compare its UIDVALIDITY with the stored one. Unchanged: only UIDs
   above the highest one dealt with are new. Changed (the mailbox was rebuilt, its UIDs mean
   nothing now): the scan starts over from UID 1, and each message's dedupe key (its
   Message-ID, or for a message without one its bytes' hash) tells what is stored already.
   The key is unique per account in the state store, so nothing is imported twice, also when
   the resync itself is interrupted and run again.
2. Walk the new UIDs in windows (a bounded UID range) and batches: first date, size and
   Message-ID of a window's messages, so that mail before ``import_since`` and mail stored
   already is never downloaded; then the rest a batch at a time with ``UID FETCH … BODY.PEEK[]``,
   which leaves ``\\Seen`` alone. A batch is also bounded in bytes: memory depends on the window
   and the batch, not on the mailbox. The next batch is asked for before the one downloaded is
   read, so that the server sends it meanwhile.
3. Per downloaded batch: write the raw .eml files and sync them, directories included
   (:mod:`mailops.runtime.rawstore`), then commit in ONE transaction each message's ticket (new in
   the default queue and project, closed with ``auto_close``, or the thread's ticket when
   In-Reply-To/References name a stored message, also one earlier in the batch), its index row,
   and the folder's highest UID. The batch commits whole or not at all, so each message is
   imported entirely or not at all: a crash before the commit leaves the batch for the next run
   (the raw files are simply found or written again); after it, the batch is done. A message
   with writes of its own (a DSN marking its outbox entry, an auto-reply claim) is committed alone
   and in its order, the batch's messages before it first: those are few (a reply goes only to
   mail of the last days, never to a backlog), and they touch rows other processes write too. If
   a message of a batch turns out stored already (another worker, or the same mail twice in the
   batch), the batch is recorded again without it (one message at a time if that fails too).
   A batch's files are written as it is read; it is synced and committed on a thread of its own
   while the next one is downloaded, so that waiting for the disk overlaps with waiting for the
   server; batches are stored one at a time and in order, and the pass waits for one to be stored
   before it stores anything after it (or ends).
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
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailops.errors import MailopsError
from mailops.runtime.faults import crash_point
from mailops.runtime.rawstore import RawStore, Written, sha256_of
from mailops.state.tickets import NewMessage, Recorded, Recording, ServerState, SyncPoint, Tickets
from mailops.transport.failures import FailureClass, TransportError

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from mailops.providers.base import CredentialContext
    from mailops.runtime.autoreply import AutoReplier, ReplyCounts, _Claim
    from mailops.runtime.bounces import BounceWrite
    from mailops.runtime.headers import MessageHeaders
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.spec.models import Account
    from mailops.state.store import StateStore
    from mailops.state.tickets import AlsoRecord
    from mailops.transport.connection import Credential
    from mailops.transport.imap import MailboxStatus, MessageSummary

FOLDER = "INBOX"
BATCH_MESSAGES = 200  # messages per UID FETCH
BATCH_BYTES = 32 * 1024 * 1024  # and at most this much mail per UID FETCH (one larger message goes alone)
WINDOW_UIDS = 2000  # UIDs per window: the most summaries held at once
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
    batch_messages: int | None = None,
) -> ImportReport:
    """Import the new mail of ``account``'s INBOX (see the module doc); ``stop`` ends the pass after the
    current batch; ``batch_messages`` defaults to :data:`BATCH_MESSAGES`. Failures come out as
    :class:`TransportError`."""
    # Imported here, not at the top: a pass that finds nothing new should not pay for more than it uses.
    from mailops.transport.connection import Endpoint, Timeouts
    from mailops.transport.imap import imap_session

    credential = _credential(account, context)
    assert account.imap is not None  # filled by the spec loader
    imap = Endpoint(account.imap.host, account.imap.port, account.imap.encryption)
    timeouts = Timeouts(connect=settings.connect_timeout, command=settings.command_timeout)
    replier = None
    if account.autoreply.enabled:
        from mailops.runtime.autoreply import AutoReplier

        replier = AutoReplier(account, loaded, store, settings)
    batch = batch_messages or BATCH_MESSAGES
    local_failure: MailopsError | None = None
    try:
        with imap_session(imap, credential, timeouts, settings.ca_file) as client:
            try:
                return _Import(account, store, raw_store, client, stop, batch, replier).run()
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
    from mailops.providers.base import provider_for

    try:
        return provider_for(account.provider).credential(account, context)
    except TransportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a secret that cannot be read fails this account, not the run
        raise TransportError(FailureClass.SECRET, f"the credential of {account.address}: {exc}") from None


@dataclass
class _Mail:
    """A downloaded message, read and judged, on its way into the store."""

    summary: MessageSummary
    raw: bytes
    sha256: str  # of ``raw``: its .eml file's name
    headers: MessageHeaders
    received_at: dt.datetime
    ticket: bool  # it becomes a ticket's (not a DSN, and ticket import is on)
    archive: bool
    keep_raw: bool  # its .eml is kept (a ticket, an archive entry, a DSN)
    bounce: BounceWrite | None  # a DSN's writes
    reply: _Claim | None  # an auto-reply claim

    @property
    def also(self) -> list[AlsoRecord]:
        """The writes of its own, beyond its rows: such a message is committed alone."""
        return [write for write in (self.bounce, self.reply) if write is not None]


@dataclass
class _Fetched:
    """A part of a batch, downloaded and not read yet."""

    part: list[MessageSummary]
    raws: dict[int, bytes]  # by UID; a message expunged meanwhile is missing
    advance_to: int | None  # where the folder's mark moves once the part is stored (the batch's last part)


@dataclass
class _Skipped:
    """The UIDs of a window that are not downloaded, by why."""

    before_since: set[int]  # received before import_since
    already_stored: set[int]


# The blank line that ends a message's header (LF, CRLF or CR line ends; mixed too): every match is one
# that a header parser stops at, so what comes before the first one holds the whole header.
_HEADER_END = re.compile(rb"\n\r?\n|\r\r")


def header_of(raw: bytes) -> bytes:
    """The header of the message ``raw`` with the blank line that ends it (all of ``raw`` without one):
    parsing it yields the header fields that parsing the whole message would, without reading the body."""
    end = _HEADER_END.search(raw)
    return raw if end is None else raw[: end.end()]


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
        self.advanced = 0  # the highest UID that a commit of this pass moved the folder's mark to
        self._storer: ThreadPoolExecutor | None = None
        self._pending: tuple[Future[list[Recorded | None]], list[_Mail]] | None = None  # on the store's thread
        self._fetched: _Fetched | None = None  # downloaded, read next (while the server sends what follows)

    def run(self) -> ImportReport:
        from mailops.transport.imap import open_mailbox

        self.box = open_mailbox(self.client, FOLDER, writable=self.deleting)
        self.sync = self.tickets.start_sync(
            self.account.address, FOLDER, self.box.uidvalidity, self.settings.import_since
        )
        self.report.resynced_from = self.sync.previous_uidvalidity
        self.report.rescanned = self.sync.rescan
        self._delete_stored()  # what an interrupted pass stored but did not delete yet
        # One thread stores a batch (files synced, then its transaction) while this one reads the next:
        # the waits for the disk overlap with those for the server. Leaving the block waits for it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailops-store") as storer:
            self._storer = storer
            self._scan()
            self._take_fetched()
            self._settle()
        self._delete_stored()  # what the last batch stored
        return self.report

    def _scan(self) -> None:
        from mailops.transport.imap import fetch_summaries

        last = self.box.uidnext - 1  # mail arriving meanwhile gets a higher UID: the next pass takes it
        for first in range(self.sync.last_uid + 1, last + 1, WINDOW_UIDS):
            window_end = min(first + WINDOW_UIDS - 1, last)
            summaries = fetch_summaries(self.client, first, window_end)
            wanted, skipped = self._not_stored(summaries)
            pending = iter(wanted)
            following = next(pending, None)
            for start in range(0, len(summaries), self.batch_messages):
                batch = summaries[start : start + self.batch_messages]
                in_batch = []
                while following is not None and following.uid <= batch[-1].uid:
                    in_batch.append(following)
                    following = next(pending, None)
                self._import_batch(in_batch, batch[-1].uid)
                # Counted as their batch is dealt with: a pass stopped here leaves the rest, and their
                # count, to the next one.
                self.report.before_since += sum(summary.uid in skipped.before_since for summary in batch)
                self.report.already_stored += sum(summary.uid in skipped.already_stored for summary in batch)
                self._delete_stored()  # what is committed so far (this batch's, after the next one)
                if self.replier is not None:
                    self.replier.send()
                if self.stop is not None and self.stop.is_set():
                    self.report.stopped = True
                    return
            # No message can appear at a UID below UIDNEXT later: the window's gaps are done too.
            self._take_fetched()
            self._queue_group([], advance_to=window_end)

    def _advance(self, uid: int) -> None:
        """Every UID up to ``uid`` is dealt with; a commit that recorded ``uid`` itself said so already."""
        if uid > self.advanced:
            self.tickets.advance(self.account.address, FOLDER, self.box.uidvalidity, uid)
            self.advanced = uid

    def _import_batch(self, wanted: list[MessageSummary], last_uid: int) -> None:
        """Import the messages ``wanted`` of a batch, and move the folder's mark to its ``last_uid``, a part
        (bounded in bytes) at a time: each part is downloaded while the one before it is read
        (:meth:`_take_fetched`), and stored on the store's thread (:meth:`_queue_group`) while the next one is
        read. The last part is left downloaded, to be read while the next batch downloads."""
        from mailops.transport.imap import RawFetch

        parts = list(_by_size(wanted, BATCH_BYTES)) or [[]]
        for number, part in enumerate(parts, 1):
            fetch = RawFetch(self.client, [summary.uid for summary in part])
            # The server sends this part meanwhile; nothing here may use the connection.
            self._take_fetched()
            raws = fetch.result()
            if part:
                crash_point("after-fetch")
            self._fetched = _Fetched(part, raws, last_uid if number == len(parts) else None)

    def _take_fetched(self) -> None:
        """Read the downloaded part and queue its messages for the store (see :meth:`_import_batch`); no use of
        the IMAP connection."""
        fetched, self._fetched = self._fetched, None
        if fetched is None:
            return
        group: list[_Mail] = []
        for summary in fetched.part:
            raw = fetched.raws.pop(summary.uid, None)
            if raw is None:
                self.report.vanished += 1
                continue
            mail = self._read(summary, raw)
            if mail.also:  # committed alone, in its order: what came before it first
                self._queue_group(group)
                group = []
                self._settle()
                self._store_alone(mail)
            else:
                group.append(mail)
        self._queue_group(group, advance_to=fetched.advance_to)

    def _queue_group(self, group: list[_Mail], *, advance_to: int | None = None) -> None:
        """Write ``group``'s .eml files here, then sync them, record the group and move the folder's mark to
        ``advance_to`` on the store's thread, once what it stores now is done: one group at a time, in order.

        The files are written on this thread: the store's thread would wait for the interpreter lock after
        each of their system calls while this one parses mail."""
        kept = [mail for mail in group if mail.keep_raw]
        written = None
        try:
            if kept:
                written = self.raw_store.write([mail.raw for mail in kept], [mail.sha256 for mail in kept])
        except MailopsError:
            self._settle()  # what the store's thread has is counted before the failure ends the pass
            raise
        try:
            self._settle()
            assert self._storer is not None  # set for the whole scan
            self._pending = (self._storer.submit(self._store_group, group, written, advance_to), group)
        except BaseException:
            if written is not None:
                written.close()
            raise

    def _settle(self) -> None:
        """Wait for the group on the store's thread; raise its failure, or count what it stored."""
        if self._pending is None:
            return
        future, group = self._pending
        self._pending = None
        for mail, recorded in zip(group, future.result(), strict=True):
            if recorded is None:  # stored meanwhile (another worker, or the same mail twice in the batch)
                self.report.already_stored += 1
                continue
            crash_point("after-commit")
            self._count(mail, recorded)

    def _not_stored(self, summaries: list[MessageSummary]) -> tuple[list[MessageSummary], _Skipped]:
        """The summaries worth downloading: on or after import_since, and not stored already; and the UIDs of
        the others, by why.

        A stored message that is still to be deleted on the server, found at a new UID after a
        UIDVALIDITY change, is moved there, so that it is deleted (only when the size matches:
        the same Message-ID on different content is not the message that was stored).
        """
        from mailops.state.tickets import message_key

        since = self.settings.import_since
        keys: dict[int, str] = {}
        for summary in summaries:
            message_id = _message_id_in(summary.message_id_header)
            if message_id is not None:
                keys[summary.uid] = message_key(message_id)
        known = self.tickets.known(self.account.address, sorted(set(keys.values())))
        wanted, moves = [], []
        skipped = _Skipped(set(), set())
        for summary in summaries:
            # IMAP's rule for SINCE: the internal date's own calendar day, whatever its time and zone.
            if since is not None and summary.internal_date.date() < since:
                skipped.before_since.add(summary.uid)
                continue
            stored = known.get(keys.get(summary.uid, ""))
            if stored is None:
                wanted.append(summary)
                continue
            skipped.already_stored.add(summary.uid)
            moved = stored.uidvalidity != self.box.uidvalidity
            if stored.server_state == ServerState.DELETE_PENDING and moved and stored.size == summary.size:
                moves.append((stored.id, summary.uid))
        self.tickets.relocate(moves, self.box.uidvalidity)
        return wanted, skipped

    def _read(self, summary: MessageSummary, raw: bytes) -> _Mail:
        """What ``raw`` is and what becomes of it; reads its header only, and the whole of it only when
        the header may be a delivery report's."""
        from mailops.runtime.headers import read_headers

        head = header_of(raw)
        sha256 = sha256_of(raw)
        received_at = summary.internal_date.astimezone(dt.UTC)
        report = None
        if b"report" in head.lower():  # multipart/report: only then is it worth parsing the whole message
            from mailops.runtime.dsn import read_delivery_report

            report = read_delivery_report(raw)  # None: not a DSN
        ticket = self.settings.enabled and report is None
        archive = self.account.archive.enabled
        bounce = None
        if report is not None:
            from mailops.runtime.bounces import bounce_of

            bounce = bounce_of(report, self.account.address, received_at)
        headers = read_headers(head)
        reply = None
        if report is None and self.replier is not None:
            reply = self.replier.consider(head, received_at, _dedupe_key(headers.message_id, sha256))
        keep_raw = ticket or archive or report is not None
        return _Mail(summary, raw, sha256, headers, received_at, ticket, archive, keep_raw, bounce, reply)

    def _store_group(
        self, group: list[_Mail], written: Written | None, advance_to: int | None
    ) -> list[Recorded | None]:
        """On the store's thread: ``group``'s .eml files (``written``) made durable, then its messages in one
        transaction (see the module doc), then the folder's mark moved to ``advance_to``. What each message
        became."""
        results: list[Recorded | None] = []
        if written is not None:
            self.raw_store.sync(written)
        if group:
            recordings = []
            for mail in group:
                crash_point("after-raw-write")
                recordings.append(self._recording(mail))
            results = self._record_together(group, recordings)
        if advance_to is not None:
            self._advance(advance_to)
        return results

    def _record_together(self, group: list[_Mail], recordings: list[Recording]) -> list[Recorded | None]:
        """``group``'s messages in one transaction; None for those stored already. When one is (another
        worker, or the same mail twice in the batch), the group goes again without them, and one by one
        only if it fails again."""
        for attempt in range(2):
            chosen = list(range(len(group)))
            if attempt:
                stored = self.tickets.known(self.account.address, [r.message.dedupe_key for r in recordings])
                keys: set[str] = set()
                chosen = []
                for index, recording in enumerate(recordings):
                    key = recording.message.dedupe_key
                    if key not in stored and key not in keys:  # of the same mail twice, the first goes in
                        keys.add(key)
                        chosen.append(index)
            recorded = self.tickets.record_group(
                [recordings[index] for index in chosen],
                queue=self.settings.default_queue,
                project=self.settings.default_project,
                close=self.settings.auto_close,
            )
            if recorded is not None:
                results: list[Recorded | None] = [None] * len(group)
                for index, result in zip(chosen, recorded, strict=True):
                    results[index] = result
                    self.advanced = max(self.advanced, recordings[index].message.uid)
                self._restore_purged([group[i] for i in chosen], [recordings[i] for i in chosen])
                return results
        return [self._record(mail, recording) for mail, recording in zip(group, recordings, strict=True)]

    def _store_alone(self, mail: _Mail) -> None:
        """Store one message with writes of its own: its .eml, then its own transaction."""
        if mail.keep_raw:
            self.raw_store.put_many([mail.raw], [mail.sha256])
        crash_point("after-raw-write")
        recorded = self._record(mail, self._recording(mail))
        if recorded is None:
            self.report.already_stored += 1
            return
        crash_point("after-commit")
        self._count(mail, recorded)

    def _recording(self, mail: _Mail) -> Recording:
        from mailops.state.tickets import message_key

        headers = mail.headers
        message = NewMessage(
            account=self.account.address,
            folder=FOLDER,
            uidvalidity=self.box.uidvalidity,
            uid=mail.summary.uid,
            dedupe_key=_dedupe_key(headers.message_id, mail.sha256),
            message_id=headers.message_id,
            sender=headers.sender,
            to=headers.to,
            cc=headers.cc,
            subject=headers.subject,
            sent_at=headers.sent_at,
            received_at=mail.received_at,
            size=len(mail.raw),
            raw_sha256=mail.sha256,
            thread_keys=tuple(message_key(answered) for answered in headers.answers),
        )
        # Mail that is not kept stays on the server.
        return Recording(message, mail.ticket, mail.archive, mail.keep_raw, self.deleting and mail.keep_raw)

    def _record(self, mail: _Mail, recording: Recording) -> Recorded | None:
        """One message's own transaction (:meth:`Tickets.record`); None when it is stored already (another
        worker, or a Message-ID the server's look missed)."""
        recorded = self.tickets.record(
            recording.message,
            queue=self.settings.default_queue,
            project=self.settings.default_project,
            close=self.settings.auto_close,
            delete_on_server=recording.delete_on_server,
            ticket=recording.ticket,
            archive=recording.archive,
            raw_kept=recording.raw_kept,
            also=mail.also,
        )
        if recorded is not None:
            self.advanced = max(self.advanced, recording.message.uid)
            self._restore_purged([mail], [recording])
        return recorded

    def _restore_purged(self, mails: list[_Mail], recordings: list[Recording]) -> None:
        """A retention purge may have taken a shared file between the write and the commit: write it again."""
        kept = {r.message.raw_sha256: mail.raw for mail, r in zip(mails, recordings, strict=True) if mail.keep_raw}
        gone = sorted(self.raw_store.missing(list(kept)))
        if gone:
            self.raw_store.put_many([kept[sha256] for sha256 in gone], gone)

    def _count(self, mail: _Mail, recorded: Recorded) -> None:
        self.report.imported += 1
        if recorded.new_ticket:
            self.report.new_tickets += 1
        elif recorded.ticket_id is not None:
            self.report.joined += 1
        bounce = mail.bounce
        if mail.archive or (bounce is not None and bounce.outbox_id is None):
            self.report.archived += 1
        if bounce is not None:
            self._count_bounce(bounce.outbox_id, bounce.is_failure)
        if mail.reply is not None and self.replier is not None:
            self.replier.claimed(mail.reply)

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
        from mailops.transport.imap import delete_by_uid

        while True:
            pending = self.tickets.pending_deletions(
                self.account.address, FOLDER, self.box.uidvalidity, limit=DELETE_CHUNK
            )
            if not pending:
                return
            self._restore_before_delete(pending)
            crash_point("before-delete")
            expunged = delete_by_uid(self.client, [uid for _row, uid, _sha in pending], uidplus=self.box.uidplus)
            crash_point("after-delete")
            if not expunged:  # they stay marked: a later pass expunges them once nothing else is in the way
                self.report.left_flagged = len(pending)
                return
            self.tickets.mark_deleted([row for row, _uid, _sha in pending])
            self.report.deleted += len(pending)

    def _restore_before_delete(self, pending: list[tuple[int, int, str]]) -> None:
        """The server's copy is the last one when a retention purge took a shared file after this import
        committed its row and before it wrote the file again (a kill in between): store it again from
        the server before deleting there."""
        from mailops.transport.imap import fetch_raw

        gone = self.raw_store.missing([sha256 for _row, _uid, sha256 in pending])
        if not gone:
            return
        wanted = {uid: sha256 for _row, uid, sha256 in pending if sha256 in gone}
        fetched = fetch_raw(self.client, sorted(wanted))
        raws = [fetched.get(uid) for uid in sorted(wanted)]
        if any(raw is None or sha256_of(raw) != wanted[uid] for uid, raw in zip(sorted(wanted), raws, strict=True)):
            # Not the stored message any more: deleting it would lose the only copy.
            raise MailopsError(
                f"{len(wanted)} stored message(s) of {self.account.address} lost their file and the server's "
                "copy differs; nothing was deleted on the server"
            )
        self.raw_store.put_many([raw for raw in raws if raw is not None], [wanted[uid] for uid in sorted(wanted)])


# The Message-ID header as nearly every message has it: one line, one <id> of printable ASCII.
_PLAIN_MESSAGE_ID = re.compile(rb"Message-ID:[ \t]*(<[!-;=?-~]{1,996}>)[ \t]*\r?\n(?:\r?\n)?", re.IGNORECASE)


def _message_id_in(header_lines: bytes) -> str | None:
    """:func:`mailops.runtime.headers.message_id_in_header`, without parsing the header where it is plain:
    what the parser would make of such a line is its <id> as it stands (no encoded words in it)."""
    plain = _PLAIN_MESSAGE_ID.fullmatch(header_lines)
    if plain is not None and b"=?" not in plain.group(1):
        return plain.group(1).decode("ascii")
    from mailops.runtime.headers import message_id_in_header

    return message_id_in_header(header_lines)


def _dedupe_key(message_id: str | None, sha256: str) -> str:
    """What makes a message the same as a stored one: its Message-ID, else its bytes (``sha256``)."""
    from mailops.state.tickets import message_key, raw_key

    if message_id:
        return message_key(message_id)
    return raw_key(sha256)


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
