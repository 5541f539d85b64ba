"""What the message index keeps of a message, read from its raw bytes without ever failing.

Mail comes from anywhere: headers in any charset or none, broken encoded words, dates no
parser knows, or no header at all. Each field is read on its own; what cannot be read is left
empty, and the message is imported all the same (its raw file keeps every byte). Text is
made storable everywhere (no NUL, no lone surrogates: PostgreSQL takes neither) and bounded.

The header is parsed once per message, and most mail takes a shorter way through it: a header of
plain fields (no control characters) is split into its fields here, an address list of plain addresses
(``addr@domain`` or ``Name <addr@domain>``) is read here, and text without encoded words is taken
as it is. Each of these gives exactly what the :mod:`email` parsers give for such input (which is
all that is read this way); anything else goes through those parsers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import Compat32, compat32
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

MAX_TEXT = 2000  # characters kept of one header's text
# A message is parsed whole (a delivery report, the archive's text search) only with at most this many lines
# that may be MIME boundaries: Python's parser takes minutes and gigabytes for millions of empty parts, and
# time that grows with the square of the depth for deep nesting. Real mail has a few dozen, a report with the
# original it returns included.
MAX_MIME_BOUNDARIES = 500
MAX_ADDRESSES = 100  # addresses kept of one To or Cc
MAX_REFERENCES = 50  # message ids of In-Reply-To and References looked up for the thread
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,996})>")
# The fields that read_headers reads (lower-cased).
_INDEXED = frozenset({"message-id", "from", "to", "cc", "subject", "date", "in-reply-to", "references"})
_MESSAGE_ID_ONLY = frozenset({"message-id"})


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
    headers = _fields(raw, _INDEXED)
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
    return message_id_of(_text(_fields(header_lines, _MESSAGE_ID_ONLY), "Message-ID"))


def message_id_of(value: str) -> str | None:
    """A Message-ID as "<id>": the first bracketed token, else the bare token; None when there is none."""
    match = _MESSAGE_ID.search(value)
    if match is not None:
        return f"<{match.group(1)}>"
    bare = value.strip()
    return f"<{bare}>" if bare and len(bare) <= 996 and not any(c.isspace() or c in "<>" for c in bare) else None


def header_block(raw: bytes) -> Message:
    """The header of the message ``raw``, for :func:`header_text` and :func:`header_addresses`; never raises."""
    plain = _plain_fields(raw)
    if plain is None:
        return _parse(raw)
    message = Message(policy=compat32)
    for name, value in plain:
        message.set_raw(name, value)  # as the parser stores each field
    return message


def header_text(headers: Message, name: str) -> str:
    """The (first) header ``name``, decoded, unfolded, storable and bounded; "" when it is missing."""
    return _text(headers, name)


def header_texts(headers: Message, name: str) -> tuple[str, ...]:
    """Every header ``name``, each as :func:`header_text` gives the first."""
    try:
        values = _raw_values(headers, name)
    except Exception:  # noqa: BLE001 - a header the library cannot even fetch is an empty one
        return ()
    return tuple(_decoded(value) for value in values)


def has_header(headers: Message, name: str) -> bool:
    try:
        return name in headers
    except Exception:  # noqa: BLE001
        return False


def header_addresses(headers: Message, name: str) -> tuple[str, ...]:
    """The addresses in the headers ``name`` (all of them, bounded)."""
    return _addresses(headers, name)


# A header of plain fields only, up to the blank line that ends it: each field a name (printable ASCII, no colon), a
# colon and its value (printable ASCII, tabs, and bytes above ASCII, such as UTF-8 without encoded words), continued
# on lines that start with a space or a tab; CRLF, LF or CR line ends. The parser reads bytes as ASCII with
# surrogateescape, and splits lines at \r\n, \n and \r only: str.splitlines splits such text at the same places.
_LINE_END = rb"(?:\r\n|\n|\r)"
_PLAIN_FIELD = rb"[!-9;-~]+:[\t -~\x80-\xff]*" + _LINE_END + rb"(?:[\t ][\t -~\x80-\xff]*" + _LINE_END + rb")*"
_PLAIN_HEADER = re.compile(rb"(?:" + _PLAIN_FIELD + rb")+" + _LINE_END + rb"?")


def _parse(raw: bytes) -> Message:
    # compat32 parses anything (defects are recorded, not raised); only the header is read.
    end = _HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    if _OBSOLETE_NAME.search(head):
        raw = _OBSOLETE_NAME.sub(rb"\1:", head) + raw[len(head) :]
    return BytesHeaderParser(policy=compat32).parsebytes(raw)


# RFC 5322 §4.5.3 (obs-optional): blanks may stand between a field's name and its colon (`Precedence : bulk`).
# Python's parser takes such a line for the end of the header, and every field after it for the body: they are
# read with the blanks taken out, up to the blank line that ends the header.
_OBSOLETE_NAME = re.compile(rb"^([!-9;-~]+)[ \t]+:", re.MULTILINE)
_HEADER_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


# One field of a plain header whose lines end in LF or CRLF: its name, and its value as compat32 stores it (the rest
# of the first line without its leading blanks, then the lines that continue it, with their line ends; none at the
# end). Continued lines start with a blank, so a field starts at the start of a line with a name.
_PLAIN_FIELD_VALUE = re.compile(rb"^([!-9;-~]+):[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.MULTILINE)


def _plain_fields(raw: bytes, names: frozenset[str] | None = None) -> list[tuple[str, str]] | None:
    """The fields of a plain header ``raw`` as compat32's :class:`BytesHeaderParser` stores them: (name,
    value), in order; only those whose lower-cased name is one of ``names`` when given. None when ``raw`` is not
    a plain header."""
    if _PLAIN_HEADER.fullmatch(raw) is None:
        return None
    fields: list[tuple[str, str]] = []
    if raw.count(b"\r") == raw.count(b"\r\n"):  # no line ends of a lone CR: the fields are found by one pattern
        for field in _PLAIN_FIELD_VALUE.finditer(raw):
            name = field[1].decode("ascii")
            if names is None or name.lower() in names:
                fields.append((name, field[2].decode("ascii", "surrogateescape")))
        return fields
    lines: list[str] = []
    for line in raw.decode("ascii", "surrogateescape").splitlines(keepends=True):
        if line[0] in " \t":
            lines.append(line)
            continue
        if lines:
            fields.append(compat32.header_source_parse(lines))
        if line[0] in "\r\n":  # the blank line
            break
        lines = [line]
    else:
        if lines:
            fields.append(compat32.header_source_parse(lines))
    return [(name, value) for name, value in fields if names is None or name.lower() in names]


class _Fields:
    """A header's fields by lower-cased name: looked up as :class:`Message` looks them up (the first field of a
    name, or all of them, each value through the policy), in one step instead of a pass over all fields."""

    def __init__(self, fields: Iterable[tuple[str, Any]], policy: Compat32):
        self._policy = policy
        self._by_name: dict[str, list[tuple[str, Any]]] = {}
        for name, value in fields:
            self._by_name.setdefault(name.lower(), []).append((name, value))

    def get(self, name: str) -> Any:
        found = self._by_name.get(name.lower())
        return self._policy.header_fetch_parse(*found[0]) if found else None

    def get_all(self, name: str) -> list[Any] | None:
        found = self._by_name.get(name.lower())
        return [self._policy.header_fetch_parse(*field) for field in found] if found else None

    def raw_values(self, name: str) -> list[str]:
        return [value for _name, value in self._by_name.get(name.lower(), [])]


def _fields(raw: bytes, names: frozenset[str]) -> _Fields:
    """The fields ``names`` (lower-cased) of the header of the message ``raw``, for lookups; never raises."""
    plain = _plain_fields(raw, names)
    if plain is not None:
        return _Fields(plain, compat32)
    return _Fields(_parse(raw).raw_items(), compat32)


def storable(text: str) -> str:
    """``text`` as any database takes it: bytes that were not UTF-8 replaced, NUL dropped, bounded."""
    if text.isascii() and "\x00" not in text:
        return text[:MAX_TEXT]
    return _as_utf8(text).replace("\x00", "")[:MAX_TEXT]


def _as_utf8(text: str) -> str:
    """``text`` as the parser read it (bytes above ASCII as surrogates) with those bytes read as UTF-8, the ones
    that are not replaced."""
    if text.isascii():
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def _raw_values(headers: Message | _Fields, name: str) -> list[str]:
    """The values of the fields ``name`` as the message has them. (The policy's lookup would turn a value with
    bytes above ASCII into a header of unknown charset, whose text has each such byte replaced.)"""
    if isinstance(headers, _Fields):
        return headers.raw_values(name)
    wanted = name.lower()
    return [str(value) for field, value in headers.raw_items() if field.lower() == wanted]


def _text(headers: Message | _Fields, name: str) -> str:
    """A header's text (see :func:`_decoded`); "" when it is missing."""
    try:
        values = _raw_values(headers, name)
    except Exception:  # noqa: BLE001 - a header the library cannot even fetch is an empty one
        return ""
    return _decoded(values[0]) if values else ""


