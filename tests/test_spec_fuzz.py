"""Property-based fuzzing of validate and plan: mutants of the shipped example config.

Each example copies ``config/`` (accounts.yaml, defaults.yaml, templates/mail.html)
into a fresh temporary directory, applies several mutations, and runs
:func:`mailops.spec.load_spec` and :func:`mailops.engine.plan.plan_for` on it, as the
``validate`` and ``plan`` commands do (including what they print: notes, problems,
the plan as text and JSON). Mutations are composed per file in three stages:

1. on the data, loaded and dumped again by ruamel.yaml (round-trip, comments kept, or
   plain data through libyaml's emitter): delete a key or item, set a field to another
   plausible value, swap a value's type (str, int, float, list, mapping, null, bool),
   rename or add a key, share a node between two places (the dumper writes an anchor
   and an alias), wrap a value, duplicate an item;
2. on the text: duplicate a key (block and flow), replace a value (huge numbers,
   tags, non-ASCII addresses, quoting, arbitrary Unicode), control characters (raw,
   and inside quoted strings, raw or escaped), anchors and aliases (recursive,
   exponential, merge keys, undefined), nesting 31 to 5000 levels deep, a second
   document or directives, an empty file, CR or CRLF line ends;
3. on the bytes: truncation (also in the middle of a UTF-8 sequence), random bytes,
   invalid UTF-8 sequences, byte order marks, UTF-16/UTF-32.

The template the spec refers to is sometimes mutated too (removed, a directory, a
symlink to a device or to itself, truncated, not UTF-8, not HTML). One mutant in three
is benign (plausible values, a byte order mark, comments, document markers): about a
third of those stay valid, so plan_for runs on a few dozen spec variants too.

The property: load_spec returns a LoadedSpec and plan_for a Plan, or load_spec raises
SpecError with at least one problem, each naming an existing file (a spec file, or a
file in the config dir), with line and column >= 1 and a non-empty message. Any other
exception fails, and so does an example that takes more than ``TIME_LIMIT`` seconds
(a signal stops one that hangs).

The default Hypothesis profile is "ci" (500 examples, fixed seed; see tests/conftest.py).
A long local run with a fresh random seed each time::

    .venv/bin/python -m pytest -q tests/test_spec_fuzz.py --hypothesis-profile=long
    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/test_spec_fuzz.py

Add ``--hypothesis-show-statistics`` to see how often each mutation ran. A failure
prints the mutant's steps and files, and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import currently_in_test_context, event, given, note
from hypothesis import strategies as st
from ruamel.yaml import YAML

from mailops.engine.plan import Plan, plan_for
from mailops.errors import SpecError
from mailops.spec import LoadedSpec, load_spec
from mailops.state import read_live_state
from mailops.views.plan import format_plan
from tests.conftest import EXAMPLE_CONFIG

SPEC_FILES = ("accounts.yaml", "defaults.yaml")
TEMPLATE = "templates/mail.html"
GOOGLE_CLIENT = "secrets/google-client.json"  # oauth.google.client_secrets of the example
# A generous bound per example: the example config loads and plans in a few milliseconds.
TIME_LIMIT = 5.0
# An example still running after this long is stopped by SIGALRM and fails as a hang.
HANG_LIMIT = 20.0

Draw = Callable[[st.SearchStrategy[Any]], Any]


# -- the example config ------------------------------------------------------------------


@cache
def original(name: str) -> bytes:
    return (EXAMPLE_CONFIG / name).read_bytes()


def _example() -> dict[str, bytes | str]:
    return {path: original(path) for path in (*SPEC_FILES, TEMPLATE, GOOGLE_CLIENT)}


@cache
def _yaml(typ: str) -> YAML:
    """ "rt": ruamel's round-trip (comments and flow style kept); "safe": plain data, libyaml's emitter."""
    yaml = YAML(typ=typ)
    if typ == "rt":
        yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    yaml.width = 4096
    return yaml


@cache
def original_data(name: str, typ: str) -> Any:
    return _yaml(typ).load(original(name).decode("utf-8"))


def dump(data: Any, typ: str) -> str:
    stream = io.StringIO()
    _yaml(typ).dump(data, stream)
    return stream.getvalue()


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {k for k in node if isinstance(k, str)} | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for item in node for k in _keys(item)}
    return set()


@cache
def known_keys() -> list[str]:
    found = _keys(original_data("accounts.yaml", "safe")) | _keys(original_data("defaults.yaml", "safe"))
    return sorted(found | {"<<"})


# -- values ------------------------------------------------------------------------------

ADDRESSES = [
    "jörg@bücher.example",
    "info@bücher.example",
    "info@xn--bcher-kva.example",
    "ä@例え.テスト",
    "SUPPORT@EXAMPLE.COM",
    "support@example.com",
    "info@web.de",
    "a@b",
    "a@localhost",
    "@example.com",
    "a@",
    "a@@example.com",
    "A <a@example.com>",
    "a@example.com, b@example.com",
    "a@example.com\r\nBcc: x@example.com",
    '"a b"@example.com',
    "a@[127.0.0.1]",
    "a@-example.com",
    "a@xn--.example",
    "x" * 65 + "@example.com",
    "a@" + "b" * 64 + ".example",
    "a@" + ".".join(["b" * 60] * 5),
]
STRINGS = [
    "",
    " ",
    "\t",
    "self",
    "none",
    "ssl",
    "starttls",
    "manual",
    "google",
    "microsoft",
    "SHOP",
    "support",
    "sales",
    "support-team",
    "bob",
    "2026-01-01",
    "2026-13-45",
    "2026-02-30",
    "0001-01-01",
    "9999-12-31",
    "2026-01-01T10:00:00Z",
    "{MITARBEITER}",
    "{UNBEKANNT}",
    "{CONTENT}",
    "{",
    "{}",
    "{ }",
    "{a b}",
    "templates/mail.html",
    "templates",
    "templates/missing.html",
    "./templates/../templates/mail.html",
    "accounts.yaml",
    "../config/defaults.yaml",
    "/dev/null",
    "/dev/zero",
    "/",
    ".",
    "..",
    "a" * 256,
    "a/" * 3000,
    "x" * 20_000,
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\r",
    "\n",
    "a\r\nb",
    "\u2028",
    "\u2029",
    "\x85",
    "\x7f",
    "\ufeff",
    "\U0010ffff",
    "\u202eevil",
    "<p>",
    "</p>",
    "🙂",
    "true",
    "null",
    "1",
    "mail.example.net",
    "mail example.net",
    "-",
    "- ",
    ":",
    "#",
    "*a",
    "&a",
    "!!str",
    "%",
]
INTEGERS = [-1, 0, 1, 993, 65535, 65536, 2**31, 2**63, -(2**63) - 1, 10**100, -(10**300)]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INTEGERS),
    st.floats(),
    st.sampled_from(ADDRESSES),
    st.sampled_from(STRINGS),
    st.text(max_size=40),
)
keys = st.one_of(
    st.sampled_from(known_keys()),
    st.text(max_size=12),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)),
    max_leaves=8,
)

# Values a person might plausibly write for a field, mostly valid: they keep some mutants
# valid, so that plan_for gets to run too.


def _mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, invalid)


_addresses = _mostly(
    st.sampled_from(["new@example.com", "info@bücher.example", "info@xn--bcher-kva.example", "Support@Example.COM"]),
    st.sampled_from(["jörg@bücher.example", "a@b", "A <a@example.com>"]),
)
_names = _mostly(
    st.sampled_from(["support-team", "sales-team", "alice", "bob", "support", "sales"]),
    st.sampled_from(["nobody", "", "Alice"]),
)
_line = _mostly(
    st.one_of(st.text(st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=20)),
    st.sampled_from(["", "a\tb", "a\nb", "\x85"]),
)
_text = _mostly(
    st.sampled_from(["{MITARBEITER}", "Gruß\n{MITARBEITER_EMAIL}\t🙂", "<p>Danke</p>", "", "Jörg"]),
    st.one_of(st.text(max_size=40), st.sampled_from(["{MITARBEITER_FAX}", "a\r\nb"])),
)
_paths_to = st.sampled_from(["templates/mail.html", "./templates/mail.html", "templates", "missing.html", "a" * 300])
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "address": _addresses,
    "email": _addresses,
    "bcc": st.one_of(st.none(), _addresses),
    "to": st.one_of(st.just("self"), _addresses),
    "cc": st.lists(_addresses, max_size=3),
    "provider": st.sampled_from(["microsoft", "google", "manual", "Manual", "yahoo"]),
    "encryption": _mostly(st.sampled_from(["ssl", "starttls"]), st.sampled_from(["none", "SSL", "tls"])),
    "port": _mostly(st.integers(1, 65535), st.sampled_from([0, 65536, -1, 993.0, "993"])),
    "host": _mostly(
        st.sampled_from(["mail.example.org", "127.0.0.1", "bücher.example", "[::1]"]),
        st.sampled_from(["mail example", "", "a\x00b"]),
    ),
    "retention_days": _mostly(st.integers(0, 10**6), st.sampled_from([-1, 1.5, 10**30])),
    "max_delete_fraction": _mostly(st.floats(0, 1), st.sampled_from([1.5, -0.1, float("nan"), float("inf")])),
    "import_since": _mostly(
        st.sampled_from(["2025-12-31", "2024-02-29", "2026-01-01"]), st.sampled_from(["2026-02-29", "2026-1-1", ""])
    ),
    "display_name": _line,
    "sender_name": _line,
    "name": _line,
    "subject": _line,
    "username": _line,
    "phone": _line,
    "mobile": _line,
    "fax": _line,
    "signature": _text,
    "greeting": _text,
    "body": _text,
    "visible_to": st.lists(_names, max_size=3),
    "groups": st.lists(_names, max_size=3),
    "queues": st.lists(_names, max_size=3),
    "default_project": _mostly(st.sampled_from(["SHOP", "AMAZON", "POS"]), st.sampled_from(["NOPE", "shop", ""])),
    "default_queue": _names,
    "env": _mostly(st.sampled_from(["INFO_PASSWORD", "X"]), st.sampled_from(["", "A\nB"])),
    "file": _paths_to,
    "html_template": _paths_to,
}
for _flag in ("enabled", "auto_close", "delete_after_import", "once_per_day_per_sender", "on_apply"):
    FIELD_VALUES[_flag] = st.booleans()
for _flag in ("require_encryption", "allow_delete"):
    FIELD_VALUES[_flag] = st.booleans()


# -- data mutations (round-trip, then dumped) ----------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, prefix + (index,))


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _containers(node: Any, seen: set[int]) -> set[int]:
    if isinstance(node, (dict, list)) and id(node) not in seen:
        seen.add(id(node))
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, seen)
    return seen


def _convert(value: Any, kind: str) -> Any:
    """``value`` as another type: str <-> int <-> list <-> mapping <-> null <-> bool."""
    if kind == "str":
        return value if isinstance(value, str) else ("text" if isinstance(value, (dict, list)) else str(value))
    if kind == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 100:
            return int(value)
        return len(value) if isinstance(value, (str, dict, list)) else int(bool(value))
    if kind == "list":
        return list(value.values()) if isinstance(value, dict) else [value]
    if kind == "mapping":
        if isinstance(value, list):
            return {index: item for index, item in enumerate(value)}
        return {"value": value}
    if kind == "null":
        return None
    return bool(value)


# "plausible" twice: it is the mutation most likely to leave a valid spec.
DATA_MUTATIONS = ["plausible", "plausible", "delete", "set", "convert", "rename", "add", "share", "wrap", "duplicate"]
BENIGN_DATA_MUTATIONS = ["plausible", "plausible", "share", "delete", "duplicate"]


def mutate_data(draw: Draw, data: Any, steps: list[str], kinds: list[str]) -> Any:
    """One mutation of the data; ``data`` is changed in place where possible; returns the new root."""
    holder = [data]
    paths = list(_paths(data, (0,)))
    entries = [p for p in paths if len(p) > 1]
    kind = draw(st.sampled_from(kinds))
    fields = [p for p in entries if p[-1] in FIELD_VALUES]
    if kind == "plausible" and not fields:
        kind = "set"
    if not entries and kind not in ("set", "convert"):
        kind = "set"
    event(f"data: {kind}")
    if kind == "plausible":
        path = draw(st.sampled_from(fields))
        value = draw(FIELD_VALUES[path[-1]])
        _get(holder, path[:-1])[path[-1]] = value
        steps.append(f"set {path[1:]} = {value!r:.200}")
    elif kind == "delete":
        path = draw(st.sampled_from(entries))
        del _get(holder, path[:-1])[path[-1]]
        steps.append(f"delete {path[1:]}")
    elif kind in ("set", "convert"):
        path = draw(st.sampled_from(paths))
        if kind == "set":
            value = draw(values)
        else:
            target = draw(st.sampled_from(["str", "int", "list", "mapping", "null", "bool"]))
            value = _convert(_get(holder, path), target)
        _get(holder, path[:-1])[path[-1]] = value
        steps.append(f"{kind} {path[1:]} = {value!r:.200}")
    elif kind in ("rename", "add"):
        mappings = [p for p in paths if isinstance(_get(holder, p), dict)]
        if not mappings:
            return holder[0]
        path = draw(st.sampled_from(mappings))
        mapping = _get(holder, path)
        new_key = draw(keys)
        if kind == "rename" and mapping:
            old_key = draw(st.sampled_from(list(mapping)))
            mapping[new_key] = mapping.pop(old_key)
            steps.append(f"rename {path[1:] + (old_key,)} -> {new_key!r}")
        else:
            mapping[new_key] = draw(values)
            steps.append(f"add {path[1:] + (new_key,)} = {mapping[new_key]!r:.200}")
    elif kind == "share":
        source = draw(st.sampled_from(paths))
        target = draw(st.sampled_from(entries))
        node = _get(holder, source)
        parent = _get(holder, target[:-1])
        if id(parent) in _containers(node, set()):
            return holder[0]  # would make the data recursive; recursive aliases are a text mutation
        parent[target[-1]] = node
        steps.append(f"share {source[1:]} at {target[1:]}")
    elif kind == "wrap":
        path = draw(st.sampled_from(paths))
        value = _get(holder, path)
        _get(holder, path[:-1])[path[-1]] = draw(st.sampled_from([[value], {draw(keys): value}]))
        steps.append(f"wrap {path[1:]}")
    else:
        lists = [p for p in paths if isinstance(_get(holder, p), list) and _get(holder, p)]
        if not lists:
            return holder[0]
        path = draw(st.sampled_from(lists))
        items = _get(holder, path)
        index = draw(st.integers(0, len(items) - 1))
        items.append(copy.deepcopy(items[index]))
        steps.append(f"duplicate {path[1:] + (index,)}")
    return holder[0]


# -- text mutations ------------------------------------------------------------------------

HUGE_NUMBERS = [
    "1" + "0" * 5000,
    "-" + "9" * 4301,
    "9" * 4300,
    "0x" + "f" * 4301,
    "0o" + "7" * 5000,
    "1" + "0" * 5000 + ".5",
    "1e999",
    "-1e999",
    "1e-999",
    "-1",
    "-0",
    "+1",
    "1_000",
    "0b101",
    "0x10",
    "0o17",
    "017",
    ".inf",
    "-.inf",
    ".nan",
    "65536",
    "99999999999999999999",
    "0.5",
    "1.0",
]
TOKENS = [
    "~",
    "null",
    "Null",
    "NULL",
    "true",
    "True",
    "FALSE",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "[]",
    "{}",
    "[a, b]",
    "{a: 1}",
    "''",
    '""',
    "'it''s'",
    '"\\x00"',
    '"\\e"',
    '"\\r\\n"',
    '"\\L"',
    '"\\P"',
    '"\\N"',
    '"\\u2028"',
    '"\\U0001F600"',
    '"\\ud800"',
    '"\\q"',
    "|\n  block\n",
    ">-\n  folded\n",
    "|-",
    "!!binary aGVsbG8=",
    "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system",
    "!custom x",
    "!<tag:example.com,2000:x> y",
    "!!timestamp 2026-01-01",
    "!!int abc",
    "!!int 12",
    "!!int",
    "!!float 1",
    "!!float x",
    "!!bool yes",
    "!!bool true",
    "!!str 1",
    "!!null",
    "!!null x",
    "!!map {}",
    "!!seq []",
    "!!set {a}",
    "!!omap [a: 1]",
    "!!pairs [a: 1]",
    "! 12",
    "&a x",
    "*a",
    "*undefined",
    "? complex",
    ":",
    "- ",
    '"unterminated',
    "'unterminated",
    "[unterminated",
    "{unterminated",
    "]",
    "}",
    "@reserved",
    "`reserved",
    "%",
    "jörg@bücher.example",
    '"jörg@bücher.example"',
    "info@bücher.example",
    "'info@xn--bcher-kva.example'",
    "{<<: {host: h}}",
    "{? [a]: b}",
    "{[a]: b}",
    "{{a: b}: c}",
]
CONTROL = ["\x00", "\x1b", "\r", "\n", "\r\n", "\u2028", "\u2029", "\x85", "\x7f", "\t", "\x0b", "\x0c", "\x01"]
ODD_CHARACTERS = CONTROL + ["\ufeff", "\ufffe", "\uffff", "\x80", "\x9f", "\xa0", "\U0010ffff", "\u202e", "é"]
ESCAPES = ["\\0", "\\e", "\\r", "\\n", "\\L", "\\P", "\\N", "\\x1b", "\\x00", "\\t", "\\u2028", "\\U0010FFFF"]
DEPTHS = [31, 32, 33, 34, 40, 64, 100, 1000, 5000]
EMPTY_FILES = ["", " ", "\n", "# only a comment\n", "---\n", "---\n...\n", "~\n", "[]", "{}", "a"]

_KEY_LINE = re.compile(r"^( *)(- )?([^\s#:\-][^:#\n]*?):(?=[ \n]|$)(.*)$", re.M)
_BLOCK_VALUE = re.compile(r"(?:(?<=: )|(?<=- ))[^\s#\n][^#\n]*?(?=[ \t]+#|[ \t]*$)", re.M)
_FLOW_VALUE = re.compile(r"(?<=: )[^,{}\[\]\n#]+(?=[,}\]])")
_FLOW_MAPPING = re.compile(r"\{([^{}\n]*)\}")
_KEY_END = re.compile(r"^ *(?:- )?[^\s#:][^:\n#]*:(?=[ \t]*(?:#.*)?$)", re.M)


# Only lines this short are searched for keys and values: the patterns are quadratic on
# a long line (e.g. 5000 levels of "- "), and the example's lines are all short.
_SEARCHED_LINE = 300


def _matches(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    start = 0
    for line in text.split("\n"):
        if len(line) <= _SEARCHED_LINE:
            yield from pattern.finditer(text, start, start + len(line))
        start += len(line) + 1


def _value_spans(text: str) -> list[tuple[int, int]]:
    spans = {m.span() for m in _matches(_BLOCK_VALUE, text)} | {m.span() for m in _matches(_FLOW_VALUE, text)}
    return sorted(spans)


def _anchor_spots(text: str) -> list[tuple[int, int]]:
    """Where an anchor may go: before a value, or after a key whose value is a block."""
    return sorted(set(_value_spans(text)) | {(m.end(), m.end()) for m in _matches(_KEY_END, text)})


def _replace(text: str, span: tuple[int, int], new: str) -> str:
    return text[: span[0]] + new + text[span[1] :]


def _nesting(draw: Draw) -> str:
    depth = draw(st.one_of(st.sampled_from(DEPTHS), st.integers(31, 5000)))
    shape = draw(st.sampled_from(["[]", "[", "{}", "{", "{a:", "[{", "- ", "indent"]))
    if shape == "[]":
        return "[" * depth + "]" * depth
    if shape == "{}":
        return "{" * depth + "}" * depth
    if shape == "{a:":
        return "{a: " * depth + "x" + "}" * depth
    if shape == "[{":
        return "[{a: " * (depth // 2) + "x" + "}]" * (depth // 2)
    if shape == "- ":
        return "\n" + "- " * depth + "x"
    if shape == "indent":
        depth = min(depth, 300)  # the text grows with the square of the depth
        return "\n" + "".join(" " * (level + 4) + "a:\n" for level in range(depth)) + " " * (depth + 4) + "x"
    return shape * depth


def _bomb(draw: Draw) -> str:
    levels = draw(st.integers(2, 40))
    width = draw(st.integers(2, 10))
    parts = ['&b0 "lol"'] + [f"&b{level} [" + ", ".join([f"*b{level - 1}"] * width) + "]" for level in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _recursive(draw: Draw) -> str:
    return draw(st.sampled_from(["&r [*r]", "&r {a: *r}", "&r [a, [b, *r]]", "&r {<<: *r}", "&r\n  - *r", "*r"]))


TEXT_MUTATIONS = [
    "duplicate_key",
    "duplicate_flow_key",
    "replace_value",
    "huge_number",
    "unicode_value",
    "insert_character",
    "insert_in_quotes",
    "insert_text",
    "anchor_alias",
    "alias_bomb",
    "recursive_alias",
    "deep_nesting",
    "second_document",
    "empty",
    "line_ends",
]
# Changes that keep a valid file valid.
BENIGN_TEXT_MUTATIONS = ["line_ends", "byte_order_mark", "document_markers", "comment"]


def mutate_text(draw: Draw, text: str, steps: list[str], kinds: list[str]) -> str:
    kind = draw(st.sampled_from(kinds))
    event(f"text: {kind}")
    if kind == "line_ends":
        ending = draw(st.sampled_from(["\r\n", "\r"]))
        steps.append(f"line ends {ending!r}")
        return text.replace("\n", ending)
    if kind == "byte_order_mark":
        steps.append("byte order mark")
        return "\ufeff" + text
    if kind == "document_markers":
        steps.append("document markers")
        return "---\n" + text + ("" if text.endswith("\n") else "\n") + "...\n"
    if kind == "comment":
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        position = draw(st.sampled_from(starts))
        steps.append(f"comment at {position}")
        return text[:position] + "# Grüße 🙂 x: [\n" + text[position:]
    spans = _value_spans(text)
    if kind == "duplicate_key":
        lines = list(_matches(_KEY_LINE, text))
        if lines:
            m = draw(st.sampled_from(lines))
            indent, dash, key, rest = m.groups()
            copy_line = indent + ("  " if dash else "") + key + ":" + rest
            steps.append(f"duplicate key line {m.group(0)!r}")
            return text[: m.end()] + "\n" + copy_line + text[m.end() :]
        kind = "insert_text"
    if kind == "duplicate_flow_key":
        mappings = [m for m in _matches(_FLOW_MAPPING, text) if m.group(1).strip()]
        if mappings:
            m = draw(st.sampled_from(mappings))
            first = m.group(1).split(",")[0].strip()
            steps.append(f"duplicate flow entry {first!r}")
            return text[: m.start(1)] + first + ", " + text[m.start(1) :]
        kind = "insert_text"
    if kind in ("replace_value", "huge_number", "unicode_value", "deep_nesting", "alias_bomb", "recursive_alias"):
        if kind == "replace_value":
            new = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=20)))
        elif kind == "huge_number":
            new = draw(st.sampled_from(HUGE_NUMBERS))
        elif kind == "unicode_value":
            new = draw(st.one_of(st.sampled_from(ADDRESSES[:4]), st.text(min_size=1, max_size=30)))
        elif kind == "deep_nesting":
            new = _nesting(draw)
        elif kind == "alias_bomb":
            new = _bomb(draw)
        else:
            new = _recursive(draw)
        if spans and draw(st.integers(0, 4)):
            span = draw(st.sampled_from(spans))
            steps.append(f"replace {text[span[0] : span[1]]!r:.80} with {new!r:.200}")
            return _replace(text, span, new)
        # A new top-level key, at the end of the file.
        steps.append(f"append key with {new!r:.200}")
        return text + ("\n" if text and not text.endswith("\n") else "") + f"extra: {new}\n"
    if kind == "insert_character":
        # A file holds no lone surrogate (it is not UTF-8); the byte mutations write broken UTF-8.
        character = draw(st.one_of(st.sampled_from(ODD_CHARACTERS), st.characters(codec="utf-8")))
        position = draw(st.integers(0, len(text)))
        steps.append(f"insert {character!r} at {position}")
        return text[:position] + character + text[position:]
    if kind == "insert_in_quotes":
        quotes = [m.start() + 1 for m in re.finditer(r"""(?<=[\s\[{,:])["']""", text)]
        position = draw(st.sampled_from(quotes)) if quotes else draw(st.integers(0, len(text)))
        inside = draw(st.one_of(st.sampled_from(CONTROL), st.sampled_from(ESCAPES)))
        steps.append(f"insert {inside!r} in quotes at {position}")
        return text[:position] + inside + text[position:]
    if kind == "anchor_alias":
        spots = _anchor_spots(text)
        if len(spots) < 2 or not spans:
            return text
        anchor_at = draw(st.sampled_from(spots))
        alias_at = draw(st.sampled_from(spans))
        if alias_at[0] < anchor_at[1] and anchor_at[0] < alias_at[1]:
            return text  # overlapping spots
        alias = draw(st.sampled_from(["*fz", "[*fz, *fz]", "{<<: *fz}", "{<<: [*fz, *fz]}", "*fz *fz"]))
        anchor = " &fz" if anchor_at[0] == anchor_at[1] else "&fz "
        steps.append(f"anchor at {anchor_at}, {alias!r} at {alias_at}")
        if alias_at[0] > anchor_at[0]:
            return _replace(_replace(text, alias_at, alias), (anchor_at[0], anchor_at[0]), anchor)
        return _replace(_replace(text, (anchor_at[0], anchor_at[0]), anchor), alias_at, alias)
    if kind == "second_document":
        if draw(st.booleans()):
            tail = draw(st.sampled_from(["---\n", "---\na: 1\n", "...\n---\n", "--- |\n  text\n", "...\n", "---"]))
            steps.append(f"append {tail!r}")
            return text + ("\n" if text and not text.endswith("\n") else "") + tail
        head = draw(
            st.sampled_from(
                [
                    "---\n",
                    "--- !!map\n",
                    "%YAML 1.2\n---\n",
                    "%YAML 1.1\n---\n",
                    "%YAML 2.0\n---\n",
                    "%YAML 1.2\n%YAML 1.2\n---\n",
                    "%TAG !e! tag:example.com,2000:\n---\n",
                    "%FOO bar\n---\n",
                    "a: 1\n---\n",
                ]
            )
        )
        steps.append(f"prepend {head!r}")
        return head + text
    if kind == "empty":
        new = draw(st.sampled_from(EMPTY_FILES))
        steps.append(f"empty file {new!r}")
        return new
    new = draw(st.text(min_size=1, max_size=30))
    position = draw(st.integers(0, len(text)))
    steps.append(f"insert {new!r} at {position}")
    return text[:position] + new + text[position:]


# -- byte mutations ------------------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xfe\xff",
]


