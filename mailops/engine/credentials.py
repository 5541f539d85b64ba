"""What the engine hands the providers to log in: the spec's apps, the token vault, the CA to trust."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailops.providers.base import CredentialContext

if TYPE_CHECKING:
    from mailops.settings import Settings
    from mailops.spec import LoadedSpec
    from mailops.state.store import StateStore


def credential_context(loaded: LoadedSpec, settings: Settings, store: StateStore | None) -> CredentialContext:
    """The context for the accounts of ``loaded``; OAuth tokens need a store and MAILOPS_SECRET_KEY.

    Without a key the vault is absent: manual accounts work, and an OAuth account's login
    fails with a ``secret`` failure that says how to make a key.
    """
    vault = None
    key = settings.token_key()
    if store is not None and store.exists and key:
        from mailops.state.tokens import TokenVault

        vault = TokenVault(store, key)
    return CredentialContext(loaded.config_dir, apps=loaded.spec.oauth, vault=vault, ca_file=settings.ca_file)
