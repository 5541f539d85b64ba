"""Sending mail through the right account, with every attempt in the outbox log.

The order of things, for one mail or a batch:

1. compose each mail from the spec (sender, signature, CC/BCC, template);
2. refuse what may not go out: an account that is not live and connected, or one the
   acting user may not send from;
3. write every attempt `queued` (one transaction per chunk) before a byte is sent;
4. send: one SMTP session per account, accounts concurrently (bounded), each
   account's mails in order; a temporary failure (4xx, a dropped connection, a timeout)
   is tried again after a growing pause, each try a new attempt linked to the one
   before; a permanent one (5xx) is not;
5. record how each attempt ended, with its classified error and remedy.

A mail that cannot even be composed for a reason the seed's log knows (no recipient, an
attachment that is missing or unreadable) is logged `failed` with nothing sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.utils import make_msgid

from mailops.compose import Composed, ComposeError, SendRequest, TemplateFiles, compose
from mailops.engine.credentials import credential_context
from mailops.engine.verify import endpoints, timeouts_of
from mailops.engine.visibility import Actor, visible_addresses
from mailops.errors import MailopsError
from mailops.providers.base import CredentialContext, provider_for
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.state.accounts import AccountStatus
from mailops.state.outbox import HEARTBEAT, NewAttempt, Outbox, OutboxEntry, OutboxStatus, Outcome
from mailops.state.store import StateStore
from mailops.transport.failures import FailureClass, TransportError
from mailops.transport.smtp import RecipientsRefused, send_in_session, smtp_session

MAX_ATTEMPTS = 3
FIRST_PAUSE = 1.0  # seconds before the second try; doubled for each further one
CHUNK = 200  # attempts queued, and outcomes recorded, per transaction
# An outcome waits at most this long to be recorded: a mail sent but not yet on record would be
# sent again by `outbox retry` after a crash.
RECORD_WITHIN = 0.5  # seconds
# Composing failures the seed's log knows: logged as failed attempts, nothing sent.
LOGGED_COMPOSE_FAILURES = frozenset({"no_recipient", "file_access", "file_open"})


@dataclass(frozen=True)
class SendResult:
    entry_id: int | None  # the outbox entry of the last attempt (None for a dry run)
    composed: Composed | None
    status: str  # sent | failed | dry-run
    attempts: int = 0
    reply: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    error_class: str | None = None
    remedy: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (OutboxStatus.SENT, "dry-run")


@dataclass
class _Job:
    """One mail on its way; a retry updates it to the new attempt's entry."""

    composed: Composed
    entry_id: int
    actor: Actor
    expires: dt.datetime | None  # until when the outbox keeps the whole message
    attempt: int = 1
    result: SendResult | None = None
    # The envelope of the next try: every recipient, or those a server refused for now.
    recipients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.recipients = self.recipients or self.composed.recipients


def send_mails(
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    actor: Actor,
    requests: Sequence[SendRequest],
    *,
    dry_run: bool = False,
) -> list[SendResult]:
    """Compose, check, log and send ``requests``; one result per request, in order."""
    outbox = Outbox(store)
    files = TemplateFiles()  # the HTML template (and its images) read once for the whole batch
    may_send: set[str] = set()  # the accounts checked already: their mails may go out
    composed: list[Composed | tuple[SendRequest, ComposeError]] = []
    for request in requests:  # every mail is checked before anything is logged or sent
        try:
            mail = compose(
                loaded.spec, replace(request, acting_user=actor.user), config_dir=loaded.config_dir, files=files
            )
        except ComposeError as error:
            if error.failure not in LOGGED_COMPOSE_FAILURES or dry_run:
                raise
            if error.account is not None and not actor.may_see(error.account.visible_to):
                raise actor.may_not_send_from(error.account.address) from None
            composed.append((request, error))
            continue
        if mail.account.address not in may_send:  # one look at the state store per account, not per mail
            _check_may_send(store, actor, mail)
            may_send.add(mail.account.address)
        composed.append(mail)
    if dry_run:
        return [SendResult(None, c, "dry-run") for c in composed if isinstance(c, Composed)]
    context = credential_context(loaded, settings, store)  # a bad MAILOPS_SECRET_KEY stops us before the log
    outbox.forget_expired_bodies()
    failed = {id(c): _log_compose_failure(loaded, outbox, actor, *c) for c in composed if isinstance(c, tuple)}
    mails = [c for c in composed if isinstance(c, Composed)]
    jobs = _queue(loaded, outbox, actor, mails)
    asyncio.run(_deliver(store, settings, context, outbox, jobs))
    by_mail = {id(job.composed): job.result for job in jobs}
    return [failed[id(c)] if isinstance(c, tuple) else _required(by_mail[id(c)]) for c in composed]


