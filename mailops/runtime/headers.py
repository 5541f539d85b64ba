"""What the message index keeps of a message, read from its raw bytes without ever failing.

Mail comes from anywhere: headers in any charset or none, broken encoded words, dates no
parser knows, or no header at all. Each field is read on its own; what cannot be read is left
empty, and the message is imported all the same (its raw file keeps every byte). Text is
made storable everywhere (no NUL, no lone surrogates: PostgreSQL takes neither) and bounded.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

MAX_TEXT = 2000  # characters kept of one header's text
MAX_ADDRESSES = 100  # addresses kept of one To or Cc
MAX_REFERENCES = 50  # message ids of In-Reply-To and References looked up for the thread
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,996})>")


@dataclass(frozen=True)
class MessageHeaders:
    message_id: str | None  # "<local@domain>", or None when the message has none
    sender: str  # the From header, decoded: "Name <address>" or what was there
    to: tuple[str, ...]  # addresses
    cc: tuple[str, ...]
    subject: str
    sent_at: dt.datetime | None  # the Date header, aware; None when missing or unreadable
    answers: tuple[str, ...]  # message ids it replies to: In-Reply-To first, then References newest first


def read_headers(raw: bytes) -> MessageHeaders:
    """The index fields of the message ``raw``; never raises."""
    headers = _parse(raw)
    return MessageHeaders(
        message_id=message_id_of(_text(headers, "Message-ID")),
        sender=_sender(headers),
        to=_addresses(headers, "To"),
        cc=_addresses(headers, "Cc"),
        subject=_text(headers, "Subject"),
        sent_at=_date(headers),
        answers=_answers(headers),
    )


def message_id_in_header(header_lines: bytes) -> str | None:
    """The Message-ID in header lines as the server returns them (``BODY[HEADER.FIELDS (MESSAGE-ID)]``)."""
    return message_id_of(_text(_parse(header_lines), "Message-ID"))


def message_id_of(value: str) -> str | None:
    """A Message-ID as "<id>": the first bracketed token, else the bare token; None when there is none."""
    match = _MESSAGE_ID.search(value)
    if match is not None:
        return f"<{match.group(1)}>"
    bare = value.strip()
    return f"<{bare}>" if bare and len(bare) <= 996 and not any(c.isspace() or c in "<>" for c in bare) else None


def header_block(raw: bytes) -> Message:
    """The header of the message ``raw``, for :func:`header_text` and :func:`header_addresses`; never raises."""
    return _parse(raw)


def header_text(headers: Message, name: str) -> str:
    """The (first) header ``name``, decoded, unfolded, storable and bounded; "" when it is missing."""
    return _text(headers, name)


def has_header(headers: Message, name: str) -> bool:
    try:
        return name in headers
    except Exception:  # noqa: BLE001
        return False


def header_addresses(headers: Message, name: str) -> tuple[str, ...]:
    """The addresses in the headers ``name`` (all of them, bounded)."""
    return _addresses(headers, name)


def _parse(raw: bytes) -> Message:
    # compat32 parses anything (defects are recorded, not raised); only the header is read.
    return BytesHeaderParser(policy=compat32).parsebytes(raw)


def storable(text: str) -> str:
    """``text`` as any database takes it: bytes that were not UTF-8 replaced, NUL dropped, bounded."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
    return data.decode("utf-8", "replace").replace("\x00", "")[:MAX_TEXT]


def _text(headers: Message, name: str) -> str:
    """A header's text with its encoded words (RFC 2047) decoded; the raw text when they are broken."""
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - a header the library cannot even fetch is an empty one
        return ""
    if value is None:
        return ""
    try:
        decoded = str(make_header(decode_header(str(value))))
    except Exception:  # noqa: BLE001 - unknown charsets, broken base64: keep what is there
        decoded = str(value)
    return storable(" ".join(decoded.split()))  # unfolded


def _pairs(headers: Message, name: str) -> list[tuple[str, str]]:
    try:
        values = [str(value) for value in headers.get_all(name) or []]
        return [(name, address) for name, address in getaddresses(values) if address][:MAX_ADDRESSES]
    except Exception:  # noqa: BLE001
        return []


def _addresses(headers: Message, name: str) -> tuple[str, ...]:
    return tuple(storable(address) for _name, address in _pairs(headers, name))


def _sender(headers: Message) -> str:
    text = _text(headers, "From")
    try:
        pairs = getaddresses([text])
    except Exception:  # noqa: BLE001
        pairs = []
    if len(pairs) == 1 and pairs[0][1]:
        name, address = pairs[0]
        return storable(f"{name} <{address}>" if name else address)  # formataddr would encode the name again
    return text


def _date(headers: Message) -> dt.datetime | None:
    text = _text(headers, "Date")
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, IndexError: all mean "no date"
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)  # "-0000": UTC, origin unknown


def _answers(headers: Message) -> tuple[str, ...]:
    replied = [f"<{match}>" for match in _MESSAGE_ID.findall(_text(headers, "In-Reply-To"))]
    references = [f"<{match}>" for match in _MESSAGE_ID.findall(_text(headers, "References"))]
    ordered: dict[str, None] = dict.fromkeys(replied + references[::-1])
    return tuple(ordered)[:MAX_REFERENCES]