def mutate_bytes(draw: Draw, data: bytes, steps: list[str]) -> bytes:
    kind = draw(
        st.sampled_from(["truncate", "truncate_mid_utf8", "insert_bytes", "overwrite_byte", "invalid_utf8", "encode"])
    )
    kind = kind if data or kind in ("insert_bytes", "invalid_utf8") else "insert_bytes"
    if kind == "encode":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
            event(f"bytes: encode {codec}")
            steps.append(f"encode as {codec}")
            return text.encode(codec)
        kind = "invalid_utf8"
    event(f"bytes: {kind}")
    if kind == "truncate":
        cut = draw(st.integers(0, len(data)))
        steps.append(f"truncate at byte {cut}")
        return data[:cut]
    if kind == "truncate_mid_utf8":
        leads = [index for index, byte in enumerate(data) if byte >= 0xC2]
        if not leads:
            position = draw(st.integers(0, len(data)))
            data = data[:position] + "ü".encode() + data[position:]
            leads = [position]
        lead = draw(st.sampled_from(leads))
        length = 2 if data[lead] < 0xE0 else 3 if data[lead] < 0xF0 else 4
        cut = lead + draw(st.integers(1, length - 1))
        steps.append(f"truncate at byte {cut}, inside a UTF-8 sequence")
        return data[:cut]
    if kind == "overwrite_byte":
        position = draw(st.integers(0, len(data) - 1))
        byte = draw(st.integers(0, 255))
        steps.append(f"byte {position} = {byte:#04x}")
        return data[:position] + bytes([byte]) + data[position + 1 :]
    new = draw(st.binary(min_size=1, max_size=16)) if kind == "insert_bytes" else draw(st.sampled_from(INVALID_UTF8))
    position = draw(st.integers(0, len(data)))
    steps.append(f"insert {new!r} at byte {position}")
    return data[:position] + new + data[position:]


