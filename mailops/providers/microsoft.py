"""Microsoft 365 mailboxes: OAuth consent with Microsoft's identity platform, through msal.

The app is a public client (`oauth.microsoft` in defaults.yaml). The accounts of one
app and tenant share one msal token cache, as msal intends. The scopes are the two that
IMAP and SMTP need; msal adds `openid`, `profile` and `offline_access` itself (and
refuses them when given).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mailops.providers.base import CredentialContext, register
from mailops.providers.oauth import (
    Consented,
    ConsentError,
    ConsentMethod,
    OAuthProvider,
    Show,
    Token,
    consent_browser,
)
from mailops.spec.models import Account, MicrosoftApp, OAuthApps
from mailops.transport.failures import PROXY_HINT, FailureClass, TransportError

if TYPE_CHECKING:
    import msal

SCOPES = ("https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send")

# What an Entra error code means for the person who has to fix it.
REMEDIES: dict[int, str] = {
    700082: (
        "The refresh token expired: the account was not used for 90 days. Run `mailops reconnect ADDRESS`; "
        "`mailops check` in cron keeps a token from expiring."
    ),
    50173: (
        "The grant was revoked (the password changed, or an admin revoked the sessions). "
        "Run `mailops reconnect ADDRESS`."
    ),
    50076: (
        "The tenant now requires multi-factor authentication for this sign-in. "
        "Run `mailops reconnect ADDRESS` and complete MFA."
    ),
    50079: (
        "The account must register for multi-factor authentication. Register it, then run `mailops reconnect ADDRESS`."
    ),
    65001: (
        "The app lacks consent for IMAP/SMTP in this tenant. An admin grants it (Enterprise applications → "
        "Permissions → Grant admin consent), then run `mailops reconnect ADDRESS`."
    ),
    7000222: (
        "The app registration's client secret expired. Renew it in Entra ID, then run `mailops reconnect ADDRESS`."
    ),
}


@register
class MicrosoftProvider(OAuthProvider):
    name = "microsoft"
    has_delegates = True
    app_example = "{client_id: <application id>}"
    consent_methods = ("device-code", "browser")

    def cache_name(self, account: Account, apps: OAuthApps) -> str:
        app = _app_of(apps)
        return f"microsoft {app.authority}/{app.tenant} {app.client_id}"

    def consent(
        self,
        account: Account,
        context: CredentialContext,
        stored: str | None,
        *,
        method: ConsentMethod,
        show: Show,
        cancel: threading.Event,
    ) -> Consented:
        wanted = self.consenting_identity(account)
        with _identity_platform(context.apps):
            client, cache = _client(context, stored)
            if method == "device-code":
                flow = client.initiate_device_flow(scopes=list(SCOPES))
                if "user_code" not in flow:
                    raise ConsentError(f"the device code flow did not start: {_describe(flow)}")
                show(flow["message"])
                # msal looks at the exit condition once a second while it polls (its default: the code expired).
                result = client.acquire_token_by_device_flow(
                    flow, exit_condition=lambda flow: cancel.is_set() or flow.get("expires_at", 0) < time.time()
                )
            else:
                # login_hint and select_account: the browser's signed-in account is never taken silently.
                with consent_browser(show, wanted, cancel):
                    result = client.acquire_token_interactive(
                        list(SCOPES), login_hint=wanted, prompt="select_account", timeout=600
                    )
        if not result or "access_token" not in result:
            raise ConsentError(f"the sign-in did not complete: {_describe(result or {})}")
        claims = result.get("id_token_claims") or {}
        identity = claims.get("preferred_username") or claims.get("upn")
        if not isinstance(identity, str) or not identity:
            raise ConsentError("the token names no account (no preferred_username or upn claim)")
        return Consented(identity=identity, cache=cache.serialize())

    def access_token(self, account: Account, context: CredentialContext, stored: str, identity: str) -> Token:
        with _identity_platform(context.apps):
            client, cache = _client(context, stored)
            accounts = client.get_accounts(username=identity)
            if not accounts:
                raise TransportError(
                    FailureClass.TOKEN, f"no token of {identity} is stored for {account.address}", protocol="oauth"
                )
            result = client.acquire_token_silent_with_error(list(SCOPES), account=accounts[0])
        if not result or "access_token" not in result:
            raise _refused(result or {})
        return Token(result["access_token"], cache.serialize() if cache.has_state_changed else None)


UNREACHABLE_REMEDY = (
    "The Microsoft identity platform could not be reached, or it answered with an error: the grant may well be "
    "fine. Check `oauth.microsoft.authority` and `tenant` in defaults.yaml, and that this host reaches the "
    f"authority ({PROXY_HINT}); otherwise try again later."
)


@contextmanager
def _identity_platform(apps: OAuthApps) -> Iterator[None]:
    """What msal raises when the identity platform cannot be reached or answers with an error (requests'
    errors are OSErrors; an authority msal cannot use is a ValueError), as a connection failure."""
    import msal

    try:
        yield
    except (OSError, ValueError, msal.exceptions.MsalError) as exc:
        app = _app_of(apps)
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TransportError(
            FailureClass.CONNECT,
            f"the Microsoft identity platform at {app.authority}/{app.tenant}: {detail}",
            protocol="oauth",
            remedy=UNREACHABLE_REMEDY,
        ) from None


def _app_of(apps: OAuthApps) -> MicrosoftApp:
    if apps.microsoft is None:
        raise ConsentError("defaults.yaml declares no `oauth.microsoft` app")
    return apps.microsoft


def _client(
    context: CredentialContext, stored: str | None
) -> tuple[msal.PublicClientApplication, msal.SerializableTokenCache]:
    import msal

    from mailops.transport.http import https_session

    app = _app_of(context.apps)
    cache = msal.SerializableTokenCache()
    if stored:
        cache.deserialize(stored)
    client = msal.PublicClientApplication(
        app.client_id,
        authority=f"{app.authority}/{app.tenant}",
        token_cache=cache,
        http_client=https_session(context.ca_file),
        # The authority comes from the reviewed spec (sovereign clouds have their own).
        instance_discovery=False,
    )
    return client, cache


def _describe(result: dict[str, Any]) -> str:
    error = result.get("error", "unknown error")
    description = str(result.get("error_description") or "").splitlines()
    return f"{error}: {description[0]}" if description else str(error)


def _refused(result: dict[str, Any]) -> TransportError:
    """A refused refresh: the grant is gone, and a person must reconnect (with the remedy for its code)."""
    codes = [int(code) for code in result.get("error_codes") or [] if str(code).isdigit()]
    codes += [int(code) for code in re.findall(r"AADSTS(\d+)", str(result.get("error_description", "")))]
    remedy = next((REMEDIES[code] for code in codes if code in REMEDIES), None)
    return TransportError(FailureClass.TOKEN, _describe(result), protocol="oauth", remedy=remedy)