def _required(result: SendResult | None) -> SendResult:
    assert result is not None  # every queued job ends with a result
    return result


def _check_may_send(store: StateStore, actor: Actor, mail: Composed) -> None:
    account = mail.account
    if not actor.may_see(account.visible_to):
        raise actor.may_not_send_from(account.address)
    problem = _not_sending(store, account.address)
    if problem is not None:
        raise MailopsError(problem)


def _not_sending(store: StateStore, address: str) -> str | None:
    """Why ``address`` may not send now (not applied, or not connected); None when it may."""
    live = store.account(address)
    if live is None:
        return f"{address} is not applied yet; run `mailops apply` first"
    if live.status != AccountStatus.CONNECTED:
        return f"{address} is {live.status.replace('_', ' ')}, not connected; `mailops check` says what it needs"
    return None


def _log_compose_failure(
    loaded: LoadedSpec, outbox: Outbox, actor: Actor, request: SendRequest, error: ComposeError
) -> SendResult:
    """The seed logs a mail that could not be built (no recipient, a missing attachment) as failed."""
    from mailops.outbox.classify import remedy  # pandas: paid only when something fails

    account = error.account
    sender = account.address if account is not None else loaded.spec.defaults.email
    domain = sender.partition("@")[2] or "localhost"
    attempt = NewAttempt(
        account=sender,
        sender=sender,
        sender_name="",
        to=request.to,
        cc=request.cc,
        bcc=request.bcc,
        subject=request.subject,
        preview=request.body[:200],
        message_id=make_msgid(domain=domain),
        project=request.project,
        acting_user=actor.user,
    )
    [entry_id] = outbox.queue([attempt])
    help = remedy(error.failure)
    outbox.finish([(entry_id, Outcome(OutboxStatus.FAILED, str(error), None, None, error.failure, help.long))])
    return SendResult(entry_id, None, OutboxStatus.FAILED.value, 0, str(error), None, None, error.failure, help.long)


def _queue(loaded: LoadedSpec, outbox: Outbox, actor: Actor, mails: Sequence[Composed]) -> list[_Job]:
    keep_days = loaded.spec.policies.outbox.keep_bodies_days
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=keep_days) if keep_days else None
    jobs: list[_Job] = []
    for start in range(0, len(mails), CHUNK):
        chunk = mails[start : start + CHUNK]
        ids = outbox.queue([_attempt(mail, actor, expires) for mail in chunk])
        jobs += [_Job(mail, entry_id, actor, expires) for mail, entry_id in zip(chunk, ids, strict=True)]
    return jobs


def _attempt(
    mail: Composed,
    actor: Actor,
    expires: dt.datetime | None,
    *,
    attempt: int = 1,
    retry_of: int | None = None,
) -> NewAttempt:
    return NewAttempt(
        account=mail.account.address,
        sender=mail.sender,
        sender_name=mail.sender_name,
        to=mail.to,
        cc=mail.cc,
        bcc=mail.bcc,
        subject=mail.subject,
        preview=mail.preview,
        message_id=mail.message_id,
        project=mail.project,
        acting_user=actor.user,
        attempt=attempt,
        retry_of=retry_of,
        raw=mail.raw,  # until it is sent; after that only while the policy keeps it
        raw_expires_at=expires,
    )


