"""Loading the spec's YAML safely and fast, with every value traceable to ``FILE:LINE:COL``.

The data is built straight from libyaml's parse events (ruamel.yaml.clib), as plain
dicts, lists and scalars of the YAML 1.2 core schema. Building it here, rather than
with ruamel's constructor, is what bounds hostile input and keeps a large spec fast:

- nesting deeper than :data:`MAX_DEPTH` stops the parse at the first level too deep
  (libyaml slows down quadratically, and recursive consumers crash, on deep nesting);
- aliases share the anchored value instead of copying it, and the document may not
  grow through aliases beyond a budget, so an "alias bomb" of a few hundred bytes is
  refused at the alias that explodes, and a recursive alias is refused outright;
- only the core schema's tags resolve (null, bool, int, float, str; no timestamps or
  Python objects), so a value like ``2026-13-45`` stays text for the field to judge;
- the file is read only if it is a regular, not oversized file, and must be UTF-8
  without control characters; every refusal names its line and column.

Positions are needed only for messages, so they are collected by a second, located
parse that runs only when a message is about to be shown.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailops.errors import Diagnostic
from mailops.fileio import FileReadError, MiB, NotUtf8Error, decode_utf8, line_and_column, read_bytes

if TYPE_CHECKING:
    from ruamel.yaml import YAML

FieldPath = tuple[str | int, ...]

MAX_FILE_BYTES = 32 * MiB
MAX_DEPTH = 32
# Aliases may add this many values, plus one per character of the file, beyond what is written.
ALIAS_ALLOWANCE = 100_000
# Python refuses to convert longer digit strings to int (and it would be slow).
MAX_DIGITS = 4300

_CORE = "tag:yaml.org,2002:"


def format_path(path: FieldPath) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def round_trip_yaml() -> YAML:
    """ruamel's round-trip mode, for rewriting a file with its comments (``mailops import``)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


class YamlProblem(Exception):
    """The text is not acceptable YAML for the spec; ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str):
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


# -- reading -------------------------------------------------------------------------

# What YAML 1.2 does not allow in a stream (outside its c-printable set): the C0 and C1
# controls other than tab, line breaks and NEL, DEL, and U+FFFE/U+FFFF. (Surrogates cannot
# come out of a strict UTF-8 decode.) Each is refused with its position.
_NOT_PRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")


def decode_yaml_bytes(data: bytes) -> str:
    """UTF-8 text without control characters, or :class:`YamlProblem` at the offending character."""
    try:
        text = decode_utf8(data)
    except NotUtf8Error as exc:
        raise YamlProblem(exc.line, exc.column, str(exc)) from None
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line, column = line_and_column(text, bad.start())
        raise YamlProblem(line, column, f"control character {describe_character(bad.group())} is not allowed")
    return text


_CHARACTER_NAMES = {
    "\x00": "NUL",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x1b": "ESC",
    "\x7f": "DEL",
    "\x85": "next line",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}


def describe_character(character: str) -> str:
    name = _CHARACTER_NAMES.get(character)
    code = f"U+{ord(character):04X}"
    return f"{code} ({name})" if name else code


# -- building data from parse events -------------------------------------------------

# Plain scalars that are not text (YAML 1.2 core schema); anything else that starts
# like a number goes through _number.
_WORDS: dict[str, Any] = {
    **dict.fromkeys(("", "~", "null", "Null", "NULL")),
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}
_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)\Z")
_NUMBER_START = frozenset("0123456789+-.")


def _plain(value: str, mark: Any) -> Any:
    """Resolve a plain (unquoted) scalar by the YAML 1.2 core schema."""
    if value in _WORDS:
        return _WORDS[value]
    return _number(value, mark) if value[0] in _NUMBER_START else value


def _number(value: str, mark: Any) -> Any:
    if value.isdigit() and value.isascii() or _INT.match(value):  # the first: most numbers, without a regex
        return _int(value, 10, mark)
    if _OCT.match(value):
        return _int(value[2:], 8, mark)
    if _HEX.match(value):
        return _int(value[2:], 16, mark)
    if _FLOAT.match(value):
        return float(value)
    if _INF.match(value):
        return float("-inf") if value[0] == "-" else float("inf")
    if _NAN.match(value):
        return float("nan")
    return value


def _int(digits: str, base: int, mark: Any) -> int:
    # Bound the written digits (parsing is slow beyond) and the value itself: a short hex
    # number can still be too large to print in decimal (Python refuses past 4300 digits).
    if len(digits) > MAX_DIGITS:
        raise YamlProblem(mark.line + 1, mark.column + 1, f"number with more than {MAX_DIGITS} digits")
    number = int(digits, base)
    if number.bit_length() > _MAX_BITS:
        raise YamlProblem(mark.line + 1, mark.column + 1, f"number with more than {MAX_DIGITS} decimal digits")
    return number


_MAX_BITS = int(MAX_DIGITS * 3.32)  # log2(10) bits per decimal digit, rounded down


def _tagged(tag: str, value: str, mark: Any) -> Any:
    """A scalar with an explicit tag: the core schema's, or a plain string for ``!``."""
    if tag in ("!", _CORE + "str"):
        return value
    if tag == _CORE + "null":
        return None
    expected = {_CORE + "bool": bool, _CORE + "int": int, _CORE + "float": float}.get(tag)
    if expected is None:
        raise YamlProblem(mark.line + 1, mark.column + 1, f"tag `{tag}` is not supported; remove it")
    resolved = _plain(value, mark) if value else None
    if expected is float and type(resolved) is int:
        return float(resolved)
    if type(resolved) is not expected:
        raise YamlProblem(mark.line + 1, mark.column + 1, f"`{value}` is not a valid {tag.removeprefix(_CORE)}")
    return resolved