# -- the mutant ----------------------------------------------------------------------------

ABSENT, DIRECTORY, DEVICE_LINK, LOOP_LINK = "absent", "a directory", "symlink to /dev/zero", "symlink to itself"


@dataclass
class Mutant:
    files: dict[str, bytes | str]  # relative path -> content, or one of the special kinds above
    steps: list[str] = field(default_factory=list)

    def write(self, config: Path) -> None:
        for name, content in self.files.items():
            path = config / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if content == DIRECTORY:
                path.mkdir()
            elif content == DEVICE_LINK:
                path.symlink_to("/dev/zero")
            elif content == LOOP_LINK:
                path.symlink_to(path.name)
            elif isinstance(content, bytes):
                path.write_bytes(content)


def mutated_spec_file(draw: Draw, name: str, steps: list[str], *, benign: bool) -> bytes:
    """Data, then text, then byte mutations; ``benign`` ones that keep the file plausible (often valid)."""
    if benign:
        counts = [draw(st.integers(1, 2)), draw(st.integers(0, 1)), 0]
    else:
        counts = [draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 2))]
        if not any(counts):
            counts[1] = 1
    n_data, n_text, n_bytes = counts
    steps.append(f"-- {name}" + (" (benign)" if benign else ""))
    if n_data:
        # libyaml's emitter is fast; ruamel's round-trip keeps the comments and flow style.
        typ = draw(st.sampled_from(["safe", "rt"]))
        steps.append(f"data ({typ}):")
        data = copy.deepcopy(original_data(name, typ))
        for _ in range(n_data):
            data = mutate_data(draw, data, steps, BENIGN_DATA_MUTATIONS if benign else DATA_MUTATIONS)
        text = dump(data, typ)
    else:
        text = original(name).decode("utf-8")
    for _ in range(n_text):
        text = mutate_text(draw, text, steps, BENIGN_TEXT_MUTATIONS if benign else TEXT_MUTATIONS)
    raw = text.encode("utf-8")
    for _ in range(n_bytes):
        raw = mutate_bytes(draw, raw, steps)
    return raw