class _Recorder:
    """Collects outcomes and writes them in chunks (one transaction each), at least every
    RECORD_WITHIN seconds; shows meanwhile that this process still looks after its queued attempts."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox
        self.pending: list[tuple[int, Outcome]] = []
        self.flushed_at = self.beat_at = time.monotonic()

    def add(self, entry_id: int, outcome: Outcome) -> None:
        self.pending.append((entry_id, outcome))
        if len(self.pending) >= CHUNK or time.monotonic() - self.flushed_at >= RECORD_WITHIN:
            self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        self.flushed_at = now
        if now - self.beat_at >= HEARTBEAT.total_seconds():
            self.outbox.heartbeat()
            self.beat_at = now
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            self.outbox.finish(pending)
        except MailopsError as exc:
            sent = sum(outcome.status == OutboxStatus.SENT for _id, outcome in pending)
            raise MailopsError(
                f"{sent} mail(s) went out, but how {len(pending)} attempt(s) ended could not be recorded: {exc}. "
                "They stay `queued`: `mailops outbox retry` would send those mails again."
            ) from None


async def _deliver(
    store: StateStore, settings: Settings, context: CredentialContext, outbox: Outbox, jobs: list[_Job]
) -> None:
    by_account: dict[str, list[_Job]] = defaultdict(list)
    for job in jobs:
        by_account[job.composed.account.address.lower()].append(job)
    recorder = _Recorder(outbox)
    semaphore = asyncio.Semaphore(settings.concurrency)
    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="mailops-send") as executor:

        async def account_worker(account_jobs: list[_Job]) -> None:
            async with semaphore:
                await _send_account(account_jobs, context, settings, outbox, recorder, executor)

        try:
            await asyncio.gather(*(account_worker(group) for group in by_account.values()))
        finally:
            recorder.flush()


async def _send_account(
    jobs: list[_Job],
    context: CredentialContext,
    settings: Settings,
    outbox: Outbox,
    recorder: _Recorder,
    executor: ThreadPoolExecutor,
) -> None:
    """One account's mails over one SMTP session, reconnecting after a failure that ended it."""
    account = jobs[0].composed.account
    _imap, smtp = endpoints(account)
    timeouts = timeouts_of(settings)
    loop = asyncio.get_running_loop()
    provider = provider_for(account.provider)
    pending = list(jobs)
    pause = FIRST_PAUSE
    while pending:
        try:
            try:
                credential = await loop.run_in_executor(executor, provider.credential, account, context)
            except TransportError:
                raise
            except Exception as exc:  # noqa: BLE001 - a secret that cannot be read fails the mails, not the run
                raise TransportError(FailureClass.SECRET, f"the credential of {account.address}: {exc}") from None
            async with smtp_session(smtp, credential, timeouts, settings.ca_file) as client:
                while pending:
                    job = pending[0]
                    try:
                        reply = await send_in_session(
                            client, job.composed.raw, sender=job.composed.sender, recipients=job.recipients
                        )
                    except TransportError as error:
                        if not _fail(job, error, outbox, recorder):
                            pending.pop(0)
                            continue
                        await asyncio.sleep(pause)
                        pause *= 2
                        if error.failure_class in _SESSION_GONE:
                            break  # the session is likely gone: open a new one
                        continue
                    pending.pop(0)
                    pause = FIRST_PAUSE
                    recorder.add(job.entry_id, Outcome(OutboxStatus.SENT, reply=reply))
                    job.result = SendResult(job.entry_id, job.composed, OutboxStatus.SENT.value, job.attempt, reply)
        except TransportError as error:  # no session: every waiting mail fails (or waits for the next try)
            pending = [job for job in pending if _fail(job, error, outbox, recorder)]
            if pending:
                await asyncio.sleep(pause)
                pause *= 2