_NO_KEY: Any = object()
_MERGE_KEY: Any = object()  # a plain `<<` as a key (a quoted "<<" is an ordinary key)
# Aliases are budgeted by what they repeat: one unit per value, plus one per this many
# characters of text, so that repeating a long text is not free either.
_CHARACTERS_PER_UNIT = 64


class _Open:
    """Bookkeeping of a mapping or sequence under construction (its data lives in locals)."""

    __slots__ = ("anchor", "start", "depth", "deepest", "merges", "mark", "path")

    def __init__(self, anchor: str | None, start: int, depth: int, mark: Any, path: FieldPath):
        self.anchor = anchor
        self.start = start  # the node count when it opened: its size is the count at its end minus this
        self.depth = depth
        self.deepest = depth  # the deepest level reached inside it, aliases included
        self.merges: list[tuple[Any, Any]] | None = None
        self.mark = mark
        self.path = path


Marks = dict[FieldPath, tuple[int, int, int, int]]  # path -> 0-based key line/column, value line/column


def parse_yaml(text: str, *, marks: Marks | None = None) -> Any:
    """Build plain data from ``text``; when ``marks`` is given, fill it with every node's position.

    Raises :class:`YamlProblem` for syntax errors and for everything the module
    docstring lists as refused. The loop is flat and keeps the open container in
    locals: it runs once per parse event, hundreds of thousands of times for a large spec.
    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    words, number_start, no_key, merge_key = _WORDS, _NUMBER_START, _NO_KEY, _MERGE_KEY
    per_unit, number, collections = _CHARACTERS_PER_UNIT, _number, (dict, list)  # locals: read per event
    located = marks is not None

    saved: list[tuple[Any, bool, Any, Any, _Open | None]] = []  # the parents of the open container
    container: Any = None  # the open dict or list; None at the top
    is_map = False
    key: Any = no_key
    key_mark: Any = None
    current: _Open | None = None
    depth = 0
    count = 0  # values built so far, an alias counting as the size of what it repeats
    budget = ALIAS_ALLOWANCE + len(text)
    anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, size, height)
    open_anchored: list[_Open] = []
    documents = 0
    root: Any = None
    mark: Any = None
    with _tuple_events() as parser_class:
        parser = parser_class(text)
        next_event = parser.get_event
        try:
            while True:
                kind, args = next_event()
                if kind is _SCALAR:
                    anchor, tag, _implicit, value, start_mark, _end_mark, style = args
                    weight = 1 + len(value) // per_unit
                    count += weight
                    if tag is None:
                        if not style:  # plain: resolve; quoted and block scalars are text
                            if value in words:
                                value = words[value]
                            elif value[0] in number_start:
                                value = number(value, start_mark)
                            elif value == "<<" and is_map and key is no_key:
                                value = merge_key
                    else:
                        value = _tagged(str(tag), value, start_mark)
                    if anchor is not None:
                        anchors[anchor] = (value, weight, 0)
                    mark = start_mark
                elif kind is _MAPPING_START or kind is _SEQUENCE_START:
                    anchor, tag, _implicit, mark, _end_mark, _flow_style = args
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise YamlProblem(
                            mark.line + 1,
                            mark.column + 1,
                            f"nested more than {MAX_DEPTH} levels deep; the spec needs few",
                        )
                    opens_map = kind is _MAPPING_START
                    if tag is not None and str(tag) not in ("!", _CORE + ("map" if opens_map else "seq")):
                        raise YamlProblem(mark.line + 1, mark.column + 1, f"tag `{tag}` is not supported; remove it")
                    count += 1
                    path: FieldPath = ()
                    if located:
                        parent_path = current.path if current is not None else ()
                        if container is None:
                            path = ()
                        elif is_map:
                            path = parent_path + ((key,) if key is not no_key else ("<key>",))
                        else:
                            path = parent_path + (len(container),)
                    opened = _Open(anchor, count, depth, mark, path)
                    for anchored in open_anchored:
                        if depth > anchored.deepest:
                            anchored.deepest = depth
                    if anchor is not None:
                        open_anchored.append(opened)
                    saved.append((container, is_map, key, key_mark, current))
                    container, is_map, key, current = ({} if opens_map else []), opens_map, no_key, opened
                    continue
                elif kind is _COLLECTION_END:
                    assert current is not None
                    value, finished = container, current
                    if finished.merges:
                        _merge(value, finished, marks)
                    if finished.anchor is not None:
                        open_anchored.remove(finished)
                        anchors[finished.anchor] = (value, count - finished.start + 1, finished.deepest - depth + 1)
                    container, is_map, key, key_mark, current = saved.pop()
                    depth -= 1
                    mark = finished.mark
                elif kind is _ALIAS:
                    name, mark, _end_mark = args
                    if any(anchored.anchor == name for anchored in open_anchored):
                        raise YamlProblem(
                            mark.line + 1, mark.column + 1, f"alias `*{name}` refers to itself (recursive)"
                        )
                    if name not in anchors:
                        raise YamlProblem(
                            mark.line + 1, mark.column + 1, f"alias `*{name}` has no anchor `&{name}` before it"
                        )
                    value, size, height = anchors[name]
                    count += size
                    if count > budget:
                        raise YamlProblem(
                            mark.line + 1,
                            mark.column + 1,
                            f"aliases expand the document to more than {budget} values; "
                            "an alias may repeat a value, not multiply the document",
                        )
                    if depth + height > MAX_DEPTH:
                        raise YamlProblem(
                            mark.line + 1,
                            mark.column + 1,
                            f"alias `*{name}` nests the document more than {MAX_DEPTH} levels deep",
                        )
                    for anchored in open_anchored:
                        if depth + height > anchored.deepest:
                            anchored.deepest = depth + height
                elif kind is _DOCUMENT_START:
                    documents += 1
                    if documents > 1:
                        mark = args[0]
                        raise YamlProblem(
                            mark.line + 1, mark.column + 1, "a second YAML document; the file must hold exactly one"
                        )
                    continue
                elif kind is _STREAM_END:
                    return root
                else:
                    continue

                # Attach the value just built to the open container.
                if is_map:
                    if key is no_key:
                        if isinstance(value, collections):
                            raise YamlProblem(
                                mark.line + 1, mark.column + 1, "a key must be a plain value, not a mapping or list"
                            )
                        if value is merge_key and current is not None and current.merges or value in container:
                            shown = "<<" if value is merge_key else value
                            raise YamlProblem(
                                mark.line + 1,
                                mark.column + 1,
                                f"duplicate key `{shown}` (each key may appear once per mapping)",
                            )
                        key = value
                        if located:
                            key_mark = mark
                        continue
                    if key is merge_key:
                        assert current is not None
                        current.merges = (current.merges or []) + [(value, mark)]
                    else:
                        container[key] = value
                        if located:
                            assert marks is not None and current is not None
                            marks[current.path + (key,)] = (key_mark.line, key_mark.column, mark.line, mark.column)
                    key = no_key
                elif container is not None:
                    if located:
                        assert marks is not None and current is not None
                        marks[current.path + (len(container),)] = (mark.line, mark.column, mark.line, mark.column)
                    container.append(value)
                else:
                    root = value
        except MarkedYAMLError as exc:
            line, column, message = _located_yaml_error(exc)
            raise YamlProblem(*_within(text, line, column), message) from None
        except YAMLError as exc:  # the reader's errors carry an offset, not a mark
            raise YamlProblem(1, 1, str(exc).splitlines()[0]) from None
        finally:
            parser.dispose()


# libyaml's parser (ruamel.yaml.clib) makes each event by calling the class of that name
# in its module, and ruamel's event classes run three Python __init__s each: more than
# the parse itself costs. While parse_yaml runs, those names are light constructors that
# make a (kind, arguments) tuple. Only parse_yaml parses with that module (every YAML
# mailops reads but `mailops import`'s round-trip goes through it), and the lock keeps
# two threads from swapping the names at once.
_SCALAR, _MAPPING_START, _SEQUENCE_START, _COLLECTION_END, _ALIAS = "scalar", "map", "seq", "end", "alias"
_DOCUMENT_START, _STREAM_END, _OTHER = "document", "stream end", "other"
_EVENT_KINDS = {
    "ScalarEvent": _SCALAR,
    "MappingStartEvent": _MAPPING_START,
    "SequenceStartEvent": _SEQUENCE_START,
    "MappingEndEvent": _COLLECTION_END,
    "SequenceEndEvent": _COLLECTION_END,
    "AliasEvent": _ALIAS,
    "DocumentStartEvent": _DOCUMENT_START,
    "StreamEndEvent": _STREAM_END,
    "StreamStartEvent": _OTHER,
    "DocumentEndEvent": _OTHER,
}
_swap_lock = threading.Lock()


def _tuple_event(kind: str) -> Callable[..., tuple[str, tuple[Any, ...]]]:
    return lambda *args: (kind, args)


_TUPLE_EVENTS = {name: _tuple_event(kind) for name, kind in _EVENT_KINDS.items()}


@contextmanager
def _tuple_events() -> Iterator[Any]:
    """libyaml's parser class, making (kind, arguments) tuples while the context lasts."""
    import _ruamel_yaml

    with _swap_lock:
        classes = {name: getattr(_ruamel_yaml, name) for name in _TUPLE_EVENTS}
        try:
            for name, make in _TUPLE_EVENTS.items():
                setattr(_ruamel_yaml, name, make)
            yield _ruamel_yaml.CParser
        finally:
            for name, event_class in classes.items():
                setattr(_ruamel_yaml, name, event_class)