def _decoded(value: str) -> str:
    """A field's value as text: bytes above ASCII read as UTF-8 (RFC 6532, the invalid ones replaced), encoded
    words (RFC 2047) decoded, unless they are broken; unfolded, storable and bounded."""
    text = _as_utf8(value)  # whole: cut only once decoded and unfolded
    if "=?" in text and text.isascii():  # the library writes other characters beside encoded words as escapes
        try:
            text = str(make_header(decode_header(text)))
        except Exception:  # noqa: BLE001 - unknown charsets, broken base64: keep what is there
            pass
    return storable(" ".join(text.split()))  # unfolded


def _pairs(headers: Message | _Fields, name: str) -> list[tuple[str, str]]:
    try:
        return address_pairs([_as_utf8(value) for value in _raw_values(headers, name)])
    except Exception:  # noqa: BLE001
        return []


# An address as nearly all mail has it: a dot-atom, @, a host name. getaddresses reads it unchanged.
_ADDR_SPEC = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_NAME_WORD = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"  # a word of a display name without quotes or comments
_PLAIN_ADDRESS = re.compile(
    rf"(?:(?P<name>{_NAME_WORD}(?:[ \t\r\n]+{_NAME_WORD})*)?[ \t\r\n]*<(?P<routed>{_ADDR_SPEC})>"
    rf"|(?P<bare>{_ADDR_SPEC}))"
)


