"""Round-trip YAML documents that remember where every node came from.

ruamel.yaml's round-trip loader keeps line/column of each key, value and list item
(0-based); this module turns a field path such as ``("accounts", 1, "imap", "port")``
back into a 1-based position so that every message can say ``FILE:LINE:COL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.resolver import VersionedResolver

from mailops.errors import Diagnostic

FieldPath = tuple[str | int, ...]


def format_path(path: FieldPath) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def round_trip_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


class _Yaml12Resolver(VersionedResolver):
    # The stock resolver looks up the document's YAML version for every scalar, through an
    # exception when libyaml parses; the spec is YAML 1.2, so answer that directly.
    @property
    def processing_version(self) -> tuple[int, int]:
        return (1, 2)


def fast_yaml() -> YAML:
    """Plain data, parsed by libyaml (ruamel.yaml.clib) where available: several times faster."""
    yaml = YAML(typ="safe", pure=False)
    yaml.Resolver = _Yaml12Resolver
    yaml.allow_duplicate_keys = False
    return yaml


@dataclass
class YamlDocument:
    """A loaded YAML file; ``data`` is None when it could not be parsed or is empty.

    ``data`` comes from the fast loader. Positions need the round-trip loader, which is
    slow on large files, so that second parse happens only when a position is asked for.
    """

    path: Path
    display_name: str
    text: str = ""
    data: Any = None
    problems: list[Diagnostic] = field(default_factory=list)
    _located: Any = None

    @property
    def located(self) -> Any:
        """The same document as round-trip nodes that carry their line and column."""
        if self._located is None and self.data is not None:
            self._located = round_trip_yaml().load(self.text)
        return self._located

    def position(self, path: FieldPath, *, at_key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at ``path``, or of its nearest existing parent.

        A complete path points at the value, or at its key when ``at_key`` is set (e.g. for
        an unknown key); a path that leaves the document points at the last node it reached.
        """
        node = self.located
        line, column = 0, 0
        for index, step in enumerate(path):
            last = index == len(path) - 1
            if isinstance(node, CommentedMap) and step in node:
                # Inside the path, point at the key; at its end, at the value (or the key if asked).
                use_key = at_key if last else True
                line, column = node.lc.key(step) if use_key else node.lc.value(step)
                node = node[step]
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
                line, column = node.lc.item(step)
                node = node[step]
            else:
                break
        return line + 1, column + 1

    def diagnostic(self, path: FieldPath, message: str, *, at_key: bool = False) -> Diagnostic:
        line, column = self.position(path, at_key=at_key)
        return Diagnostic(self.display_name, line, column, format_path(path), message)


_DUPLICATE_KEY = re.compile(r'found duplicate key "(?P<key>.*?)"')


def _describe_yaml_error(exc: MarkedYAMLError) -> str:
    problem = exc.problem or str(exc)
    duplicate = _DUPLICATE_KEY.search(problem)
    if duplicate:
        # ruamel's text also quotes both values; a value may be sensitive, so leave them out.
        return f"duplicate key `{duplicate['key']}` (each key may appear once per mapping)"
    if "'\\t'" in problem or "tab character" in problem:
        return "tab character; YAML indentation must use spaces"
    if exc.context and exc.context not in problem:
        return f"{problem} ({exc.context})"
    return problem


def load_document(path: Path, display_name: str) -> YamlDocument:
    """Parse ``path``; syntax errors, duplicate keys and a missing or empty file become problems."""
    document = YamlDocument(path=path, display_name=display_name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        document.problems.append(Diagnostic(display_name, 1, 1, "", "file not found"))
        return document
    except (OSError, UnicodeDecodeError) as exc:
        document.problems.append(Diagnostic(display_name, 1, 1, "", f"cannot read file: {exc}"))
        return document
    document.text = text
    try:
        document.data = fast_yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        document.problems.append(Diagnostic(display_name, line, column, "", _describe_yaml_error(exc)))
        document.data = None
    return document
