"""The outbox log as one pandas frame, and the summaries the notebook explorer and `mailops report` show.

Plain functions: a loader gives the frame, :func:`filter_frame` narrows it, a summary turns it
into a small frame (or a few figures) that a chart (:mod:`mailops.outbox.charts`), a widget
or an HTML table shows. Everything is vectorised: no Python runs per row.

The frame
---------
One row per attempt to send a mail, whichever loader made it, with these columns in order:

=================  ==========================  ==============================================
column             dtype                       holds
=================  ==========================  ==============================================
id                 Int64                       the outbox entry's number; NA in a seed log
time               datetime64[us, UTC]         when the attempt was made (a seed log's
                                               ``Datum``); NaT when the log has no date
source             category                    ``mailops``, or ``import`` for another
                                               system's log (a seed log read directly too)
account            category                    the sending account, lower-cased (a seed log:
                                               the address in its ``From``)
project            category                    the project / sales channel; NA if none
sender             str                         the From address as logged
to, cc, bcc        str                         the addresses joined by ``"; "`` (a seed log:
                                               its fields as written); NA when there are none
recipient_domain   category                    the lower-cased domain of the first To
                                               address; NA without one
subject            str                         the subject
status             category over STATUSES      ``queued``, ``sent``, ``failed`` or
                                               ``bounced`` (taken, then reported back)
attempt            int64                       1 for the first try, 2 for its retry, ...
smtp_code          Int64                       the server's reply code; NA if none
enhanced_code      str                         the enhanced status code (``5.1.1``); NA if none
class              category over CLASSES       the error class of an undelivered (failed or
                                               bounced) attempt; NA for any other (one with a
                                               missing or no longer known class: ``unknown``)
reply              str                         the server's reply / the seed log's error text
message_id         str                         the mail's Message-ID; NA in a seed log
final              bool                        the mail's last attempt in the frame
=================  ==========================  ==============================================

``str`` is pandas' string dtype backed by pyarrow, so the string methods run in Arrow
compute; the columns a summary groups or filters on are categories, so that grouping
counts small integer codes. Empty fields are NA.

Mails, not attempts
-------------------
A retried mail has several rows, one per attempt; they share the Message-ID (`outbox retry`
and `resend` send the same message again). The summaries count each **mail once, by its
final attempt**: a mail that was throttled and then went out counts as sent, one that failed
three times counts as one failure, of the class of its last try. ``final`` marks that row:
in a file, the one with the highest ``id`` among the rows with its Message-ID (a row without
one, as in a seed log, is a mail of its own); in the state store, the attempt that no other
attempt retries (``retry_of``). :func:`load_store` decides it over the whole store, so a
mail whose retries straddle ``since`` / ``until`` counts once, in the period of its last
attempt, and two adjacent periods never both count it; the file loaders decide it over the
rows in the file. For counts of every attempt, pass ``frame.assign(final=True)``. A mail
still ``queued`` is neither sent nor failed: it counts in no rate, only in :class:`Headline`
``queued``. A mail that ``bounced`` counts as failed (:data:`UNDELIVERED`): it did not arrive.

Days and weeks
--------------
A day is a calendar day in the viewer's time zone (``timezone``, an IANA name, default
Europe/Berlin), so a mail sent at 23:30 UTC in winter belongs to the next day in Berlin.
:func:`whats_new` compares two rolling weeks of seven calendar days: ``today`` and the six
days before it, against the seven days before those (not calendar weeks, which on a Monday
would hold one day). A row without a time belongs to no day.

API
---
Loaders: :func:`load_store`, :func:`load_export`, :func:`load_seed_log` (and
:func:`seed_frame` for a seed log already read with ``read_seed_log``), :func:`empty_frame`.
A file that cannot be read raises :class:`~mailops.outbox.classify.OutboxLogError` naming it.
Narrowing: :func:`filter_frame` (and :func:`filter_mask`). Summaries: :func:`by_class`,
:func:`by_account`, :func:`by_domain`, :func:`by_day`, :func:`failure_rate`,
:func:`top_remedies`, :func:`headline` (and :func:`store_counts`, a period's mails by status
counted by the database), :func:`whats_new`. Every summary frame has a plain
``RangeIndex`` and its key as a column; an empty frame gives an empty summary, not an error.
:func:`summarise_store` gives the tables of `mailops report` for a period of a state store,
the same as these functions give for the period's frame, counted in the database instead
of loading a million rows. The notebook's explorer shows :func:`summaries` (the tables of a
filtered frame) of a frame, and of a state store :class:`StoreOutbox`, which gives the same
for any filter, pages through the attempts and exports them, without loading the store either.
Both read the indexes of migration 0007 (see ``mailops.state.tables``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import (
    CTE,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    String,
    Text,
    case,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    type_coerce,
    values,
)
from sqlalchemy import column as values_column
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from mailops.errors import MailopsError, quoted
from mailops.fileio import FileReadError, NotUtf8Error, decode_utf8, read_bytes
from mailops.outbox.classify import CLASSES, MAX_LOG_BYTES, UNKNOWN, OutboxLogError, read_seed_log, remedy
from mailops.state.outbox import IMPORTED, OutboxStatus
from mailops.state.tables import OutboxRow, recipient_domain_text

if TYPE_CHECKING:
    from mailops.state.store import StateStore

DEFAULT_TIMEZONE = "Europe/Berlin"
STATUSES: tuple[str, ...] = tuple(status.value for status in OutboxStatus)
# pandas' own `str` dtype, spelt out: pyarrow storage, NaN for a missing value.
STRING = pd.StringDtype("pyarrow", na_value=np.nan)
COLUMNS: tuple[str, ...] = (
    "id",
    "time",
    "source",
    "account",
    "project",
    "sender",
    "to",
    "cc",
    "bcc",
    "recipient_domain",
    "subject",
    "status",
    "attempt",
    "smtp_code",
    "enhanced_code",
    "class",
    "reply",
    "message_id",
    "final",
)
# What the summaries read: a filter over these alone copies a fraction of the frame's bytes.
SUMMARY_COLUMNS: tuple[str, ...] = ("time", "account", "project", "recipient_domain", "status", "class", "final")
_TEXT_COLUMNS = ("sender", "to", "cc", "bcc", "subject", "enhanced_code", "reply", "message_id")
_CLASS_INDEX = {name: index for index, name in enumerate(CLASSES)}
_SENT, _QUEUED = STATUSES.index(OutboxStatus.SENT.value), STATUSES.index(OutboxStatus.QUEUED.value)
# What did not reach its recipient: refused while sending, or taken by the server and reported back later by a
# delivery status notification (`bounced`, where the store knows it).
UNDELIVERED: tuple[str, ...] = tuple(status for status in STATUSES if status in {"failed", "bounced"})
_UNDELIVERED = np.array([STATUSES.index(status) for status in UNDELIVERED])
# Where a domain ends inside a To field: "Anna <a@example.org>; b@example.net".
_DOMAIN_END = r"[\s;,<>\"'()\[\]].*$"
# The columns an export must have; the others may be missing (NA), as in an older release's export.
_EXPORT_REQUIRED = ("id", "created_at", "account", "status")
_EXPORT_COLUMNS = {
    "id": "id",
    "created_at": "time",
    "source": "source",
    "account": "account",
    "project": "project",
    "sender": "sender",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "status": "status",
    "attempt": "attempt",
    "smtp_code": "smtp_code",
    "enhanced_code": "enhanced_code",
    "error_class": "class",
    "reply": "reply",
    "message_id": "message_id",
}


_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


class AnalysisError(MailopsError):
    """A parameter of an analysis that cannot be used (an unknown time zone)."""


# --- the frame -------------------------------------------------------------------------------------


def empty_frame() -> pd.DataFrame:
    """A frame of the documented shape without rows."""
    return _assemble({}, 0)


def _assemble(columns: dict[str, Any], length: int) -> pd.DataFrame:
    """The frame from raw columns (any dtype; missing ones NA): typed, derived columns added. ``status`` and
    ``class`` may come as categories already; ``recipient_domain`` and ``final`` are derived from ``to`` and from
    the ids and Message-IDs unless given."""

    def raw(name: str) -> pd.Series:
        values = columns.get(name)
        if values is None:
            return pd.Series(np.nan, index=pd.RangeIndex(length), dtype=object)
        series = values if isinstance(values, pd.Series) else pd.Series(values)
        return series.reset_index(drop=True)

    # A column that was not read is NA at once, not a column of NaN converted value by value.
    def text(name: str) -> pd.Series:
        if columns.get(name) is None:
            return pd.Series(pd.array(pa.nulls(length, pa.large_string()), dtype=STRING))
        return _text(raw(name))

    def number(name: str) -> pd.Series:
        if columns.get(name) is None:
            return pd.Series(pd.arrays.IntegerArray(np.zeros(length, np.int64), np.ones(length, dtype=bool)))
        return pd.to_numeric(raw(name)).astype("Int64")

    def labels(name: str) -> pd.Series:
        values = raw(name)
        return values if isinstance(values.dtype, pd.CategoricalDtype) else text(name)

    frame = pd.DataFrame(index=pd.RangeIndex(length))
    frame["id"] = number("id")
    frame["time"] = _utc(raw("time"))
    frame["source"] = _category(text("source").fillna("mailops"))
    frame["account"] = _category(text("account").str.lower())
    frame["project"] = _category(text("project"))
    for name in ("sender", "to", "cc", "bcc", "subject"):
        frame[name] = text(name)
    domains = columns.get("recipient_domain")
    frame["recipient_domain"] = recipient_domains(frame["to"]) if domains is None else raw("recipient_domain")
    frame["status"] = pd.Categorical.from_codes(_codes(labels("status"), STATUSES), categories=STATUSES)
    frame["attempt"] = number("attempt").fillna(1).astype(np.int64)
    frame["smtp_code"] = number("smtp_code")
    frame["enhanced_code"] = text("enhanced_code")
    frame["class"] = _classes(labels("class"), frame["status"])
    frame["reply"] = text("reply")
    frame["message_id"] = text("message_id")
    final = columns.get("final")
    frame["final"] = _final(frame["id"], frame["message_id"]) if final is None else raw("final").astype(bool)
    return frame[list(COLUMNS)]


def _text(values: pd.Series) -> pd.Series:
    """``values`` as pyarrow-backed text, empty fields NA."""
    if values.dtype != STRING:
        values = values.astype(STRING)  # None and NaN become NA
    return values.where(values.str.len() > 0)


def _category(values: pd.Series) -> pd.Series:
    return values.astype("category")


def _utc(values: pd.Series) -> pd.Series:
    """Times as ``datetime64[us, UTC]``; a naive time is UTC (SQLite drops the zone of what was stored as UTC)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if values.dtype == STRING:
        # Arrow's cast reads the texts SQLite keeps (no zone) in C, pandas's parser row by row; a text it refuses
        # (a zone, nanoseconds, no time at all) is left to pandas.
        try:
            times = pc.cast(_arrow(values), pa.timestamp("us"))
        except pa.ArrowInvalid:
            pass
        else:
            naive = pd.Series(times.to_numpy(zero_copy_only=False), index=values.index)
            return naive.dt.tz_localize("UTC")
    return pd.to_datetime(values, utc=True, format="ISO8601").astype("datetime64[us, UTC]")


def recipient_domains(to: pd.Series) -> pd.Series:
    """The lower-cased domain of the first address of each To field, as a category (NA without an ``@``).

    One literal split finds what follows the first ``@``; the regular expression that cuts it at
    the end of the domain then runs over the distinct tails only, which are few (one per
    domain) when, as usual, a field holds one address.
    """
    parts = pc.split_pattern(_arrow(to), "@", max_splits=1)
    # A field without an "@" (no To address, only BCC) is one part, whose second list_element would refuse: it is
    # given an empty tail, which is no domain.
    split = pc.equal(pc.list_value_length(parts), 2)
    tails = pc.list_element(pc.if_else(split, parts, pa.scalar(["", ""], type=parts.type)), 1)
    return pd.Series(_domains_of_tails(tails), index=to.index)


