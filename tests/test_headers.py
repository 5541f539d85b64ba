"""The header reader's short ways give exactly what the :mod:`email` parsers give for the input they take.

`mailops.runtime.headers` reads most mail without the stdlib parsers: a header of plain fields, a list
of plain addresses, a standard date, ASCII text. Each short way is held equal here to the parser it
stands in for, on generated input that takes it and on input that only nearly does.
"""

from __future__ import annotations

import datetime as dt
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailops.runtime import headers
from mailops.runtime.headers import MAX_ADDRESSES, read_headers

NAME_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":")
# Values are made of characters and of pieces that real headers hold (encoded words, addresses, dates).
VALUE_PIECES = st.sampled_from(
    [chr(c) for c in range(0x20, 0x7F)]
    + ["\t", "\x80", "\xe9", "é", "ü", ",", "<a@b.example>", "Jane Doe <jane@example.com>", "x@y.example"]
    + ["=?utf-8?q?J=C3=B6rg?=", "=?iso-8859-1?b?SvZyZw==?=", "=?bogus?x?zz?=", "Tue, 01 Jul 2025 10:00:00 +0200"]
)
VALUES = st.lists(VALUE_PIECES, max_size=12).map("".join)
LINE_ENDS = st.sampled_from(["\r\n", "\n", "\r"])
ATOM = st.text(alphabet="abcXYZ019.!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
HOST = st.lists(st.text(alphabet="abz09-", min_size=1, max_size=6), min_size=1, max_size=3).map(".".join)


@st.composite
def header_texts(draw: st.DrawFn) -> bytes:
    """A header of fields with folded lines, in any line ends, often with its blank line and a body."""
    end = draw(LINE_ENDS)
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(
            st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "References"])
            | st.text(NAME_CHARS, min_size=1, max_size=10)
        )
        value = draw(VALUES)
        folded = draw(st.lists(VALUES.map(lambda text: " " + text), max_size=2))
        lines.append(
            f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}" + "".join(end + line for line in folded)
        )
    tail = draw(st.sampled_from(["", end, end + end + "Body text." + end]))
    return (end.join(lines) + end + tail).encode("utf-8", "surrogateescape")


# Fewer examples than the profile's: generating whole headers is slow, and three tests share the space.
@settings(max_examples=150)
@given(header_texts())
@example(b"Subject: plain\r\n\r\nbody")
@example(b"Subject: a\rTo: b@example.com\r\n")
def test_a_plain_header_is_split_as_the_parser_splits_it(raw: bytes) -> None:
    plain = headers._plain_fields(raw)  # noqa: SLF001 - the short way itself is what is checked
    if plain is not None:
        assert plain == list(headers._parse(raw).raw_items())  # noqa: SLF001


@settings(max_examples=150)
@given(header_texts())
def test_read_headers_gives_what_the_parser_gives(raw: bytes) -> None:
    """The whole reader, against the same reader over the parser's fields."""
    parsed = headers._Fields(headers._parse(raw).raw_items(), compat32)  # noqa: SLF001
    reference = headers.MessageHeaders(
        message_id=headers.message_id_of(headers._text(parsed, "Message-ID")),  # noqa: SLF001
        sender=headers._sender(parsed),  # noqa: SLF001
        to=headers._addresses(parsed, "To"),  # noqa: SLF001
        cc=headers._addresses(parsed, "Cc"),  # noqa: SLF001
        subject=headers._text(parsed, "Subject"),  # noqa: SLF001
        sent_at=headers._date(parsed),  # noqa: SLF001
        answers=headers._answers(parsed),  # noqa: SLF001
    )
    assert read_headers(raw) == reference


