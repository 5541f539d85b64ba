"""IMAP with imapclient: log in (password or XOAUTH2) and look into the inbox.

imapclient is synchronous; the engine runs these functions in worker threads.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# -- reading a folder for the ticket import ------------------------------------------------


@dataclass(frozen=True)
class MailboxStatus:
    """A selected folder. Every message below ``uidnext`` exists now or never will, so a scan up to
    ``uidnext - 1`` misses nothing that arrives meanwhile: that mail gets a higher UID."""

    uidvalidity: int
    uidnext: int
    exists: int
    uidplus: bool  # UID EXPUNGE removes exactly the given messages (RFC 4315)


@dataclass(frozen=True)
class MessageSummary:
    """What a message looks like before its body is read."""

    uid: int
    internal_date: dt.datetime  # aware, in the offset the server gave
    size: int
    message_id_header: bytes  # the Message-ID header lines as the server has them (may be empty)


def open_mailbox(client: IMAPClient, folder: str, *, writable: bool) -> MailboxStatus:
    """Select ``folder``: read-only (EXAMINE) unless messages are to be deleted in it."""
    response = client.select_folder(folder, readonly=not writable)
    uidvalidity = int(response[b"UIDVALIDITY"])
    uidnext = response.get(b"UIDNEXT")
    if uidnext is None:  # required by RFC 3501, missing on some servers: the highest UID tells
        highest = client.search(["UID", "*"]) if int(response.get(b"EXISTS", 0)) else []
        uidnext = max(highest, default=0) + 1
    return MailboxStatus(
        uidvalidity=uidvalidity,
        uidnext=int(uidnext),
        exists=int(response.get(b"EXISTS", 0)),
        uidplus=client.has_capability("UIDPLUS"),
    )


def uids_between(client: IMAPClient, first: int, last: int) -> list[int]:
    """The UIDs of the messages from ``first`` to ``last`` (at most ``last - first + 1``), ascending."""
    return sorted(int(uid) for uid in client.search(["UID", f"{first}:{last}"]) if first <= int(uid) <= last)


_MESSAGE_ID_FIELD = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"


def fetch_summaries(client: IMAPClient, uids: list[int]) -> list[MessageSummary]:
    """Date, size and Message-ID of ``uids`` (PEEK: no flag changes); a message gone meanwhile is left out."""
    if not uids:
        return []
    normalise, client.normalise_times = client.normalise_times, False  # keep the server's offset
    try:
        response = client.fetch(uids, ["INTERNALDATE", "RFC822.SIZE", _MESSAGE_ID_FIELD])
    finally:
        client.normalise_times = normalise
    summaries = []
    for uid in sorted(response):
        data = response[uid]
        internal, size = data.get(b"INTERNALDATE"), data.get(b"RFC822.SIZE")
        if not isinstance(internal, dt.datetime) or size is None:
            continue  # an unsolicited FETCH (flags) of a message that is being expunged
        header = next((value for key, value in data.items() if key.startswith(b"BODY[HEADER")), b"")
        if internal.tzinfo is None:
            internal = internal.replace(tzinfo=dt.UTC)
        summaries.append(MessageSummary(int(uid), internal, int(size), header if isinstance(header, bytes) else b""))
    return summaries


def fetch_raw(client: IMAPClient, uids: list[int]) -> dict[int, bytes]:
    """The whole messages ``uids`` as the server keeps them, by UID. ``BODY.PEEK[]`` leaves ``\\Seen``
    alone (``BODY[]`` and ``RFC822`` would set it). A message gone meanwhile is missing from the answer."""
    if not uids:
        return {}
    response = client.fetch(uids, ["BODY.PEEK[]"])
    return {int(uid): data[b"BODY[]"] for uid, data in response.items() if isinstance(data.get(b"BODY[]"), bytes)}


def delete_by_uid(client: IMAPClient, uids: list[int], *, uidplus: bool) -> bool:
    """Delete exactly the messages ``uids`` from the selected (writable) folder; False when they could
    only be flagged.

    With UIDPLUS, ``UID EXPUNGE`` removes just them. Without it, only a plain ``EXPUNGE`` is left,
    which removes *every* message flagged ``\\Deleted``, also those another client flagged (and may
    still mean to unflag). So it is sent only when no other message carries the flag; otherwise the
    messages stay flagged, and a later call expunges them. (A client that flags a message between
    the check and the EXPUNGE loses it a little early: it had asked for its removal.) Deleting a
    UID that is gone already is no error.
    """
    if not uids:
        return True
    client.add_flags(uids, [b"\\Deleted"], silent=True)
    if uidplus:
        client.uid_expunge(uids)
        return True
    flagged = {int(uid) for uid in client.search(["DELETED"])}
    if flagged - set(uids):
        return False
    client.expunge()
    return True
