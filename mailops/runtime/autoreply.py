"""Auto-replies ("Automatische Antwort"): which inbound mail is answered, and answering it exactly as sending does.

Never answered (RFC 3834, and what mail programs add to it), so that two responders can never
talk to each other forever:

- mail that says it is automatic: an ``Auto-Submitted`` other than ``no`` (any of them); ``Precedence``
  ``bulk``, ``list``, ``junk`` (or ``auto_reply``), with a comment after it or not; Microsoft's
  ``X-Auto-Response-Suppress`` asking for no auto-reply; ``X-Autoreply`` / ``X-Autorespond``. A field
  written with blanks before its colon (RFC 5322's obsolete syntax) counts as well;
- mailing-list mail: ``List-Id`` or ``List-Unsubscribe``;
- a bounce's envelope: a ``Return-Path`` that is empty or ``<>``;
- a robot's address in From, Sender or Return-Path: mailer-daemon, postmaster, no-reply and its
  spellings (also as a word of the address: ``notifications-noreply``), bounces, ``owner-*``, ``*-request``;
- our own addresses (every account of the spec and its aliases) in From, Sender or Return-Path;
- a delivery status notification (the importer does not even ask), and any other report
  (``multipart/report``: a read receipt, or a delivery report with more parts than one has);
- mail older than :data:`REPLY_WITHIN`: a first pass over a full mailbox, or ``import_since`` moved
  back, must not answer last year's mail.

The reply goes to the envelope sender that delivery recorded, the topmost ``Return-Path`` (RFC 3834 §4:
automatic responses go to the address that takes mail about a mail, not to the From that a person
reads), or to the From address where there is none (mail that a client put in the mailbox). It has the
account's ``autoreply.subject`` and ``body`` through compose and :func:`mailops.engine.send.send_mails`
(sender, signature, template, the outbox log), and carries ``Auto-Submitted: auto-replied``,
``In-Reply-To`` and ``References``. Our own replies are therefore automatic mail to every other
mailops: two accounts answering each other stop after one reply.

With ``once_per_day_per_sender`` a sender gets at most one reply per account and calendar day
(the day in ``MAILOPS_TIMEZONE``, the business's zone), held by a unique claim in the state store
(:mod:`mailops.state.autoreplies`) that is taken in the same transaction as the import of the
message answered, before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING

from mailops.runtime.headers import has_header, header_addresses, header_block, header_text, header_texts
from mailops.state.autoreplies import ONCE_A_DAY, AutoReplies, ReplyClaim, ReplyStatus, claim_in

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.spec.models import Account, Spec
    from mailops.state.store import StateStore
    from mailops.state.tables import MessageRow

REPLY_WITHIN = dt.timedelta(days=3)  # older mail is not answered (a weekend without a worker is still answered)
REFERENCES_KEPT = 10  # message ids a reply's References carries at most (the newest)
_MESSAGE_ID = re.compile(r"<([!-;=?-~]{1,250})>")  # printable ASCII without < and >
_ROBOT = re.compile(
    r"^(?:mailer[-_.]?daemon|postmaster|bounces?|owner-.*|.*-request"
    r"|(?:.*[-_.])?no[-_.]?reply|(?:.*[-_.])?do[-_.]?not[-_.]?reply)"  # also as a word of it: notifications-noreply
    r"(?:[-+_.].*)?$",
    re.IGNORECASE,
)
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk", "auto_reply"})
_SUPPRESS = frozenset({"all", "autoreply", "oof"})


def own_addresses(spec: Spec) -> frozenset[str]:
    """Every address the spec declares as ours (accounts and their aliases), lower-cased."""
    found = set()
    for account in spec.accounts:
        found.add(account.address.lower())
        found.update(alias.lower() for alias in account.aliases)
    return frozenset(found)


def why_not_answer(headers: Message, own: frozenset[str]) -> str | None:
    """Why the message with ``headers`` must get no auto-reply (see the module doc); None when it may."""
    for submitted in header_texts(headers, "Auto-Submitted"):  # each one: a first `no` does not hide the next
        if _first_word(submitted) != "no":
            return f"Auto-Submitted: {submitted}"
    for precedence in header_texts(headers, "Precedence"):
        if _first_word(precedence) in _BULK_PRECEDENCE:
            return f"Precedence: {precedence}"
    suppress = {word.strip().lower() for word in header_text(headers, "X-Auto-Response-Suppress").split(",")}
    if suppress & _SUPPRESS:
        return "X-Auto-Response-Suppress"
    for name in ("List-Id", "List-Unsubscribe", "X-Autoreply", "X-Autorespond"):
        if has_header(headers, name):
            return name
    if header_text(headers, "Content-Type").split(";")[0].strip().lower() == "multipart/report":
        return "a report (multipart/report)"  # a delivery or read report, also one not read as such
    if has_header(headers, "Return-Path"):
        return_path = header_text(headers, "Return-Path").strip()
        if return_path in ("", "<>") or not header_addresses(headers, "Return-Path"):
            return "empty Return-Path"
    senders = [*header_addresses(headers, "From")[:1], *header_addresses(headers, "Sender")[:1]]
    senders += header_addresses(headers, "Return-Path")[:1]
    if not senders:
        return "no sender address"
    for address in senders:
        local = address.rpartition("@")[0] or address
        if _ROBOT.match(local):
            return f"a robot's address ({address})"
        if address.lower() in own:
            return f"our own address ({address})"
    return None


def reply_address(headers: Message) -> str:
    """Where the auto-reply to a message that :func:`why_not_answer` lets through goes (see the module doc): its
    first Return-Path address, else its From address. IndexError when it has neither."""
    return (header_addresses(headers, "Return-Path")[:1] or header_addresses(headers, "From"))[0]


def _first_word(value: str) -> str:
    """The keyword a field's value starts with, lower-cased: `auto-replied; owner=...` and `bulk (comment)` are
    `auto-replied` and `bulk`."""
    return re.split(r"[\s;(]", value.strip(), maxsplit=1)[0].lower()


@dataclass
class ReplyCounts:
    """What became of the messages an account's auto-reply looked at in a pass."""

    sent: int = 0
    failed: int = 0
    automatic: int = 0  # automatic mail, robots, our own addresses: never answered
    too_old: int = 0
    answered_today: int = 0  # the sender had the day's reply already
    error: str | None = None  # why replies could not be sent at all, if so


