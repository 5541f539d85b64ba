"""Batch files for `mailops send --batch`: one mail per row of a CSV or JSON Lines file.

Columns (CSV header or JSON keys): `to` (required), `cc`, `bcc` (several addresses
separated by `;` or `,`), `subject` (required), `body` (required), `html` (true/false),
`project`, `attach` (paths separated by `;`, relative to the batch file, and inside its
directory). Every other column is a merge field: `{name}` in the subject or body becomes
the row's value, HTML-escaped in an HTML body (`{{` and `}}` write braces). A bad row is
refused with its line number, and nothing of the batch is sent.
"""

from __future__ import annotations

import csv
import html as html_escaping
import io
import json
import re
from pathlib import Path
from typing import Any

from mailops.compose import SendRequest
from mailops.errors import MailopsError, printable
from mailops.fileio import FileReadError, read_text
from mailops.spec.models import control_in_line, control_in_text
from mailops.spec.yamldoc import describe_character

MAX_BATCH_BYTES = 256 * 1024 * 1024
KNOWN = frozenset({"to", "cc", "bcc", "subject", "body", "html", "project", "attach"})
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_SPLIT = re.compile(r"[;,]")


class BatchError(MailopsError):
    """The batch file cannot be sent as it is; nothing of it was sent."""


def read_batch(path: Path) -> list[SendRequest]:
    """The mails of a batch file, or :class:`BatchError` naming the file and line."""
    try:
        text = read_text(path, limit=MAX_BATCH_BYTES, what="batch file")
    except FileReadError as exc:
        raise BatchError(str(exc)) from None
    rows = _jsonl(path, text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv(path, text)
    if not rows:
        raise BatchError(f"{path}: no mails in the batch")
    return [_request(path, line, row) for line, row in rows]


class _Spreadsheet(csv.excel):
    """CSV as spreadsheets write it: fields quoted with `"` (doubled inside), with the separator found in the file."""


def _csv(path: Path, text: str) -> list[tuple[int, dict[str, str]]]:
    dialect = _Spreadsheet()
    try:
        # Only the separator is taken from the sniffer: it takes a field in `'…'` for quoting, and the quotes
        # of a subject such as 'Sommer-Sale' 20% would be lost.
        dialect.delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t").delimiter
    except csv.Error:
        pass
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    rows = []
    try:
        for row in reader:
            if None in row:
                raise BatchError(f"{path}:{reader.line_num}: more values than the header has columns")
            rows.append((reader.line_num, {str(key).strip().lower(): value or "" for key, value in row.items()}))
    except csv.Error as exc:
        raise BatchError(f"{path}:{reader.line_num}: {exc}") from None
    return rows


def _jsonl(path: Path, text: str) -> list[tuple[int, dict[str, str]]]:
    rows = []
    # Lines end at "\n" only: JSON text may hold U+2028 and the like, which splitlines() would cut at.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BatchError(f"{path}:{line}: not a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise BatchError(f"{path}:{line}: expected a JSON object per line")
        row: dict[str, str] = {}
        for key, item in value.items():
            name = key.lower()
            if name in row:
                raise BatchError(f"{path}:{line}: the key {key!r} is given twice (keys are case-insensitive)")
            row[name] = _text(path, line, key, item)
        rows.append((line, row))
    return rows


def _text(path: Path, line: int, key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ";".join(value)
    raise BatchError(f"{path}:{line}: {key!r} must be a text, a number or a list of texts")


def _request(path: Path, line: int, row: dict[str, str]) -> SendRequest:
    for required in ("to", "subject", "body"):
        if not row.get(required, "").strip():
            raise BatchError(f"{path}:{line}: `{required}` is empty")
    fields = {key: value for key, value in row.items() if key not in KNOWN}
    html = row.get("html", "").strip().lower()
    if html not in ("", "true", "false", "yes", "no", "1", "0"):
        raise BatchError(f"{path}:{line}: `html` is {html!r}; write true or false")
    is_html = html in ("true", "yes", "1")
    subject = _merge(path, line, "subject", row["subject"], fields)
    body = _merge(path, line, "body", row["body"], fields, escape=is_html)
    # Told here, with the batch's line: the mail would refuse them too, but not say which row holds them.
    for name, bad in (
        ("subject", control_in_line(subject)),
        ("body", control_in_text(body.replace("\r\n", "\n").replace("\r", "\n"))),
    ):
        if bad is not None:
            raise BatchError(
                f"{path}:{line}: `{name}` has the control character {describe_character(bad.group())}, which a "
                "mail may not carry"
            )
    return SendRequest(
        to=_addresses(row.get("to", "")),
        cc=_addresses(row.get("cc", "")),
        bcc=_addresses(row.get("bcc", "")),
        subject=subject,
        body=body,
        html=is_html,
        attachments=tuple(_attachment(path, line, item) for item in row.get("attach", "").split(";") if item.strip()),
        project=row.get("project", "").strip() or None,
    )


def _addresses(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in _SPLIT.split(value) if item.strip())


def _attachment(path: Path, line: int, item: str) -> Path:
    """An attachment of a row: a path relative to the batch file, that stays inside its directory (a
    batch file from elsewhere must not mail out the sender's other files)."""
    relative = Path(item.strip())
    folder = path.parent.resolve()
    if relative.is_absolute() or not (folder / relative).resolve().is_relative_to(folder):
        raise BatchError(
            f"{path}:{line}: the attachment {printable(item.strip())!r} is outside the batch file's directory; "
            "give a path relative to it, within it"
        )
    return path.parent / relative


def _merge(path: Path, line: int, column: str, template: str, fields: dict[str, str], *, escape: bool = False) -> str:
    """``{name}`` replaced by the row's value (HTML-escaped for an HTML body); no attribute or index lookups,
    unlike str.format."""

    def value(match: re.Match[str]) -> str:
        whole, name = match.group(0), match.group(1)
        if whole in ("{{", "}}"):
            return whole[0]
        key = (name or "").strip().lower()
        if key not in fields:
            raise BatchError(f"{path}:{line}: `{column}` uses {{{name}}}, which is no column of the batch")
        return html_escaping.escape(fields[key]) if escape else fields[key]

    return _FIELD.sub(value, template)
