"""Loads the two spec files and reports every problem at once, each located in its file.

The steps: parse both files round-trip (syntax, duplicate keys), validate each
section with the pydantic models (item by item, so one broken account does not hide
the others), run the cross-file checks, and fill server defaults from presets.
Only a spec without a single problem comes out as a :class:`Spec`.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from mailops.bulk import cycle_collector_paused
from mailops.errors import Diagnostic, MailopsError, SpecError
from mailops.spec.models import (
    Account,
    AccountsFile,
    DefaultsFile,
    Employee,
    OAuthApps,
    Policies,
    ProjectLink,
    SendingDefaults,
    Spec,
    address_key,
)
from mailops.spec.yamldoc import FieldPath, YamlDocument, load_document

ACCOUNTS_FILE = "accounts.yaml"
DEFAULTS_FILE = "defaults.yaml"
FILE_MODELS: dict[str, type[BaseModel]] = {ACCOUNTS_FILE: AccountsFile, DEFAULTS_FILE: DefaultsFile}


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    config_dir: Path
    documents: dict[str, YamlDocument]
    pending_notes: list[tuple[str, FieldPath, str]]

    @property
    def notes(self) -> list[Diagnostic]:
        """What was filled in (e.g. servers from a preset), located in the files."""
        return sorted(self.documents[file].diagnostic(path, message) for file, path, message in self.pending_notes)


@dataclass
class SpecParts:
    """What validated, section by section, plus the names declared anywhere (even in broken items)."""

    accounts: list[tuple[int, Account]] = field(default_factory=list)
    projects: dict[str, ProjectLink] = field(default_factory=dict)
    defaults: SendingDefaults | None = None
    employees: dict[str, Employee] = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)
    oauth: OAuthApps = field(default_factory=OAuthApps)
    policies: Policies = field(default_factory=Policies)
    declared_addresses: set[str] = field(default_factory=set)
    declared_projects: set[str] = field(default_factory=set)
    declared_queues: set[str] = field(default_factory=set)
    declared_principals: set[str] = field(default_factory=set)
    # Files that could not be read or parsed: references into them are not checked,
    # since every name in them would look undeclared.
    unreadable_files: set[str] = field(default_factory=set)


class ConfigDirError(MailopsError):
    """The config directory itself is missing or not a directory."""


class Report:
    """Collects located problems and notes for both documents.

    A field that failed validation is reported once: later checks that stumble over the
    same field (or a part of it) stay quiet, so one mistake gives one message.
    """

    def __init__(self, documents: dict[str, YamlDocument]):
        self.documents = documents
        self.problems: list[Diagnostic] = [p for d in documents.values() for p in d.problems]
        # Located only when shown: locating needs a second, located parse.
        self.notes: list[tuple[str, FieldPath, str]] = []
        self._broken: set[tuple[str, FieldPath]] = set()
        self._broken_prefixes: set[tuple[str, FieldPath]] = set()

    def problem(self, file: str, path: FieldPath, message: str, *, at_key: bool = False) -> None:
        if any((file, path[:end]) in self._broken for end in range(len(path) + 1)):
            return
        self.problems.append(self.documents[file].diagnostic(path, message, at_key=at_key))

    def broken(self, file: str, path: FieldPath) -> None:
        """Mark ``path`` as already reported: no further problem is reported at or below it."""
        self._broken.add((file, path))
        self._broken_prefixes.update((file, path[:end]) for end in range(len(path) + 1))

    def is_broken(self, file: str, path: FieldPath) -> bool:
        """Whether ``path``, or a part of it, was reported as wrong (its value is then unknown)."""
        return (file, path) in self._broken_prefixes

    def note(self, file: str, path: FieldPath, message: str) -> None:
        self.notes.append((file, path, message))


def load_spec(config_dir: Path | str, *, texts: dict[str, str] | None = None) -> LoadedSpec:
    """Load and check the spec in ``config_dir``; raise :class:`SpecError` listing every problem.

    ``texts`` stands in for files (by name) not yet written, to check them first.
    """
    from mailops.spec.checks import check_spec  # the checks import presets, which import the models

    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        reason = "is not a directory" if config_dir.exists() else "not found"
        raise ConfigDirError(f"config directory {config_dir} {reason}")
    with cycle_collector_paused():
        # Files are named as the user named the directory, so messages point where they looked.
        documents = {
            name: load_document(config_dir / name, str(config_dir / name), text=(texts or {}).get(name))
            for name in FILE_MODELS
        }
        report = Report(documents)
        parts = SpecParts()
        for name, document in documents.items():
            if document.problems or not isinstance(document.data, dict):
                parts.unreadable_files.add(name)
            if not document.problems:
                _validate_document(name, document, parts, report)
            document.data = None  # validated: only the models are used from here on
        spec = check_spec(parts, config_dir, report)
    if report.problems or spec is None:
        raise SpecError(report.problems)
    return LoadedSpec(spec=spec, config_dir=config_dir, documents=documents, pending_notes=report.notes)


def _validate_document(name: str, document: YamlDocument, parts: SpecParts, report: Report) -> None:
    model = FILE_MODELS[name]
    data = document.data
    sections = ", ".join(model.model_fields)
    if data is None:
        report.problem(name, (), f"file is empty; expected a mapping with the keys: {sections}")
        return
    if not isinstance(data, dict):
        report.problem(name, (), f"expected a mapping with the keys: {sections}; got {_kind(data)}")
        return
    for key in data:
        if key in model.model_fields:
            continue
        other = next((n for n, m in FILE_MODELS.items() if n != name and key in m.model_fields), None)
        hint = f"`{key}` belongs in {other}" if other else _unknown_key_hint(key, model.model_fields)
        report.problem(name, (key,), f"unknown key; {hint}", at_key=True)
    for section, info in model.model_fields.items():
        if section not in data:
            if info.is_required():
                report.problem(name, (), f"`{section}:` is required")
            continue
        _validate_section(name, section, data[section], info.annotation, parts, report)


def _validate_section(file: str, section: str, raw: Any, annotation: Any, parts: SpecParts, report: Report) -> None:
    _collect_declared_names(section, raw, parts)
    if section == "accounts" and isinstance(raw, list):
        for index, item in enumerate(raw):
            account = _validate(Account, item, file, (section, index), report)
            if account is not None:
                parts.accounts.append((index, account))
        return
    if section in ("projects", "employees") and isinstance(raw, dict):
        # One entry at a time, so a broken entry leaves the others usable for cross-checks.
        for key, value in raw.items():
            entry = _validate(annotation, {key: value}, file, (section,), report)
            if entry is not None:
                getattr(parts, section).update(entry)
        return
    value = _validate(annotation, raw, file, (section,), report)
    if value is not None:
        setattr(parts, section, value)


def _collect_declared_names(section: str, raw: Any, parts: SpecParts) -> None:
    """Names that references may point to, taken from the raw YAML so broken entries still count.

    Only text counts as a name; raw values are never turned into strings (an alias
    bomb's expansion would be built right here).
    """
    if section == "accounts" and isinstance(raw, list):
        for item in raw:
            address = item.get("address") if isinstance(item, dict) else None
            if isinstance(address, str):
                parts.declared_addresses.add(_declared_address(address))
    elif section == "projects" and isinstance(raw, dict):
        parts.declared_projects |= {key for key in raw if isinstance(key, str)}
    elif section == "queues" and isinstance(raw, list):
        parts.declared_queues |= {item for item in raw if isinstance(item, str)}
    elif section == "employees" and isinstance(raw, dict):
        parts.declared_principals |= {key for key in raw if isinstance(key, str)}
        for person in raw.values():
            if isinstance(person, dict) and isinstance(person.get("groups"), list):
                parts.declared_principals |= {group for group in person["groups"] if isinstance(group, str)}


def _declared_address(raw: str) -> str:
    """The key an account's address is known by, even when the address itself is malformed.

    ``"A <a@example.com>"`` is refused where it is written, but it plainly declares
    ``a@example.com``: references to that address are not reported a second time.
    """
    key = address_key(raw)
    if key is not None:
        return key
    _name, inner = parseaddr(raw)
    return (address_key(inner) if "@" in inner else None) or raw.lower()


def _validate(annotation: Any, raw: Any, file: str, prefix: FieldPath, report: Report) -> Any:
    """The validated value; on errors, report them all and return what can be salvaged (or None)."""
    adapter = _adapter(annotation)
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    for error in errors:
        loc: FieldPath = prefix + tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            owner = _model_at(annotation, tuple(error["loc"])[:-1])
            fields = owner.model_fields if owner else {}
            report.problem(file, loc, f"unknown field; {_unknown_key_hint(loc[-1], fields)}", at_key=True)
        elif error["type"] == "missing":
            report.problem(file, loc, "required field is missing")
        else:
            report.problem(file, loc, _message(error))
    return _salvage(adapter, raw, errors, file, prefix, report)


_SALVAGE_ROUNDS = 4


def _salvage(
    adapter: TypeAdapter[Any], raw: Any, errors: list[Any], file: str, prefix: FieldPath, report: Report
) -> Any:
    """The value without its broken fields, so the checks of the other fields still run.

    A broken field is dropped (its default applies); a field that then goes missing
    takes its parent with it. The dropped paths are marked as reported, so a salvaged
    value never produces a second message about what is already wrong. It is used for
    cross-checks only: a spec with problems never comes out of the loader.
    """
    data = copy.deepcopy(raw)
    for _ in range(_SALVAGE_ROUNDS):
        # Linear in the number of errors: a list of 100,000 broken items is salvaged in one pass.
        missing = {tuple(error["loc"]) for error in errors if error["type"] == "missing"}
        targets = {loc[:-1] if loc in missing else loc for loc in (tuple(error["loc"]) for error in errors)}
        if () in targets:
            return None  # the value as a whole is broken
        thinned: dict[int, list[Any]] = {}
        for target in targets:
            removed = _remove(data, target, thinned)
            if removed:
                report.broken(file, prefix + removed)
        for items in thinned.values():
            items[:] = [item for item in items if item is not _GONE]
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
    return None


_GONE: Any = object()  # a list item marked for removal; lists are compacted once, after all removals


def _remove(data: Any, loc: tuple[Any, ...], thinned: dict[int, list[Any]]) -> FieldPath:
    """Remove the node at ``loc``, or the deepest node that exists on the way; return its path.

    A list item is marked, not deleted, so that the indices of the other targets stay
    valid; ``thinned`` collects the lists to compact. An empty path means nothing was
    left to remove (another removal took it).
    """
    parent: Any = None
    node: Any = data
    path: FieldPath = ()
    for step in loc:
        if isinstance(node, dict) and step in node:
            parent, node, path = node, node[step], path + (step,)
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node) and node[step] is not _GONE:
            parent, node, path = node, node[step], path + (step,)
        else:
            break
    if not path:
        return path
    last = path[-1]
    if isinstance(parent, list) and isinstance(last, int):
        parent[last] = _GONE
        thinned[id(parent)] = parent
    else:
        del parent[last]
    return path


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    key = repr(annotation)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(annotation)
    return _ADAPTERS[key]


_EXPECTED_SHAPE = {
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text",
}


def _message(error: Any) -> str:
    """Pydantic's message, phrased for a YAML author. Never quotes the input (it may be a secret)."""
    if _EXPECTED_SHAPE.get(error["type"]):
        return f"expected {_EXPECTED_SHAPE[error['type']]}, got {_kind(error.get('input'))}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message


def _unknown_key_hint(key: object, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key)[:100], known, n=1)
    if close:
        return f"did you mean `{close[0]}`?"
    return "expected one of: " + ", ".join(known) if known else "no keys are allowed here"


def _model_at(annotation: Any, loc: FieldPath) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` under ``annotation``."""
    current = annotation
    for step in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(step, int) and origin in (list, tuple):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel) and step in current.model_fields:
            current = current.model_fields[step].annotation
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the interesting type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0]
        else:
            return annotation


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    for kind, name in ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
