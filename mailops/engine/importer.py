"""Writing the live state back into `accounts.yaml` (`mailops import`), keeping comments and order.

Only what differs is written: a field that matches what the spec already says (after
defaults and presets are filled) is left as the author wrote it, and an account that
exists only in the live state (drift) is appended with the fields that are not defaults.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.anchor import Anchor
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mailops.errors import MailopsError, SpecError, quoted
from mailops.fileio import atomic_write
from mailops.providers.base import provider_for
from mailops.spec.loader import ACCOUNTS_FILE, ConfigDirError, load_spec
from mailops.spec.models import Account, address_key
from mailops.spec.yamldoc import round_trip_yaml
from mailops.state.accounts import AccountState


@dataclass
class ImportReport:
    updated: dict[str, list[str]] = field(default_factory=dict)  # address -> fields written
    added: list[str] = field(default_factory=list)
    only_in_spec: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.updated or self.added)


def import_live_state(config_dir: Path, live: list[AccountState]) -> ImportReport:
    """Merge ``live`` into ``config_dir/accounts.yaml``; the file is rewritten only when something differs."""
    path = config_dir / ACCOUNTS_FILE
    yaml = round_trip_yaml()
    if not config_dir.is_dir():
        raise ConfigDirError(f"config directory {config_dir} not found")
    if path.exists():
        try:
            loaded = load_spec(config_dir)
        except SpecError as exc:
            raise MailopsError(
                "the spec must be valid before the live state is imported into it:\n"
                + "\n".join(str(problem) for problem in exc.problems)
            ) from None
        spec, document = loaded.spec, yaml.load(loaded.documents[ACCOUNTS_FILE].text)
    else:
        spec, document = None, CommentedMap()
    entries = document.setdefault("accounts", CommentedSeq())
    by_address = {address_key(str(entry["address"])) or str(entry["address"]).lower(): entry for entry in entries}
    shared = _shared_nodes(document)
    report = ImportReport()
    live_addresses = set()
    for state in live:
        live_addresses.add(state.address)
        entry = by_address.get(state.address)
        declared = spec.account(state.address) if spec else None
        if entry is None or declared is None:
            entries.append(_new_entry(state))
            report.added.append(state.address)
            continue
        written = _merge_into(entry, state.settings, declared.model_dump(mode="json"), shared)
        if written:
            report.updated[state.address] = written
    report.only_in_spec = [address for address in by_address if address not in live_addresses]
    if report.changed:
        buffer = io.StringIO()
        yaml.dump(document, buffer)
        text = buffer.getvalue()
        try:  # what is written must load as a valid spec again
            load_spec(config_dir, texts={ACCOUNTS_FILE: text})
        except SpecError as exc:
            raise MailopsError(
                f"the live state does not make a valid {ACCOUNTS_FILE}, so nothing was written "
                "(positions are in the file as it would be written):\n"
                + "\n".join(str(problem) for problem in exc.problems)
            ) from None
        # Written whole and renamed into place: a full disk or a kill never leaves half a file.
        atomic_write(path, text)
    return report


def _shared_nodes(document: Any) -> set[int]:
    """The mappings and lists that appear in more than one place (an alias, or a `<<` merge).

    Writing into one of them would change every account that shares it.
    """
    seen: set[int] = set()
    shared: set[int] = set()
    pending = [document]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict | list):
            continue
        if id(node) in seen:
            shared.add(id(node))
            continue
        seen.add(id(node))
        pending.extend(node.values() if isinstance(node, dict) else node)
    return shared


def _unshared(node: Any) -> Any:
    """A copy of ``node`` for one account alone: no anchor, nothing it shares with others."""
    copied = copy.deepcopy(node)
    pending = [copied]
    while pending:
        item = pending.pop()
        if isinstance(item, CommentedMap | CommentedSeq):
            # A fresh, empty anchor: deepcopy shares the Anchor object with the original.
            setattr(item, Anchor.attrib, Anchor())
            pending.extend(item.values() if isinstance(item, dict) else item)
    return copied


def _merge_into(
    entry: CommentedMap, live: dict[str, Any], declared: dict[str, Any], shared: set[int], prefix: str = ""
) -> list[str]:
    """Write the fields where ``live`` differs from ``declared``; returns their dotted paths."""
    written = []
    for key, value in live.items():
        before = declared.get(key)
        if value == before:
            continue
        if isinstance(value, dict) and isinstance(before, dict) and isinstance(entry.get(key), CommentedMap):
            if id(entry[key]) in shared:
                entry[key] = _unshared(entry[key])  # this account's own copy; the others keep theirs
            # Descend, so comments inside a block the author wrote survive.
            written += _merge_into(entry[key], value, before, shared, f"{prefix}{key}.")
            continue
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = _yaml_value(value)
        written.append(prefix + key)
    return written


def _new_entry(state: AccountState) -> CommentedMap:
    """The shortest entry that loads back into the same settings."""
    try:
        account = Account.model_validate(state.settings)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(step) for step in error["loc"])
        raise MailopsError(
            f"the live state of {quoted(state.address)} is no account mailops can write into the spec "
            f"({where}: {error['msg']}); repair or delete it in the state store"
        ) from None
    defaults = {name: info.get_default(call_default_factory=True) for name, info in Account.model_fields.items()}
    # What the provider would fill in for an entry that names only address and provider.
    bare = Account.model_validate({"address": account.address, "provider": account.provider})
    filled = provider_for(account.provider).complete(bare).updates
    entry = CommentedMap()
    for key, value in state.settings.items():
        if key in ("address", "provider"):
            entry[key] = value
            continue
        if value is None or value == _json(defaults.get(key)) or (key in filled and value == _json(filled[key])):
            continue
        entry[key] = _yaml_value(value)
    return entry


def _json(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _yaml_value(value: Any) -> Any:
    """Nested settings as compact flow mappings, as the example writes them."""
    if isinstance(value, dict):
        mapping = CommentedMap((k, _yaml_value(v)) for k, v in value.items() if v is not None)
        mapping.fa.set_flow_style()
        return mapping
    if isinstance(value, list):
        sequence = CommentedSeq(_yaml_value(v) for v in value)
        sequence.fa.set_flow_style()
        return sequence
    return value
