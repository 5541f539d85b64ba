"""Classifying the errors of outgoing mail, and reading the seed system's exported outbox log.

A failed mail's error text (PHPMailer's, as the seed system's "Mailausgang Log" shows it
in its ``Fehler`` column, or the live transport's server reply) gets one class name and a
:class:`Remedy`. The classes, their remedies, the patterns that recognise them and their
precedence live in ``classes.yaml`` beside this module, read once on import.

API
---
``classify_frame(frame) -> Series``
    The class of every row, as a categorical Series over :data:`CLASSES` (NA for a mail
    that did not fail). Columns: ``error`` (text; NA or blank: not failed), and optionally
    ``smtp_code`` (int), ``enhanced_code`` (text such as ``5.1.1``) and ``failure`` (the
    live transport's coarse hint, a :class:`~mailops.transport.failures.FailureClass`
    value). Codes missing from a row (or a whole column missing, as in an imported
    PHPMailer log) are taken from the error text. A row with a ``failure`` hint but no
    text is a failure too. Vectorised: pandas string methods over pyarrow strings (RE2),
    at most one pass per pattern over the failed rows still undecided (a run of classes
    that read only the text shares a first pass that finds their candidates), no Python
    per row.
``classify(error, smtp_code=None, enhanced_code=None, failure=None) -> str``
    The same function applied to a one-row frame: the live path. A row with neither an
    error text nor a hint has no class; ``classify`` refuses it with ValueError.
``remedy(class_name) -> Remedy``; :data:`CLASSES`, the names in precedence order.
``extract_codes(errors) -> DataFrame``
    The SMTP reply code and the enhanced status code an error text carries.
``temporary(frame) -> Series``; ``is_temporary(class_name, smtp_code, enhanced_code)``
    Whether a failure is worth another try: a 4xx reply (or 4.x.x enhanced code) is, a 5xx
    (5.x.x) one is not, whatever the class; without a code the class decides.
``read_seed_log(path, timezone="Europe/Berlin") -> DataFrame``
    The seed system's exported outbox log, classified.

The seed's exported log
-----------------------
A CSV file, UTF-8 with or without a byte order mark, separated by ``;`` or ``,`` (or a
tab), with a header line. The separator is the one that splits the header into the most
known column names. Accepted columns, by their header (case and surrounding spaces do
not matter; each may appear once, by either name; any other column is ignored):

==========  ===========  ====================================================
seed (ERP)  English      becomes
==========  ===========  ====================================================
Datum       date         ``time``: UTC (``datetime64[..., UTC]``); written as
                         ``dd.mm.yyyy HH:MM[:SS]``, ``dd.mm.yyyy`` or ISO 8601
                         (``2024-03-05 14:22``, ``2024-03-05T14:22:00+01:00``).
                         A time without an offset is local time in ``timezone``
                         (the seed shows its server's time: Europe/Berlin);
                         in the hour that repeats when clocks go back, the
                         earlier of the two is taken.
From        from         ``from``
To          to           ``to``
CC          cc           ``cc``
BCC         bcc          ``bcc``
Subject     subject      ``subject``
Fehler      error        ``error`` (required)
==========  ===========  ====================================================

Missing optional columns come back as NA. The frame's columns are, in order: ``time``,
``from``, ``to``, ``cc``, ``bcc``, ``subject``, ``error``, ``smtp_code`` (Int64),
``enhanced_code``, ``status`` (``failed`` when the error is not blank, else ``sent``)
and ``class``. Empty fields are NA. A file that is not a regular file, is larger than
``limit`` (256 MiB), is not UTF-8 (located by line and column), or has no error column is
refused with :class:`OutboxLogError`, naming the file; so is, located by its line, a row
with another number of fields than the header (a line cut short, or a quoted field never
closed; empty fields beyond the header's are dropped), a field longer than 131,072
characters, and a date that is none of the forms above, outside the years 1900 to 2199, or
a local time that ``timezone`` skips when its clocks go forward. Blank lines are skipped.

Patterns
--------
Every pattern runs in RE2 (vectorised, through pyarrow) and, for the benchmark's and the
tests' per-row reference, in Python's ``re``. They keep to what both read alike (see the
head of ``classes.yaml``), and the loader refuses anything else, so both give the same
class for the same text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mailops.errors import MailopsError, quoted
from mailops.fileio import FileReadError, MiB, read_text
from mailops.transport.failures import FailureClass

MAX_LOG_BYTES = 256 * MiB
FAILURE_HINT = "failure_hint"  # the place in `precedence` where the transport's hint decides
UNKNOWN = "unknown"
SHORT_LIMIT = 90
RUN_LENGTH = 3

# Pyarrow strings: the regex methods run in RE2 over the whole column (pandas' default
# `str` dtype would hand `str.extract` to Python's `re`, row by row).
TEXT = pd.ArrowDtype(pa.large_string())

# An SMTP reply code as PHPMailer and servers embed it in a text: "SMTP code: 550" (PHPMailer's
# setError), "...,553,5.1.8" (its From failure, fields joined by commas), "550 5.1.1" anywhere, "550 " at the
# start or after ". ", ": " or "; ", "address: 550 " (its recipient failures). The first (leftmost) wins; a
# number right after a colon ("smtp.example.com:465") is a port, not a reply.
CODE_PATTERN = re.compile(
    r"(?i)smtp.code: ?(?P<c1>[245][0-9][0-9])"
    r"|,(?P<c2>[245][0-9][0-9]),"
    r"|(?:^|[ \[(<\"';=])(?P<c3>[245][0-9][0-9])[ -][245]\.[0-9]{1,3}\.[0-9]{1,3}"
    r"|(?:^|[.:;] )(?P<c4>[245][0-9][0-9])[ -]"
    r"|@[^ :,;<>]+: ?(?P<c5>[245][0-9][0-9])[ -]"
)
# An enhanced status code (RFC 3463) not inside a longer dotted number: the first one wins.
ENHANCED_PATTERN = re.compile(r"(?:^|[^0-9A-Za-z.])(?P<e>[245]\.[0-9]{1,3}\.[0-9]{1,3})")
# An enhanced code given in its own column must be exactly one.
_ENHANCED_SHAPE = r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$"
# An error text is blank when it has nothing but (ASCII) white space.
CONTENT_PATTERN = re.compile("[^ \t\r\n\f\v]")


class OutboxLogError(MailopsError):
    """An exported outbox log cannot be read; the message names the file, and the line where it applies."""


class ClassTableError(ValueError):
    """``classes.yaml`` is malformed (a bug in the package, not in the user's input)."""


@dataclass(frozen=True)
class Remedy:
    """What to do about a class of failure: ``short`` for a table cell, ``long`` for the person who fixes it."""

    short: str
    long: str
    temporary: bool


@dataclass(frozen=True)
class Rule:
    """How one class is recognised (any of): ``text`` found in the error; the whole enhanced code matching
    ``enhanced``; the reply code in ``smtp`` (and then ``smtp_text`` found in the error, when given)."""

    name: str
    text: re.Pattern[str] | None = None
    enhanced: re.Pattern[str] | None = None
    smtp: frozenset[int] = frozenset()
    smtp_text: re.Pattern[str] | None = None


@dataclass(frozen=True)
class ClassTable:
    classes: tuple[str, ...]  # precedence order, `unknown` last
    remedies: Mapping[str, Remedy]
    stages: tuple[Rule | None, ...]  # precedence order without `unknown`; None: the failure hint decides
    hints: Mapping[str, str]  # failure hint -> class
    # Each run of at least RUN_LENGTH consecutive stages that look at the text only: (first stage, the stage
    # after the last, their patterns as one). One RE2 pass of it finds the rows any of them may match, so the
    # run's own patterns need to look at those rows only.
    runs: tuple[tuple[int, int, re.Pattern[str]], ...] = ()


# --- loading classes.yaml -------------------------------------------------------------------------

_CLASS_KEYS = frozenset({"temporary", "short", "long", "text", "enhanced", "smtp", "smtp_text", "failures"})


def load_table(raw: Any) -> ClassTable:
    """The class table from the parsed ``classes.yaml``, or :class:`ClassTableError` saying what is wrong."""
    if not isinstance(raw, dict) or set(raw) != {"precedence", "classes"}:
        raise ClassTableError("expected exactly the keys `precedence` and `classes`")
    precedence, classes = raw["precedence"], raw["classes"]
    if not isinstance(precedence, list) or not all(isinstance(name, str) for name in precedence):
        raise ClassTableError("`precedence` must be a list of class names")
    if not isinstance(classes, dict):
        raise ClassTableError("`classes` must map class names to their entries")
    if len(set(precedence)) != len(precedence) or precedence.count(FAILURE_HINT) != 1:
        raise ClassTableError(f"`precedence` must name each class once and `{FAILURE_HINT}` exactly once")
    names = [name for name in precedence if name != FAILURE_HINT]
    if set(names) != set(classes):
        raise ClassTableError(f"`precedence` and `classes` differ: {sorted(set(names) ^ set(classes))}")
    if names[-1] != UNKNOWN:
        raise ClassTableError(f"`{UNKNOWN}` must come last in `precedence`")
    remedies: dict[str, Remedy] = {}
    rules: dict[str, Rule] = {}
    hints: dict[str, str] = {}
    known_hints = {failure.value for failure in FailureClass}
    for name in names:
        entry = classes[name]
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not isinstance(entry, dict):
            raise ClassTableError(f"{name}: a snake_case name with a mapping of settings expected")
        if unexpected := set(entry) - _CLASS_KEYS:
            raise ClassTableError(f"{name}: unknown keys {sorted(unexpected)}")
        short, long, temporary = entry.get("short"), entry.get("long"), entry.get("temporary")
        if not isinstance(short, str) or not short or "\n" in short or len(short) > SHORT_LIMIT:
            raise ClassTableError(f"{name}: `short` must be one line of at most {SHORT_LIMIT} characters")
        if not isinstance(long, str) or not long.strip():
            raise ClassTableError(f"{name}: `long` must be text")
        if not isinstance(temporary, bool):
            raise ClassTableError(f"{name}: `temporary` must be true or false")
        remedies[name] = Remedy(short=short, long=" ".join(long.split()), temporary=temporary)
        smtp = entry.get("smtp", [])
        if not isinstance(smtp, list) or not all(type(code) is int and 200 <= code <= 599 for code in smtp):
            raise ClassTableError(f"{name}: `smtp` must be a list of reply codes")
        if "smtp_text" in entry and not smtp:
            raise ClassTableError(f"{name}: `smtp_text` needs `smtp`")
        failures = entry.get("failures", [])
        if not isinstance(failures, list) or not set(failures) <= known_hints:
            raise ClassTableError(f"{name}: `failures` must list values of FailureClass")
        for failure in failures:
            if failure in hints:
                raise ClassTableError(f"{name}: the failure hint {failure} already means {hints[failure]}")
            hints[failure] = name
        rule = Rule(
            name=name,
            text=_pattern(name, "text", entry.get("text")),
            enhanced=_pattern(name, "enhanced", entry.get("enhanced"), anchored=True),
            smtp=frozenset(smtp),
            smtp_text=_pattern(name, "smtp_text", entry.get("smtp_text")),
        )
        has_rule = bool(rule.text or rule.enhanced or rule.smtp)
        if has_rule == (name == UNKNOWN):
            raise ClassTableError(f"{name}: every class but `{UNKNOWN}` needs a rule, and `{UNKNOWN}` has none")
        rules[name] = rule
    stages = tuple(None if name == FAILURE_HINT else rules[name] for name in precedence if name != UNKNOWN)
    return ClassTable(classes=tuple(names), remedies=remedies, stages=stages, hints=hints, runs=_runs(stages))


def _runs(stages: tuple[Rule | None, ...]) -> tuple[tuple[int, int, re.Pattern[str]], ...]:
    """The runs of stages that only look at the text (see :class:`ClassTable`)."""

    def text_only(stage: Rule | None) -> bool:
        return stage is not None and stage.text is not None and stage.enhanced is None and not stage.smtp

    runs = []
    start = 0
    while start < len(stages):
        end = start
        while end < len(stages) and text_only(stages[end]):
            end += 1
        if end - start >= RUN_LENGTH:
            texts = [stage.text.pattern.removeprefix("(?i)") for stage in stages[start:end] if stage and stage.text]
            runs.append((start, end, re.compile("(?i)" + "|".join(f"(?:{text})" for text in texts))))
        start = max(end, start + 1)
    return tuple(runs)


def _pattern(name: str, key: str, source: object, *, anchored: bool = False) -> re.Pattern[str] | None:
    """A pattern of the table compiled once: checked to mean the same in RE2 and in ``re``."""
    if source is None:
        return None
    if not isinstance(source, str) or not source:
        raise ClassTableError(f"{name}: `{key}` must be a regular expression")
    problem = _unportable(source)
    if problem:
        raise ClassTableError(f"{name}: `{key}` {problem}")
    full = f"^(?:{source})$" if anchored else f"(?i){source}"
    try:
        compiled = re.compile(full)
        pc.match_substring_regex(pa.array([""], pa.large_string()), full)  # RE2 must accept it too
    except (re.error, pa.ArrowInvalid) as exc:
        raise ClassTableError(f"{name}: `{key}` is not a regular expression: {exc}") from None
    return compiled


def _unportable(pattern: str) -> str | None:
    """Why ``pattern`` might not mean the same in RE2 and in Python's ``re`` (None: it does)."""
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escaped = pattern[index + 1 : index + 2]
            if not escaped or escaped.isalnum() or not escaped.isascii():
                return "may escape only punctuation (no \\b, \\d, \\s, \\w, ...)"
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            index += 1
            index += pattern.startswith("^", index)  # a leading ^ negates the class, and a
            index += pattern.startswith("]", index)  # leading ] is a literal
            continue
        elif char == "(" and not pattern.startswith("(?:", index):
            return "may group only with (?:...)"
        elif char in "^$":
            return "may not use anchors"
        index += 1
    return "has an unclosed [" if in_class else None


def _read_table() -> ClassTable:
    from mailops.spec.yamldoc import parse_yaml

    return load_table(
        parse_yaml(resources.files("mailops.outbox").joinpath("classes.yaml").read_text(encoding="utf-8"))
    )


TABLE = _read_table()
CLASSES: tuple[str, ...] = TABLE.classes
_CLASS_INDEX = {name: index for index, name in enumerate(CLASSES)}
_HINT_NAMES = pd.Index([failure.value for failure in FailureClass])
# hint (by its position in _HINT_NAMES) -> class index, -1: the hint names no class
_HINT_CLASS = np.array([_CLASS_INDEX.get(TABLE.hints.get(hint, ""), -1) for hint in _HINT_NAMES], dtype=np.int8)
_TEMPORARY = np.array([TABLE.remedies[name].temporary for name in CLASSES], dtype=bool)


def remedy(class_name: str) -> Remedy:
    """The remedy of a class (one of :data:`CLASSES`), else ValueError."""
    try:
        return TABLE.remedies[class_name]
    except KeyError:
        raise ValueError(f"no outbox error class {class_name!r}; the classes are {', '.join(CLASSES)}") from None


# --- classifying ---------------------------------------------------------------------------------


def classify_frame(frame: pd.DataFrame) -> pd.Series:
    """The class of every row of ``frame`` (see the module's documentation), as a categorical Series."""
    if "error" not in frame.columns:
        raise ValueError("the frame has no `error` column")
    texts = _text(frame["error"])
    smtp = _given_codes(frame["smtp_code"]) if "smtp_code" in frame.columns else None
    enhanced = _given_enhanced(frame["enhanced_code"]) if "enhanced_code" in frame.columns else None
    failure = frame["failure"] if "failure" in frame.columns else None
    return _series(_classify(texts, smtp, enhanced, failure), frame.index)


def classify(
    error: str | None,
    smtp_code: int | None = None,
    enhanced_code: str | None = None,
    failure: str | None = None,
) -> str:
    """The class of one failure: :func:`classify_frame` applied to a one-row frame."""
    frame = pd.DataFrame(
        {"error": [error], "smtp_code": [smtp_code], "enhanced_code": [enhanced_code], "failure": [failure]}
    )
    value = classify_frame(frame).iloc[0]
    if pd.isna(value):
        raise ValueError("nothing to classify: no error text and no failure hint (a sent mail has no class)")
    return str(value)


def extract_codes(errors: pd.Series) -> pd.DataFrame:
    """The first SMTP reply code (``smtp_code``, Int64) and enhanced status code (``enhanced_code``) in each text."""
    codes, enhanced = _extract(_text(errors))
    return pd.DataFrame(
        {"smtp_code": _nullable(codes), "enhanced_code": enhanced.astype("str").to_numpy()}, index=errors.index
    )


def temporary(frame: pd.DataFrame) -> pd.Series:
    """Per row of a classified frame (``class``, optional ``smtp_code``, ``enhanced_code``): worth another try?

    The server's word decides first: a 4xx reply code is temporary and a 5xx one permanent,
    whatever the class; without a reply code, the enhanced code's 4.x.x or 5.x.x does; without
    either, the class. False for a row without a class.
    """
    classes = pd.Index(CLASSES).get_indexer(frame["class"].astype("str"))
    result = np.where(classes >= 0, _TEMPORARY[classes], False)
    decided = np.zeros(len(frame), dtype=bool)  # the reply code has spoken
    if "smtp_code" in frame.columns:
        codes = _given_codes(frame["smtp_code"])
        temporary_code, permanent_code = (codes >= 400) & (codes < 500), (codes >= 500) & (codes < 600)
        result = np.where(temporary_code, True, np.where(permanent_code, False, result))
        decided = temporary_code | permanent_code
    if "enhanced_code" in frame.columns:
        enhanced = _given_enhanced(frame["enhanced_code"])
        temporary_enhanced = enhanced.str.startswith("4.").to_numpy(dtype=bool, na_value=False) & ~decided
        permanent_enhanced = enhanced.str.startswith("5.").to_numpy(dtype=bool, na_value=False) & ~decided
        result = np.where(temporary_enhanced, True, np.where(permanent_enhanced, False, result))
    return pd.Series(result & (classes >= 0), index=frame.index, name="temporary")


def is_temporary(class_name: str, smtp_code: int | None = None, enhanced_code: str | None = None) -> bool:
    """:func:`temporary` for one failure."""
    remedy(class_name)  # an unknown name is an error, not "not temporary"
    frame = pd.DataFrame({"class": [class_name], "smtp_code": [smtp_code], "enhanced_code": [enhanced_code]})
    return bool(temporary(frame).iloc[0])


def _text(values: pd.Series) -> pd.Series:
    """``values`` as pyarrow strings (NA kept); zero-copy when they are pandas' pyarrow-backed strings already."""
    if values.dtype == TEXT:
        return values
    try:
        return values.astype(TEXT)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # numbers and other objects: their text
        return values.astype(object).where(values.isna(), values.astype(str)).astype(TEXT)


def _given_codes(values: pd.Series) -> npt.NDArray[np.int32]:
    """Reply codes from a column (0: none); anything but a number from 200 to 599 counts as none."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    valid = (numbers >= 200) & (numbers <= 599) & (numbers == np.floor(numbers))
    return np.where(valid, numbers, 0).astype(np.int32)


def _given_enhanced(values: pd.Series) -> pd.Series:
    """Enhanced codes from a column, spaces trimmed; anything that is not one counts as NA."""
    texts = _text(values).str.strip()
    return texts.where(texts.str.contains(_ENHANCED_SHAPE).to_numpy(dtype=bool, na_value=False))


def _extract(texts: pd.Series) -> tuple[npt.NDArray[np.int32], pd.Series]:
    """The reply codes (0: none) and enhanced codes (NA: none) inside ``texts`` (pyarrow strings), positionally."""
    groups = texts.str.extract(CODE_PATTERN.pattern).fillna("")
    joined = groups.iloc[:, 0]
    for column in groups.columns[1:]:  # one alternative matched: the others are empty
        joined = joined + groups[column]
    codes = joined.where(joined != "").astype(pd.ArrowDtype(pa.int32()))
    enhanced = texts.str.extract(ENHANCED_PATTERN.pattern, expand=False).reset_index(drop=True)
    return codes.to_numpy(dtype=np.int32, na_value=0), enhanced


def _nullable(codes: npt.NDArray[np.int32]) -> pd.api.extensions.ExtensionArray:
    """Reply codes (0: none) as a nullable Int64 array."""
    return pd.arrays.IntegerArray(codes.astype(np.int64), codes == 0)


def _classify(
    texts: pd.Series,
    smtp: npt.NDArray[np.int32] | None,
    enhanced: pd.Series | None,
    failure: pd.Series | None,
    *,
    codes_from_text: bool = True,
) -> npt.NDArray[np.int8]:
    """Per row, the index into :data:`CLASSES` (-1: no class). Every step is a whole-column operation.

    ``smtp`` (0: none) and ``enhanced`` (NA: none) are the codes given per row; where one
    is missing, it is taken from the text, unless ``codes_from_text`` is false (the caller
    has done that already).
    """
    size = len(texts)
    result = np.full(size, -1, dtype=np.int8)
    failed = texts.notna().to_numpy(dtype=bool, copy=True)
    if failed.any():  # a text of nothing but white space is no error
        present = np.flatnonzero(failed)
        failed[present] = _contains(texts.take(present), CONTENT_PATTERN)
    hinted = np.zeros(size, dtype=bool)
    hint_class = np.full(size, -1, dtype=np.int8)
    if failure is not None:
        names = _text(failure)  # as text: an enum member hashes unlike its value
        positions = _HINT_NAMES.get_indexer(names)
        unknown = (positions < 0) & names.notna().to_numpy(dtype=bool)
        if unknown.any():
            bad = sorted(set(names[unknown].tolist()))[:5]
            raise ValueError(f"unknown failure hint(s) {bad}; expected one of {', '.join(_HINT_NAMES)}")
        hinted = positions >= 0
        hint_class = np.where(hinted, _HINT_CLASS[positions], -1).astype(np.int8)
    rows = np.flatnonzero(failed | hinted)
    if rows.size == 0:
        return result
    # From here on only the failed rows, by position: a sent mail's row costs nothing more.
    text = texts.take(rows).where(failed[rows]).reset_index(drop=True)
    code = smtp[rows] if smtp is not None else np.zeros(rows.size, dtype=np.int32)
    enh = enhanced.take(rows).reset_index(drop=True) if enhanced is not None else _missing(rows.size)
    if codes_from_text:
        need = ((code == 0) | enh.isna().to_numpy(dtype=bool)) & failed[rows]
        if need.any():
            wanted = np.flatnonzero(need)
            found_code, found_enhanced = _extract(text if wanted.size == rows.size else text.take(wanted))
            code[wanted] = np.where(code[wanted] == 0, found_code, code[wanted])
            enh = enh.fillna(_scatter(found_enhanced, wanted, rows.size))
    enh_position, enh_values = pd.factorize(enh)
    result[rows] = _stages(text, code, enh_position, pd.Series(enh_values, dtype=TEXT), hint_class[rows])
    return result


def _missing(size: int) -> pd.Series:
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.nulls(size, pa.large_string())))


def _scatter(values: pd.Series, positions: npt.NDArray[np.intp], size: int) -> pd.Series:
    """``values`` placed at ``positions`` of a Series of ``size`` (NA elsewhere), without a Python loop."""
    if positions.size == size:
        return values.reset_index(drop=True)
    indexer = np.full(size, -1, dtype=np.intp)
    indexer[positions] = np.arange(positions.size)
    return pd.Series(values.array.take(indexer, allow_fill=True))


def _stages(
    text: pd.Series,
    code: npt.NDArray[np.int32],
    enh_position: npt.NDArray[np.intp],
    enh_values: pd.Series,
    hint: npt.NDArray[np.int8],
) -> npt.NDArray[np.int8]:
    """The precedence of ``classes.yaml`` over the failed rows: each stage decides the rows still open.

    Each pattern runs over a pool of rows that holds the open ones; the pool sheds the
    decided rows (a copy of their texts) only once they are a quarter of it.
    """
    classes = np.full(len(text), -1, dtype=np.int8)
    pool, pool_text = np.arange(len(text)), text
    undecided = np.ones(len(text), dtype=bool)
    runs = {start: (end, combined) for start, end, combined in TABLE.runs}
    index = 0
    while index < len(TABLE.stages) and undecided.any():
        if int(undecided.sum()) < 0.75 * pool.size:
            kept = np.flatnonzero(undecided)
            pool, pool_text, undecided = pool[kept], pool_text.take(kept), np.ones(kept.size, dtype=bool)
        stage = TABLE.stages[index]
        if index in runs:
            end, combined = runs[index]
            candidates = np.flatnonzero(undecided & _contains(pool_text, combined))
            subset = pool_text if candidates.size == pool.size else pool_text.take(candidates)
            open_rows = np.ones(candidates.size, dtype=bool)
            for rule in TABLE.stages[index:end]:
                assert rule is not None and rule.text is not None
                hit = open_rows & _contains(subset, rule.text)
                classes[pool[candidates[hit]]] = _CLASS_INDEX[rule.name]
                open_rows &= ~hit
            undecided[candidates[~open_rows]] = False
            index = end
            continue
        if stage is None:
            decided = undecided & (hint[pool] >= 0)
            classes[pool[decided]] = hint[pool[decided]]
        else:
            decided = undecided & _matches(stage, pool_text, code[pool], enh_position[pool], enh_values)
            classes[pool[decided]] = _CLASS_INDEX[stage.name]
        undecided &= ~decided
        index += 1
    classes[pool[undecided]] = _CLASS_INDEX[UNKNOWN]
    return classes


def _matches(
    rule: Rule,
    text: pd.Series,
    code: npt.NDArray[np.int32],
    enh_position: npt.NDArray[np.intp],
    enh_values: pd.Series,
) -> npt.NDArray[np.bool_]:
    """Whether ``rule`` matches each row: one RE2 pass per pattern over the texts."""
    hit = np.zeros(len(text), dtype=bool)
    if rule.text is not None:
        hit |= _contains(text, rule.text)
    if rule.enhanced is not None and len(enh_values):
        known = _contains(enh_values, rule.enhanced)  # over the distinct codes, a few dozen
        hit |= np.where(enh_position >= 0, known[enh_position], False)
    if rule.smtp:
        by_code = np.isin(code, list(rule.smtp)) & ~hit
        if rule.smtp_text is not None and by_code.any():
            candidates = np.flatnonzero(by_code)
            by_code[candidates] = _contains(text.take(candidates), rule.smtp_text)
        hit |= by_code
    return hit


def _contains(texts: pd.Series, pattern: re.Pattern[str]) -> npt.NDArray[np.bool_]:
    return texts.str.contains(pattern.pattern).to_numpy(dtype=bool, na_value=False)  # type: ignore[no-any-return]


def _series(classes: npt.NDArray[np.int8], index: pd.Index) -> pd.Series:
    return pd.Series(pd.Categorical.from_codes(classes, categories=list(CLASSES)), index=index, name="class")


# --- the seed's exported log ---------------------------------------------------------------------

_COLUMNS = {
    "datum": "time",
    "date": "time",
    "from": "from",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "fehler": "error",
    "error": "error",
}
_OUTPUT = ["time", "from", "to", "cc", "bcc", "subject", "error"]
_GERMAN_FORMATS = ("%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y")
_OFFSET = r"(?:[zZ]|[+-][0-9][0-9]:?[0-9][0-9])$"


def read_seed_log(path: Path | str, *, timezone: str = "Europe/Berlin", limit: int = MAX_LOG_BYTES) -> pd.DataFrame:
    """The seed system's exported outbox log, classified (columns and refusals: see the module's documentation)."""
    return read_located_seed_log(path, timezone=timezone, limit=limit).frame


@dataclass(frozen=True)
class SeedLog:
    """A seed log as :func:`read_located_seed_log` read it."""

    frame: pd.DataFrame  # as read_seed_log gives it
    lines: npt.NDArray[np.int64]  # per row: the file's line the row starts on
    has_offset: npt.NDArray[np.bool_]  # per row: its time was written with an offset (or Z)
    timezone: str  # the zone of the times written without one


def read_located_seed_log(path: Path | str, *, timezone: str = "Europe/Berlin", limit: int = MAX_LOG_BYTES) -> SeedLog:
    """:func:`read_seed_log`, with where each row is in the file and how its time was written."""
    try:
        text = read_text(path, limit=limit, what="outbox log")
    except FileReadError as exc:
        raise OutboxLogError(str(exc)) from None
    header_line = _LINE_END.split(text, maxsplit=1)[0]
    if not header_line.strip():
        raise OutboxLogError(f"outbox log {path}:1: no header line (the first line names the columns)")
    delimiter, header = _sniff(header_line, path)
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        column = _COLUMNS.get(name.strip().lower())
        if column is None:
            continue
        if column in positions:
            first = header[positions[column]].strip()
            raise OutboxLogError(f"outbox log {path}:1: both {quoted(first)} and {quoted(name.strip())} are {column}")
        positions[column] = position
    if "error" not in positions:
        shown = ", ".join(quoted(name.strip()) for name in header)
        raise OutboxLogError(f"outbox log {path}:1: no `Fehler` (or `error`) column; the header has {shown}")
    fields, lines = _records(text, delimiter, len(header), positions, path)
    del text  # the file's text and each column's list of Python strings go as soon as the frame has them
    frame = pd.DataFrame(index=pd.RangeIndex(len(lines)))
    for column in _OUTPUT[1:]:
        values = pd.Series(fields.pop(column) if column in fields else "", index=frame.index, dtype="str")
        frame[column] = values.where(values.str.strip() != "")
    if "time" in fields:
        times, has_offset = _times(pd.Series(fields.pop("time"), dtype="str"), timezone, path, lines)
    else:
        times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
        has_offset = np.zeros(len(frame), dtype=bool)
    frame.insert(0, "time", times)
    texts = _text(frame["error"])
    failed = _contains(texts, CONTENT_PATTERN)
    codes = np.zeros(len(frame), dtype=np.int32)
    enhanced = _missing(len(frame))
    if failed.any():
        rows = np.flatnonzero(failed)
        found_code, found_enhanced = _extract(texts.take(rows))
        codes[rows] = found_code
        enhanced = _scatter(found_enhanced, rows, len(frame))
    frame["smtp_code"] = _nullable(codes)
    frame["enhanced_code"] = enhanced.astype("str").to_numpy()
    frame["status"] = pd.Categorical(np.where(failed, "failed", "sent"), categories=["sent", "failed"])
    frame["class"] = _series(_classify(texts, codes, enhanced, None, codes_from_text=False), frame.index)
    return SeedLog(frame, lines, has_offset, timezone)


_LINE_END = re.compile(r"\r\n|\n|\r")


def _sniff(header_line: str, path: Path | str) -> tuple[str, list[str]]:
    """The separator that splits the header into the most known column names (then the most columns)."""

    def fields(delimiter: str) -> list[str]:
        try:
            return next(csv.reader([header_line], delimiter=delimiter), [])
        except csv.Error as exc:
            raise OutboxLogError(f"outbox log {path}:1: {_csv_problem(exc)}") from None

    def score(delimiter: str) -> tuple[int, int]:
        found = fields(delimiter)
        return sum(field.strip().lower() in _COLUMNS for field in found), len(found)

    delimiter = max((";", ",", "\t"), key=score)
    return delimiter, fields(delimiter)


def _records(
    text: str, delimiter: str, width: int, positions: dict[str, int], path: Path | str
) -> tuple[dict[str, list[str]], npt.NDArray[np.int64]]:
    """The fields of the ``positions`` columns of each data record, and the line each starts on. Blank lines
    (and records of blank fields only) are skipped, and empty fields beyond the header's; a record of another
    width than the header's is refused: a line cut short would otherwise import as a mail sent without an error."""
    fields: dict[str, list[str]] = {column: [] for column in positions}
    takes = [(fields[column].append, position) for column, position in positions.items()]
    lines: list[int] = []
    # Quotes are read as leniently as spreadsheets write them (`"Anna, B" <a@example.com>` is one field); a quote
    # never closed takes the rest of the file into one field, which the count of fields then refuses.
    reader = csv.reader(_lines(text), delimiter=delimiter)
    start = 1
    try:
        next(reader)  # the header
        start = reader.line_num + 1
        for record in reader:
            if not any(field.strip() for field in record):
                start = reader.line_num + 1
                continue
            if len(record) > width and not any(field.strip() for field in record[width:]):
                del record[width:]  # separators at the end of a line: a common export's habit
            if len(record) != width:
                raise OutboxLogError(
                    f"outbox log {path}:{start}: {len(record)} field(s) where the header names {width} "
                    "(a line cut short, or a separator too many?)"
                )
            for take, position in takes:
                take(record[position])
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise OutboxLogError(f"outbox log {path}:{start}: {_csv_problem(exc)}") from None
    return fields, np.array(lines, dtype=np.int64)


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ends (CRLF, LF or CR), one at a time: a StringIO of the whole file would
    hold four bytes a character."""
    for line in _LINE.finditer(text):
        yield line.group()


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _csv_problem(exc: csv.Error) -> str:
    problem = str(exc)
    if "field larger than field limit" in problem:
        return f"a field is longer than {csv.field_size_limit():,} characters"
    return f"not CSV as written here ({problem})"


# The years a time may have: within pandas' times (1677 to 2262) whatever the zone; the report's days keep to them.
FIRST_YEAR, LAST_YEAR = 1900, 2199
_GERMAN_DATE = r"^[0-9]{1,2}\.[0-9]{1,2}\.([0-9]{4})"


def _times(
    raw: pd.Series, timezone: str, path: Path | str, lines: npt.NDArray[np.int64]
) -> tuple[pd.Series, npt.NDArray[np.bool_]]:
    """``Datum`` as UTC, and which were written with an offset: German or ISO 8601 forms; a time without an
    offset is local time in ``timezone``. Refused: other text, a year outside FIRST_YEAR to LAST_YEAR, and a
    local time that the zone skips (when the clocks go forward: a log in another zone)."""
    values = raw.fillna("").str.strip()
    result = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    blank = (values == "").to_numpy(dtype=bool)
    german_year = values.str.extract(_GERMAN_DATE, expand=False)
    written_years = german_year.fillna(values.str.extract(r"^([0-9]{4})", expand=False))
    years = pd.to_numeric(written_years, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    in_range = (years >= FIRST_YEAR) & (years <= LAST_YEAR)
    aware = values.str.contains(_OFFSET).to_numpy(dtype=bool) & in_range
    german = german_year.notna().to_numpy(dtype=bool) & in_range & ~aware
    naive = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")
    for form in _GERMAN_FORMATS:
        todo = german & naive.isna().to_numpy(dtype=bool)
        if todo.any():
            naive[todo] = _microseconds(pd.to_datetime(values[todo], format=form, errors="coerce"))
    iso = in_range & ~aware & ~german
    if iso.any():
        naive[iso] = _microseconds(pd.to_datetime(values[iso], format="ISO8601", errors="coerce"))
    if aware.any():
        result[aware] = _microseconds(pd.to_datetime(values[aware], format="ISO8601", errors="coerce", utc=True))
    local = naive.notna().to_numpy(dtype=bool)
    skipped = np.zeros(len(values), dtype=bool)
    if local.any():
        chosen = naive[local].dt.tz_localize(
            timezone, ambiguous=np.ones(int(local.sum()), dtype=bool), nonexistent="NaT"
        )
        result[local] = chosen.dt.tz_convert("UTC")
        skipped[local] = chosen.isna().to_numpy(dtype=bool)
    bad = ~blank & result.isna().to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        written = f"outbox log {path}:{lines[row]}: Datum {quoted(values.iloc[row])}"
        if skipped[row]:
            raise OutboxLogError(
                f"{written} is a time that {timezone} skips (the clocks go forward over it): "
                "is the log in another zone? (--timezone)"
            )
        if not in_range[row] and not np.isnan(years[row]):
            raise OutboxLogError(f"{written} is not within the years {FIRST_YEAR} to {LAST_YEAR}")
        raise OutboxLogError(f"{written} is not a date and time (dd.mm.yyyy HH:MM, dd.mm.yyyy or ISO 8601)")
    return result, aware


def _microseconds(times: pd.Series) -> pd.Series:
    """``times`` cut to microseconds, the resolution the frame keeps (ISO 8601 may write nanoseconds)."""
    return times.dt.floor("us").astype("datetime64[us, UTC]" if times.dt.tz is not None else "datetime64[us]")