def _domains_of_tails(tails: pa.Array) -> pd.Categorical:
    """The domain at the start of each text that followed a field's first ``@`` (null: the field had none), as
    a category: cut at the end of the domain, lower-cased, NA when empty.

    The store's JSON text writes a non-ASCII domain with escapes (``b\\u00fccher.example``): they are undone, so
    that a domain is the same whether it was read from that text or from the decoded addresses."""
    encoded = pc.dictionary_encode(tails)
    cut = pc.replace_substring_regex(encoded.dictionary, _DOMAIN_END, "")
    if pc.any(pc.match_substring(cut, "\\")).as_py():  # only where a non-ASCII domain is written
        cut = pa.array([_json_unescaped(text) for text in cut.to_pylist()], type=cut.type)
    domains = pc.utf8_rtrim(pc.utf8_lower(cut), ".")
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    names = pd.Series(pd.array(domains, dtype=STRING))
    return _merged_category(codes, names.where(names.str.len() > 0))


def _json_unescaped(text: str | None) -> str | None:
    """``text`` with JSON's string escapes undone; as it is when it holds none, or is no JSON string's inside."""
    if text is None or "\\" not in text:
        return text
    try:
        unescaped = json.loads(f'"{text}"')
    except ValueError:  # cut inside an escape: no domain would end there anyway
        return text
    return unescaped if isinstance(unescaped, str) else text


def _merged_category(codes: npt.NDArray[Any], names: pd.Series) -> pd.Categorical:
    """A category from rows' codes into distinct raw values, and each raw value's name (NA: none).

    Two raw values may share a name ("a.de>; x@b" and "A.DE" are both a.de), and the
    categories of a category must be distinct: the codes are mapped onto the distinct names.
    """
    name_codes, categories = pd.factorize(names)
    lookup = np.append(name_codes, -1)  # a row's code -1 (NA) looks up the appended -1
    return pd.Categorical.from_codes(lookup[codes], categories=pd.Index(categories, dtype=STRING))


def _arrow(values: pd.Series) -> pa.Array:
    """A text column as one Arrow string array (no copy for a single chunk of pyarrow-backed text)."""
    array = pa.array(values.astype(STRING).array, type=pa.large_string())
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _classes(names: pd.Series, status: pd.Series) -> pd.Series:
    """The class column: the class of each undelivered attempt (``unknown`` when it has none we know), NA for
    others."""
    codes = _codes(names, CLASSES)
    failed = np.isin(status.cat.codes.to_numpy(), _UNDELIVERED)
    codes = np.where(failed, np.where(codes >= 0, codes, _CLASS_INDEX[UNKNOWN]), -1).astype(np.int8)
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(CLASSES)), index=names.index)


def _codes(values: pd.Series, categories: tuple[str, ...]) -> npt.NDArray[np.int64]:
    """Each value's position in ``categories`` (-1: NA or not there); a categorical column is mapped
    through its categories, without looking at its rows' values."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, distinct = values.cat.codes.to_numpy(), values.cat.categories
    else:
        codes, distinct = pd.factorize(values)  # the few distinct values are looked up, not every row's
    positions = pd.Index(categories).get_indexer(pd.Index(distinct).astype(object))
    return np.append(positions, -1)[codes].astype(np.int64)  # type: ignore[no-any-return]


def _final(ids: pd.Series, message_ids: pd.Series) -> pd.Series:
    """True on each mail's last attempt: the highest id among the rows sharing a Message-ID."""
    known = message_ids.notna().to_numpy()
    final = np.ones(len(ids), dtype=bool)
    if known.any():
        rows = np.flatnonzero(known)
        order = ids.to_numpy(dtype=np.float64, na_value=np.nan)[rows]
        # Sorted by id (a missing id: by position), the last row of each Message-ID is its final attempt.
        by_id = rows[np.lexsort((rows, np.nan_to_num(order, nan=np.inf)))]
        later = message_ids.iloc[by_id].duplicated(keep="last").to_numpy()
        final[by_id[later]] = False
    return pd.Series(final, index=ids.index)


# --- loaders ---------------------------------------------------------------------------------------


# What the rest of the outbox (a tenth of it, most of them failures) is read with: status and class as the stored
# texts, which the frame maps to its categories per distinct value; a CASE per row cost SQLite as much as the rest.
_STORED_LABELS: dict[str, Any] = {"status": OutboxRow.status, "class": OutboxRow.error_class}

# The state store's column behind each column of the frame that is read from it. The address lists come as
# their JSON text: decoding them row by row in the driver would be the slowest part of a load.
_STORE_COLUMNS: dict[str, Any] = {  # SQLAlchemy's column expressions
    "id": OutboxRow.id,
    "time": OutboxRow.created_at,
    "source": OutboxRow.source,
    "account": OutboxRow.account,
    "project": OutboxRow.project,
    "sender": OutboxRow.sender,
    "to": cast(OutboxRow.to_addresses, Text),
    "cc": cast(OutboxRow.cc_addresses, Text),
    "bcc": cast(OutboxRow.bcc_addresses, Text),
    "subject": OutboxRow.subject,
    # Status and class as their positions in STATUSES and CLASSES (-1: none we know): small integers, which the
    # driver hands out without making a string per row.
    "status": case({name: position for position, name in enumerate(STATUSES)}, value=OutboxRow.status, else_=-1),
    "attempt": OutboxRow.attempt,
    "smtp_code": OutboxRow.smtp_code,
    "enhanced_code": OutboxRow.enhanced_code,
    "class": case({name: position for position, name in enumerate(CLASSES)}, value=OutboxRow.error_class, else_=-1),
    "reply": OutboxRow.reply,
    "message_id": OutboxRow.message_id,
}


