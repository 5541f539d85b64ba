"""IMAP with imapclient: log in (password or XOAUTH2) and look into the inbox.

imapclient is synchronous; the engine runs these functions in worker threads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imapclient import IMAPClient
from imapclient.imapclient import SocketTimeout

from mailops.transport.connection import Credential, Endpoint, Timeouts, client_tls_context
from mailops.transport.failures import FailureClass, TransportError, classify


@contextmanager
def imap_session(
    endpoint: Endpoint, credential: Credential, timeouts: Timeouts, ca_file: Path | None = None
) -> Iterator[IMAPClient]:
    """A logged-in IMAP connection; every failure comes out as a classified TransportError."""
    context = client_tls_context(ca_file)
    client = None
    try:
        client = IMAPClient(
            endpoint.host,
            port=endpoint.port,
            ssl=endpoint.encryption == "ssl",
            ssl_context=context,
            timeout=SocketTimeout(connect=timeouts.connect, read=timeouts.command),
        )
        if endpoint.encryption == "starttls":
            client.starttls(context)
        if credential.oauth_token is not None:
            client.oauth2_login(credential.username, credential.oauth_token)
        else:
            _password_login(client, credential.username, credential.password or "")
    except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes raw
        _close(client)
        raise classify(exc, "imap") from None
    try:
        yield client
    except TransportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, "imap") from None
    finally:
        _close(client, logout=True)


# Characters of an IMAP atom (RFC 3501): no space, controls, quotes, brackets or wildcards.
_IMAP_ATOM = re.compile(r"[A-Za-z0-9!#$&'+,\-./:;<=>?@\[^_`|}~]+")


def _password_login(client: IMAPClient, username: str, password: str) -> None:
    """LOGIN, or AUTHENTICATE PLAIN when LOGIN cannot carry the login safely.

    IMAP's LOGIN command carries ASCII only (imaplib refuses anything else), and imaplib
    sends the user name unquoted: a name with a space or a quote would become further
    arguments of the command. The PLAIN mechanism carries any UTF-8 text as one
    base64 blob, so such logins use it where the server offers it.
    """
    if _IMAP_ATOM.fullmatch(username) and password.isascii():
        client.login(username, password)
    elif client.has_capability("AUTH=PLAIN"):
        client.plain_login(username, password)
    else:
        raise TransportError(
            FailureClass.LOCAL,
            "the login holds characters IMAP LOGIN cannot carry (non-ASCII, spaces or quotes), "
            "and this server offers no AUTHENTICATE PLAIN",
            protocol="imap",
        )


def _close(client: IMAPClient | None, *, logout: bool = False) -> None:
    if client is None:
        return
    try:
        if logout:
            client.logout()
        else:
            client.shutdown()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail too; nothing to do
        pass


def verify_imap_login(
    endpoint: Endpoint, credential: Credential, timeouts: Timeouts, ca_file: Path | None = None
) -> None:
    """Connect, log in and select the inbox (a login alone does not prove the mailbox exists)."""
    with imap_session(endpoint, credential, timeouts, ca_file) as client:
        client.select_folder("INBOX", readonly=True)


def wait_for_message(
    endpoint: Endpoint,
    credential: Credential,
    message_id: str,
    timeouts: Timeouts,
    ca_file: Path | None = None,
    *,
    wait: float = 20.0,
) -> bool:
    """Poll the inbox until a message with ``message_id`` is there; False when ``wait`` runs out."""
    deadline = time.monotonic() + wait
    with imap_session(endpoint, credential, timeouts, ca_file) as client:
        while True:
            client.select_folder("INBOX", readonly=True)
            if client.search(["HEADER", "Message-ID", message_id]):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