def _merge(mapping: dict[Any, Any], opened: _Open, marks: Marks | None) -> None:
    """Apply ``<<: *anchor`` merge keys: keys written in the mapping win over merged ones."""
    assert opened.merges is not None
    for value, mark in opened.merges:
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                raise YamlProblem(mark.line + 1, mark.column + 1, "`<<` merges only mappings")
            for key, item in source.items():
                if key not in mapping:
                    mapping[key] = item
                    if marks is not None:
                        marks[opened.path + (key,)] = (mark.line, mark.column, mark.line, mark.column)


def _within(text: str, line: int, column: int) -> tuple[int, int]:
    """Keep a position inside the text: libyaml reports the end of a file without a final
    line break one line beyond it."""
    last_line, end_column = line_and_column(text, len(text))
    return (line, column) if line <= last_line else (last_line, end_column)


_DUPLICATE_KEY = re.compile(r'found duplicate key "(?P<key>.*?)"')


def _located_yaml_error(exc: Any) -> tuple[int, int, str]:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or str(exc)
    duplicate = _DUPLICATE_KEY.search(problem)
    if duplicate:
        # ruamel's text also quotes both values; a value may be sensitive, so leave them out.
        return line, column, f"duplicate key `{duplicate['key']}` (each key may appear once per mapping)"
    if "'\\t'" in problem or "tab character" in problem:
        return line, column, "tab character; YAML indentation must use spaces"
    if exc.context and exc.context not in problem:
        return line, column, f"{problem} ({exc.context})"
    return line, column, problem