@st.composite
def address_lists(draw: st.DrawFn) -> list[str]:
    def one(draw: st.DrawFn) -> str:
        address = f"{draw(ATOM)}@{draw(HOST)}"
        words = draw(st.lists(st.text(alphabet="abcXYZ09.-!", min_size=1, max_size=6), max_size=3))
        spaces = draw(st.sampled_from([" ", "  ", "\t", "\r\n "]))
        shape = draw(st.sampled_from(["bare", "routed", "named", "odd"]))
        if shape == "bare":
            return address
        if shape == "routed":
            return f"<{address}>"
        if shape == "named":
            return spaces.join(words) + f" <{address}>"
        return (
            draw(st.sampled_from(['"Doe, Jane" ', "(comment) ", "=?utf-8?q?J=C3=B6rg?= ", "a@b ", ""])) + f"<{address}>"
        )

    values = [", ".join(one(draw) for _ in range(draw(st.integers(0, 4)))) for _ in range(draw(st.integers(1, 2)))]
    return values


@settings(max_examples=200)
@given(address_lists())
@example([", , a@example.com ,"])
def test_plain_addresses_are_read_as_getaddresses_reads_them(values: list[str]) -> None:
    expected = [(name, address) for name, address in getaddresses(values) if address][:MAX_ADDRESSES]
    assert headers.address_pairs(values) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Fri, 31 Dec 9999 23:59:59 -0100",  # beyond the last time in UTC
        "Fri, 31 Dec 9999 23:59:59 +0100",  # in UTC, but not in a zone east of it
        "Mon, 1 Jan 0001 00:00:00 +1400",  # the library would read it as 2000 or 2001
        "Mon, 1 Jan 0000 00:00:00 +0000",
        "Sat, 1 Jan 0099 00:00:00 +0000",
    ],
)
def test_a_date_that_no_zone_shows_or_that_the_library_would_move_is_none(text: str) -> None:
    assert read_headers(f"From: a@example.org\r\nDate: {text}\r\n\r\n".encode()).sent_at is None


def test_header_bytes_above_ascii_are_read_as_utf_8() -> None:
    """Mail as RFC 6532 writes it: UTF-8 in the header without encoded words; invalid bytes are replaced."""
    raw = "From: Jörg Müller <j@example.org>\r\nTo: Änne <a@example.org>, b@example.org\r\nSubject: Grüße aus Köln\r\n"
    for end in ("\r\n", "\r\nX-Obsolete : name with a blank\r\n\r\n"):  # plain, and read by the parser
        read = read_headers((raw + end).encode())
        assert (read.subject, read.sender, read.to) == (
            "Grüße aus Köln",
            "Jörg Müller <j@example.org>",
            ("a@example.org", "b@example.org"),
        )
        block = headers.header_block((raw + end).encode())
        assert headers.header_text(block, "Subject") == "Grüße aus Köln"
    assert read_headers(b"Subject: Caf\xe9 =?utf-8?q?latin?=\r\n\r\n").subject == "Caf\ufffd =?utf-8?q?latin?="


def test_long_headers_are_parsed_and_decoded_whole_and_only_then_cut() -> None:
    to = ",\r\n ".join(f"recipient.number{n:03d}@customer-domain.example.com" for n in range(80))
    subject = " ".join("=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=" for _ in range(60))
    references = "\r\n ".join(
        f"<message.{n:03d}.{'x' * 17}@example.com>" for n in range(45)
    )  # 1,979 characters unfolded, more folded
    read = read_headers(f"To: {to}\r\nSubject: {subject}\r\nReferences: {references}\r\n\r\n".encode())
    assert len(read.to) == 80 and read.to[-1] == "recipient.number079@customer-domain.example.com"
    assert read.subject == "Grüße aus Köln" * 60
    assert read.answers[0].startswith("<message.044.")  # the newest reference first, none lost to the folds
    # A comment or a zone without its sign is no early year.
    assert read_headers(b"Date: Tue, 2 Jan 2024 09:15:00 +0000 (UTC 0000)\r\n\r\n").sent_at is not None


