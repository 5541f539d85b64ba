"""`mailops outbox export`: the outbox log as CSV or Parquet, written a chunk at a time.

The log may not fit in memory (a million entries with their rows as objects took gigabytes): it is read
in chunks (:meth:`mailops.state.outbox.Outbox.chunks`) and written piece by piece into the temporary
file of an atomic write, so that a failure or a kill leaves the old file whole. A CSV is for
spreadsheets too (text that would run as a formula is marked, see ``spreadsheet_csv``); a Parquet file
has one schema for every chunk, with pandas' description of its columns. ``load_export`` in
:mod:`mailops.outbox.analysis` reads both back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mailops.fileio import Writer, atomic_write_from
from mailops.state.outbox import Outbox, OutboxEntry

if TYPE_CHECKING:
    import pandas as pd

    from mailops.state.store import StateStore

EXPORT_CHUNK = 10_000  # entries read, and written, at a time


def write_export(
    store: StateStore,
    out: Path,
    *,
    form: str,
    accounts: Collection[str] | None = None,
    since: dt.datetime | None = None,
) -> int:
    """Write the attempts of ``accounts`` (None: all) since ``since`` to ``out`` as ``form`` (csv or parquet), in
    the order they were logged; how many. ValueError for another form."""
    if form not in ("csv", "parquet"):
        raise ValueError(f"no export form {form!r}: csv or parquet")
    written = 0

    def frames() -> Iterator[pd.DataFrame]:
        nonlocal written
        visible = None if accounts is None else set(accounts)
        for columns in Outbox(store).chunks(accounts=visible, since=since, size=EXPORT_CHUNK):
            written += len(columns["id"])
            yield _export_frame(columns)

    atomic_write_from(out, _csv_writer(frames()) if form == "csv" else _parquet_writer(frames()))
    return written


def _export_frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """The columns of a chunk of :meth:`Outbox.chunks` as the export's rows."""
    import pandas as pd

    columns = dict(columns)
    for key in ("to", "cc", "bcc"):
        columns[key] = ["; ".join(addresses) for addresses in columns[key]]
    frame = pd.DataFrame(columns, columns=_public_columns())
    for column in ("retry_of", "smtp_code"):  # numbers, some missing: not floats (`552.0`)
        frame[column] = frame[column].astype("Int64")
    return frame


def _csv_writer(frames: Iterator[pd.DataFrame]) -> Writer:
    from mailops.outbox.analysis import spreadsheet_csv

    def write(handle: BinaryIO) -> None:
        header = True
        for frame in frames:  # opened in spreadsheets too: text that would run as a formula is marked as text
            handle.write(spreadsheet_csv(frame, header=header).encode("utf-8"))
            header = False
        if header:  # no entry: the header alone
            handle.write(spreadsheet_csv(_export_frame(dict.fromkeys(_public_columns(), []))).encode("utf-8"))

    return write


def _parquet_writer(frames: Iterator[pd.DataFrame]) -> Writer:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # One schema for every chunk: a chunk where a column happens to be empty must not make it untyped.
    times, numbers = pa.timestamp("us", tz="UTC"), pa.int64()
    typed = {"id": numbers, "attempt": numbers, "retry_of": numbers, "smtp_code": numbers, "has_raw": pa.bool_()}
    typed |= {"created_at": times, "updated_at": times}
    schema = pa.schema([(name, typed.get(name, pa.string())) for name in _public_columns()])
    # With pandas' description of the columns, which pandas reads back by (Int64 stays Int64, not float).
    empty = _export_frame(dict.fromkeys(_public_columns(), []))
    schema = schema.with_metadata(pa.Schema.from_pandas(empty, preserve_index=False).metadata)

    def write(handle: BinaryIO) -> None:
        with pq.ParquetWriter(handle, schema) as writer:
            for frame in frames:  # a row group per chunk
                writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))

    return write


def _public_columns() -> list[str]:
    return [name for name in OutboxEntry.__dataclass_fields__ if name not in ("has_raw", "owner")]