# -- documents -----------------------------------------------------------------------


@dataclass
class YamlDocument:
    """A loaded spec file; ``data`` is None when it could not be read or parsed, or is empty.

    The loader drops ``data`` once it is validated (a large spec's raw data is most of
    the memory a plan needs); positions come from ``text``.
    """

    path: Path
    display_name: str
    text: str = ""
    data: Any = None
    problems: list[Diagnostic] = field(default_factory=list)
    _marks: Marks | None = None

    @property
    def marks(self) -> Marks:
        """Every node's position, from a second, located parse (done once, when first needed)."""
        if self._marks is None:
            self._marks = {}
            if not self.problems:
                parse_yaml(self.text, marks=self._marks)
        return self._marks

    def position(self, path: FieldPath, *, at_key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at ``path``, or of its nearest existing parent.

        A complete path points at the value, or at its key when ``at_key`` is set (e.g. for
        an unknown key); a path that leaves the document points at the last node it reached.
        """
        marks = self.marks
        line, column = 0, 0
        for index in range(len(path)):
            found = marks.get(path[: index + 1])
            if found is None:
                break
            use_key = at_key if index == len(path) - 1 else True
            line, column = (found[0], found[1]) if use_key else (found[2], found[3])
        return line + 1, column + 1

    def diagnostic(self, path: FieldPath, message: str, *, at_key: bool = False) -> Diagnostic:
        line, column = self.position(path, at_key=at_key)
        return Diagnostic(self.display_name, line, column, format_path(path), message)


def load_document(path: Path, display_name: str, *, text: str | None = None) -> YamlDocument:
    """Read and parse ``path`` (or ``text`` in its place); every reason it cannot be used is a located problem."""
    document = YamlDocument(path=path, display_name=display_name)
    try:
        raw = read_bytes(path, limit=MAX_FILE_BYTES, what="file") if text is None else text.encode("utf-8")
    except FileReadError as exc:
        message = "file not found" if exc.missing else _without_path(str(exc), path)
        document.problems.append(Diagnostic(display_name, 1, 1, "", message))
        return document
    try:
        document.text = decode_yaml_bytes(raw)
        document.data = parse_yaml(document.text)
    except YamlProblem as problem:
        document.problems.append(Diagnostic(display_name, problem.line, problem.column, "", problem.message))
        document.data = None
    return document


def _without_path(message: str, path: Path) -> str:
    # The diagnostic already names the file at its start.
    return message.replace(f"file {path} ", "file ").replace(f" {path}:", ":")