_SESSION_GONE = (FailureClass.CONNECT, FailureClass.TIMEOUT, FailureClass.PROTOCOL, FailureClass.CONNECTION_LOST)


def _fail(job: _Job, error: TransportError, outbox: Outbox, recorder: _Recorder) -> bool:
    """Record a failed attempt; when it is worth another try, queue the next one on ``job`` and say so.

    Recipients a server refused while it took the mail for the others are the only ones the
    next try is sent to: the others have it.
    """
    from mailops.outbox.classify import classify, is_temporary, remedy  # pandas: paid only when something fails

    error_class = classify(error.detail, error.smtp_code, error.enhanced_code, error.failure_class.value)
    help = remedy(error_class)
    temporary = is_temporary(error_class, error.smtp_code, error.enhanced_code)
    last_try = job.attempt >= MAX_ATTEMPTS
    outcome = Outcome(
        OutboxStatus.FAILED,
        error.detail,
        error.smtp_code,
        error.enhanced_code,
        error_class,
        help.long,
        retry_later=temporary and last_try,  # `outbox retry` may try it again later
    )
    recorder.add(job.entry_id, outcome)
    job.result = SendResult(
        job.entry_id, job.composed, OutboxStatus.FAILED.value, job.attempt, error.detail, error.smtp_code,
        error.enhanced_code, error_class, help.long,
    )  # fmt: skip
    if not temporary or last_try:
        return False
    recorder.flush()  # the failed attempt is on record before the next one is
    if isinstance(error, RecipientsRefused):
        job.recipients = tuple(address for address in job.recipients if address in error.refused)
    next_attempt = _attempt(job.composed, job.actor, job.expires, attempt=job.attempt + 1, retry_of=job.entry_id)
    [job.entry_id] = outbox.queue([next_attempt])
    job.attempt += 1
    return True


@dataclass(frozen=True)
class RetryReport:
    """What `outbox retry` did: the mails it sent again, the attempts it left and why, the automatic replies
    it closed instead of sending them again, and how many another `outbox retry` running at the same time took
    over."""

    results: list[SendResult]
    skipped: list[tuple[int, str]]
    taken_elsewhere: int = 0
    closed: list[int] = field(default_factory=list)


def retry(loaded: LoadedSpec, store: StateStore, settings: Settings, actor: Actor) -> RetryReport:
    """Send again what was left behind: attempts of a process that died while they were queued, and
    passing failures not yet tried again. Each gets a new attempt linked to it (at least once:
    a mail whose sender died right after the server took it may arrive twice). Two retries at
    the same time each take an attempt over only once (see :meth:`Outbox.take_over`).

    An automatic reply (``Auto-Submitted``: the worker's auto-replies) promises at most one reply per sender and
    day: it is sent again only when the server answered "not now" (a 4xx reply), and never arrived. One that may
    have arrived (left queued, or a connection lost or timed out after the data) is closed instead: a queued
    one as interrupted, a failed one keeping its class."""
    outbox = Outbox(store)
    outbox.forget_expired_bodies()
    visible = visible_addresses(loaded.spec, actor, store.accounts(include_deleted=True))
    context = credential_context(loaded, settings, store)
    jobs: list[_Job] = []
    skipped: list[tuple[int, str]] = []
    taken_elsewhere = 0
    closed: list[int] = []
    for entry in outbox.orphans():
        if entry.account not in visible or not (entry.status == OutboxStatus.QUEUED or _temporary(entry)):
            continue
        mail = _composed_again(loaded, outbox, entry)
        if mail is None:
            skipped.append((entry.id, f"{entry.account} is no longer in the spec"))
            continue
        if _automatic(mail.raw) and not _refused_for_now(entry):
            interrupted = _interrupted() if entry.status == OutboxStatus.QUEUED else None
            if outbox.close_orphan(entry, interrupted):
                closed.append(entry.id)
            else:
                taken_elsewhere += 1
            continue
        problem = _not_sending(store, entry.account)
        if problem is not None:
            skipped.append((entry.id, problem))
            continue
        attempt = _attempt(mail, actor, None, attempt=entry.attempt + 1, retry_of=entry.id)
        interrupted = _interrupted() if entry.status == OutboxStatus.QUEUED else None
        entry_id = outbox.take_over(entry, attempt, interrupted)
        if entry_id is None:
            taken_elsewhere += 1
            continue
        jobs.append(_Job(mail, entry_id, actor, None, attempt=entry.attempt + 1))
    if jobs:
        asyncio.run(_deliver(store, settings, context, outbox, jobs))
    return RetryReport([_required(job.result) for job in jobs], skipped, taken_elsewhere, closed)