def load_store(
    store: StateStore,
    *,
    accounts: Collection[str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    columns: Collection[str] | None = None,
    statuses: Collection[str] | None = None,
    newest: int | None = None,
) -> pd.DataFrame:
    """The outbox of a state store, as the frame.

    ``accounts``: the (lower-cased) addresses whose entries the viewer may see, as
    ``visible_addresses`` gives them; None for all. ``since`` (inclusive) and ``until``
    (exclusive) bound the attempts' time; a naive time is UTC. ``columns``: the frame's
    columns to read (default: all); the others come back NA, and ``recipient_domain`` needs
    ``to`` (:data:`SUMMARY_COLUMNS` reads what the summaries need, a fraction of the bytes).
    ``statuses`` keeps only attempts of those statuses, ``newest`` only the ``newest`` latest
    attempts (by time, then id: a log imported later may hold older mail). ``final`` is decided
    over the whole store (see "Mails, not attempts"). The whole messages kept for `outbox resend`
    are never read.
    """
    if not store.exists:
        return empty_frame()
    wanted = _wanted(columns)
    query = select(*(_STORE_COLUMNS[name] for name in wanted), _final_in_store().label("final")).order_by(OutboxRow.id)
    query = _bounded(query, accounts, since, until)
    if statuses is not None:
        query = query.where(OutboxRow.status.in_(sorted(statuses)))
    if newest is not None:
        query = query.order_by(None).order_by(OutboxRow.created_at.desc(), OutboxRow.id.desc()).limit(newest)
    with store.session() as session:
        rows = _fetch(session, query)
    if newest is not None:
        rows.reverse()
    return _frame_of(_cut(rows, [*wanted, "final"]), len(rows), columns)


def _wanted(columns: Collection[str] | None) -> list[str]:
    """The names of :data:`_STORE_COLUMNS` to read for the frame's ``columns`` (None: all)."""
    return [name for name in _STORE_COLUMNS if columns is None or name in columns or _needs(columns, name)]


def _fetch(session: Session, query: Select[*tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows of ``query`` as the driver gives them.

    Straight from the driver: SQLAlchemy's per-row processing (SQLite's times are parsed by a Python regular
    expression, row by row) cost three times the fetch itself. The typing is done per column, in
    :func:`_frame_of`.
    """
    from sqlalchemy.exc import DBAPIError

    result = session.connection().execute(query)
    try:
        return list(result.cursor.fetchall())
    except session.get_bind().dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy's own fetch wraps it (a text
        raise DBAPIError(None, None, exc) from None  # that is not UTF-8, say): the store's session reports it
    finally:
        result.close()


def _cut(rows: list[tuple[Any, ...]], names: list[str]) -> dict[str, pd.Series]:
    """The rows' values by column name, as untyped (object) columns."""
    # One object array of the tuples, cut into columns: zip(*rows) would build a tuple per column in Python.
    table = np.array(rows, dtype=object).reshape(len(rows), len(names))
    # dtype=object: each column is typed once, in _assemble, not first guessed by pandas.
    return {name: pd.Series(table[:, position], dtype=object) for position, name in enumerate(names)}


def _frame_of(raw: dict[str, Any], length: int, columns: Collection[str] | None) -> pd.DataFrame:
    """The frame of the state store's columns (:data:`_STORE_COLUMNS`, by the frame's names) as read: status and
    class as their positions in STATUSES and CLASSES, or as the stored texts (of :data:`_STORED_LABELS`)."""
    for name, categories in (("status", STATUSES), ("class", CLASSES)):
        if name in raw and pd.api.types.is_integer_dtype(raw[name].infer_objects()):
            codes = raw[name].to_numpy(dtype=np.int64)
            raw[name] = pd.Series(pd.Categorical.from_codes(codes, categories=list(categories)))
    if "to" in raw and columns is not None and "to" not in columns:
        # Read for the domain alone: found in the JSON text at once, without joining the addresses first.
        raw["recipient_domain"] = recipient_domains(raw.pop("to"))
    for name in ("to", "cc", "bcc"):
        if name in raw:
            raw[name] = _joined(raw[name])
    return _assemble(raw, length)


def _needs(columns: Collection[str], name: str) -> bool:
    """Whether a column of the store must be read for ``columns``: ``to`` gives ``recipient_domain``."""
    return name == "to" and "recipient_domain" in columns


def _final_in_store() -> ColumnElement[bool]:
    """True for each mail's last attempt, decided over the whole store: an attempt that no other attempt
    retries (``retry_of``; `outbox retry` and `resend` always link the new attempt to the one it repeats).
    One scan of the table finds the retried ids, where comparing Message-IDs would sort all of them."""
    retry = aliased(OutboxRow)
    return OutboxRow.id.not_in(select(retry.retry_of).where(retry.retry_of.is_not(None)))


def _bounded(
    query: _Query, accounts: Collection[str] | None, since: dt.datetime | None, until: dt.datetime | None
) -> _Query:
    """``query`` narrowed to the attempts of ``accounts`` between ``since`` (inclusive) and ``until``."""
    if accounts is not None:
        query = query.where(OutboxRow.account.in_(sorted({address.lower() for address in accounts})))
    # SQLite keeps times without their zone, as UTC: a bound must be UTC too to compare alike.
    if since is not None:
        query = query.where(OutboxRow.created_at >= _as_utc(since))
    if until is not None:
        query = query.where(OutboxRow.created_at < _as_utc(until))
    return query


def _as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


# JSON's whitespace spelt out: with \s, pandas hands a pattern to Python's `re`, row by row, since RE2's \s
# differs; these patterns run in Arrow's RE2 directly.
_JSON_SPACE = "[ \t\n\r]*"
_PLAIN_STRING = r'"[^"\\]*"'  # a JSON string without an escape: an ordinary address
_PLAIN_LIST = rf"^\[{_JSON_SPACE}(?:{_PLAIN_STRING}(?:{_JSON_SPACE},{_JSON_SPACE}{_PLAIN_STRING})*)?{_JSON_SPACE}\]$"
_LIST_ENDS = rf'^\[{_JSON_SPACE}"?|"?{_JSON_SPACE}\]$'
_LIST_SEPARATOR = rf'"{_JSON_SPACE},{_JSON_SPACE}"'


def _joined(lists: pd.Series) -> pd.Series:
    """JSON lists of addresses (their text) as the addresses joined by ``"; "``.

    A list whose strings hold no quote or backslash (every ordinary address) is cut apart
    with two Arrow replacements; the rest, if any, go through ``json``.
    """
    texts = _arrow(lists.astype(object).where(lists.notna()))
    plain = pc.fill_null(pc.match_substring_regex(texts, _PLAIN_LIST), False).to_numpy(zero_copy_only=False)
    cut = pc.replace_substring_regex(pc.replace_substring_regex(texts, _LIST_ENDS, ""), _LIST_SEPARATOR, "; ")
    joined = pd.Series(pd.array(cut, dtype=STRING), index=lists.index)
    rest = np.flatnonzero(~plain & pc.is_valid(texts).to_numpy(zero_copy_only=False))
    if len(rest):
        joined = joined.astype(object)
        joined.iloc[rest] = [_decoded(text) for text in texts.take(rest).to_pylist()]
        joined = joined.astype(STRING)
    return joined


def _decoded(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return text  # not JSON after all: shown as stored
    if isinstance(value, list):
        return "; ".join(str(item) for item in value)
    return str(value)


def load_export(path: Path | str, *, limit: int = MAX_LOG_BYTES) -> pd.DataFrame:
    """A file written by `mailops outbox export` (CSV or Parquet, told apart by its content), as the frame.
    A CSV's texts lose the ``'`` that made them safe for a spreadsheet (:func:`spreadsheet_safe`).

    A file that is not a regular file, is larger than ``limit``, is not UTF-8 (CSV), cannot
    be parsed, lacks a column of ``id``, ``created_at``, ``account`` and ``status``, or holds a
    time or status that is none, is refused with :class:`OutboxLogError` naming it.
    """
    try:
        data = read_bytes(path, limit=limit, what="outbox export")
    except FileReadError as exc:
        raise OutboxLogError(str(exc)) from None
    if data[:4] == b"PAR1":
        table = _parquet(data, path)
    else:
        table = spreadsheet_text(_csv(data, path))
    present = set(table.column_names)
    missing = [name for name in _EXPORT_REQUIRED if name not in present]
    if missing:
        shown = ", ".join(quoted(name) for name in table.column_names[:12]) or "none"
        raise OutboxLogError(
            f"outbox export {path}: no {', '.join(f'`{name}`' for name in missing)} column "
            f"(not a file of `mailops outbox export`?); its columns are {shown}"
        )
    columns = {ours: _from_arrow(table.column(theirs)) for theirs, ours in _EXPORT_COLUMNS.items() if theirs in present}
    try:
        frame = _assemble(columns, table.num_rows)
    except (ValueError, TypeError) as exc:
        raise OutboxLogError(f"outbox export {path}: {_export_problem(columns)}{' '.join(str(exc).split())}") from None
    bad = frame["status"].isna() & columns["status"].notna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = columns["status"].iloc[row]
        raise OutboxLogError(
            f"outbox export {path}: data row {row + 1}: status {quoted(value)} is not one of {', '.join(STATUSES)}"
        )
    return frame


def _parquet(data: bytes, path: Path | str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise OutboxLogError(f"outbox export {path}: not a readable Parquet file: {_first_line(exc)}") from None


def _csv(data: bytes, path: Path | str) -> pa.Table:
    """The CSV export as an Arrow table of texts (Arrow's reader: several times faster than pandas' here)."""
    try:
        decode_utf8(data)  # Arrow would say neither where nor, for some columns, whether the bytes are not UTF-8
    except NotUtf8Error as exc:
        raise OutboxLogError(f"{path}:{exc.line}:{exc.column}: outbox export is {exc}") from None
    try:
        return pa_csv.read_csv(
            io.BytesIO(data.removeprefix(b"\xef\xbb\xbf")),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),  # a server's reply may span lines
            # Every column as text, typed afterwards alike for CSV and Parquet.
            convert_options=pa_csv.ConvertOptions(
                column_types=_AllText(), strings_can_be_null=True, quoted_strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        message = _first_line(exc)
        if "Empty CSV file" in message:
            raise OutboxLogError(f"outbox export {path}: the file is empty (no header line)") from None
        raise OutboxLogError(f"outbox export {path}: not a readable CSV file: {message}") from None


class _AllText(dict[str, pa.DataType]):
    """Arrow's ``column_types`` for columns not known in advance: every one is text."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> pa.DataType:
        return pa.large_string()

    def get(self, key: str, default: Any = None) -> pa.DataType:
        return pa.large_string()


def _from_arrow(column: pa.ChunkedArray) -> pd.Series:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pd.Series(pd.array(column.cast(pa.large_string()), dtype=STRING))
    return column.to_pandas()


def _export_problem(columns: dict[str, pd.Series]) -> str:
    """Which column of an export fails to type, for the message (the exception alone names no column)."""
    checks = {"time": lambda s: _utc(s), "id": pd.to_numeric, "attempt": pd.to_numeric, "smtp_code": pd.to_numeric}
    for name, check in checks.items():
        if name not in columns:
            continue
        try:
            check(columns[name])
        except (ValueError, TypeError):
            shown = {"time": "created_at"}.get(name, name)
            return f"column `{shown}`: "
    return ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection); subjects, addresses and
# server replies are anyone's text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"  # what a spreadsheet reads as "text follows", and does not show


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for a CSV that a person opens in a spreadsheet: every text cell that would run as a formula
    starts with ``'``, which spreadsheets show as text. So does a cell that starts with ``'`` itself, which a
    spreadsheet would otherwise hide: every cell shows as it is, and :func:`spreadsheet_text` undoes the marks
    exactly. Vectorised; other cells are left as they are."""
    changed: dict[str, pd.Series] = {}
    for name in frame.select_dtypes(include=["object", "string", "category"]).columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        try:
            formula = column.str.startswith((*FORMULA_START, TEXT_MARK), na=False)
        except AttributeError:  # no text in the column at all
            continue
        if formula.any():
            column = column.copy()
            column[formula] = TEXT_MARK + column[formula].astype(str)
            changed[name] = column
    return frame.assign(**changed) if changed else frame


def spreadsheet_csv(frame: pd.DataFrame, *, header: bool = True) -> str:
    """``frame`` as CSV text for a spreadsheet (see :func:`spreadsheet_safe`). Lines end in CRLF (RFC 4180), so
    that a cell holding a carriage return or a line feed is quoted: a bare CR would end the row in a
    spreadsheet and start a cell of its own, formula marks or not."""
    text: str = spreadsheet_safe(frame).to_csv(index=False, header=header, lineterminator="\r\n")
    return text


def spreadsheet_text(table: pa.Table) -> pa.Table:
    """The texts of a CSV that :func:`spreadsheet_safe` wrote, as they were: one leading ``'`` taken off."""
    for position, name in enumerate(table.column_names):
        column = table.column(position)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            marked = pc.starts_with(column, TEXT_MARK)
            if pc.any(marked).as_py():
                table = table.set_column(position, name, pc.if_else(marked, pc.utf8_slice_codeunits(column, 1), column))
    return table


def load_seed_log(path: Path | str, *, timezone: str = "Europe/Berlin", limit: int = MAX_LOG_BYTES) -> pd.DataFrame:
    """The seed system's exported outbox log (see ``read_seed_log``), classified, as the frame.

    Its rows are marked ``import``, with no id, project or Message-ID: each is a mail of its
    own, tried once. ``timezone`` is the zone of its times without an offset.
    """
    _zone(timezone, error=OutboxLogError)
    return seed_frame(read_seed_log(path, timezone=timezone, limit=limit))


def seed_frame(seed: pd.DataFrame) -> pd.DataFrame:
    """The frame of a seed log already read with ``read_seed_log`` (its columns mapped, nothing parsed again).

    Its text columns are taken as they are: ``read_seed_log`` already gives pyarrow-backed
    text with empty fields NA.
    """
    length = len(seed)
    seed = seed.reset_index(drop=True)
    # A few distinct senders among many rows: the address of each is parsed once.
    codes, senders = pd.factorize(seed["from"])
    addresses = [(getaddresses([str(sender)])[0][1] or str(sender)).strip().lower() for sender in senders]
    accounts = pd.Series(addresses, dtype=STRING)
    frame = pd.DataFrame(index=pd.RangeIndex(length))
    frame["id"] = pd.arrays.IntegerArray(np.zeros(length, dtype=np.int64), np.ones(length, dtype=bool))
    frame["time"] = seed["time"].astype("datetime64[us, UTC]")
    frame["source"] = pd.Categorical.from_codes(np.zeros(length, dtype=np.int8), categories=[IMPORTED])
    frame["account"] = _merged_category(codes, accounts.where(accounts.str.len() > 0))
    frame["project"] = pd.Categorical.from_codes(np.full(length, -1, dtype=np.int8), categories=pd.Index([], STRING))
    frame["sender"] = seed["from"].astype(STRING)
    for name in ("to", "cc", "bcc", "subject"):
        frame[name] = seed[name].astype(STRING)
    frame["recipient_domain"] = recipient_domains(frame["to"])
    frame["status"] = pd.Categorical.from_codes(_codes(seed["status"], STATUSES), categories=STATUSES)
    frame["attempt"] = np.ones(length, dtype=np.int64)
    frame["smtp_code"] = seed["smtp_code"].astype("Int64")
    frame["enhanced_code"] = seed["enhanced_code"].astype(STRING)
    frame["class"] = _classes(seed["class"], frame["status"])
    frame["reply"] = seed["error"].astype(STRING)
    frame["message_id"] = pd.Series(np.nan, index=frame.index, dtype=STRING)
    frame["final"] = np.ones(length, dtype=bool)
    return frame[list(COLUMNS)]


def _zone(name: str, *, error: type[MailopsError] = AnalysisError) -> str:
    from mailops.settings import known_zone

    try:
        known_zone(name)
    except ValueError:
        raise error(f"unknown time zone {quoted(name)} (an IANA name such as Europe/Berlin)") from None
    return name


# --- narrowing -------------------------------------------------------------------------------------


def filter_mask(
    frame: pd.DataFrame,
    *,
    accounts: Collection[str] | None = None,
    projects: Collection[str | None] | None = None,
    classes: Collection[str] | None = None,
    statuses: Collection[str] | None = None,
    domains: Collection[str] | None = None,
    start: dt.date | dt.datetime | None = None,
    end: dt.date | dt.datetime | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> npt.NDArray[np.bool_]:
    """Which rows :func:`filter_frame` keeps, as a boolean array (for a caller that takes the columns it needs)."""
    keep = np.ones(len(frame), dtype=bool)
    if accounts is not None:
        keep &= _among(frame["account"], {account.lower() for account in accounts})
    if projects is not None:
        keep &= _among(frame["project"], projects)
    if classes is not None:
        keep &= _among(frame["class"], classes)
    if statuses is not None:
        keep &= _among(frame["status"], statuses)
    if domains is not None:
        keep &= _among(frame["recipient_domain"], {domain.lower() for domain in domains})
    if start is not None:
        keep &= (frame["time"] >= _moment(start, timezone, after=False)).to_numpy(dtype=bool)
    if end is not None:
        keep &= (frame["time"] < _moment(end, timezone, after=True)).to_numpy(dtype=bool)
    return keep


def filter_frame(
    frame: pd.DataFrame,
    *,
    accounts: Collection[str] | None = None,
    projects: Collection[str | None] | None = None,
    classes: Collection[str] | None = None,
    statuses: Collection[str] | None = None,
    domains: Collection[str] | None = None,
    start: dt.date | dt.datetime | None = None,
    end: dt.date | dt.datetime | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> pd.DataFrame:
    """The rows of ``frame`` that pass every filter given; None leaves a column unfiltered.

    Each collection lists the values kept (an empty one keeps nothing); accounts and domains
    compare lower-cased, and None among ``projects`` keeps the rows without a project.
    ``start`` and ``end`` bound the time: a date means that calendar day in ``timezone``, both
    ends included (``end=date(2026, 3, 31)`` keeps all of March 31st); a datetime is a moment,
    ``start`` included and ``end`` excluded, a naive one read in ``timezone``. A row without a
    time passes no time bound. The index is kept, so a row can be found in ``frame`` again.
    """
    keep = filter_mask(
        frame,
        accounts=accounts,
        projects=projects,
        classes=classes,
        statuses=statuses,
        domains=domains,
        start=start,
        end=end,
        timezone=timezone,
    )
    # Copy-on-write (pandas 3): a shallow copy cannot change the caller's frame, and costs nothing.
    return frame.copy(deep=False) if keep.all() else frame[keep]


def _among(column: pd.Series, values: Collection[str | None]) -> npt.NDArray[np.bool_]:
    """Per row of a categorical column: is its value among ``values`` (None: NA)? Decided per category."""
    wanted = column.cat.categories.isin([value for value in values if value is not None])
    lookup = np.append(wanted, None in values)  # code -1 (NA) looks up the appended flag
    return lookup[column.cat.codes.to_numpy()]  # type: ignore[no-any-return]


def _moment(value: dt.date | dt.datetime, timezone: str, *, after: bool) -> pd.Timestamp:
    """A bound as a UTC time: a datetime as it is (naive: in ``timezone``), a date as the start of
    that day (``after``: of the day after it)."""
    _zone(timezone)
    if isinstance(value, dt.datetime):
        moment = pd.Timestamp(value)
        if moment.tzinfo is None:
            moment = moment.tz_localize(timezone, ambiguous=True, nonexistent="shift_forward")
        return moment.tz_convert("UTC")
    return _midnight(value + dt.timedelta(days=1) if after else value, timezone)


def _midnight(day: dt.date, timezone: str) -> pd.Timestamp:
    # Where a zone skips midnight (a few do, for summer time), the day starts at the first moment it has.
    start = pd.Timestamp(day.year, day.month, day.day)
    return start.tz_localize(timezone, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")


# --- summaries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """The figures at the top of a report: mails sent and failed, the failure rate, and the change
    against the previous period (None where there is nothing to compare)."""

    sent: int
    failed: int
    queued: int
    rate: float | None  # failed / (sent + failed); None without a finished mail
    previous_sent: int | None = None
    previous_failed: int | None = None
    previous_rate: float | None = None
    change: float | None = None  # rate - previous_rate: 0.02 is two percentage points more


def headline(frame: pd.DataFrame, previous: pd.DataFrame | Mapping[str, int] | None = None) -> Headline:
    """Sent, failed and still queued mails of ``frame``, its failure rate, and the change against ``previous``:
    the period before, as a frame (e.g. the same filter over the preceding weeks) or as its mails by status
    (:func:`store_counts`, which spares loading it)."""
    sent, failed = _finished(frame)
    queued = _final_mask(frame) & (frame["status"].cat.codes.to_numpy() == _QUEUED)
    before: tuple[int, int] | None = None
    if isinstance(previous, pd.DataFrame):
        before_sent, before_failed = _finished(previous)
        before = int(before_sent.sum()), int(before_failed.sum())
    elif previous is not None:
        before = previous.get(OutboxStatus.SENT.value, 0), sum(previous.get(status, 0) for status in UNDELIVERED)
    return _headline(int(sent.sum()), int(failed.sum()), int(queued.sum()), before)


def _headline(sent: int, failed: int, queued: int, previous: tuple[int, int] | None) -> Headline:
    """The headline of a period's mails by outcome, against the previous period's (sent, failed) if given."""
    rate = _ratio(failed, sent + failed)
    if previous is None:
        return Headline(sent, failed, queued, rate)
    before_sent, before_failed = previous
    before = _ratio(before_failed, before_sent + before_failed)
    change = rate - before if rate is not None and before is not None else None
    return Headline(sent, failed, queued, rate, before_sent, before_failed, before, change)


def store_counts(
    store: StateStore,
    *,
    accounts: Collection[str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> dict[str, int]:
    """The mails of a state store by status (``sent``, ``failed``, ``queued``), each counted once by its final
    attempt, as :func:`load_store` with the same arguments would count them; counted by the database."""
    if not store.exists:
        return {}
    query = select(OutboxRow.status, func.count()).where(_final_in_store()).group_by(OutboxRow.status)
    query = _bounded(query, accounts, since, until)
    with store.session() as session:
        return {str(row[0]): int(row[1]) for row in session.execute(query)}


def failure_rate(frame: pd.DataFrame) -> float | None:
    """The share of finished mails that failed (see "Mails, not attempts"); None when none finished."""
    sent, failed = _finished(frame)
    return _ratio(int(failed.sum()), int(sent.sum() + failed.sum()))


def by_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Failed mails per error class, most first (ties by name): ``class``, ``failures``, ``share`` (of all
    failures), ``remedy`` (the short one) and ``temporary`` (worth another try later). Only classes that occur."""
    _, failed = _finished(frame)
    column = frame["class"]
    names = [str(name) for name in column.cat.categories]
    counts = _count(column, failed)
    table = pd.DataFrame({"class": pd.Series(names, dtype=STRING), "failures": counts})
    table = table[table["failures"] > 0].sort_values(["failures", "class"], ascending=[False, True], kind="stable")
    total = int(counts.sum())
    table["share"] = table["failures"] / total if total else 0.0
    remedies = [remedy(name) for name in table["class"]]  # a row per class that occurs: a few dozen at most
    table["remedy"] = pd.Series([item.short for item in remedies], index=table.index, dtype=STRING)
    table["temporary"] = pd.Series([item.temporary for item in remedies], index=table.index, dtype=bool)
    return table.reset_index(drop=True)


def top_remedies(frame: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` most frequent classes of :func:`by_class`, each with its remedy in full (``details``)."""
    table = by_class(frame).head(n).copy()
    table["details"] = pd.Series([remedy(name).long for name in table["class"]], index=table.index, dtype=STRING)
    return table


def by_account(frame: pd.DataFrame) -> pd.DataFrame:
    """Per sending account with a finished mail: ``account``, ``sent``, ``failed``, ``mails``, ``rate``;
    most failures first (ties by address)."""
    return _accounts_shown(_tally(frame, "account"))


def _accounts_shown(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of an account tally that :func:`by_account` shows, in its order."""
    return _sorted(table[table["mails"] > 0], "account")


def by_domain(frame: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The ``top`` recipient domains by failed mails: ``domain``, ``sent``, ``failed``, ``mails``, ``rate``;
    most failures first (ties by name). Only domains with a failure; a mail without a To address has none."""
    return _domains_shown(_tally(frame, "recipient_domain"), top)


def _domains_shown(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The rows of a recipient domain tally that :func:`by_domain` shows, in its order."""
    table = table.rename(columns={"recipient_domain": "domain"})
    return _sorted(table[table["failed"] > 0], "domain").head(top)


def by_day(
    frame: pd.DataFrame,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> pd.DataFrame:
    """Finished mails per calendar day in ``timezone``: ``day`` (midnight, naive), ``sent``, ``failed``,
    ``mails`` and ``rate``.

    Every day from ``start`` (default: the first day with a mail) to ``end`` (default: the
    last) is there, a day without mail with zeros (its rate 0: nothing failed); mails outside
    those days are left out.
    """
    sent, failed = _finished(frame)
    days = _local_days(frame["time"], _zone(timezone))
    counted = (sent | failed) & frame["time"].notna().to_numpy(dtype=bool)
    first = _ordinal(start) if start is not None else (int(days[counted].min()) if counted.any() else None)
    last = _ordinal(end) if end is not None else (int(days[counted].max()) if counted.any() else None)
    if first is None or last is None or first > last:
        return _day_table(np.zeros(0, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    inside = counted & (days >= first) & (days <= last)
    offsets = days - first
    size = last - first + 1
    return _day_table(
        np.arange(first, last + 1, dtype=np.int64),
        np.bincount(offsets[inside & sent], minlength=size),
        np.bincount(offsets[inside & failed], minlength=size),
    )


def whats_new(frame: pd.DataFrame, *, today: dt.date, timezone: str = DEFAULT_TIMEZONE) -> pd.DataFrame:
    """The classes and recipient domains with failed mails this week but none the week before.

    This week: ``today`` and the six days before it; the week before: the seven days before
    those (calendar days in ``timezone``). Columns: ``kind`` (``class`` or ``domain``),
    ``name``, ``failures`` (this week) and ``remedy`` (the short one, for a class); classes
    first, then most failures, then by name.
    """
    _, failed = _finished(frame)
    days = _local_days(frame["time"], _zone(timezone))
    failed &= frame["time"].notna().to_numpy(dtype=bool)
    last = _ordinal(today)
    this_week = failed & (days > last - 7) & (days <= last)
    week_before = failed & (days > last - 14) & (days <= last - 7)
    parts = []
    for kind, column in (("class", frame["class"]), ("domain", frame["recipient_domain"])):
        now, before = _count(column, this_week), _count(column, week_before)
        new = (now > 0) & (before == 0)
        names = np.asarray([str(name) for name in column.cat.categories], dtype=object)
        part = pd.DataFrame({"kind": kind, "name": pd.Series(names[new], dtype=STRING), "failures": now[new]})
        part["remedy"] = pd.Series(
            [remedy(name).short if kind == "class" else "" for name in part["name"]], index=part.index, dtype=STRING
        )
        parts.append(part.sort_values(["failures", "name"], ascending=[False, True], kind="stable"))
    table = pd.concat(parts, ignore_index=True)
    table["failures"] = table["failures"].astype(np.int64)
    return table


# --- a period counted in the state store -----------------------------------------------------------


@dataclass(frozen=True)
class StoreSummary:
    """What :func:`summarise_store` gives: the tables the frame functions make of a period's frame."""

    headline: Headline
    classes: pd.DataFrame  # top_remedies(frame, n=len(CLASSES)): every class that failed, with both remedies
    accounts: pd.DataFrame  # by_account(frame)
    domains: pd.DataFrame  # by_domain(frame, top=top_domains)
    days: pd.DataFrame  # by_day(frame, timezone=timezone, start=first, end=last)
    latest_failures: pd.DataFrame  # load_store(..., statuses=["failed"], newest=latest)


def summarise_store(
    store: StateStore,
    first: dt.date,
    last: dt.date,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    accounts: Collection[str] | None = None,
    previous: tuple[dt.date, dt.date] | None = None,
    top_domains: int = 10,
    latest: int = 10,
) -> StoreSummary:
    """The summaries of the calendar days ``first`` to ``last`` (both included, in ``timezone``) of a state store,
    as the frame functions give them for ``frame = load_store(store, accounts=accounts, since=..., until=...)`` over
    those days, without loading that frame (`mailops report` over a million attempts).

    ``previous`` (the first and last day of a period before ``first``) is what the headline compares with, as
    ``headline(frame, store_counts(...))`` does; ``latest_failures`` is ``load_store(..., statuses=["failed"],
    newest=latest)`` over the period.

    Most mails go out at their first try, and of those a report shows only how many there are per account, day
    and recipient domain. So the attempts are taken in two parts. *The rest*, every attempt that was not sent or
    was retried (a small share), is loaded as a frame, ``final`` decided over the whole store as
    :func:`load_store` does, and summarised like any frame. *The sent mails* are counted by the database: all
    attempts per account and day from the index on account and time (without reading the table), and per
    recipient domain in one scan grouped on the text after the first ``@``, each less the rest. An attempt
    belongs to the day whose bounds its stored time lies between, compared by the database for both parts alike.
    """
    _zone(timezone)
    if first > last:
        raise AnalysisError(f"the period {first.isoformat()} to {last.isoformat()} ends before it starts")
    if previous is not None and not previous[0] <= previous[1] < first:
        raise AnalysisError("the previous period must end before the period starts")
    length = (last - first).days + 1
    days = [_day_start(first + dt.timedelta(days=number), timezone) for number in range(length + 1)]
    spans = list(zip(days[:-1], days[1:], strict=True))  # span n: day n of the period; span `length`: previous
    if previous is not None:
        spans.append((_day_start(previous[0], timezone), _day_start(previous[1] + dt.timedelta(days=1), timezone)))
    names: list[str] = []
    totals = np.zeros((0, len(spans)), dtype=np.int64)
    tails: list[str | None] = []
    tail_totals = np.zeros(0, dtype=np.int64)
    rest, span, latest_failures = empty_frame(), np.zeros(0, dtype=np.int64), empty_frame()
    if store.exists:
        with _snapshot(store) as session:
            rest, span = _rest(session, spans, accounts)
            now, failed = _failed_now(rest, span, length)
            names, totals = _attempts_by_account(session, spans, accounts)
            # Which domains are shown depends on their failures alone (the rest's): only theirs are counted.
            shown = _domains_shown(_tally(rest[now], "recipient_domain"), top_domains)["domain"]
            if len(shown):
                tails, tail_totals = _attempts_by_domain(session, days[0], days[-1], accounts, [*map(str, shown)])
            latest_failures = _latest_failures(session, rest, now, latest)

    now, failed = _failed_now(rest, span, length)
    queued = _final_mask(rest) & (rest["status"].cat.codes.to_numpy() == _QUEUED)
    sent_per_day = totals[:, :length].sum(axis=0) - np.bincount(span[now], minlength=length)
    failed_per_day = np.bincount(span[now & failed], minlength=length)
    before = None
    if previous is not None:
        earlier = span == length
        before = int(totals[:, length].sum()) - int(earlier.sum()), int((earlier & failed).sum())

    # The frame lower-cases the accounts (an empty one is none): so are their totals, before the rest is taken off.
    account_names = pd.Series(names, dtype=STRING).str.lower()
    account_totals = pd.Series(totals[:, :length].sum(axis=1)).groupby(account_names.where(account_names != "")).sum()
    domain_names = _domains_of_tails(pa.array(tails, type=pa.large_string()))
    domain_totals = pd.Series(tail_totals).groupby(pd.Series(domain_names), observed=True).sum()
    return StoreSummary(
        headline=_headline(int(sent_per_day.sum()), int((now & failed).sum()), int((now & queued).sum()), before),
        classes=top_remedies(rest[now], n=len(CLASSES)),
        accounts=_accounts_shown(_sent_and_failed("account", account_totals, rest["account"], now, failed)),
        domains=_domains_shown(
            _sent_and_failed("recipient_domain", domain_totals, rest["recipient_domain"], now, failed), top_domains
        ),
        days=_day_table(np.arange(_ordinal(first), _ordinal(last) + 1), sent_per_day, failed_per_day),
        latest_failures=latest_failures,
    )


def _failed_now(
    rest: pd.DataFrame, span: npt.NDArray[np.int64], length: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per attempt of the rest: is it in the period (spans 0 to ``length - 1``), and is it a mail that failed? (The
    rest holds no final attempt that was sent.)"""
    return (span >= 0) & (span < length), _finished(rest)[1]


@contextmanager
def _snapshot(store: StateStore) -> Iterator[Session]:
    """A session whose statements all read the same state of the store: the totals and the rest are taken from
    each other, so a mail logged between two statements would otherwise count as sent, or not at all.

    SQLite's driver begins no transaction for a read (each statement would be one of its own): it is begun here.
    PostgreSQL gives each statement of a transaction its own snapshot unless it repeats its first.
    """
    with store.session() as session:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        elif dialect == "sqlite":
            session.connection().exec_driver_sql("BEGIN")
        yield session


def _day_start(day: dt.date, timezone: str) -> dt.datetime:
    """The first moment of ``day`` in ``timezone``, in UTC, as the database's bound."""
    return _midnight(day, timezone).to_pydatetime()  # type: ignore[no-any-return]


def _sent_and_failed(
    key: str, totals: pd.Series, column: pd.Series, now: npt.NDArray[np.bool_], failed: npt.NDArray[np.bool_]
) -> pd.DataFrame:
    """The tally per name of ``totals`` (all attempts per name): its sent mails are the attempts that are not in the
    rest (``column``, the rest's names; ``now``: in the period), its failed mails the rest's."""
    # The rest's names in the period are among the totals' names; those only in other spans may not be.
    names = column.cat.categories
    rest = pd.Series(_count(column, now), index=names).reindex(totals.index, fill_value=0)
    failures = pd.Series(_count(column, now & failed), index=names).reindex(totals.index, fill_value=0)
    sent = (totals - rest).to_numpy(dtype=np.int64)
    return _tally_table(key, totals.index, sent, failures.to_numpy(dtype=np.int64))


def _attempts_by_account(
    session: Session, spans: list[tuple[dt.datetime, dt.datetime]], accounts: Collection[str] | None
) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The accounts, and how many attempts each made in each span (since, until): a row per account, a column per
    span. Counted in the index on account and time: a range of it per account and span, the table is not read."""
    if accounts is not None:
        listed = sorted({address.lower() for address in accounts})
        if not listed:
            return [], np.zeros((0, len(spans)), dtype=np.int64)
        senders = values(values_column("account", String), name="senders").data([(address,) for address in listed])
        account = senders.cte("senders").c.account
    else:
        account = _accounts_in_store().c.account
    moment = DateTime(timezone=True)
    listed_spans = values(
        values_column("number", Integer), values_column("since", moment), values_column("until", moment), name="spans"
    ).data([(number, _as_utc(since), _as_utc(until)) for number, (since, until) in enumerate(spans)])
    bounds = listed_spans.cte("spans")
    attempt = aliased(OutboxRow)
    count = (
        select(func.count())
        .select_from(attempt)
        .where(attempt.account == account, attempt.created_at >= bounds.c.since, attempt.created_at < bounds.c.until)
        .scalar_subquery()
    )
    pairs = account.table.join(bounds, true())  # every account with every span
    rows = _fetch(session, select(account, bounds.c.number, count).select_from(pairs).where(account.is_not(None)))
    names = sorted({str(row[0]) for row in rows})
    totals = np.zeros((len(names), len(spans)), dtype=np.int64)
    position = {name: index for index, name in enumerate(names)}
    for name, number, attempts in rows:  # a row per account and span: a few hundred
        totals[position[name], number] = attempts
    return names, totals


def _accounts_in_store() -> CTE:
    """The distinct accounts of the outbox, each found by one step along the index on account and time (a loose
    index scan: DISTINCT would read every entry of the index)."""
    found = select(func.min(OutboxRow.account).label("account")).cte("accounts", recursive=True)
    later = aliased(OutboxRow)
    following = select(func.min(later.account)).where(later.account > found.c.account).scalar_subquery()
    return found.union_all(select(following).where(found.c.account.is_not(None)))


def _attempts_by_domain(
    session: Session,
    since: dt.datetime,
    until: dt.datetime,
    accounts: Collection[str] | None,
    domains: Collection[str],
) -> tuple[list[str | None], npt.NDArray[np.int64]]:
    """How many attempts of the ``domains`` there are per spelling of the first To address's domain (see
    ``recipient_domain_text``), the text from which :func:`recipient_domains` takes the domain. Counted in the index
    on the domain, account, project and time (migration 0007): a range of it per spelling, account and project, the
    table is not read."""
    listed = sorted({address.lower() for address in accounts}) if accounts is not None else _accounts_of(session)
    every = _spellings_in(session)
    named = _domains_of_tails(pa.array(every, type=pa.large_string()))
    wanted = set(domains)
    spellings = [text for text, domain in zip(every, named, strict=True) if domain in wanted]
    if not listed or not spellings:
        return [], np.zeros(0, dtype=np.int64)
    dialect = session.get_bind().dialect.name
    written = values(values_column("spelling", Text), name="written").data([(text,) for text in spellings])
    spelling = written.cte("written").c.spelling
    senders = values(values_column("account", String), name="senders").data([(address,) for address in listed])
    account = senders.cte("senders").c.account
    attempt = aliased(OutboxRow)
    conditions = [
        _written_domain(attempt, dialect) == spelling,
        attempt.account == account,
        attempt.created_at >= _as_utc(since),
        attempt.created_at < _as_utc(until),
    ]
    # The index holds the project before the time: a range of time needs the project named, each stored value.
    counts = [
        select(func.count()).select_from(attempt).where(*conditions, condition).scalar_subquery()
        for condition in _project_conditions(attempt.project, [*_projects_of(session, listed), None])
    ]
    pairs = spelling.table.join(account.table, true())
    totals: dict[str, int] = {}
    for text, number in _fetch(session, select(spelling, sum(counts[1:], counts[0])).select_from(pairs)):
        totals[text] = totals.get(text, 0) + int(number)
    return list(totals), np.array(list(totals.values()), dtype=np.int64)


def _written_domain(table: Any, dialect: str) -> ColumnElement[str]:
    """The first To address's domain as written (``recipient_domain_text``; on SQLite the indexed expression)."""
    if dialect == "postgresql":
        return recipient_domain_text(cast(table.to_addresses, Text), find=func.strpos)
    return recipient_domain_text(type_coerce(table.to_addresses, Text))


def _spellings_in(session: Session) -> list[str]:
    """The distinct spellings of the first To addresses' domains (see ``recipient_domain_text``)."""
    dialect = session.get_bind().dialect.name
    written = _written_domain(OutboxRow, dialect)
    if dialect != "sqlite":
        return sorted(row[0] for row in _fetch(session, select(written).distinct()) if row[0] is not None)
    # Each spelling found by a step along the index on the expression (DISTINCT would read all of it).
    found = select(func.min(written).label("spelling")).cte("spellings", recursive=True)
    later = aliased(OutboxRow)
    following = select(func.min(_written_domain(later, dialect))).where(
        _written_domain(later, dialect) > found.c.spelling
    )
    found = found.union_all(select(following.scalar_subquery()).where(found.c.spelling.is_not(None)))
    return [row[0] for row in _fetch(session, select(found.c.spelling)) if row[0] is not None]


def _accounts_of(session: Session) -> list[str]:
    """The accounts of the outbox, sorted."""
    found = _accounts_in_store()
    return sorted(str(row[0]) for row in _fetch(session, select(found.c.account)) if row[0] is not None)


def _projects_of(session: Session, accounts: Collection[str], *conditions: ColumnElement[bool]) -> list[str]:
    """The projects of the accounts' attempts (that meet ``conditions``), sorted; each found by a step along the
    index on account, project and time. An attempt without a project (NULL or empty) has none."""
    projects: set[str] = set()
    for account in accounts:
        previous: str | None = ""
        while previous is not None:
            step = select(func.min(OutboxRow.project)).where(
                OutboxRow.account == account, OutboxRow.project > previous, *conditions
            )
            previous = session.execute(step).scalar_one()
            if previous is not None:
                projects.add(previous)
    return sorted(projects)


def _retried_ids(last_id: int | None = None) -> Select[int | None]:
    """The ids of the attempts that another attempt (logged up to ``last_id``: None, any) retries, found in the
    index on ``retry_of``."""
    retry = aliased(OutboxRow)
    query = select(retry.retry_of).where(retry.retry_of.is_not(None))
    return query if last_id is None else query.where(_logged_by(retry, last_id))


def _rest(
    session: Session, spans: list[tuple[dt.datetime, dt.datetime]], accounts: Collection[str] | None
) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """Every attempt in the spans that was not sent or was retried, as a frame of the summaries' columns, and the
    number of the span each is in (-1: between them)."""
    retried = np.unique(np.array([row[0] for row in _fetch(session, _retried_ids())], dtype=np.int64))
    names = ["id", "time", "account", "status", "class", "to"]
    columns = [_STORED_LABELS.get(name, _STORE_COLUMNS[name]) for name in names]
    time: ColumnElement[dt.datetime] = OutboxRow.created_at.expression
    if session.get_bind().dialect.name == "sqlite":
        # Not by the index on time (the table's rows in a range of time): the attempts not sent have an index of
        # their own that holds what is read here, which SQLite takes only for the very same condition.
        time = UnaryExpression(time, operator=custom_op("+"), type_=DateTime(timezone=True))
        not_sent = OutboxRow.status != literal_column(f"'{OutboxStatus.SENT.value}'")
    else:
        not_sent = OutboxRow.status != OutboxStatus.SENT.value
    bounds = [time >= _as_utc(min(since for since, _ in spans)), time < _as_utc(max(until for _, until in spans))]
    if accounts is not None:
        bounds.append(OutboxRow.account.in_(sorted({address.lower() for address in accounts})))
    rows = _fetch(session, select(*columns).where(not_sent, *bounds))
    if len(retried):  # sent, and then sent again (`outbox resend`): not a mail's last attempt
        resent = OutboxRow.status == OutboxStatus.SENT.value, OutboxRow.id.in_(_retried_ids())
        rows += _fetch(session, select(*columns).where(*resent, *bounds))
    raw = _cut(rows, names)
    raw["final"] = pd.Series(~np.isin(raw["id"].to_numpy(dtype=np.int64), retried))
    frame = _frame_of(raw, len(rows), SUMMARY_COLUMNS)
    return frame, _span_of(frame["time"], spans)


def _span_of(times: pd.Series, spans: list[tuple[dt.datetime, dt.datetime]]) -> npt.NDArray[np.int64]:
    """The number of the span (since, until; apart) that holds each time, -1 for none."""
    ordered = sorted((_as_utc(since), _as_utc(until), number) for number, (since, until) in enumerate(spans))
    starts = np.array([_microseconds(since) for since, _, _ in ordered], dtype=np.int64)
    ends = np.array([_microseconds(until) for _, until, _ in ordered], dtype=np.int64)
    numbers = np.array([number for _, _, number in ordered], dtype=np.int64)
    moments = times.to_numpy(dtype="datetime64[us]").view(np.int64)
    place = np.searchsorted(starts, moments, side="right") - 1
    inside = (place >= 0) & (moments < ends[np.maximum(place, 0)]) & times.notna().to_numpy(dtype=bool)
    return np.where(inside, numbers[np.maximum(place, 0)], -1).astype(np.int64)


def _microseconds(moment: dt.datetime) -> int:
    """A UTC time as microseconds since 1970 (the numbering of ``datetime64[us]``)."""
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _latest_failures(session: Session, rest: pd.DataFrame, now: npt.NDArray[np.bool_], latest: int) -> pd.DataFrame:
    """The ``latest`` newest failed attempts of the period in full, oldest first, as :func:`load_store` gives them:
    the rest holds every failed attempt, and whether it was its mail's last."""
    failing = rest.loc[now & (rest["status"] == OutboxStatus.FAILED.value).to_numpy(), ["id", "time", "final"]]
    chosen = failing.sort_values(["time", "id"]).tail(latest)  # by time: a log imported later may hold older mail
    wanted = _wanted(None)
    query = select(*(_STORE_COLUMNS[name] for name in wanted)).where(OutboxRow.id.in_(chosen["id"].tolist()))
    rows = _fetch(session, query.order_by(OutboxRow.created_at, OutboxRow.id))
    raw = _cut(rows, wanted)
    raw["final"] = chosen["final"].reset_index(drop=True)
    return _frame_of(raw, len(rows), None)


def _final_mask(frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
    if "final" not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    return frame["final"].to_numpy(dtype=bool)  # type: ignore[no-any-return]


def _finished(frame: pd.DataFrame) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per row: the final attempt of a mail that was sent, and of one that failed."""
    status = frame["status"].cat.codes.to_numpy()
    final = _final_mask(frame)
    return final & (status == _SENT), final & np.isin(status, _UNDELIVERED)


def _count(column: pd.Series, rows: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """How many of ``rows`` hold each category of ``column`` (in the categories' order)."""
    codes = column.cat.codes.to_numpy()
    chosen = codes[rows & (codes >= 0)].astype(np.int64)
    return np.bincount(chosen, minlength=len(column.cat.categories)).astype(np.int64)


def _tally(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Sent and failed mails per category of ``key``, with their sum and failure rate."""
    sent, failed = _finished(frame)
    column = frame[key]
    return _tally_table(key, column.cat.categories, _count(column, sent), _count(column, failed))


def _tally_table(
    key: str, names: Collection[object], sent: npt.NDArray[np.int64], failed: npt.NDArray[np.int64]
) -> pd.DataFrame:
    """Sent and failed mails per name, with their sum and failure rate."""
    mails = sent + failed
    return pd.DataFrame(
        {
            key: pd.Series([str(name) for name in names], dtype=STRING),
            "sent": sent,
            "failed": failed,
            "mails": mails,
            "rate": _rates(failed, mails),
        }
    )


def _sorted(table: pd.DataFrame, key: str) -> pd.DataFrame:
    return table.sort_values(["failed", key], ascending=[False, True], kind="stable").reset_index(drop=True)


def _rates(failed: npt.NDArray[np.int64], mails: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """failed / mails, 0 where there is no mail."""
    return np.divide(failed, mails, out=np.zeros(len(mails), dtype=np.float64), where=mails > 0)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


_EPOCH = dt.date(1970, 1, 1)


def _ordinal(day: dt.date) -> int:
    """A calendar day as days since 1970-01-01 (the numbering of ``datetime64[D]``)."""
    if isinstance(day, dt.datetime):
        day = day.date()
    return (day - _EPOCH).days


def _local_days(times: pd.Series, timezone: str) -> npt.NDArray[np.int64]:
    """Each time's calendar day in ``timezone`` as days since 1970-01-01 (meaningless where the time is NaT)."""
    wall = times.dt.tz_convert(timezone).dt.tz_localize(None)
    return wall.to_numpy(dtype="datetime64[us]").astype("datetime64[D]").astype(np.int64)  # type: ignore[no-any-return]


def _day_table(days: npt.NDArray[np.int64], sent: npt.NDArray[np.int64], failed: npt.NDArray[np.int64]) -> pd.DataFrame:
    mails = (sent + failed).astype(np.int64)
    return pd.DataFrame(
        {
            "day": pd.Series(days.astype("datetime64[D]").astype("datetime64[s]")),
            "sent": sent.astype(np.int64),
            "failed": failed.astype(np.int64),
            "mails": mails,
            "rate": _rates(failed.astype(np.int64), mails),
        }
    )


# --- the explorer's outbox, counted in the state store ---------------------------------------------


@dataclass(frozen=True)
class Summaries:
    """What the notebook's explorer shows for a filter: the tables the frame functions give for the filtered frame,
    and how many attempts pass the filter."""

    headline: Headline  # headline(view)
    classes: pd.DataFrame  # by_class(view)
    accounts: pd.DataFrame  # by_account(view)
    domains: pd.DataFrame  # by_domain(view, top=top_domains)
    days: pd.DataFrame  # by_day(view, timezone=timezone, start=start, end=end)
    attempts: int  # len(view)


def summaries(
    frame: pd.DataFrame,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    top_domains: int = 10,
    accounts: Collection[str] | None = None,
    projects: Collection[str | None] | None = None,
    classes: Collection[str] | None = None,
    statuses: Collection[str] | None = None,
    domains: Collection[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Summaries:
    """The explorer's tables of the rows of ``frame`` that pass the filters (those of :func:`filter_frame`)."""
    keep = filter_mask(
        frame,
        accounts=accounts,
        projects=projects,
        classes=classes,
        statuses=statuses,
        domains=domains,
        start=start,
        end=end,
        timezone=timezone,
    )
    # The summaries read a handful of columns: copying only those is a fraction of the bytes.
    view = frame.loc[keep, list(SUMMARY_COLUMNS)]
    return Summaries(
        headline=headline(view),
        classes=by_class(view),
        accounts=by_account(view),
        domains=by_domain(view, top=top_domains),
        days=by_day(view, timezone=timezone, start=start, end=end),
        attempts=int(keep.sum()),
    )


# How many rows of the outbox one statement of an export reads: a chunk's frame, not the whole outbox, in memory.
EXPORT_CHUNK = 50_000


@dataclass(frozen=True)
class _AttemptCounts:
    """Every attempt (of any status) of a :class:`StoreOutbox`, counted when it opened: for the filters that narrow
    by neither project nor (for the days) domain, which then need no statement at all."""

    spellings: dict[str, list[str]]  # domain -> how its first To addresses write it
    per_domain: dict[str, npt.NDArray[np.int64]]  # domain -> attempts per account (in the order of the accounts)
    per_day: npt.NDArray[np.int64]  # attempts per account (a row each) and day of the outbox (a column each)


class StoreOutbox:
    """The outbox of a state store as the notebook's explorer reads it: counted, paged and exported by the database
    for any filter of :func:`filter_frame` (dates for ``start`` and ``end``), never loaded whole.

    It shows the store as it was when opened: the attempts logged later (a higher id) are left out, so
    that the counts, the pages and the export agree with each other while a worker goes on sending.

    How: most attempts are sent at their first try, and of those the summaries need only how many there are per
    account, day and recipient domain. *The rest* (every attempt that was not sent, or was retried: a small share)
    is read once, when opened, as a frame of the summaries' columns, and filtered and summarised by the frame
    functions for each filter. *The sent attempts* are counted by the database for each filter, all attempts less
    the rest, per account and day, from the indexes on account, project, recipient domain and time (migration
    0007), without reading the table. A page of the table and the export read the rows they show.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        accounts: Collection[str] | None = None,
        timezone: str = DEFAULT_TIMEZONE,
    ) -> None:
        """``accounts``: the addresses whose attempts the viewer may see (None: all), as for :func:`load_store`."""
        self.store = store
        self.timezone = _zone(timezone)
        self._visible = None if accounts is None else sorted({address.lower() for address in accounts})
        self._last_id = 0
        self._accounts: list[str] = []
        self._projects: list[str] = []
        # Counted when opened, on a thread of their own (see _open): the first use waits for them.
        self._counts = _AttemptCounts({}, {}, np.zeros((0, 0), dtype=np.int64))
        self._counting: Future[_AttemptCounts] | None = None
        self._days: tuple[dt.date, dt.date] | None = None  # the first and last day with an attempt
        self._retried = np.zeros(0, dtype=np.int64)
        self._rest = empty_frame()
        if store.exists and self._visible != []:
            with _snapshot(store) as session:
                self._open(session)

    def _open(self, session: Session) -> None:
        self._last_id = int(session.execute(select(func.coalesce(func.max(OutboxRow.id), 0))).scalar_one())
        retried = _fetch(session, _retried_ids(self._last_id))
        self._retried = np.unique(np.array([row[0] for row in retried], dtype=np.int64))

        # The accounts with an attempt (of those the viewer may see): the filter offers no other.
        present = _accounts_of(session)
        self._accounts = present if self._visible is None else sorted(set(present) & set(self._visible))
        if not self._accounts:
            return
        # The first and the last attempt, each found at an end of the index on time (min and max in one statement
        # would read all of it).
        ends = [
            _fetch(session, select(OutboxRow.created_at).where(*self._visible_only()).order_by(order).limit(1))
            for order in (OutboxRow.created_at.asc(), OutboxRow.created_at.desc())
        ]
        if not ends[0]:
            return
        first, last = ends[0][0][0], ends[1][0][0]
        moments = _utc(pd.Series([first, last], dtype=object)).dt.tz_convert(self.timezone)
        self._days = (moments.iloc[0].date(), moments.iloc[1].date())
        self._projects = _projects_of(session, self._accounts, _logged_by(OutboxRow, self._last_id))
        if self._own_connections():
            # The counts walk the indexes in the database, without Python's lock, on a connection and a thread of
            # their own while this one reads the rest (and the caller goes on, until it needs them). They count
            # every attempt up to the last id, whatever its status: another transaction sees the same.
            counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailops-outbox-counts")
            self._counting = counting.submit(self._count_attempts, self._days)
            counting.shutdown(wait=False)
            self._rest = self._read_rest(session)
        else:
            self._rest = self._read_rest(session)
            self._counts = self._count_attempts(self._days, session)

    def wait(self) -> None:
        """Wait for the counts made when opened (any first use of them waits too); raises what failed there."""
        self._counted  # noqa: B018 - the property waits

    @property
    def _counted(self) -> _AttemptCounts:
        """The counts made when opened, once they are there."""
        if self._counting is not None:
            self._counts, self._counting = self._counting.result(), None
        return self._counts

    def _own_connections(self) -> bool:
        """Whether a second connection reads the same database (not so for SQLite's in-memory one)."""
        url = self.store.engine.url
        return url.get_backend_name() != "sqlite" or url.database not in (None, "", ":memory:")

    def _count_attempts(self, days: tuple[dt.date, dt.date], session: Session | None = None) -> _AttemptCounts:
        """The counts of every attempt made when opened (see _open); in a session of its own unless one is given."""
        if session is None:
            with self.store.session() as own:
                return self._count_attempts(days, own)
        spellings, per_domain = self._domains_in(session)
        return _AttemptCounts(spellings, per_domain, self._attempts_per_day(session, self._accounts, None, None, *days))

    # -- what the filters offer -------------------------------------------------------------------

    def accounts(self) -> list[str]:
        """The accounts with an attempt, sorted."""
        return sorted(self._accounts) if self._days is not None else []

    def projects(self) -> list[str]:
        """The projects with an attempt, sorted (an attempt without one has none: it is not listed)."""
        return list(self._projects)

    def classes(self) -> list[str]:
        """The error classes of the undelivered attempts, in the order of :data:`CLASSES`."""
        codes = self._rest["class"].cat.codes.to_numpy()
        present = np.bincount(codes[codes >= 0], minlength=len(CLASSES)) > 0
        return [name for name, used in zip(CLASSES, present, strict=True) if used]

    def statuses(self) -> list[str]:
        """The statuses of the attempts, in the order of :data:`STATUSES`."""
        codes = self._rest["status"].cat.codes.to_numpy()
        present = np.bincount(codes[codes >= 0], minlength=len(STATUSES)) > 0
        present[_SENT] |= self._sent_attempts_exist()
        return [name for name, used in zip(STATUSES, present, strict=True) if used]

    def domains(self, limit: int) -> list[str]:
        """The ``limit`` recipient domains with the most attempts, most first (ties by name)."""
        attempts = {domain: int(counts.sum()) for domain, counts in self._counted.per_domain.items()}
        ranked = sorted(attempts.items(), key=lambda item: (-item[1], item[0]))
        return [domain for domain, attempts in ranked[:limit] if attempts > 0]

    def _sent_attempts_exist(self) -> bool:
        if self._days is None:
            return False
        query = select(OutboxRow.id).where(OutboxRow.status == OutboxStatus.SENT.value, *self._visible_only()).limit(1)
        with self.store.session() as session:
            return bool(_fetch(session, query))

    # -- summaries --------------------------------------------------------------------------------

    def summaries(
        self,
        *,
        top_domains: int = 10,
        accounts: Collection[str] | None = None,
        projects: Collection[str | None] | None = None,
        classes: Collection[str] | None = None,
        statuses: Collection[str] | None = None,
        domains: Collection[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> Summaries:
        """What :func:`summaries` gives for the store's frame (as :func:`load_store` reads it) and these filters."""
        rest, unsent = self._narrowed(accounts, projects, classes, statuses, domains, start, end)
        sent_too = classes is None and (statuses is None or OutboxStatus.SENT.value in statuses)
        day_numbers = np.zeros(0, dtype=np.int64)
        names = sorted(self._chosen_accounts(accounts))
        sent = np.zeros((len(names), 0), dtype=np.int64)
        if self._days is not None or (start is not None and end is not None):
            first, last = start or self._days[0], end or self._days[1]  # type: ignore[index]
            day_numbers = np.arange(_ordinal(first), _ordinal(last) + 1, dtype=np.int64)
            sent = np.zeros((len(names), len(day_numbers)), dtype=np.int64)
            spellings = self._spellings_of(domains)
            if sent_too and len(day_numbers) and names and spellings != []:
                # Sent attempts per account and day: every attempt the database counts, less the rest's.
                if projects is None and spellings is None:
                    sent = self._counted_per_day(names, day_numbers)
                else:
                    with _snapshot(self.store) as session:
                        sent = self._attempts_per_day(session, names, projects, spellings, first, last)
                sent -= _per_account_and_day(unsent, names, day_numbers, self.timezone)
        _, final_failed = _finished(rest)
        queued = _final_mask(rest) & (rest["status"].cat.codes.to_numpy() == _QUEUED)
        rest_days = _local_days(rest["time"], self.timezone) - (day_numbers[0] if len(day_numbers) else 0)
        inside = (rest_days >= 0) & (rest_days < len(day_numbers))
        failed_per_day = np.bincount(rest_days[final_failed & inside], minlength=len(day_numbers))
        days = _day_table(day_numbers, sent.sum(axis=0), failed_per_day)
        days = _trimmed(days, leading=start is None, trailing=end is None)
        account_sent = pd.Series(sent.sum(axis=1), index=pd.Index(names, dtype=object))
        return Summaries(
            headline=_headline(int(sent.sum()), int(final_failed.sum()), int(queued.sum()), None),
            classes=by_class(rest),
            accounts=_accounts_shown(_with_sent(_tally(rest, "account"), "account", account_sent)),
            domains=self._domains_table(rest, unsent, projects, accounts, start, end, top_domains, sent_too),
            days=days,
            attempts=int(sent.sum()) + len(rest),  # the rest holds no final sent attempt
        )

    def _every_project(self) -> list[str | None]:
        """Every project of the attempts, and none (for a condition per stored value)."""
        return [*self._projects, None]

    def _counted_per_day(self, accounts: list[str], day_numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """All attempts per account and day as counted when opened (days outside the outbox's: none)."""
        counts = np.zeros((len(accounts), len(day_numbers)), dtype=np.int64)
        if self._days is None:
            return counts
        rows = pd.Index(self._accounts).get_indexer(accounts)
        columns = day_numbers - _ordinal(self._days[0])
        inside = (columns >= 0) & (columns < self._counted.per_day.shape[1])
        counts[:, inside] = self._counted.per_day[np.ix_(rows, columns[inside])]
        return counts

    def _narrowed(
        self,
        accounts: Collection[str] | None,
        projects: Collection[str | None] | None,
        classes: Collection[str] | None,
        statuses: Collection[str] | None,
        domains: Collection[str] | None,
        start: dt.date | None,
        end: dt.date | None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The rest as filtered; and as filtered by all but status and class, which the database's counts of all
        attempts do not know (the rest's share of those counts is taken off them)."""
        common = filter_mask(
            self._rest,
            accounts=accounts,
            projects=projects,
            domains=domains,
            start=start,
            end=end,
            timezone=self.timezone,
        )
        if classes is None and statuses is None:
            narrowed = self._rest[common]
            return narrowed, narrowed
        keep = common & filter_mask(self._rest, classes=classes, statuses=statuses, timezone=self.timezone)
        return self._rest[keep], self._rest[common]

    def _domains_table(
        self,
        rest: pd.DataFrame,
        unsent: pd.DataFrame,
        projects: Collection[str | None] | None,
        accounts: Collection[str] | None,
        start: dt.date | None,
        end: dt.date | None,
        top: int,
        sent_too: bool,
    ) -> pd.DataFrame:
        """by_domain of the filtered frame: its top domains by failures come from the rest alone, and only their sent
        mails are counted in the database."""
        shown = _domains_shown(_tally(rest, "recipient_domain"), top)
        if not sent_too or not len(shown):
            return shown
        names = [str(name) for name in shown["domain"]]
        chosen = sorted(self._chosen_accounts(accounts))
        since = _day_start(start, self.timezone) if start is not None else None
        until = _day_start(end + dt.timedelta(days=1), self.timezone) if end is not None else None
        if projects is None and since is None and until is None:
            rows = pd.Index(self._accounts).get_indexer(chosen)
            empty = np.zeros(len(self._accounts), dtype=np.int64)
            attempts = {name: int(self._counted.per_domain.get(name, empty)[rows].sum()) for name in names}
        else:
            with _snapshot(self.store) as session:
                attempts = self._attempts_per_domain(session, names, chosen, projects, since, until)
        in_rest = _count(unsent["recipient_domain"], np.ones(len(unsent), dtype=bool))
        rest_per_domain = dict(
            zip((str(name) for name in unsent["recipient_domain"].cat.categories), in_rest, strict=True)
        )
        sent = np.array([attempts[name] - rest_per_domain.get(name, 0) for name in names], dtype=np.int64)
        return _tally_table("domain", names, sent, shown["failed"].to_numpy(dtype=np.int64))

    # -- rows -------------------------------------------------------------------------------------

    def page(
        self,
        offset: int,
        limit: int,
        *,
        accounts: Collection[str] | None = None,
        projects: Collection[str | None] | None = None,
        classes: Collection[str] | None = None,
        statuses: Collection[str] | None = None,
        domains: Collection[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> pd.DataFrame:
        """The attempts ``offset`` to ``offset + limit`` that pass the filters, newest first (the frame's shape)."""
        if not self.store.exists or self._last_id == 0:
            return empty_frame()
        if classes is not None or (statuses is not None and OutboxStatus.SENT.value not in statuses):
            # No sent attempt passes: the page is among the rest, already in memory.
            rest, _ = self._narrowed(accounts, projects, classes, statuses, domains, start, end)
            times = rest["time"].to_numpy(dtype="datetime64[us]").view(np.int64)
            order = np.lexsort((rest["id"].to_numpy(dtype=np.int64), times))[::-1]
            ids = rest["id"].to_numpy(dtype=np.int64)[order[offset : offset + limit]].tolist()
        else:
            # The newest first along the index on time, not all of a domain's attempts sorted by time.
            where = self._where(accounts, projects, classes, statuses, domains, start, end, by_domain_index=False)
            query = (
                select(OutboxRow.id)
                .where(*where)
                .order_by(OutboxRow.created_at.desc(), OutboxRow.id.desc())
                .limit(limit)
                .offset(offset)
            )
            with self.store.session() as session:
                ids = [row[0] for row in _fetch(session, query)]
        return self.rows(ids)

    def rows(self, ids: Collection[int]) -> pd.DataFrame:
        """The attempts of these ids in full, in the order given (one that is not there is left out)."""
        if not ids or not self.store.exists:
            return empty_frame()
        wanted = _wanted(None)
        query = select(*(_STORE_COLUMNS[name] for name in wanted)).where(
            OutboxRow.id.in_(list(ids)), *self._visible_only()
        )
        with self.store.session() as session:
            rows = _fetch(session, query)
        position = {int(entry): number for number, entry in enumerate(ids)}
        rows.sort(key=lambda row: position[int(row[0])])
        return self._full_frame(rows, wanted)

    def export(
        self,
        *,
        accounts: Collection[str] | None = None,
        projects: Collection[str | None] | None = None,
        classes: Collection[str] | None = None,
        statuses: Collection[str] | None = None,
        domains: Collection[str] | None = None,
        start: dt.date | None = None,
        end: dt.date | None = None,
        chunk: int = EXPORT_CHUNK,
    ) -> Iterator[pd.DataFrame]:
        """Every attempt that passes the filters in full, oldest (lowest id) first, as frames of ``chunk`` rows."""
        if not self.store.exists or self._last_id == 0:
            return
        where = self._where(accounts, projects, classes, statuses, domains, start, end)
        wanted = _wanted(None)
        after = 0
        while True:
            query = (
                select(*(_STORE_COLUMNS[name] for name in wanted))
                .where(*where, OutboxRow.id > after)
                .order_by(OutboxRow.id)
                .limit(chunk)
            )
            with self.store.session() as session:
                rows = _fetch(session, query)
            if not rows:
                return
            after = int(rows[-1][0])
            yield self._full_frame(rows, wanted)

    def _full_frame(self, rows: list[tuple[Any, ...]], wanted: list[str]) -> pd.DataFrame:
        raw = _cut(rows, wanted)
        raw["final"] = pd.Series(~np.isin(raw["id"].to_numpy(dtype=np.int64), self._retried))
        return _frame_of(raw, len(rows), None)

    # -- the database's side ----------------------------------------------------------------------

    def _visible_only(self) -> list[ColumnElement[bool]]:
        conditions = [_logged_by(OutboxRow, self._last_id)]
        if self._visible is not None:
            conditions.append(OutboxRow.account.in_(self._visible))
        return conditions

    def _chosen_accounts(self, accounts: Collection[str] | None) -> list[str]:
        if accounts is None:
            return list(self._accounts)
        chosen = {address.lower() for address in accounts}
        return [address for address in self._accounts if address in chosen]

    def _spellings_of(self, domains: Collection[str] | None) -> list[str] | None:
        """How the first To addresses write these domains (None: any domain, or none)."""
        if domains is None:
            return None
        return sorted({spelling for domain in domains for spelling in self._counted.spellings.get(domain.lower(), [])})

    def _where(
        self,
        accounts: Collection[str] | None,
        projects: Collection[str | None] | None,
        classes: Collection[str] | None,
        statuses: Collection[str] | None,
        domains: Collection[str] | None,
        start: dt.date | None,
        end: dt.date | None,
        *,
        by_domain_index: bool = True,
    ) -> list[ColumnElement[bool]]:
        """The filters as SQL conditions, with the frame's meaning (see :func:`filter_frame`); without
        ``by_domain_index``, SQLite is kept from reading the attempts by the index on the recipient domain."""
        conditions = self._visible_only()
        if accounts is not None:
            conditions.append(OutboxRow.account.in_(self._chosen_accounts(accounts)))
        if projects is not None:
            conditions.append(_project_among(OutboxRow.project, projects))
        if statuses is not None:
            conditions.append(OutboxRow.status.in_([status for status in statuses if status in STATUSES]))
        if classes is not None:
            # The frame's class: an undelivered attempt's, `unknown` when it has none that this release knows.
            known = case(
                (OutboxRow.error_class.in_(CLASSES), OutboxRow.error_class), else_=literal_column(f"'{UNKNOWN}'")
            )
            conditions += [OutboxRow.status.in_(UNDELIVERED), known.in_(sorted(classes))]
        spellings = self._spellings_of(domains)
        if spellings is not None:
            written = self._recipient_domain()
            if not by_domain_index and self.store.engine.dialect.name == "sqlite":
                written = UnaryExpression(written, operator=custom_op("+"), type_=Text())  # no index for "+expr"
            conditions.append(written.in_(spellings))
        if start is not None:
            conditions.append(OutboxRow.created_at >= _day_start(start, self.timezone))
        if end is not None:
            conditions.append(OutboxRow.created_at < _day_start(end + dt.timedelta(days=1), self.timezone))
        return conditions

    def _recipient_domain(self, table: Any = OutboxRow) -> ColumnElement[str]:
        """The first To address's domain as written (the indexed expression on SQLite)."""
        return _written_domain(table, self.store.engine.dialect.name)

    def _read_rest(self, session: Session) -> pd.DataFrame:
        """Every attempt that was not sent or was retried, as a frame of the summaries' columns and the id."""
        names = ["id", "time", "account", "project", "status", "class", "to"]
        columns = [_STORED_LABELS.get(name, _STORE_COLUMNS[name]) for name in names]
        # The status as a literal: SQLite reads the index of the attempts not sent only for the same condition.
        not_sent = OutboxRow.status != literal_column(f"'{OutboxStatus.SENT.value}'")
        unsent = select(*columns).where(not_sent, *self._visible_only())
        # Sent, and then sent again (`outbox resend`): not a mail's last attempt.
        resent = select(*columns).where(
            OutboxRow.status == OutboxStatus.SENT.value,
            OutboxRow.id.in_(_retried_ids(self._last_id)),
            *self._visible_only(),
        )
        # In no order: ordered by id, SQLite would read the table rather than the index of the attempts not sent.
        rows = _fetch(session, unsent)
        if len(self._retried):
            rows += _fetch(session, resent)
        raw = _cut(rows, names)
        raw["final"] = pd.Series(~np.isin(raw["id"].to_numpy(dtype=np.int64), self._retried))
        return _frame_of(raw, len(rows), (*SUMMARY_COLUMNS, "id"))

    def _domains_in(self, session: Session) -> tuple[dict[str, list[str]], dict[str, npt.NDArray[np.int64]]]:
        """The recipient domains: how the first To addresses write each, and how many attempts each has per
        account (in the order of the accounts)."""
        spellings = _spellings_in(session)
        if not spellings:
            return {}, {}
        listed = values(values_column("spelling", Text), name="listed").data([(text,) for text in spellings]).cte()
        senders = values(values_column("account", String), name="senders").data([(a,) for a in self._accounts])
        account = senders.cte("senders").c.account
        attempt = aliased(OutboxRow)
        conditions = [
            self._recipient_domain(attempt) == listed.c.spelling,
            attempt.account == account,
            _logged_by(attempt, self._last_id),
        ]
        count = select(func.count()).select_from(attempt).where(*conditions).scalar_subquery()
        pairs = listed.join(account.table, true())
        counted = _fetch(session, select(listed.c.spelling, account, count).select_from(pairs))
        domain_of = dict(zip(spellings, _domains_of_tails(pa.array(spellings, type=pa.large_string())), strict=True))
        position = {address: number for number, address in enumerate(self._accounts)}
        by_domain: dict[str, list[str]] = {}
        attempts: dict[str, npt.NDArray[np.int64]] = {}
        for spelling in spellings:
            domain = domain_of[spelling]
            if isinstance(domain, str):
                by_domain.setdefault(domain, []).append(spelling)
                attempts.setdefault(domain, np.zeros(len(self._accounts), dtype=np.int64))
        for spelling, address, number in counted:
            domain = domain_of[spelling]
            if isinstance(domain, str):
                attempts[domain][position[address]] += int(number)
        return by_domain, attempts

    def _attempts_per_day(
        self,
        session: Session,
        accounts: list[str],
        projects: Collection[str | None] | None,
        spellings: list[str] | None,
        first: dt.date,
        last: dt.date,
    ) -> npt.NDArray[np.int64]:
        """All attempts (of any status) per account (a row each, in the order given) and calendar day (a column each,
        ``first`` to ``last``) of the projects and domain spellings given (None: any); a range of an index each."""
        length = (last - first).days + 1
        starts = [_day_start(first + dt.timedelta(days=number), self.timezone) for number in range(length + 1)]
        moment = DateTime(timezone=True)
        spans = values(
            values_column("number", Integer),
            values_column("since", moment),
            values_column("until", moment),
            name="spans",
        ).data([(number, _as_utc(starts[number]), _as_utc(starts[number + 1])) for number in range(length)])
        bounds = spans.cte("spans")
        senders = values(values_column("account", String), name="senders").data([(address,) for address in accounts])
        account = senders.cte("senders").c.account
        attempt = aliased(OutboxRow)
        conditions = [
            attempt.account == account,
            attempt.created_at >= bounds.c.since,
            attempt.created_at < bounds.c.until,
            _logged_by(attempt, self._last_id),
        ]
        keys: list[Any] = [account, bounds.c.number]
        pairs: Any = account.table.join(bounds, true())
        if spellings is not None:
            written = values(values_column("spelling", Text), name="written").data([(text,) for text in spellings])
            spelling = written.cte("written").c.spelling
            conditions.append(self._recipient_domain(attempt) == spelling)
            pairs = pairs.join(spelling.table, true())
            # The index on the domain holds the project before the time: a range of time needs the project named.
            projects = self._every_project() if projects is None else projects
        # A count per stored value of the projects: an equality each, which the index on account, project and time
        # answers with a range (one condition for several values would not).
        counts = [
            select(func.count()).select_from(attempt).where(*conditions, condition).scalar_subquery()
            for condition in _project_conditions(attempt.project, projects)
        ]
        rows = _fetch(session, select(*keys, sum(counts[1:], counts[0])).select_from(pairs))
        totals = np.zeros((len(accounts), length), dtype=np.int64)
        position = {name: index for index, name in enumerate(accounts)}
        for name, number, attempts in rows:  # a row per account, day (and project, spelling): a few thousand
            totals[position[name], number] += attempts
        return totals

    def _attempts_per_domain(
        self,
        session: Session,
        domains: list[str],
        accounts: list[str],
        projects: Collection[str | None] | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
    ) -> dict[str, int]:
        """All attempts (of any status) per domain of the accounts, projects (None: any) and time given."""
        spellings = [(spelling, domain) for domain in domains for spelling in self._counted.spellings.get(domain, [])]
        if not spellings or not accounts:
            return dict.fromkeys(domains, 0)
        written = values(values_column("spelling", Text), name="written").data([(text,) for text, _ in spellings])
        spelling = written.cte("written").c.spelling
        senders = values(values_column("account", String), name="senders").data([(address,) for address in accounts])
        account = senders.cte("senders").c.account
        attempt = aliased(OutboxRow)
        conditions = [
            self._recipient_domain(attempt) == spelling,
            attempt.account == account,
            _logged_by(attempt, self._last_id),
        ]
        if since is not None:
            conditions.append(attempt.created_at >= _as_utc(since))
        if until is not None:
            conditions.append(attempt.created_at < _as_utc(until))
        if projects is None and (since is not None or until is not None):
            # The index on the domain holds the project before the time: a range of time needs the project named.
            projects = self._every_project()
        # A count per stored value of the projects: an equality each, which the index answers with a range.
        counts = [
            select(func.count()).select_from(attempt).where(*conditions, condition).scalar_subquery()
            for condition in _project_conditions(attempt.project, projects)
        ]
        pairs = spelling.table.join(account.table, true())
        rows = _fetch(session, select(spelling, sum(counts[1:], counts[0])).select_from(pairs))
        domain_of = dict(spellings)
        attempts = dict.fromkeys(domains, 0)
        for text, number in rows:
            attempts[domain_of[text]] += int(number)
        return attempts


def _logged_by(table: Any, last_id: int) -> ColumnElement[bool]:
    """The attempts logged up to ``last_id``. Its id behind a unary plus, which keeps the database from reading
    the table in the order of its ids for this bound (every row passes it) instead of by a better index."""
    return UnaryExpression(table.id, operator=custom_op("+"), type_=Integer()) <= last_id


def _project_conditions(column: Any, projects: Collection[str | None] | None) -> list[ColumnElement[bool]]:
    """A condition per stored value of the projects a filter names (None: any project): no project is stored as
    NULL or as an empty text."""
    if projects is None:
        return [true()]
    named = sorted({project for project in projects if project})
    conditions = [column == literal_column(_quoted_sql(project)) for project in named]
    if None in projects or "" in projects:
        conditions += [column.is_(None), column == literal_column("''")]
    return conditions or [false()]


def _quoted_sql(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _project_among(column: Any, projects: Collection[str | None]) -> ColumnElement[bool]:
    named = sorted({project for project in projects if project})
    condition: ColumnElement[bool] = column.in_(named)
    if None in projects or "" in projects:
        condition = or_(condition, column.is_(None), column == "")
    return condition


def _per_account_and_day(
    rest: pd.DataFrame, accounts: list[str], day_numbers: npt.NDArray[np.int64], timezone: str
) -> npt.NDArray[np.int64]:
    """The rest's attempts per account (a row each, in the order given) and day (a column each)."""
    counts = np.zeros((len(accounts), len(day_numbers)), dtype=np.int64)
    if not len(rest) or not len(day_numbers) or not accounts:
        return counts
    position = pd.Index(accounts).get_indexer(rest["account"].astype(object))
    days = _local_days(rest["time"], timezone) - day_numbers[0]
    inside = (position >= 0) & (days >= 0) & (days < len(day_numbers)) & rest["time"].notna().to_numpy(dtype=bool)
    np.add.at(counts, (position[inside], days[inside]), 1)
    return counts


def _with_sent(table: pd.DataFrame, key: str, sent: pd.Series) -> pd.DataFrame:
    """A tally of the rest (its sent column: none, the rest has no final sent attempt) with the sent mails counted
    in the database, per name; a name of either side."""
    failed = pd.Series(table["failed"].to_numpy(dtype=np.int64), index=pd.Index(table[key].astype(object)))
    names = sorted(set(failed.index) | set(sent.index))
    sent_counts = sent.reindex(names, fill_value=0).to_numpy(dtype=np.int64)
    return _tally_table(key, names, sent_counts, failed.reindex(names, fill_value=0).to_numpy(dtype=np.int64))


def _trimmed(days: pd.DataFrame, *, leading: bool, trailing: bool) -> pd.DataFrame:
    """The day table without the days before its first (``leading``) and after its last (``trailing``) mail."""
    mails = days["mails"].to_numpy()
    if not (leading or trailing):
        return days
    counted = np.flatnonzero(mails > 0)
    if not len(counted):
        return days.iloc[0:0].reset_index(drop=True)
    first = counted[0] if leading else 0
    last = counted[-1] if trailing else len(days) - 1
    return days.iloc[first : last + 1].reset_index(drop=True)