VALID_TEMPLATES = ["{CONTENT}<br>", "<p>{CONTENT}</p>", "<html><body><p>Grüße {CONTENT}</body></html>"]


def mutated_template(draw: Draw, steps: list[str], *, benign: bool) -> bytes | str:
    if benign:
        template = draw(st.sampled_from(VALID_TEMPLATES))
        steps.append(f"-- {TEMPLATE}: {template!r}")
        return template.encode("utf-8")
    kind = draw(st.sampled_from(["absent", "directory", "device", "loop", "truncate", "bytes", "text"]))
    event(f"template: {kind}")
    steps.append(f"-- {TEMPLATE}: {kind}")
    special = {"absent": ABSENT, "directory": DIRECTORY, "device": DEVICE_LINK, "loop": LOOP_LINK}
    if kind in special:
        return special[kind]
    data = original(TEMPLATE)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "bytes":
        return mutate_bytes(draw, data, steps)
    return draw(
        st.one_of(
            st.sampled_from(["", "{CONTENT}", "<p>{CONTENT}", "<p>no placeholder</p>", "</div>{CONTENT}", "<b><i>"]),
            st.text(max_size=40),
        )
    ).encode("utf-8")


@st.composite
def mutants(draw: Draw) -> Mutant:
    steps: list[str] = []
    files = _example()
    # One mutant in three is benign: it stays close to valid, so plan_for gets to run.
    benign = draw(st.integers(0, 2)) == 2
    targets = draw(st.sampled_from([SPEC_FILES[:1], SPEC_FILES[1:], SPEC_FILES, ()]))
    for name in targets:
        files[name] = mutated_spec_file(draw, name, steps, benign=benign)
    if not targets or (not benign and draw(st.integers(0, 7)) == 0):
        files[TEMPLATE] = mutated_template(draw, steps, benign=benign)
    return Mutant(files, steps)


