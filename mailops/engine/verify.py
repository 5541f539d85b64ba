"""Verifying an account: IMAP login, SMTP login, then the test mail the seed describes."""

from __future__ import annotations

import asyncio
import datetime as dt
from concurrent.futures import Executor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from functools import partial

from mailops.providers.base import CredentialContext, provider_for
from mailops.settings import Settings
from mailops.spec.models import Account
from mailops.transport.connection import Credential, Endpoint, Timeouts
from mailops.transport.failures import OAUTH_LOGIN_REFUSED, FailureClass, TransportError
from mailops.transport.imap import verify_imap_login, wait_for_message
from mailops.transport.smtp import send_in_session, send_message, smtp_session


@dataclass(frozen=True)
class TestMailResult:
    __test__ = False  # not a pytest class

    recipient: str
    message_id: str
    error: TransportError | None = None
    arrived: bool | None = None  # None: not checked


@dataclass(frozen=True)
class VerifyResult:
    address: str
    error: TransportError | None = None  # the first failed step (login or test mail)
    test_mail: TestMailResult | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def endpoints(account: Account) -> tuple[Endpoint, Endpoint]:
    assert account.imap is not None and account.smtp is not None  # filled by the spec loader
    return (
        Endpoint(account.imap.host, account.imap.port, account.imap.encryption),
        Endpoint(account.smtp.host, account.smtp.port, account.smtp.encryption),
    )


def timeouts_of(settings: Settings) -> Timeouts:
    return Timeouts(connect=settings.connect_timeout, command=settings.command_timeout)


def recipient_of_test_mail(account: Account, policy_to: str) -> str:
    return account.address if policy_to == "self" else policy_to


def build_test_mail(account: Account, recipient: str) -> EmailMessage:
    message = EmailMessage()
    domain = account.address.partition("@")[2]
    message["From"] = formataddr((account.display_name or "", account.address))
    message["To"] = recipient
    message["Subject"] = f"mailops test mail for {account.address}"
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid(domain=domain)
    # Marks the mail as automatic, so auto-replies (ours and others') leave it alone.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"This is a test mail from mailops.\n\nThe account {account.address} can log in to IMAP and SMTP "
        "and send mail. No action is needed.\n"
    )
    return message


async def verify_account(
    account: Account,
    *,
    context: CredentialContext,
    settings: Settings,
    executor: Executor | None,
    send_test_mail: bool,
    test_mail_to: str = "self",
) -> VerifyResult:
    """Log in to IMAP and SMTP at the same time, then send the test mail on the SMTP session.

    The test mail goes out only when both logins worked; the first failure is the result.
    """
    imap, smtp = endpoints(account)
    timeouts = timeouts_of(settings)
    loop = asyncio.get_running_loop()
    try:  # an OAuth credential may need a token refresh over the network: not in the event loop
        credential = await loop.run_in_executor(executor, provider_for(account.provider).credential, account, context)
    except TransportError as error:
        return VerifyResult(account.address, error=error)
    recipient = recipient_of_test_mail(account, test_mail_to)
    imap_login = loop.run_in_executor(executor, verify_imap_login, imap, credential, timeouts, settings.ca_file)

    async def smtp_login_and_test_mail() -> TestMailResult | None:
        async with smtp_session(smtp, credential, timeouts, settings.ca_file) as client:
            try:
                await imap_login
            except TransportError:
                return None  # reported from imap_login below
            if not send_test_mail:
                return None
            message = build_test_mail(account, recipient)
            try:
                await send_in_session(client, message)
            except TransportError as error:
                return TestMailResult(recipient, message["Message-ID"], error=error)
            return TestMailResult(recipient, message["Message-ID"])

    imap_outcome, smtp_outcome = await asyncio.gather(imap_login, smtp_login_and_test_mail(), return_exceptions=True)
    for outcome in (imap_outcome, smtp_outcome):
        if isinstance(outcome, BaseException) and not isinstance(outcome, TransportError):
            raise outcome
    first_failure = next((o for o in (imap_outcome, smtp_outcome) if isinstance(o, TransportError)), None)
    if first_failure is not None and first_failure.failure_class is FailureClass.AUTH and credential.oauth_token:
        first_failure = first_failure.with_remedy(OAUTH_LOGIN_REFUSED)
    test_mail = smtp_outcome if isinstance(smtp_outcome, TestMailResult) else None
    if first_failure is None and test_mail is not None:
        first_failure = test_mail.error
    return VerifyResult(account.address, error=first_failure, test_mail=test_mail)


async def send_test_mail_now(
    account: Account,
    credential: Credential,
    recipient: str,
    settings: Settings,
    executor: Executor | None,
    wait_for_arrival: bool,
) -> TestMailResult:
    """Send the test mail; with ``wait_for_arrival``, it counts as sent only once it is in the inbox.

    Waiting is possible only when the account sends to itself: mailops can look into no
    other mailbox.
    """
    imap, smtp = endpoints(account)
    timeouts = timeouts_of(settings)
    message = build_test_mail(account, recipient)
    message_id = message["Message-ID"]
    try:
        await send_message(smtp, credential, message, timeouts, settings.ca_file)
    except TransportError as error:
        return TestMailResult(recipient, message_id, error=error)
    if not wait_for_arrival:
        return TestMailResult(recipient, message_id)
    loop = asyncio.get_running_loop()
    try:
        arrived = await loop.run_in_executor(
            executor,
            partial(wait_for_message, wait=settings.delivery_wait),
            imap,
            credential,
            message_id,
            timeouts,
            settings.ca_file,
        )
    except TransportError as error:
        return TestMailResult(recipient, message_id, error=error, arrived=False)
    if not arrived:
        missing = TransportError(
            FailureClass.NOT_DELIVERED,
            f"the server accepted the test mail, but it was not in the inbox of {recipient} "
            f"after {settings.delivery_wait:g} s",
            protocol="imap",
        )
        return TestMailResult(recipient, message_id, error=missing, arrived=False)
    return TestMailResult(recipient, message_id, arrived=True)
