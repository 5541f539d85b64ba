"""Writing the live state back into `accounts.yaml` (`mailops import`), keeping comments and order.

Only what differs is written: a field that matches what the spec already says (after
defaults and presets are filled) is left as the author wrote it, and an account that
exists only in the live state (drift) is appended with the fields that are not defaults.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mailops.errors import MailopsError, SpecError
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
        written = _merge_into(entry, state.settings, declared.model_dump(mode="json"))
        if written:
            report.updated[state.address] = written
    report.only_in_spec = [address for address in by_address if address not in live_addresses]
    if report.changed:
        # Written whole and renamed into place: a full disk or a kill never leaves half a file.
        buffer = io.StringIO()
        yaml.dump(document, buffer)
        atomic_write(path, buffer.getvalue())
    return report


def _merge_into(entry: CommentedMap, live: dict[str, Any], declared: dict[str, Any], prefix: str = "") -> list[str]:
    """Write the fields where ``live`` differs from ``declared``; returns their dotted paths."""
    written = []
    for key, value in live.items():
        before = declared.get(key)
        if value == before:
            continue
        if isinstance(value, dict) and isinstance(before, dict) and isinstance(entry.get(key), CommentedMap):
            # Descend, so comments inside a block the author wrote survive.
            written += _merge_into(entry[key], value, before, f"{prefix}{key}.")
            continue
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = _yaml_value(value)
        written.append(prefix + key)
    return written


def _new_entry(state: AccountState) -> CommentedMap:
    """The shortest entry that loads back into the same settings."""
    account = Account.model_validate(state.settings)
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
