"""What every kind of account (`provider:` in the spec) offers the rest of mailops.

One class per provider, registered under its `provider:` name. The spec checks ask it
to complete an account (defaults, required fields), the engine asks whether a person
must consent first and for the credential to log in with. Nothing outside
``providers/`` branches on the provider's name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, get_args

from mailops.providers.presets import ServerPreset, preset_for
from mailops.spec.models import Account, OAuthApps, Provider
from mailops.transport.connection import Credential

if TYPE_CHECKING:
    from mailops.state.tokens import TokenVault


@dataclass(frozen=True)
class Completion:
    """What :meth:`AccountProvider.complete` found: fields to fill, and fields that are wrong or missing."""

    updates: dict[str, object] = field(default_factory=dict)
    problems: list[tuple[str, str, bool]] = field(default_factory=list)  # (field, message, at the key)
    filled_from: str = ""  # where filled servers came from, for the note ("microsoft defaults")


@dataclass(frozen=True)
class CredentialContext:
    """Where a provider finds what a login needs.

    Secret files are relative to ``config_dir``; OAuth providers find their app in
    ``apps``, their tokens in ``vault`` and the CA to trust for the identity provider in
    ``ca_file`` (besides the system's).
    """

    config_dir: Path
    apps: OAuthApps = field(default_factory=OAuthApps)
    vault: TokenVault | None = None
    ca_file: Path | None = None


class AccountProvider(ABC):
    name: ClassVar[str]
    # A person consents once (OAuth) before an account of this provider can log in.
    needs_consent: ClassVar[bool] = False
    # Other identities the consenting account may carry (`aliases:`), and consent by a
    # delegate for a shared mailbox (`delegate:`): only where the provider has them.
    has_aliases: ClassVar[bool] = False
    has_delegates: ClassVar[bool] = False

    def complete(self, account: Account) -> Completion:
        """Defaults for what the spec may leave out, and the problems of what it must not.

        The servers come from the provider's defaults or the preset of the address's
        domain; a provider adds its own fields on top (see the subclasses).
        """
        problems = []
        if account.aliases and not self.has_aliases:
            problems.append(("aliases", f"{self.name} accounts have no aliases to allow; remove `aliases`", True))
        if account.delegate is not None and not self.has_delegates:
            message = f"{self.name} accounts have no delegates (only Microsoft shared mailboxes); remove `delegate`"
            problems.append(("delegate", message, True))
        missing = [name for name in ("imap", "smtp") if getattr(account, name) is None]
        if not missing:
            return Completion(problems=problems)
        preset = self.server_preset(account)
        if preset is None:
            domain = account.address.partition("@")[2]
            message = f"required for manual accounts: no preset is known for `{domain}`; give host, port and encryption"
            return Completion(problems=problems + [(name, message, False) for name in missing])
        return Completion(
            updates={name: getattr(preset, name) for name in missing},
            problems=problems,
            filled_from=self.preset_source(preset),
        )

    def server_preset(self, account: Account) -> ServerPreset | None:
        return preset_for(account.provider, account.address)

    def preset_source(self, preset: ServerPreset) -> str:
        return f"preset {preset.name}"

    def missing_setup(self, oauth: OAuthApps) -> str | None:
        """What the spec lacks for accounts of this provider to connect at all (the OAuth app), or None."""
        return None

    @abstractmethod
    def credential(self, account: Account, context: CredentialContext) -> Credential:
        """The login for IMAP and SMTP; a missing secret is a classified ``secret`` failure."""


_REGISTRY: dict[str, type[AccountProvider]] = {}


def register(cls: type[AccountProvider]) -> type[AccountProvider]:
    """Class decorator: make ``cls`` the provider for ``provider: <cls.name>``."""
    _REGISTRY[cls.name] = cls
    return cls


@cache  # providers hold no state of their own
def provider_for(name: str) -> AccountProvider:
    """The provider registered as ``name`` (one of the spec's `provider:` values)."""
    if name not in _REGISTRY and name in get_args(Provider):
        # Each module registers its class; only the one asked for is imported (a spec of manual
        # accounts needs none of the OAuth libraries).
        importlib.import_module(f"mailops.providers.{name}")
    return _REGISTRY[name]()
