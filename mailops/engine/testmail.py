"""`mailops test-mail`: send one test mail from an account now, and record the result."""

from __future__ import annotations

import asyncio

from mailops.engine.credentials import credential_context
from mailops.engine.verify import TestMailResult, recipient_of_test_mail, send_test_mail_now
from mailops.engine.visibility import acting
from mailops.errors import MailopsError
from mailops.providers.base import provider_for
from mailops.settings import Settings
from mailops.spec import LoadedSpec
from mailops.spec.models import address_key, canonical_address
from mailops.state.store import StateStore
from mailops.transport.failures import TransportError


def send_test_mail(
    loaded: LoadedSpec,
    store: StateStore,
    settings: Settings,
    user: str | None,
    address: str,
    *,
    to: str | None,
    wait: bool,
) -> TestMailResult:
    """Send a test mail from ``address``; bad input is refused before anything is sent.

    To the account itself, or where `apply`'s test mail goes (the policies' address; the default of ``to``),
    it is a check of the account, which needs no one to act. A mail to another address is sending, and asks what
    `send` asks: someone who acts (``user``, from --as or MAILOPS_USER; or the administrator where the
    policies make the command line one) and may send from the account. A named ``user`` is always checked.
    """
    account = loaded.spec.account(address)
    if account is None:
        raise MailopsError(f"{address!r} is not an account in {loaded.config_dir}")
    provider = provider_for(account.provider)
    if to is not None and address_key(to) is None:
        raise MailopsError(f"--to {to!r} is not a valid e-mail address")
    usual = recipient_of_test_mail(account, loaded.spec.policies.test_mail.to)
    recipient = canonical_address(to) if to else usual
    if wait and address_key(recipient) != account.address.lower():
        raise MailopsError(
            f"--wait looks for the test mail in {account.address}'s own inbox; it cannot check another "
            f"mailbox ({recipient}). Send without --wait, or to {account.address} itself."
        )
    if user is not None or address_key(recipient) not in (address_key(usual), account.address.lower()):
        actor = acting(loaded.spec, user)
        if not actor.may_see(account.visible_to):
            raise actor.may_not_send_from(account.address)
    try:
        credential = provider.credential(account, credential_context(loaded, settings, store))
    except TransportError as error:
        result = TestMailResult(recipient, "", error=error)
    else:
        result = asyncio.run(send_test_mail_now(account, credential, recipient, settings, None, wait))
    store.record_test_mail(account.address, recipient, result.error.summary() if result.error else None)
    return result
