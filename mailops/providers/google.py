"""Google Workspace and Gmail mailboxes: OAuth consent with Google, through google-auth-oauthlib.

The app is a "Desktop app" OAuth client whose JSON (`oauth.google.client_secrets`)
names its `auth_uri` and `token_uri`. Consent runs the installed-app flow on a loopback
port; Google's device flow refuses Gmail scopes, and the copy-paste flow was shut down.
The identity is the `email` claim of the id_token, whose signature is verified against
the certificates the client JSON names (Google's own by default). Each account keeps
its own credentials.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
from mailops.spec.models import Account, GoogleApp, OAuthApps
from mailops.transport.failures import PROXY_HINT, FailureClass, TransportError

if TYPE_CHECKING:
    import requests
    from google.oauth2.credentials import Credentials

SCOPES = ("https://mail.google.com/", "openid", "email")
GOOGLE_CERTS = "https://www.googleapis.com/oauth2/v1/certs"
TESTING_APP_DAYS = 7
REVOKED_REMEDY = (
    "Google refused the refresh token: it was revoked, unused for six months, or the password changed (or "
    "the account holds too many tokens for this app). Run `mailops reconnect ADDRESS`."
)
UNREACHABLE_REMEDY = (
    "Google's token endpoint could not be reached, or it answered with an error: the grant may well be fine. "
    f"Check that this host reaches the OAuth client's token_uri, Google's oauth2.googleapis.com ({PROXY_HINT}); "
    "otherwise try again later."
)
TESTING_APP_REMEDY = (
    'Google refused the refresh token seven days after consent: the OAuth app is in "testing" status, '
    "where refresh tokens live 7 days. Publish the app (OAuth consent screen → Publish app), then run "
    "`mailops reconnect ADDRESS`."
)


@register
class GoogleProvider(OAuthProvider):
    name = "google"
    app_example = "{client_secrets: {file: <client JSON>}}"
    consent_methods = ("browser",)

    def cache_name(self, account: Account, apps: OAuthApps) -> str:
        return f"google {account.address.lower()}"

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
        from google_auth_oauthlib.flow import InstalledAppFlow

        from mailops.transport.http import https_session

        client = _client_config(context)
        flow = InstalledAppFlow.from_client_config(client, scopes=list(SCOPES))
        session = https_session(context.ca_file, flow.oauth2session)
        wanted = self.consenting_identity(account)
        try:
            with consent_browser(show, wanted, cancel):
                credentials = flow.run_local_server(
                    host="localhost",
                    port=0,
                    open_browser=True,  # the consent browser: the URL goes to `show`
                    authorization_prompt_message="",
                    success_message="mailops has the consent; you may close this window.",
                    timeout_seconds=600,
                    login_hint=wanted,
                    prompt="consent select_account",
                    access_type="offline",
                )
        except Exception as exc:  # noqa: BLE001 - oauthlib, requests and the loopback server raise many kinds
            raise ConsentError(f"the sign-in did not complete: {exc}") from None
        if credentials is None or not credentials.refresh_token:
            raise ConsentError("Google gave no refresh token (was `access_type=offline` refused?)")
        identity = _verified_email(credentials.id_token, client, session)
        return Consented(identity=identity, cache=credentials.to_json())

    def access_token(self, account: Account, context: CredentialContext, stored: str, identity: str) -> Token:
        from google.auth.exceptions import GoogleAuthError, RefreshError
        from google.auth.transport.requests import Request

        from mailops.transport.http import https_session

        credentials = _credentials(stored)
        if credentials.valid:
            return Token(str(credentials.token), None)
        try:
            credentials.refresh(Request(https_session(context.ca_file)))  # type: ignore[no-untyped-call]
        except RefreshError as exc:
            consent = context.vault.consent(account.address) if context.vault else None
            age = dt.datetime.now(dt.UTC) - consent.consented_at if consent else None
            testing = age is not None and abs(age - dt.timedelta(days=TESTING_APP_DAYS)) <= dt.timedelta(days=1)
            remedy = TESTING_APP_REMEDY if testing else REVOKED_REMEDY
            raise TransportError(FailureClass.TOKEN, str(exc), protocol="oauth", remedy=remedy) from None
        except GoogleAuthError as exc:  # the token endpoint cannot be reached: the grant may be fine
            raise TransportError(
                FailureClass.CONNECT, f"Google token endpoint: {exc}", protocol="oauth", remedy=UNREACHABLE_REMEDY
            ) from None
        return Token(str(credentials.token), credentials.to_json())  # type: ignore[no-untyped-call]


def _credentials(stored: str) -> Credentials:
    """The stored credentials, with the token endpoint they came from.

    ``Credentials.from_authorized_user_info`` would send every refresh to Google's
    default endpoint, whatever the client JSON named.
    """
    from google.oauth2.credentials import Credentials

    info = json.loads(stored)
    expiry = info.get("expiry")
    return Credentials(  # type: ignore[no-untyped-call]
        token=info.get("token"),
        refresh_token=info.get("refresh_token"),
        token_uri=info.get("token_uri"),
        client_id=info.get("client_id"),
        client_secret=info.get("client_secret"),
        scopes=info.get("scopes"),
        # google-auth writes naive UTC with a Z; it compares naive UTC.
        expiry=dt.datetime.fromisoformat(expiry.removesuffix("Z")).replace(tzinfo=None) if expiry else None,
    )


def _app_of(apps: OAuthApps) -> GoogleApp:
    if apps.google is None:
        raise ConsentError("defaults.yaml declares no `oauth.google` app")
    return apps.google


def _client_config(context: CredentialContext) -> dict[str, Any]:
    """The client JSON the spec references, checked for what the flow needs."""
    from mailops.providers.manual import read_secret

    reference = _app_of(context.apps).client_secrets
    try:
        text = read_secret(reference, context.config_dir, single_line=False)
    except TransportError as exc:
        raise ConsentError(exc.detail) from None
    try:
        config = json.loads(text)
    except ValueError:
        raise ConsentError(f"the Google client JSON ({reference.describe()}) is not JSON") from None
    installed = config.get("installed") if isinstance(config, dict) else None
    needed = ("client_id", "auth_uri", "token_uri")
    if not isinstance(installed, dict) or any(not isinstance(installed.get(key), str) for key in needed):
        raise ConsentError(
            f"the Google client JSON ({reference.describe()}) is not a desktop app's: it needs "
            '`{"installed": {"client_id", "client_secret", "auth_uri", "token_uri"}}`'
        )
    return {"installed": installed}


def _verified_email(id_token: Any, client: dict[str, Any], session: requests.Session) -> str:
    """The `email` of the id_token, after checking its signature, audience and issuer."""
    from google.auth import exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token as tokens

    installed = client["installed"]
    if not isinstance(id_token, str):
        raise ConsentError("Google gave no id_token: was the `openid email` scope refused?")
    try:
        claims = tokens.verify_token(
            id_token,
            Request(session),
            audience=installed["client_id"],
            certs_url=installed.get("auth_provider_x509_cert_url", GOOGLE_CERTS),
        )
    except (ValueError, exceptions.GoogleAuthError) as exc:
        raise ConsentError(f"the id_token does not verify: {exc}") from None
    issuer = str(claims.get("iss", ""))
    issuer_host = urlsplit(issuer if "//" in issuer else f"https://{issuer}").hostname
    if issuer_host != urlsplit(installed["auth_uri"]).hostname:
        raise ConsentError(f"the id_token comes from {issuer}, not from the client's identity provider")
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False:
        raise ConsentError("the id_token names no verified e-mail address")
    return email