def resend(loaded: LoadedSpec, store: StateStore, settings: Settings, actor: Actor, entry_id: int) -> SendResult:
    """Send a kept mail again (after a fix), as a new attempt linked to the old one."""
    outbox = Outbox(store)
    outbox.forget_expired_bodies()
    visible = visible_addresses(loaded.spec, actor, store.accounts(include_deleted=True))
    entry = outbox.entry(entry_id)
    if entry is None or entry.account not in visible:
        raise MailopsError(f"no outbox entry {entry_id}")  # the same answer for one the actor may not see
    mail = _composed_again(loaded, outbox, entry)
    if mail is None:
        raise MailopsError(
            f"outbox entry {entry_id} was not kept whole (policies.outbox.keep_bodies_days); send the mail again"
        )
    _check_may_send(store, actor, mail)
    context = credential_context(loaded, settings, store)
    [new_id] = outbox.queue([_attempt(mail, actor, None, attempt=entry.attempt + 1, retry_of=entry.id)])
    job = _Job(mail, new_id, actor, None, attempt=entry.attempt + 1)
    asyncio.run(_deliver(store, settings, context, outbox, [job]))
    return _required(job.result)


def _automatic(raw: bytes) -> bool:
    """Whether the message ``raw`` says it was sent automatically (``Auto-Submitted`` other than ``no``)."""
    from email.parser import BytesHeaderParser

    value = BytesHeaderParser().parsebytes(raw).get("Auto-Submitted")
    return value is not None and str(value).split(";")[0].strip().lower() != "no"


def _refused_for_now(entry: OutboxEntry) -> bool:
    """Whether the server answered ``entry`` with a 4xx reply: it was not taken, and may be tried again."""
    return entry.status == OutboxStatus.FAILED and entry.smtp_code is not None and 400 <= entry.smtp_code < 500


def _temporary(entry: OutboxEntry) -> bool:
    from mailops.outbox.classify import is_temporary

    return entry.error_class is not None and is_temporary(entry.error_class, entry.smtp_code, entry.enhanced_code)


def _interrupted() -> Outcome:
    from mailops.outbox.classify import remedy

    help = remedy("interrupted")
    return Outcome(
        OutboxStatus.FAILED,
        "the sending process ended before this attempt was recorded; it may have been delivered",
        error_class="interrupted",
        remedy=help.long,
    )


def _composed_again(loaded: LoadedSpec, outbox: Outbox, entry: OutboxEntry) -> Composed | None:
    """The kept message of ``entry``, sent by its account as the spec declares it now (None: not kept, or the
    account is gone from the spec)."""
    raw = outbox.raw(entry.id)
    account = loaded.spec.account(entry.account)
    if raw is None or account is None:
        return None
    return Composed(
        account=account,
        sender=entry.sender,
        sender_name=entry.sender_name,
        to=entry.to,
        cc=entry.cc,
        bcc=entry.bcc,
        recipients=entry.to + entry.cc + entry.bcc,
        raw=raw,
        subject=entry.subject,
        message_id=entry.message_id,
        project=entry.project,
        preview=entry.preview,
        explanation=(("again", f"outbox entry {entry.id}"),),
    )
