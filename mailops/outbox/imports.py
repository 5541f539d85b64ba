"""`mailops outbox import`: another system's exported outbox log into the state store's outbox.

Each row becomes a finished attempt marked as imported, with its error classified and
the remedy attached, so that `outbox list` and the analysis notebook see one log.
Importing the same file again adds nothing: a row is known by a digest of its fields
(and how often the same row came before it in the file, since two equal rows are two mails).
The file is read and checked whole before anything is stored; the rows then go in as one
transaction, a chunk at a time, so that memory stays with the file's frame, not with a
million attempts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mailops.errors import quoted
from mailops.outbox.classify import OutboxLogError, SeedLog, read_located_seed_log, remedy
from mailops.runtime.headers import address_pairs
from mailops.state.outbox import ImportedAttempt, Outbox, OutboxStatus

if TYPE_CHECKING:
    from mailops.state.store import StateStore

_FIELDS = ("time", "from", "to", "cc", "bcc", "subject", "error")
# The zone a time written with its offset is keyed in: a fixed one, so that its key does not depend on
# --timezone; Europe/Berlin, the default zone in which such keys were first made, so they stay valid.
_KEY_ZONE = "Europe/Berlin"


def import_seed_log(store: StateStore, log: SeedLog) -> int:
    """Add the attempts of the log that :func:`read_import` read to the outbox log; how many were new."""
    return Outbox(store).record_imported(imported_attempts(log))


def read_import(path: Path | str, *, timezone: str = "Europe/Berlin") -> SeedLog:
    """The log at ``path`` (see :func:`mailops.outbox.classify.read_seed_log` for its form), read whole and
    checked before anything is stored, so that a file that cannot be read changes nothing."""
    from mailops.settings import known_zone

    try:
        known_zone(timezone)
    except ValueError:
        raise OutboxLogError(f"unknown time zone {quoted(timezone)} (an IANA name such as Europe/Berlin)") from None
    log = read_located_seed_log(path, timezone=timezone)
    undated = log.frame["time"].isna().to_numpy()
    if undated.any():  # the outbox keeps when each attempt was made: no time is made up for one
        line = int(log.lines[undated.argmax()])
        raise OutboxLogError(
            f"outbox log {path}:{line}: Datum: no time; an imported attempt needs when it was sent "
            "(the seed's export has a Datum column)"
        )
    return log


def imported_attempts(log: SeedLog) -> Iterator[ImportedAttempt]:
    """The rows of a classified seed log as imported attempts, one at a time.

    A row is known by its fields as the file writes them: a time without an offset by its
    wall-clock time as written, so that the same file imported with another --timezone adds
    nothing; a time with an offset by the wall-clock time of that instant in a fixed zone.
    The columns are converted a chunk of rows at a time: rows go through Python, not one by one
    through pandas, and no more of them than a chunk at once.
    """
    seen: Counter[bytes] = Counter()
    for start in range(0, len(log.frame), _CHUNK_ROWS):
        frame = log.frame.iloc[start : start + _CHUNK_ROWS]
        has_offset = log.has_offset[start : start + _CHUNK_ROWS]
        times = frame["time"]
        written = times.dt.tz_convert(log.timezone).dt.strftime(_KEY_TIME)
        if has_offset.any():
            written = written.where(~has_offset, times.dt.tz_convert(_KEY_ZONE).dt.strftime(_KEY_TIME))
        rows = zip(
            _texts(written),
            *(_texts(frame[name]) for name in ("from", "to", "cc", "bcc", "subject", "error")),
            times.dt.to_pydatetime().tolist(),  # every row has one (read_import)
            frame["status"].to_numpy() == OutboxStatus.FAILED.value,
            _texts(frame["class"]),
            frame["smtp_code"].astype("object").where(frame["smtp_code"].notna(), None).tolist(),
            _texts(frame["enhanced_code"]),
            strict=True,
        )
        for time, sender, to, cc, bcc, subject, error, created_at, failed, error_class, smtp_code, enhanced in rows:
            fields = [time, sender, to, cc, bcc, subject, error]
            digest = hashlib.sha256("\x1f".join(fields).encode("utf-8", "surrogatepass")).digest()[:20]
            seen[digest] += 1
            kept_class = (error_class or None) if failed else None
            yield ImportedAttempt(
                key=f"import:{digest.hex()}:{seen[digest]}",
                created_at=created_at,
                sender=(_addresses(sender) or [""])[0],
                to=_addresses(to),
                cc=_addresses(cc),
                bcc=_addresses(bcc),
                subject=subject,
                status=OutboxStatus.FAILED if failed else OutboxStatus.SENT,
                reply=error or None,
                smtp_code=None if smtp_code is None else int(smtp_code),
                enhanced_code=enhanced or None,
                error_class=kept_class,
                remedy=remedy(kept_class).long if kept_class else None,
            )


_CHUNK_ROWS = 10_000
_KEY_TIME = "%Y-%m-%d %H:%M:%S"


def _texts(values: pd.Series) -> list[str]:
    """``values`` as texts, "" for a missing one."""
    return [
        "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
        for value in values.astype("object").tolist()
    ]


def _addresses(text: str) -> list[str]:
    """The addresses of a field such as ``Anna <a@example.com>; b@example.com`` (commas work too)."""
    if not text.strip():
        return []
    return [address for _name, address in address_pairs([text.replace(";", ",")], limit=None)]