def address_pairs(values: list[str], *, limit: int | None = MAX_ADDRESSES) -> list[tuple[str, str]]:
    """``(name, address)`` of each address in ``values`` (the first ``limit``), as :func:`getaddresses` reads
    them, empty ones left out. A list of plain addresses (see the module doc) is read here: getaddresses makes
    each one ``(the name's words joined by single spaces, the address)``."""
    if not values:
        return []
    pairs: list[tuple[str, str]] = []
    for item in ", ".join(values).split(","):  # a plain address has no comma
        # An empty item (`a@x, , b@y`) is left to getaddresses: Python versions read such a list differently.
        pair = _plain_address(item.strip(" \t\r\n"))
        if pair is None:
            return [(name, address) for name, address in getaddresses(values) if address][:limit]
        pairs.append(pair)
    return pairs[:limit]


def _plain_address(text: str) -> tuple[str, str] | None:
    """``(name, address)`` of ``text`` when it is one plain address (see the module doc), else None."""
    plain = _PLAIN_ADDRESS.fullmatch(text)
    if plain is None:
        return None
    if plain["bare"] is not None:
        return "", plain["bare"]
    return " ".join((plain["name"] or "").split()), plain["routed"]


def _addresses(headers: Message | _Fields, name: str) -> tuple[str, ...]:
    return tuple(storable(address) for _name, address in _pairs(headers, name))


def _sender(headers: Message | _Fields) -> str:
    text = _text(headers, "From")
    plain = _plain_address(text)
    try:
        pairs = [plain] if plain is not None else getaddresses([text])
    except Exception:  # noqa: BLE001
        pairs = []
    if len(pairs) == 1 and pairs[0][1]:
        name, address = pairs[0]
        return storable(f"{name} <{address}>" if name else address)  # formataddr would encode the name again
    return text


# A Date as nearly all mail has it. parsedate_to_datetime reads it as a datetime with the offset given (none for
# "-0000", which says the offset is unknown).
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9]\d{3}) "
    r"(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_MONTHS = {name: number for number, name in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}


def _date(headers: Message | _Fields) -> dt.datetime | None:
    text = _text(headers, "Date")
    if not text:
        return None
    plain = _PLAIN_DATE.fullmatch(text)
    try:
        if plain is not None:
            day, month, year, hour, minute, second, sign, offset_hours, offset_minutes = plain.groups()
            offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
            zone = (
                None
                if sign == "-" and not offset
                else dt.timezone(dt.timedelta(seconds=-offset if sign == "-" else offset))
            )
            value = dt.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=zone)
        else:
            value = parsedate_to_datetime(text)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, IndexError: all mean "no date"
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # "-0000": UTC, origin unknown
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:  # year 9999 west of Greenwich is beyond what a time holds
        return None
    if not _EARLIEST <= utc <= _LATEST or _EARLY_YEAR.search(text.split("(", 1)[0]):
        return None
    return value


# A day from the ends of what a time holds, so that it shows in any zone.
_EARLIEST, _LATEST = dt.datetime(1, 1, 2, tzinfo=dt.UTC), dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
# A year of four digits below 1000 (`Jan 0001`): the library reads a year below 100 as 19xx or 20xx.
_EARLY_YEAR = re.compile(r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+0[0-9]{3}(?![0-9])", re.IGNORECASE)


def _answers(headers: Message | _Fields) -> tuple[str, ...]:
    replied = [f"<{match}>" for match in _MESSAGE_ID.findall(_text(headers, "In-Reply-To"))]
    references = [f"<{match}>" for match in _MESSAGE_ID.findall(_text(headers, "References"))]
    ordered: dict[str, None] = dict.fromkeys(replied + references[::-1])
    return tuple(ordered)[:MAX_REFERENCES]


def parts_are_bounded(raw: bytes) -> bool:
    """Whether ``raw`` has few enough lines that may be MIME boundaries (see MAX_MIME_BOUNDARIES) to be
    parsed whole; counted at the speed of a byte search, after any line end the parser takes (LF and CRLF
    as `\n--`, a lone CR as `\r--`: a maildir may keep them as a mail arrived)."""
    return raw.count(b"\n--") + raw.count(b"\r--") <= MAX_MIME_BOUNDARIES