# -- running validate and plan ---------------------------------------------------------------


class Hang(AssertionError):
    """load_spec or plan_for ran for longer than ``HANG_LIMIT``."""


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`Hang` after ``seconds`` (main thread, POSIX; else no guard)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def validate_and_plan(config: Path, live_state: Any) -> LoadedSpec | SpecError:
    """What ``mailops validate`` and ``mailops plan`` do with the spec, through the library."""
    try:
        loaded = load_spec(config)
    except SpecError as error:
        for problem in error.problems:
            str(problem)
            json.dumps(problem.as_dict(), ensure_ascii=False)
        return error
    for filled in loaded.notes:
        str(filled)
    plan = plan_for(loaded, live_state)
    assert isinstance(plan, Plan), f"plan_for returned {type(plan).__name__}"
    json.dumps(plan.as_json(), sort_keys=True)
    format_plan(plan)
    return loaded


def _event(text: str) -> None:
    if currently_in_test_context():  # not in the explicit cases below
        event(text)


def check_mutant(mutant: Mutant, root: Path, live_state: Any) -> LoadedSpec | SpecError:
    """Validate and plan ``mutant`` in a fresh directory under ``root``; assert the property."""
    workdir = Path(tempfile.mkdtemp(prefix="mutant-", dir=root))
    try:
        config = workdir / "config"
        mutant.write(config)
        started = time.monotonic()
        with hang_guard(HANG_LIMIT):
            outcome = validate_and_plan(config, live_state)
        elapsed = time.monotonic() - started
        assert elapsed < TIME_LIMIT, f"validate and plan took {elapsed:.1f} s (limit {TIME_LIMIT} s)"
        if isinstance(outcome, LoadedSpec):
            _event("outcome: valid")
            return outcome
        _event("outcome: SpecError")
        spec_files = {str(config / name) for name in SPEC_FILES}
        assert outcome.problems, "SpecError without a single problem"
        for problem in outcome.problems:
            if currently_in_test_context():
                note(f"problem: {problem}")
            named = Path(problem.file)
            assert problem.file in spec_files or named.resolve().is_relative_to(config.resolve()), problem
            assert named.exists() or named.is_symlink(), f"{problem}: names a file that does not exist"
            assert type(problem.line) is int and problem.line >= 1, problem
            assert type(problem.column) is int and problem.column >= 1, problem
            if problem.file in spec_files and named.is_file():
                text = named.read_bytes().decode("utf-8", errors="replace")
                lines = len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
                assert problem.line <= lines, f"{problem}: the file has {lines} line(s)"
            assert isinstance(problem.message, str) and problem.message.strip(), problem
        return outcome
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spec-fuzz")


