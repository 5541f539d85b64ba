"""Server settings that mailops knows, so the spec need not repeat them.

The data lives in ``presets.yaml`` beside this module: the OAuth providers' defaults
and the well-known providers a manual account may use without naming servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from mailops.spec.models import ServerSettings


@dataclass(frozen=True)
class ServerPreset:
    name: str
    source: str
    imap: ServerSettings
    smtp: ServerSettings
    domains: tuple[str, ...] = ()


@cache
def _presets() -> dict[str, ServerPreset]:
    from mailops.spec.yamldoc import parse_yaml

    raw = parse_yaml(resources.files("mailops.providers").joinpath("presets.yaml").read_text(encoding="utf-8"))
    return {
        name: ServerPreset(
            name=name,
            source=entry["source"],
            imap=ServerSettings(**entry["imap"]),
            smtp=ServerSettings(**entry["smtp"]),
            domains=tuple(entry.get("domains", ())),
        )
        for name, entry in raw.items()
    }


def all_presets() -> list[ServerPreset]:
    return list(_presets().values())


def preset_for(provider: str, address: str) -> ServerPreset | None:
    """The preset that fills an account's servers: its OAuth provider's, or its domain's."""
    presets = _presets()
    if provider != "manual":
        return presets.get(provider)
    domain = address.rpartition("@")[2].lower()
    return next((p for p in presets.values() if domain in p.domains), None)
