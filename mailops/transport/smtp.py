"""SMTP with aiosmtplib: log in (password or XOAUTH2) and send."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import aiosmtplib

from mailops.transport.connection import Credential, Endpoint, Timeouts, client_tls_context
from mailops.transport.failures import FailureClass, TransportError, classify


@asynccontextmanager
async def smtp_session(
    endpoint: Endpoint, credential: Credential, timeouts: Timeouts, ca_file: Path | None = None
) -> AsyncIterator[aiosmtplib.SMTP]:
    """A logged-in SMTP connection; every failure comes out as a classified TransportError."""
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        use_tls=endpoint.encryption == "ssl",
        # False, not None: None would upgrade opportunistically even where `none` was asked for.
        start_tls=endpoint.encryption == "starttls",
        tls_context=client_tls_context(ca_file),
        timeout=timeouts.command,
    )
    try:
        await client.connect(timeout=timeouts.connect)
        if credential.oauth_token is not None:
            await client.auth_xoauth2(credential.username, credential.oauth_token)
        else:
            await client.login(credential.username, credential.password or "")
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        client.close()
        raise classify(exc, "smtp") from None
    try:
        yield client
    except TransportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, "smtp") from None
    finally:
        try:
            await client.quit()
        except Exception:  # noqa: BLE001 - the server may already be gone
            client.close()


async def send_message(
    endpoint: Endpoint, credential: Credential, message: EmailMessage, timeouts: Timeouts, ca_file: Path | None = None
) -> None:
    """Log in and send ``message``."""
    async with smtp_session(endpoint, credential, timeouts, ca_file) as client:
        await send_in_session(client, message)


class RecipientsRefused(TransportError):
    """The server took the mail for some recipients and refused the others (``refused``, with their
    replies): it went out, but not to everyone."""

    def __init__(self, refused: dict[str, tuple[int, str]]):
        self.refused = tuple(refused)
        text = "; ".join(f"{address}: {code} {reply}" for address, (code, reply) in refused.items())
        first_code = next(iter(refused.values()))[0]
        super().__init__(FailureClass.RECIPIENT_REFUSED, text, protocol="smtp", smtp_code=first_code)


async def send_in_session(
    client: aiosmtplib.SMTP,
    message: EmailMessage | bytes,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> str:
    """Send on an open session; the server's reply. A recipient refused while others were
    accepted raises :class:`RecipientsRefused`. ``recipients`` is the envelope (with BCC, which
    the headers do not show); without it the headers decide.

    ``message`` may come serialized in the SMTP policy (as the outbox logs it, without Bcc).
    Those bytes go out as they are where aiosmtplib would send the same ones (ASCII envelope,
    a server that takes 8BITMIME); otherwise they are parsed and aiosmtplib serializes them for
    this server.
    """
    try:
        if isinstance(message, bytes):
            if (
                sender is not None
                and recipients
                and sender.isascii()
                and all(address.isascii() for address in recipients)
                and client.supports_extension("8BITMIME")
            ):
                refused, response = await client.sendmail(sender, recipients, message, mail_options=["BODY=8BITMIME"])
            else:
                parsed = message_from_bytes(message, policy=SMTP)
                refused, response = await client.send_message(parsed, sender=sender, recipients=recipients)
        else:
            refused, response = await client.send_message(message, sender=sender, recipients=recipients)
    except aiosmtplib.SMTPException as exc:
        raise classify(exc, "smtp") from None
    if refused:
        raise RecipientsRefused({address: (reply.code, reply.message) for address, reply in refused.items()})
    return str(response)
