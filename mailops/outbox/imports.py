"""`mailops outbox import`: another system's exported outbox log into the state store's outbox.

Each row becomes a finished attempt marked as imported, with its error classified and
the remedy attached, so that `outbox list` and the analysis notebook see one log.
Importing the same file again adds nothing: a row is known by a digest of its fields
(and how often the same row came before it in the file, since two equal rows are two mails).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mailops.errors import quoted
from mailops.outbox.classify import OutboxLogError, read_seed_log, remedy
from mailops.state.accounts import utcnow
from mailops.state.outbox import ImportedAttempt, Outbox, OutboxStatus

if TYPE_CHECKING:
    from mailops.state.store import StateStore

_FIELDS = ("time", "from", "to", "cc", "bcc", "subject", "error")


def import_seed_log(store: StateStore, attempts: list[ImportedAttempt]) -> int:
    """Add the attempts of :func:`read_import` to the outbox log; how many were new."""
    return Outbox(store).record_imported(attempts)


def read_import(path: Path | str, *, timezone: str = "Europe/Berlin") -> list[ImportedAttempt]:
    """The log at ``path`` (see :func:`read_seed_log` for its form) as imported attempts; read whole
    before anything is stored, so that a file that cannot be read changes nothing."""
    from mailops.settings import known_zone

    try:
        known_zone(timezone)
    except ValueError:
        raise OutboxLogError(f"unknown time zone {quoted(timezone)} (an IANA name such as Europe/Berlin)") from None
    return imported_attempts(read_seed_log(path, timezone=timezone), timezone=timezone)


def imported_attempts(frame: pd.DataFrame, *, timezone: str = "Europe/Berlin") -> list[ImportedAttempt]:
    """The rows of a classified seed log (:func:`read_seed_log`, read in ``timezone``) as imported attempts.

    A row is known by its fields as the file writes them: its time is the wall-clock time
    in ``timezone``, so that the same file imported with another --timezone adds nothing.
    """
    now = utcnow()
    seen: Counter[str] = Counter()
    attempts = []
    for row in frame.itertuples(index=False, name=None):
        values = dict(zip(frame.columns, row, strict=True))
        time = values["time"]
        values["time"] = None if pd.isna(time) else time.tz_convert(timezone).strftime("%Y-%m-%d %H:%M:%S")
        fields = [_text(values[name]) for name in _FIELDS]
        digest = hashlib.sha256("\x1f".join(fields).encode("utf-8", "surrogatepass")).hexdigest()
        seen[digest] += 1
        failed = values["status"] == OutboxStatus.FAILED.value
        error_class = _text(values["class"]) or None if failed else None
        attempts.append(
            ImportedAttempt(
                key=f"import:{digest[:40]}:{seen[digest]}",
                created_at=now if pd.isna(time) else time.to_pydatetime(),
                sender=(_addresses(values["from"]) or [""])[0],
                to=_addresses(values["to"]),
                cc=_addresses(values["cc"]),
                bcc=_addresses(values["bcc"]),
                subject=_text(values["subject"]),
                status=OutboxStatus.FAILED if failed else OutboxStatus.SENT,
                reply=_text(values["error"]) or None,
                smtp_code=None if pd.isna(values["smtp_code"]) else int(values["smtp_code"]),
                enhanced_code=_text(values["enhanced_code"]) or None,
                error_class=error_class,
                remedy=remedy(error_class).long if error_class else None,
            )
        )
    return attempts


def _text(value: object) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _addresses(value: object) -> list[str]:
    """The addresses of a field such as ``Anna <a@example.com>; b@example.com`` (commas work too)."""
    text = _text(value).replace(";", ",")
    return [address for _name, address in getaddresses([text]) if address]