@dataclass
class _Claim:
    """One reply on its way: claimed in the import's transaction, sent after the batch."""

    key: ReplyClaim
    in_reply_to: str | None
    references: tuple[str, ...]
    claim_id: int | None = None

    def __call__(self, session: Session, row: MessageRow) -> None:
        self.claim_id = claim_in(session, self.key, row.id)


@dataclass
class AutoReplier:
    """One account's auto-replies in one pass: :meth:`consider` each new message before its import is
    committed, :meth:`claimed` after, :meth:`send` after each batch."""

    account: Account
    loaded: LoadedSpec
    store: StateStore
    settings: Settings
    counts: ReplyCounts = field(default_factory=ReplyCounts)
    _own: frozenset[str] = field(init=False, default=frozenset())
    _pending: list[_Claim] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._own = own_addresses(self.loaded.spec)

    def consider(self, raw: bytes, received_at: dt.datetime, dedupe_key: str) -> _Claim | None:
        """The claim to take with the import of the message ``raw``, or None when it gets no reply."""
        from mailops.spec.models import canonical_address

        now = dt.datetime.now(dt.UTC)
        if received_at < now - REPLY_WITHIN:
            self.counts.too_old += 1
            return None
        headers = header_block(raw)
        if why_not_answer(headers, self._own) is not None:
            self.counts.automatic += 1
            return None
        try:
            recipient = canonical_address(reply_address(headers))
        except Exception:  # noqa: BLE001 - an address no server would take is no one to answer
            self.counts.automatic += 1
            return None
        settings = self.account.autoreply
        scope = ONCE_A_DAY if settings.once_per_day_per_sender else dedupe_key
        key = ReplyClaim(self.account.address, recipient, now.astimezone(self.settings.zone).date(), scope)
        message_id = _message_ids(header_text(headers, "Message-ID"))
        references = _message_ids(header_text(headers, "References")) + message_id
        return _Claim(key, next(iter(message_id), None), tuple(dict.fromkeys(references))[-REFERENCES_KEPT:])

    def claimed(self, claim: _Claim) -> None:
        """The import of ``claim``'s message is committed: send its reply if the claim was ours."""
        if claim.claim_id is None:
            self.counts.answered_today += 1
        else:
            self._pending.append(claim)

    def send(self) -> None:
        """Send the claimed replies (one SMTP session), and record how each went."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        from mailops.compose import SendRequest
        from mailops.engine.send import send_mails
        from mailops.engine.visibility import Actor
        from mailops.errors import MailopsError

        settings = self.account.autoreply
        requests = [
            SendRequest(
                to=(claim.key.recipient,),
                subject=settings.subject,
                body=settings.body,
                html=True,
                account=self.account.address,
                in_reply_to=claim.in_reply_to,
                references=claim.references,
                auto_submitted="auto-replied",
            )
            for claim in pending
        ]
        claims = AutoReplies(self.store)
        try:
            # The worker acts for nobody: it sends as the administrator would, from the account itself.
            results = send_mails(self.loaded, self.store, self.settings, Actor(None), requests)
        except MailopsError as exc:  # nothing was sent (a template that cannot be read, say): the claims say so
            self.counts.failed += len(pending)
            self.counts.error = str(exc)
            claims.finish([(_id(claim), ReplyStatus.FAILED, None) for claim in pending])
            return
        outcomes = []
        for claim, result in zip(pending, results, strict=True):
            status = ReplyStatus.SENT if result.ok else ReplyStatus.FAILED
            self.counts.sent += status == ReplyStatus.SENT
            self.counts.failed += status == ReplyStatus.FAILED
            outcomes.append((_id(claim), status, result.entry_id))
        claims.finish(outcomes)


def _id(claim: _Claim) -> int:
    assert claim.claim_id is not None  # only claims taken are pending
    return claim.claim_id


def _message_ids(text: str) -> list[str]:
    return [f"<{match}>" for match in _MESSAGE_ID.findall(text)]
