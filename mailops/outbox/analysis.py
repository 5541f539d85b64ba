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
of loading a million rows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zoneinfo
from collections.abc import Collection, Iterator, Mapping
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
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    true,
    values,
)
from sqlalchemy import column as values_column
from sqlalchemy.orm import Session, aliased

from mailops.errors import MailopsError, quoted
from mailops.fileio import FileReadError, NotUtf8Error, decode_utf8, read_bytes
from mailops.outbox.classify import CLASSES, MAX_LOG_BYTES, UNKNOWN, OutboxLogError, read_seed_log, remedy
from mailops.state.outbox import IMPORTED, OutboxStatus
from mailops.state.tables import OutboxRow

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
    a category: cut at the end of the domain, lower-cased, NA when empty."""
    encoded = pc.dictionary_encode(tails)
    domains = pc.utf8_rtrim(pc.utf8_lower(pc.replace_substring_regex(encoded.dictionary, _DOMAIN_END, "")), ".")
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    names = pd.Series(pd.array(domains, dtype=STRING))
    return _merged_category(codes, names.where(names.str.len() > 0))


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
    attempts (by id). ``final`` is decided over the whole store (see "Mails, not attempts"). The
    whole messages kept for `outbox resend` are never read.
    """
    if not store.exists:
        return empty_frame()
    wanted = _wanted(columns)
    query = select(*(_STORE_COLUMNS[name] for name in wanted), _final_in_store().label("final")).order_by(OutboxRow.id)
    query = _bounded(query, accounts, since, until)
    if statuses is not None:
        query = query.where(OutboxRow.status.in_(sorted(statuses)))
    if newest is not None:
        query = query.order_by(None).order_by(OutboxRow.id.desc()).limit(newest)
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
    result = session.connection().execute(query)
    rows = list(result.cursor.fetchall())
    result.close()
    return rows


def _cut(rows: list[tuple[Any, ...]], names: list[str]) -> dict[str, pd.Series]:
    """The rows' values by column name, as untyped (object) columns."""
    # One object array of the tuples, cut into columns: zip(*rows) would build a tuple per column in Python.
    table = np.array(rows, dtype=object).reshape(len(rows), len(names))
    # dtype=object: each column is typed once, in _assemble, not first guessed by pandas.
    return {name: pd.Series(table[:, position], dtype=object) for position, name in enumerate(names)}


def _frame_of(raw: dict[str, Any], length: int, columns: Collection[str] | None) -> pd.DataFrame:
    """The frame of the state store's columns (:data:`_STORE_COLUMNS`, by the frame's names) as read."""
    for name, categories in (("status", STATUSES), ("class", CLASSES)):
        if name in raw:
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
        table = _csv(data, path)
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
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
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
            # Only domains with a failed mail are shown: without one, the scan for the domains is spared.
            if (now & failed & rest["recipient_domain"].notna().to_numpy()).any():
                tails, tail_totals = _attempts_by_domain(session, days[0], days[-1], accounts)
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
    session: Session, since: dt.datetime, until: dt.datetime, accounts: Collection[str] | None
) -> tuple[list[str | None], npt.NDArray[np.int64]]:
    """How many attempts there are per text after the first ``@`` of their To field (None: no ``@``), the text from
    which :func:`recipient_domains` takes the domain. One scan of the table; the distinct texts are few where, as
    usual, a To field holds one address."""
    to = cast(OutboxRow.to_addresses, Text)
    # No portable SQL finds a character in a text: PostgreSQL has strpos, SQLite (and most others) instr.
    at = func.strpos(to, "@") if session.get_bind().dialect.name == "postgresql" else func.instr(to, "@")
    tail = func.substr(to, func.nullif(at, 0) + 1).label("tail")  # no "@": position NULL, and so the tail
    # Grouped by the result's name: the expression spelt out again would be computed twice per row.
    query = _bounded(select(tail, func.count()).group_by(literal_column("tail")), accounts, since, until)
    rows = _fetch(session, query)
    return [row[0] for row in rows], np.array([row[1] for row in rows], dtype=np.int64)


def _rest(
    session: Session, spans: list[tuple[dt.datetime, dt.datetime]], accounts: Collection[str] | None
) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """Every attempt in the spans that was not sent or was retried, as a frame of the summaries' columns, and the
    number of the span each is in (-1: between them)."""
    retry = aliased(OutboxRow)
    retried = select(retry.retry_of).where(retry.retry_of.is_not(None)).cte("retried")  # one scan, used twice
    sent = OutboxStatus.SENT.value
    names = ["id", "account", "status", "class", "to"]
    in_time = sorted((since, until, number) for number, (since, until) in enumerate(spans))
    query = select(
        *(_STORE_COLUMNS[name] for name in names),
        OutboxRow.id.not_in(select(retried.c.retry_of)).label("final"),
        _span_number(OutboxRow.created_at, [(_as_utc(since), _as_utc(until), n) for since, until, n in in_time]),
    ).where(
        # Two ranges of the index on status, where `status != 'sent'` would read the whole table.
        or_(OutboxRow.status < sent, OutboxRow.status > sent, OutboxRow.id.in_(select(retried.c.retry_of)))
    )
    query = _bounded(query, accounts, in_time[0][0], max(until for _, until, _ in in_time))
    rows = _fetch(session, query)
    raw = _cut(rows, [*names, "final", "span"])
    span = raw.pop("span").to_numpy(dtype=np.int64)
    return _frame_of(raw, len(rows), SUMMARY_COLUMNS), span


def _span_number(time: Any, spans: list[tuple[dt.datetime, dt.datetime, int]]) -> ColumnElement[int]:
    """The number of the span (since, until, number; in time order, apart) that holds ``time``, -1 for none: a
    binary search in SQL, a few comparisons per row rather than two per span."""
    if len(spans) == 1:
        since, until, number = spans[0]
        return case((and_(time >= since, time < until), number), else_=-1)
    middle = len(spans) // 2
    return case((time < spans[middle][0], _span_number(time, spans[:middle])), else_=_span_number(time, spans[middle:]))


def _latest_failures(session: Session, rest: pd.DataFrame, now: npt.NDArray[np.bool_], latest: int) -> pd.DataFrame:
    """The ``latest`` newest failed attempts of the period in full, oldest first, as :func:`load_store` gives them:
    the rest holds every failed attempt, and whether it was its mail's last."""
    failing = rest.loc[now & (rest["status"] == OutboxStatus.FAILED.value).to_numpy(), ["id", "final"]]
    chosen = failing.sort_values("id").tail(latest)
    wanted = _wanted(None)
    query = select(*(_STORE_COLUMNS[name] for name in wanted)).where(OutboxRow.id.in_(chosen["id"].tolist()))
    rows = _fetch(session, query.order_by(OutboxRow.id))
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