DAYS = st.sampled_from(["", "Mon, ", "Tue, ", "Sun, "])
MONTHS = st.sampled_from("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())


@given(
    DAYS,
    st.integers(0, 40),
    MONTHS,
    st.integers(999, 10000),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["+", "-"]),
    st.integers(0, 2400),
)
@example("", 1, "Jul", 2025, 10, 0, 0, "-", 0)  # -0000: UTC, origin unknown
def test_a_standard_date_is_read_as_parsedate_reads_it(
    weekday: str, day: int, month: str, year: int, hour: int, minute: int, second: int, sign: str, offset: int
) -> None:
    text = f"{weekday}{day:02d} {month} {year} {hour:02d}:{minute:02d}:{second:02d} {sign}{offset:04d}"
    raw = f"Date: {text}\r\n\r\n".encode()
    try:
        value = parsedate_to_datetime(text)
        expected: dt.datetime | None = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        # Not a time any zone can show: a day from the ends of what a time holds is none.
        if (
            not dt.datetime(1, 1, 2, tzinfo=dt.UTC)
            <= expected.astimezone(dt.UTC)
            <= dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
        ):
            expected = None
    except Exception:  # noqa: BLE001 - the reader's "no date"
        expected = None
    got = read_headers(raw).sent_at
    assert got == expected
    if got is not None and expected is not None:
        assert got.utcoffset() == expected.utcoffset()


@given(st.text(max_size=50) | st.binary(max_size=50).map(lambda data: data.decode("utf-8", "surrogateescape")))
@example("a\x00b")
def test_storable_text_takes_the_short_way_only_where_it_gives_the_same(text: str) -> None:
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
    assert headers.storable(text) == data.decode("utf-8", "replace").replace("\x00", "")[: headers.MAX_TEXT]


# -- the FETCH answers of the import, read without imapclient's parser where they are plain -----------------

PAIRS = st.sampled_from(["UID", "RFC822.SIZE", "FLAGS", "INTERNALDATE", "BODY[]", "BODY[HEADER.FIELDS (MESSAGE-ID)]"])


@st.composite
def fetch_answers(draw: st.DrawFn) -> list[bytes | tuple[bytes, bytes]]:
    """FETCH responses as imaplib hands them over: a line up to each literal, with the literal; then the rest."""
    data: list[bytes | tuple[bytes, bytes]] = []
    for seq in range(1, draw(st.integers(1, 4)) + 1):
        line = f"{seq} (".encode()
        names = draw(st.lists(PAIRS | st.sampled_from(["X-GM-LABELS", "MODSEQ", "Body[]"]), min_size=1, max_size=5))
        for index, name in enumerate(names):
            line += b" " if index else b""
            if name in ("BODY[]", "Body[]", "BODY[HEADER.FIELDS (MESSAGE-ID)]"):
                literal = draw(st.binary(max_size=40))
                size = len(literal) + draw(st.sampled_from([0, 0, 0, 1]))  # now and then a wrong size
                data.append((line + f"{name} {{{size}}}".encode(), literal))
                line = b""
                continue
            value = draw(
                st.sampled_from(
                    [
                        str(draw(st.integers(0, 10**6))),
                        '"01-Jul-2025 10:00:00 +0200"',
                        '" 1-Jan-2026 00:00:01 -0000"',
                        '"31-Feb-2025 10:00:00 +0200"',
                        "NIL",
                        "(\\Seen \\Flagged)",
                        "()",
                        "(12 NIL abc)",
                        '"text"',
                    ]
                )
            )
            line += f"{name} {value}".encode()
        data.append(line + b")")
    return data


@settings(max_examples=300)
@given(fetch_answers())
def test_a_plain_fetch_answer_is_read_as_imapclient_reads_it(data: list[bytes | tuple[bytes, bytes]]) -> None:
    from imapclient.response_parser import parse_fetch_response

    from mailops.transport import imap

    ours = imap._parse_fetch(data)  # noqa: SLF001 - the short way itself is what is checked
    if ours is None:
        return  # not of the plain shape: imapclient's parser reads it
    try:
        expected = dict(parse_fetch_response(data, normalise_times=False, uid_is_key=True))
    except Exception as exc:  # noqa: BLE001 - what imapclient refuses, the short way must not take
        raise AssertionError(f"imapclient refuses what the short way read: {exc}") from exc
    assert ours == expected