@pytest.fixture(scope="module")
def live_state(fuzz_root: Path) -> Any:
    missing = fuzz_root / "no-state.db"
    state = read_live_state(f"sqlite:///{missing}")
    assert not missing.exists()
    return state


# -- the tests ---------------------------------------------------------------------------------


def test_the_unmutated_round_trip_is_valid(fuzz_root: Path, live_state: Any) -> None:
    """The data mutations start from a valid spec: the round-trip dump alone changes nothing."""
    for typ in ("safe", "rt"):
        files: dict[str, bytes | str] = {name: dump(original_data(name, typ), typ).encode() for name in SPEC_FILES}
        files[TEMPLATE] = original(TEMPLATE)
        files[GOOGLE_CLIENT] = original(GOOGLE_CLIENT)
        config = fuzz_root / f"round-trip-{typ}"
        Mutant(files).write(config)
        assert isinstance(validate_and_plan(config, live_state), LoadedSpec)


@given(mutant=mutants())
def test_a_mutated_example_validates_or_fails_with_located_problems(
    mutant: Mutant, fuzz_root: Path, live_state: Any
) -> None:
    check_mutant(mutant, fuzz_root, live_state)


# -- crashes the fuzzer found ------------------------------------------------------------------
# Minimal inputs, each a change of one line (or one file) of the example. Each crashed with
# an exception that was not a SpecError until load_spec reported it as a located problem.
# Kept as explicit cases so that they are checked on every run, whatever examples the
# random search happens to draw.

