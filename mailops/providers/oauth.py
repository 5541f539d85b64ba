"""What the OAuth providers (Microsoft 365, Google) share: consent instead of a password."""

from __future__ import annotations

from typing import ClassVar

from mailops.providers.base import AccountProvider, Completion, CredentialContext
from mailops.providers.presets import ServerPreset
from mailops.spec.models import Account, OAuthApps
from mailops.transport.connection import Credential
from mailops.transport.failures import FailureClass, TransportError


class OAuthProvider(AccountProvider):
    needs_consent: ClassVar[bool] = True
    has_aliases: ClassVar[bool] = True
    # An example of the app's entry in defaults.yaml, for the message when it is missing.
    app_example: ClassVar[str]

    def missing_setup(self, oauth: OAuthApps) -> str | None:
        if getattr(oauth, self.name) is not None:
            return None
        return (
            f"{self.name} accounts need the OAuth app they consent to; add it to defaults.yaml: "
            f"`oauth: {{{self.name}: {self.app_example}}}`"
        )

    def complete(self, account: Account) -> Completion:
        """The display name defaults to the address's local part, the login to the address;
        the servers are the provider's. A password has no place here."""
        servers = super().complete(account)
        updates = dict(servers.updates)
        if account.display_name is None:
            updates["display_name"] = account.address.partition("@")[0]
        if account.username is None:
            updates["username"] = account.address
        problems = list(servers.problems)
        if account.password is not None:
            message = (
                f"{self.name} accounts connect by OAuth consent (`mailops connect`), not a password; remove `password`"
            )
            problems.append(("password", message, True))
        return Completion(updates=updates, problems=problems, filled_from=servers.filled_from)

    def preset_source(self, preset: ServerPreset) -> str:
        return f"{self.name} defaults"

    def credential(self, account: Account, context: CredentialContext) -> Credential:
        raise TransportError(
            FailureClass.AUTH, f"{account.address} has no OAuth token yet; run `mailops connect {account.address}`"
        )
