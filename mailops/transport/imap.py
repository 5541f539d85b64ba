"""IMAP with imapclient: log in (password or XOAUTH2) and look into the inbox.

imapclient is synchronous; the engine runs these functions in worker threads.

The ticket import's two UID FETCH commands (:func:`fetch_summaries`, :func:`fetch_raw`) read the
answer themselves where it has the plain shape servers give it (:func:`_parse_fetch`), and hand
anything else to imapclient's parser: imapclient reads each answer a character at a time in Python,
which took longer than receiving the mail.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        _quiet_imaplib(client)
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


def _quiet_imaplib(client: IMAPClient) -> None:
    """imapclient turns imaplib's debug output on (to its logger "imapclient.imaplib"), and imaplib then
    formats every line it reads, the bytes of each message included, whether anything logs it or not:
    that took longer than reading the mail. Off, unless that logger is set to show it."""
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0


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


_MESSAGE_ID_FIELD = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"


def fetch_summaries(client: IMAPClient, first: int, last: int) -> list[MessageSummary]:
    """Date, size and Message-ID of the messages with UIDs from ``first`` to ``last`` (at most ``last - first +
    1`` of them), in UID order; PEEK: no flag changes."""
    tag = _send_uid_fetch(client, f"{first}:{last}", f"(INTERNALDATE RFC822.SIZE {_MESSAGE_ID_FIELD})")
    response = _uid_fetch_result(client, tag)
    summaries = []
    for uid in sorted(uid for uid in response if first <= uid <= last):
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
    return RawFetch(client, uids).result()


class RawFetch:
    """:func:`fetch_raw` in two steps: made, it sends the command; :meth:`result` reads the answer. In between,
    the server sends the mail (into the connection's buffers) while this side does other work. Nothing else may
    be sent on the connection before :meth:`result` (an answer to it would take this one's data)."""

    def __init__(self, client: IMAPClient, uids: list[int]):
        self.client, self.uids = client, uids
        self._tag = _send_uid_fetch(client, ",".join(str(uid) for uid in uids), "(BODY.PEEK[])") if uids else None

    def result(self) -> dict[int, bytes]:
        if self._tag is None:
            return {}
        response = _uid_fetch_result(self.client, self._tag)
        self._tag = None
        raws = {}
        for uid in self.uids:  # unsolicited responses of other messages left out, as IMAPClient.fetch does
            raw = response.get(uid, {}).get(b"BODY[]")
            if isinstance(raw, bytes):
                raws[uid] = raw
        return raws


def _send_uid_fetch(client: IMAPClient, uids: str, items: str) -> Any:
    """Send ``UID FETCH uids items`` (imaplib's first step of a command, as :meth:`IMAPClient.fetch` takes it);
    its tag, for :func:`_uid_fetch_result`."""
    return client._imap._command("UID", "FETCH", uids, items)


def _uid_fetch_result(client: IMAPClient, tag: Any) -> dict[int, dict[bytes, Any]]:
    """The answer to the UID FETCH ``tag`` (imaplib's second step: read up to the tagged answer), as
    :func:`imapclient.response_parser.parse_fetch_response` reads it with ``normalise_times`` off (dates keep
    the server's offset): by UID, unsolicited responses included (the caller picks)."""
    imap = client._imap
    typ, data = imap._untagged_response(*imap._command_complete("UID", tag), "FETCH")
    if typ != "OK":
        from imapclient.exceptions import IMAPClientError

        raise IMAPClientError(f"UID FETCH failed: {data[0]!r}")
    response = _parse_fetch(data)
    if response is None:  # not of the plain shape: imapclient's parser reads anything
        from imapclient.response_parser import parse_fetch_response

        response = parse_fetch_response(data, normalise_times=False, uid_is_key=True)
    return dict(response)


# A FETCH answer as imaplib hands it over: a response's line up to each literal ({n} at its end) with the literal,
# then the rest of the line. A response starts "seq (" and holds "NAME value" pairs: the name may carry a section
# ("BODY[HEADER.FIELDS (MESSAGE-ID)]", spaces and parentheses included) and a partial ("<0>"); the value is a
# number, a quoted string without escapes, NIL, a literal, or a list of atoms (flags).
_FETCH_START = re.compile(rb"(\d+) \(")
_FETCH_PAIR = re.compile(
    rb" ?([A-Za-z0-9.\-]+(?:\[[^\]\r\n]*\](?:<\d+>)?)?)"
    rb' (?:(?P<number>\d+)|"(?P<quoted>[^"\\\r\n]*)"|(?P<nil>NIL)|\{(?P<literal>\d+)\}$|\((?P<list>[^()"{}\r\n]*)\))'
)
_INTERNALDATE = re.compile(rb" ?(\d{1,2})-([A-Z][a-z]{2})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_CONVERTED = frozenset({b"ENVELOPE", b"BODY", b"BODYSTRUCTURE"})  # imapclient makes objects of these
_MONTHS = {name: number for number, name in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}


def _parse_fetch(data: Sequence[bytes | tuple[bytes, bytes] | None]) -> dict[int, dict[bytes, Any]] | None:
    """The FETCH responses ``data`` (from imaplib) as imapclient's ``parse_fetch_response`` reads them: keyed by
    UID (by sequence number where no UID came), each with its ``SEQ``, names upper-cased, numbers as int,
    strings and literals as bytes, NIL as None, lists as tuples, INTERNALDATE as a datetime in its own offset.
    For responses of the plain shape only (see above); None for anything else."""
    response: dict[int, dict[bytes, Any]] = {}
    parts = iter(data)
    for part in parts:
        if part is None:  # imaplib's answer when there was no FETCH response at all
            continue
        line, literal = part if isinstance(part, tuple) else (part, None)
        start = _FETCH_START.match(line)
        if start is None:
            return None
        seq = int(start[1])
        fields: dict[bytes, Any] = {b"SEQ": seq}
        key, position = seq, start.end()
        while True:
            pair = _FETCH_PAIR.match(line, position)
            if pair is None:
                if line[position:] != b")":
                    return None
                break
            position = pair.end()
            name = pair[1].upper()
            value: Any
            if pair["number"] is not None:
                value = int(pair["number"])
            elif pair["quoted"] is not None:
                value = pair["quoted"]
            elif pair["nil"] is not None:
                value = None
            elif pair["list"] is not None:
                value = tuple(_list_item(item) for item in pair["list"].split())
            else:  # a literal, at the end of the line: the response goes on in the next part
                if literal is None or len(literal) != int(pair["literal"]):
                    return None
                value, following = literal, next(parts, None)
                if following is None:
                    return None
                line, literal = following if isinstance(following, tuple) else (following, None)
                position = 0
            if name == b"UID":
                if not isinstance(value, int):
                    return None
                key = value
            elif name == b"INTERNALDATE":
                if isinstance(value, int | tuple):
                    return None  # imapclient's parser fails on it
                fields[name] = _internal_date(value)
            elif name in _CONVERTED:
                return None
            else:
                fields[name] = value
        if literal is not None:
            return None  # a literal no pair took
        response.setdefault(key, {}).update(fields)
    return response


def _list_item(atom: bytes) -> bytes | int | None:
    return int(atom) if atom.isdigit() else None if atom == b"NIL" else atom


def _internal_date(value: bytes | None) -> dt.datetime | None:
    """An INTERNALDATE as imapclient reads it with ``normalise_times`` off (None when it cannot be read)."""
    if value is None:
        return None
    plain = _INTERNALDATE.fullmatch(value)
    month = _MONTHS.get(plain[2]) if plain is not None else None
    if plain is None or month is None:
        from imapclient.datetime_util import parse_to_datetime

        try:
            parsed: dt.datetime = parse_to_datetime(value, normalise=False)
        except ValueError:
            return None
        return parsed
    offset = dt.timedelta(hours=int(plain[8]), minutes=int(plain[9]))
    try:
        return dt.datetime(
            int(plain[3]),
            month,
            int(plain[1]),
            int(plain[4]),
            int(plain[5]),
            int(plain[6]),
            tzinfo=dt.timezone(-offset if plain[7] == b"-" else offset),
        )
    except ValueError:  # a day or time out of range
        return None


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