LONG_NAME = "a" * 256  # one path component longer than NAME_MAX (255): ENAMETOOLONG


def _example_with(name: str, old: str, new: str) -> dict[str, bytes | str]:
    text = original(name).decode("utf-8")
    assert old in text
    return {**_example(), name: text.replace(old, new, 1).encode("utf-8")}


KNOWN_CRASHES = {
    # IsADirectoryError from mailops.fileio.read_bytes: os.fdopen() on a directory failed
    # before the fstat check that says "is a directory, not a regular file".
    "template-is-a-directory": {**_example(), TEMPLATE: DIRECTORY},
    "accounts.yaml-is-a-directory": {**_example(), "accounts.yaml": DIRECTORY},
    "html_template-names-a-directory": _example_with(
        "defaults.yaml", "html_template: templates/mail.html", "html_template: templates"
    ),
    # OSError ENAMETOOLONG from Path.exists() in checks._check_html_template, after
    # read_bytes had already turned the same error into a FileReadError.
    "html_template-name-too-long": _example_with(
        "defaults.yaml", "html_template: templates/mail.html", f"html_template: {LONG_NAME}"
    ),
    # OSError ENAMETOOLONG from Path.is_file() in checks._check_secret_files.
    "password-file-name-too-long": _example_with(
        "accounts.yaml", "password: {env: INFO_PASSWORD}", f"password: {{file: {LONG_NAME}}}"
    ),
}


@pytest.mark.parametrize("files", list(KNOWN_CRASHES.values()), ids=list(KNOWN_CRASHES))
def test_a_crash_the_fuzzer_found(files: dict[str, bytes | str], fuzz_root: Path, live_state: Any) -> None:
    check_mutant(Mutant(files, ["known crash"]), fuzz_root, live_state)
