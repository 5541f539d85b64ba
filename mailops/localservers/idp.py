"""A local OAuth 2.0 / OpenID Connect identity provider: Microsoft Entra ID and Google, played on 127.0.0.1.

`LocalIdentityProvider` serves HTTPS on 127.0.0.1 (a thread in this process) with two faces, so that
the real, unpatched client libraries run their flows against it:

* **Entra ID** under ``/{tenant}`` (``organizations``, ``common``, the tenant GUID or a user's domain):
  OpenID discovery, the authorization-code flow with PKCE and a loopback redirect, the device-code
  flow, refresh tokens, signing keys. Token answers are shaped like Entra's (``client_info``,
  ``id_token`` with ``oid``/``tid``/``preferred_username``/``upn``, errors with ``AADSTS`` codes
  and ``error_codes``), which is what msal's ``PublicClientApplication`` needs.
* **Google** under ``/google``: the installed-app (loopback) authorization-code flow with PKCE,
  refresh tokens, and the signing certificates in both formats google-auth reads
  (``/google/certs``: PEM certificates by key id, google-auth's default format; ``/google/jwks``).
* ``POST /introspect`` (RFC 7662, form field ``token``) for Dovecot's oauth2 passdb, and
  `LocalIdentityProvider.token_info` for servers in this process (the test SMTP server).

Nobody types a password. "The person at the browser" is whoever the client of the browser-facing
pages says: the authorization endpoints sign in the account named by a ``login`` query parameter
(which the "browser" adds to the URL the library printed), or else `browser_user`, the account the
browser is already signed in to (set it to reproduce the classic trap: signed in as someone else
than ``login_hint`` names); without either they show a small sign-in form. The device-code
verification page ``/{tenant}/device?user_code=CODE&login=EMAIL`` approves as that user (or as
`browser_user`); `approve_device_code` does the same from Python.

Deliberately stricter than the real services in one respect: every refresh returns a new refresh
token and revokes the one it used (Entra keeps the old one valid for a while; Google rarely rotates).
Tests can make refreshes fail as the real services do (`revoke`, `fail_refresh`).

What it does not do: no real security. Anyone who can reach 127.0.0.1 can sign in as any registered
user; tokens live in memory only; no consent, no conditional access, no MFA, no real Microsoft or
Google token formats (access tokens are opaque random strings). It makes no outgoing connections.
For local use only (``mailops demo`` and the tests); it refuses to listen on anything but a loopback
address.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

Face = Literal["entra", "google"]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# OpenID Connect scopes; msal adds openid, profile and offline_access to every request itself.
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
GRAPH = "https://graph.microsoft.com"
# Parameters whose values never go into the request log.
SECRET_PARAMETERS = frozenset(
    {
        "code",
        "refresh_token",
        "device_code",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "token",
        "access_token",
        "id_token",
        "password",
    }
)
MAX_BODY = 64 * 1024
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"
_AADSTS_REDIRECT_MISMATCH = 50011


# --- public records ----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A directory user, known to both faces."""

    email: str
    object_id: str
    name: str


@dataclass(frozen=True)
class Client:
    """A registered OAuth client (an Entra app registration or a Google OAuth client)."""

    client_id: str
    public: bool
    secret: str | None
    redirect_uris: tuple[str, ...]
    allow_loopback: bool

    def allows_redirect(self, uri: str) -> bool:
        """Registered exactly, or any port and path on a loopback host (as both services allow native apps)."""
        if uri in self.redirect_uris:
            return True
        if not self.allow_loopback:
            return False
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"} and not parts.fragment


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the provider answered, for tests to assert on (secret values redacted)."""

    method: str
    path: str  # without the query string
    endpoint: str  # e.g. "entra.token", "entra.authorize", "google.token", "introspect"
    status: int
    params: Mapping[str, str]  # query and form parameters as sent; secrets as "<redacted>"
    user: str | None  # the account the request signed in, got tokens for, or introspected
    error: str | None  # the OAuth error code answered, if any
    at: float

    @property
    def scope(self) -> str | None:
        """The raw ``scope`` parameter, exactly as the client sent it."""
        return self.params.get("scope")

    @property
    def grant_type(self) -> str | None:
        return self.params.get("grant_type")

    @property
    def client_id(self) -> str | None:
        return self.params.get("client_id")


class TokenInfo(TypedDict):
    """What the provider knows about an access token it issued."""

    active: bool
    username: str  # the user's e-mail address (the name XOAUTH2 logins must use)
    email: str
    client_id: str
    scopes: list[str]
    issued_at: float
    expires_at: float
    revoked: bool
    face: str


# --- internal state ----------------------------------------------------------------------


@dataclass
class _AccessToken:
    token: str
    face: Face
    email: str
    client_id: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass(frozen=True)
class _Failure:
    error: str
    description: str | None  # None: the face's usual wording
    codes: tuple[int, ...]
    status: int


@dataclass
class _RefreshToken:
    token: str
    face: Face
    email: str
    client_id: str
    scopes: tuple[str, ...]
    issued_at: float
    state: Literal["active", "rotated", "revoked"] = "active"
    failure: _Failure | None = None


@dataclass
class _AuthCode:
    face: Face
    email: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    offline: bool
    expires_at: float
    used: bool = False


@dataclass
class _DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    email: str | None = None
    state: Literal["pending", "approved", "declined", "redeemed"] = "pending"


class _OAuthError(Exception):
    """An OAuth error answer (JSON); `codes` become Entra's AADSTS codes on the Entra face."""

    def __init__(self, error: str, description: str, *, codes: Iterable[int] = (), status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.codes = tuple(codes)
        self.status = status


class _PageError(Exception):
    """An error page for the browser-facing endpoints (HTML, status 4xx)."""

    def __init__(self, status: int, message: str, *, error: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error


class _RedirectError(Exception):
    """An authorization error reported to the client through its redirect URI (RFC 6749 4.1.2.1)."""

    def __init__(self, redirect_uri: str, state: str | None, error: str, description: str, mode: str) -> None:
        super().__init__(f"{error}: {description}")
        self.mode = mode
        self.redirect_uri = redirect_uri
        self.state = state
        self.error = error
        self.description = description


def read_form_post(page: str) -> tuple[str, dict[str, str]]:
    """What a browser submits from a ``response_mode=form_post`` page: (action URL, fields).

    For tests that play the browser: msal's own loopback server (``acquire_token_interactive``)
    accepts only form_post responses.
    """
    from html.parser import HTMLParser

    found: dict[str, Any] = {"action": None, "fields": {}}

    class _Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = {k: v or "" for k, v in attrs}
            if tag == "form" and values.get("method", "").lower() == "post" and found["action"] is None:
                found["action"] = values.get("action", "")
            elif tag == "input" and found["action"] is not None and "name" in values:
                found["fields"][values["name"]] = values.get("value", "")

    _Parser().feed(page)
    if found["action"] is None:
        raise ValueError("no form_post form on this page")
    return str(found["action"]), dict(found["fields"])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _missing(name: str, face: Face = "entra") -> _OAuthError:
    if face == "google":
        return _OAuthError("invalid_request", f"Missing required parameter: {name}")
    return _OAuthError(
        "invalid_request", f"The request body must contain the following parameter: '{name}'.", codes=[900144]
    )


def _with_query(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _parse_params(raw: str) -> dict[str, str]:
    """Form or query parameters; a repeated parameter is an error (RFC 6749 3.1, 3.2)."""
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=100)
    except ValueError as exc:
        raise _OAuthError("invalid_request", f"Malformed parameters: {exc}", codes=[9002313]) from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise _OAuthError("invalid_request", f"Parameter '{key}' is included more than once.", codes=[9002313])
        params[key] = value
    return params


def _entra_resource(scope: str) -> str:
    """The resource a scope belongs to: ``https://outlook.office.com/IMAP.AccessAsUser.All`` → its origin."""
    if "://" in scope:
        head, _, _ = scope.rpartition("/")
        return head if "://" in head else scope
    return GRAPH  # a bare scope such as User.Read means Microsoft Graph


# --- the provider --------------------------------------------------------------------------


class LocalIdentityProvider:
    """Entra ID and Google OAuth endpoints over HTTPS on 127.0.0.1, for the demo and the tests.

    Start it with `start` (or ``with``), register users (`add_user`) and clients (`add_client`),
    point msal at `entra_authority` and google-auth-oauthlib at `google_client_config`; both must
    trust `ca_file` (the server certificate). Settable attributes: `browser_user`, `token_lifetime`,
    `code_lifetime`, `device_code_lifetime`, `device_interval`, `rotate_refresh_tokens`.
    """

    def __init__(
        self,
        cert_file: Path | str,
        key_file: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tenant_id: str | None = None,
        token_lifetime: int = 3600,
    ) -> None:
        try:
            loopback = ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the local identity provider listens on an IPv4 loopback address only, not {host!r}")
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.host = host
        self._requested_port = port
        self.tenant_id = tenant_id or str(uuid.uuid4())
        # Seconds an access token lives (msal refreshes any token with less than 5 minutes left).
        self.token_lifetime = token_lifetime
        self.code_lifetime = 600
        self.device_code_lifetime = 900
        # What the device-code answer tells clients to wait between polls (msal sleeps this long).
        self.device_interval = 5
        # The account "the browser" is signed in to; a ``login`` parameter on the request wins.
        self.browser_user: str | None = None
        # Each refresh revokes the refresh token it used (stricter than Entra; see the module doc).
        self.rotate_refresh_tokens = True
        self.connection_errors = 0  # failed TLS handshakes, dropped connections, and the like

        self._lock = threading.RLock()
        self._users: dict[str, User] = {}
        self._clients: dict[str, Client] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._auth_codes: dict[str, _AuthCode] = {}
        self._device_codes: dict[str, _DeviceCode] = {}
        self._user_codes: dict[str, str] = {}  # user code -> device code
        self._records: list[RequestRecord] = []
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._make_signing_key()

    # --- lifecycle ---

    def start(self) -> LocalIdentityProvider:
        if self._server is not None:
            return self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        server = _TLSServer((self.host, self._requested_port), self, context)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-idp", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> LocalIdentityProvider:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def server_address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the identity provider is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The certificate clients must trust (the server's own, self-signed)."""
        return self.cert_file

    def entra_authority(self, tenant: str = "organizations") -> str:
        """The ``authority`` for msal (with ``instance_discovery=False``)."""
        return f"{self.base_url}/{tenant}"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    @property
    def google_issuer(self) -> str:
        return f"{self.base_url}/google"

    @property
    def google_certs_url(self) -> str:
        """For ``google.oauth2.id_token.verify_token(..., certs_url=...)``."""
        return f"{self.base_url}/google/certs"

    def google_client_config(self, client_id: str) -> dict[str, dict[str, Any]]:
        """A client config for ``google_auth_oauthlib.flow.Flow.from_client_config``."""
        with self._lock:
            client = self._clients[client_id]
        return {
            "installed": {
                "client_id": client.client_id,
                "client_secret": client.secret,
                "auth_uri": f"{self.base_url}/google/auth",
                "token_uri": f"{self.base_url}/google/token",
                "auth_provider_x509_cert_url": self.google_certs_url,
                "redirect_uris": list(client.redirect_uris) or ["http://localhost"],
            }
        }

    # --- directory ---

    def add_user(self, email: str, *, object_id: str | None = None, name: str | None = None) -> User:
        user = User(email, object_id or str(uuid.uuid4()), name or email.partition("@")[0])
        with self._lock:
            self._users[email.lower()] = user
        return user

    def add_client(
        self,
        client_id: str,
        *,
        public: bool = True,
        secret: str | None = None,
        redirect_uris: Iterable[str] = (),
        allow_loopback: bool = True,
    ) -> Client:
        """Register a client. A client with a secret must present it (Google's installed apps have one too)."""
        if not public and not secret:
            raise ValueError("a confidential client needs a secret")
        client = Client(client_id, public, secret, tuple(redirect_uris), allow_loopback)
        with self._lock:
            self._clients[client_id] = client
        return client

    def client(self, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def user(self, email: str) -> User | None:
        with self._lock:
            return self._users.get(email.lower())

    # --- the person at the browser ---

    def approve_device_code(self, user_code: str, email: str) -> None:
        """What the person does on the verification page: sign in as `email` and approve `user_code`."""
        with self._lock:
            device = self._pending_device_code(user_code)
            user = self.user(email)
            if user is None:
                raise KeyError(f"no such user: {email}")
            device.email, device.state = user.email, "approved"

    def pending_device_codes(self, client_id: str) -> list[str]:
        """The user codes of `client_id` that wait for a person, as a verification page would list them."""
        now = time.time()
        with self._lock:
            return [
                device.user_code
                for device in self._device_codes.values()
                if device.client_id == client_id and device.state == "pending" and device.expires_at >= now
            ]

    def deny_device_code(self, user_code: str) -> None:
        with self._lock:
            self._pending_device_code(user_code).state = "declined"

    def _pending_device_code(self, user_code: str) -> _DeviceCode:
        device_code = self._user_codes.get(user_code.strip().upper().replace("-", ""))
        device = self._device_codes.get(device_code or "")
        if device is None or device.expires_at < time.time():
            raise KeyError("that code is unknown or has expired")
        if device.state != "pending":
            raise KeyError("that code has already been used")
        return device

    # --- tokens ---

    def token_info(self, access_token: str) -> TokenInfo | None:
        """The access token's user, client, scopes and expiry; None for a token this provider never issued."""
        with self._lock:
            token = self._access_tokens.get(access_token)
            if token is None:
                return None
            return TokenInfo(
                active=not token.revoked and token.expires_at > time.time(),
                username=token.email,
                email=token.email,
                client_id=token.client_id,
                scopes=list(token.scopes),
                issued_at=token.issued_at,
                expires_at=token.expires_at,
                revoked=token.revoked,
                face=token.face,
            )

    def issue_access_token(
        self, email: str, scopes: Iterable[str], *, client_id: str = "local-test", lifetime: int | None = None
    ) -> str:
        """An access token without a flow (for tests of the mail servers' XOAUTH2)."""
        user = self.user(email)
        if user is None:
            raise KeyError(f"no such user: {email}")
        return self._new_access_token("entra", user, client_id, tuple(scopes), lifetime)

    def expire_access_tokens(self, email: str | None = None) -> int:
        """Let the access tokens of `email` (or all) expire now; returns how many."""
        now = time.time()
        with self._lock:
            tokens = [t for t in self._access_tokens.values() if email is None or t.email.lower() == email.lower()]
            for token in tokens:
                token.expires_at = min(token.expires_at, now)
            return len(tokens)

    def revoke(self, email: str) -> int:
        """Revoke every refresh and access token of `email` (a password reset, an admin's revocation)."""
        with self._lock:
            count = 0
            for refresh in self._refresh_tokens.values():
                if refresh.email.lower() == email.lower() and refresh.state == "active":
                    refresh.state, count = "revoked", count + 1
            for access in self._access_tokens.values():
                if access.email.lower() == email.lower():
                    access.revoked = True
            return count

    def fail_refresh(
        self,
        email: str,
        error: str = "invalid_grant",
        description: str | None = None,
        codes: Iterable[int] = (700082,),
        status: int = 400,
    ) -> int:
        """Make the current refresh tokens of `email` fail with this error; tokens from a later sign-in work.

        The default is Entra's "expired by inactivity" (AADSTS700082). The Entra face answers with the
        AADSTS code in ``error_description`` and ``error_codes``; the Google face answers ``error`` and
        `description` (default: Google's "Token has been expired or revoked."). Returns how many
        refresh tokens were affected.
        """
        codes = tuple(codes)
        failure = _Failure(error, description, codes, status)
        with self._lock:
            tokens = [
                t for t in self._refresh_tokens.values() if t.email.lower() == email.lower() and t.state == "active"
            ]
            for token in tokens:
                token.failure = failure
            return len(tokens)

    def refresh_token_state(self, refresh_token: str) -> str | None:
        """The state of a refresh token: active, rotated (used for a refresh), revoked, failing, or None."""
        with self._lock:
            token = self._refresh_tokens.get(refresh_token)
            if token is None:
                return None
            return "failing" if token.state == "active" and token.failure else token.state

    # --- what happened ---

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self._lock:
            return list(self._records)

    def count(
        self,
        endpoint: str | None = None,
        *,
        grant_type: str | None = None,
        user: str | None = None,
        status: int | None = None,
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (endpoint is None or r.endpoint == endpoint)
            and (grant_type is None or r.grant_type == grant_type)
            and (user is None or (r.user or "").lower() == user.lower())
            and (status is None or r.status == status)
        )

    def refreshes(self, email: str | None = None) -> int:
        """Successful refresh-token grants (both faces)."""
        return sum(
            1
            for r in self.requests
            if r.endpoint.endswith(".token")
            and r.grant_type == "refresh_token"
            and r.status == 200
            and (email is None or (r.user or "").lower() == email.lower())
        )

    def clear_log(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    # --- signing ---

    def _make_signing_key(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from google.auth import crypt

        from mailops.localservers.certificates import self_signed

        key, cert = self_signed("mailops local identity provider signing key")
        der = cert.public_bytes(serialization.Encoding.DER)
        self._kid = _b64url(hashlib.sha1(der).digest())  # Entra's kid is the certificate's x5t
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        numbers = key.public_key().public_numbers()
        self._jwk: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self._kid,
            "x5t": self._kid,
            "n": _int_b64url(numbers.n),
            "e": _int_b64url(numbers.e),
            "x5c": [base64.b64encode(der).decode("ascii")],
        }
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._signer = crypt.RSASigner.from_string(pem, key_id=self._kid)  # type: ignore[no-untyped-call]

    def _sign(self, claims: Mapping[str, Any]) -> str:
        from google.auth import jwt

        token: bytes = jwt.encode(self._signer, dict(claims))  # type: ignore[no-untyped-call]
        return token.decode("ascii")

    # --- token issuing (called from the request handler) ---

    def _new_access_token(
        self, face: Face, user: User, client_id: str, scopes: tuple[str, ...], lifetime: int | None = None
    ) -> str:
        now = time.time()
        value = ("ya29." if face == "google" else "") + secrets.token_urlsafe(48)
        token = _AccessToken(value, face, user.email, client_id, scopes, now, now + (lifetime or self.token_lifetime))
        with self._lock:
            self._access_tokens[value] = token
        return value

    def _new_refresh_token(self, face: Face, user: User, client_id: str, scopes: tuple[str, ...]) -> str:
        value = ("1//" if face == "google" else "") + secrets.token_urlsafe(64)
        with self._lock:
            self._refresh_tokens[value] = _RefreshToken(value, face, user.email, client_id, scopes, time.time())
        return value

    def _entra_issuer(self, tenant: str) -> str:
        generic = tenant.lower() in {"common", "organizations"}
        return f"{self.base_url}/{'{tenantid}' if generic else self.tenant_id}/v2.0"

    def _entra_tokens(
        self,
        client: Client,
        user: User,
        scopes: tuple[str, ...],
        *,
        nonce: str | None,
        client_info: bool,
        refresh: bool,
    ) -> dict[str, Any]:
        now = int(time.time())
        granted = tuple(s for s in scopes if s != "offline_access")
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": self._new_access_token("entra", user, client.client_id, granted),
        }
        if refresh or "offline_access" in scopes:
            answer["refresh_token"] = self._new_refresh_token("entra", user, client.client_id, scopes)
        if "openid" in scopes:
            claims: dict[str, Any] = {
                "aud": client.client_id,
                "iss": f"{self.base_url}/{self.tenant_id}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "name": user.name,
                "oid": user.object_id,
                "preferred_username": user.email,
                "upn": user.email,
                "sub": _b64url(hashlib.sha256(f"{user.object_id}|{client.client_id}".encode()).digest()[:24]),
                "tid": self.tenant_id,
                "uti": secrets.token_urlsafe(16),
                "ver": "2.0",
            }
            if "email" in scopes:
                claims["email"] = user.email
            if nonce:
                claims["nonce"] = nonce
            answer["id_token"] = self._sign(claims)
        if client_info:
            answer["client_info"] = _b64url(json.dumps({"uid": user.object_id, "utid": self.tenant_id}).encode())
        return answer

    def _google_tokens(
        self, client: Client, user: User, scopes: tuple[str, ...], *, nonce: str | None, refresh: bool
    ) -> dict[str, Any]:
        now = int(time.time())
        access_token = self._new_access_token("google", user, client.client_id, scopes)
        answer: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": self.token_lifetime,
            "scope": " ".join(scopes),
            "token_type": "Bearer",
        }
        if refresh:
            answer["refresh_token"] = self._new_refresh_token("google", user, client.client_id, scopes)
        if "openid" in scopes:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims: dict[str, Any] = {
                "iss": self.google_issuer,
                "azp": client.client_id,
                "aud": client.client_id,
                "sub": str(int.from_bytes(hashlib.sha256(user.object_id.encode()).digest()[:8], "big")),
                "at_hash": _b64url(digest[:16]),
                "iat": now,
                "exp": now + 3600,
            }
            if "email" in scopes:
                claims["email"] = user.email
                claims["email_verified"] = True
            if nonce:
                claims["nonce"] = nonce
            answer["id_token"] = self._sign(claims)
        return answer


# --- HTTP ----------------------------------------------------------------------------------


class _TLSServer(ThreadingHTTPServer):
    """HTTPS; the TLS handshake runs in the request's thread, so a stalled client blocks nobody."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: LocalIdentityProvider, context: ssl.SSLContext) -> None:
        self.provider = provider
        self.context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Handshake failures, clients that hang up: count them, print nothing.
        with self.provider._lock:
            self.provider.connection_errors += 1


_ENTRA_ROUTES: dict[str, tuple[str, str]] = {
    # Entra path below /{tenant}/ -> (endpoint name, method)
    "v2.0/.well-known/openid-configuration": ("entra.discovery", "GET"),
    "oauth2/v2.0/authorize": ("entra.authorize", "GET"),
    "oauth2/v2.0/devicecode": ("entra.devicecode", "POST"),
    "oauth2/v2.0/token": ("entra.token", "POST"),
    "discovery/v2.0/keys": ("entra.keys", "GET"),
    "device": ("entra.device", "GET POST"),
}
_GOOGLE_ROUTES: dict[str, tuple[str, str]] = {
    ".well-known/openid-configuration": ("google.discovery", "GET"),
    "auth": ("google.auth", "GET"),
    "token": ("google.token", "POST"),
    "certs": ("google.certs", "GET"),
    "jwks": ("google.jwks", "GET"),
}


class _Handler(BaseHTTPRequestHandler):
    server_version = "mailops-local-idp/1"
    timeout = 15  # seconds a connection may stall (TLS handshake included)

    # Per request, for the log.
    _endpoint = "unknown"
    _params: dict[str, str]
    _user: str | None = None
    _error: str | None = None
    _status = 0
    _face: Face | None = None

    @property
    def provider(self) -> LocalIdentityProvider:
        return cast(_TLSServer, self.server).provider

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the request log (`requests`) replaces the access log; URLs can hold codes

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, oversized headers) as OAuth-style JSON too."""
        if getattr(self, "request_version", "") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a garbage request line: answer with a status line anyway
        self._error = "invalid_request" if 400 <= code < 500 else "server_error"
        self._send_json(code, {"error": self._error, "error_description": message or HTTPStatus(code).phrase})

    # --- plumbing ---

    def _handle(self, method: str) -> None:
        self._params, self._endpoint, self._face = {}, "unknown", None
        self._user = self._error = None
        self._status = 0
        path = "?"
        try:
            split = urlsplit(self.path)
            path = unquote(split.path)
            self._route(method, path, split.query)
        except _OAuthError as exc:
            self._send_oauth_error(exc)
        except _PageError as exc:
            self._error = exc.error
            self._send_page(exc.status, "Sign-in error", f"<p>{html.escape(exc.message)}</p>")
        except _RedirectError as exc:
            self._error = exc.error
            params: dict[str, str | None] = {
                "error": exc.error,
                "error_description": exc.description,
                "state": exc.state,
            }
            self._respond_to_client(exc.redirect_uri, params, exc.mode)
        except Exception:  # noqa: BLE001 - never a traceback from the server thread
            self._error = "server_error"
            self._send_json(500, {"error": "server_error", "error_description": "Internal error in the local IdP."})
        finally:
            redacted = {k: ("<redacted>" if k in SECRET_PARAMETERS else v) for k, v in self._params.items()}
            self.provider._record(
                RequestRecord(
                    method, path, self._endpoint, self._status, redacted, self._user, self._error, time.time()
                )
            )

    def _route(self, method: str, path: str, raw_query: str) -> None:
        segments = path.split("/")
        if path == "/introspect":
            self._endpoint = "introspect"
            self._allow(method, "GET POST")
            self._introspect(method, raw_query)
            return
        if len(segments) >= 3 and segments[1] == "google":
            self._face = "google"
            endpoint, allowed = _GOOGLE_ROUTES.get("/".join(segments[2:]), ("unknown", ""))
            tenant = ""
        elif len(segments) >= 3 and segments[1]:
            self._face = "entra"
            endpoint, allowed = _ENTRA_ROUTES.get("/".join(segments[2:]), ("unknown", ""))
            tenant = segments[1]
        else:
            endpoint, allowed = "unknown", ""
        self._endpoint = endpoint
        if endpoint == "unknown":
            self._face = None
            raise _OAuthError("not_found", f"No such endpoint: {path}", status=404)
        self._allow(method, allowed)
        query = _parse_params(raw_query)
        if endpoint == "entra.device":  # a page: its form posts to itself
            self._params = {**query, **(self._read_form() if method == "POST" else {})}
        elif method == "GET":
            self._params = query
        else:
            self._params = self._read_form()
        if self._face == "entra" and tenant.lower() not in self._tenants():
            raise _OAuthError(
                "invalid_tenant",
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
                "into the correct cloud.",
                codes=[90002],
            )
        handlers: dict[str, Callable[[], None]] = {
            "entra.discovery": lambda: self._send_json(200, self._entra_discovery(tenant)),
            "entra.keys": lambda: self._send_json(200, {"keys": [self.provider._jwk]}),
            "entra.authorize": lambda: self._authorize("entra", tenant),
            "entra.devicecode": lambda: self._device_code(tenant),
            "entra.device": lambda: self._device_page(self._params),
            "entra.token": lambda: self._token("entra"),
            "google.discovery": lambda: self._send_json(200, self._google_discovery()),
            "google.certs": lambda: self._send_json(200, {self.provider._kid: self.provider._cert_pem}),
            "google.jwks": lambda: self._send_json(200, {"keys": [self.provider._jwk]}),
            "google.auth": lambda: self._authorize("google", ""),
            "google.token": lambda: self._token("google"),
        }
        handlers[endpoint]()

    def _allow(self, method: str, allowed: str) -> None:
        if method not in allowed.split():
            raise _OAuthError("invalid_request", f"{method} is not allowed here; use {allowed}.", status=405)

    def _tenants(self) -> set[str]:
        provider = self.provider
        with provider._lock:
            domains = {u.email.rpartition("@")[2].lower() for u in provider._users.values()}
        return {"common", "organizations", provider.tenant_id.lower()} | domains

    def _read_form(self) -> dict[str, str]:
        if self.headers.get("Transfer-Encoding"):
            raise _OAuthError("invalid_request", "Send a Content-Length; chunked bodies are not supported.", status=411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _OAuthError("invalid_request", "Bad Content-Length.", codes=[9002313]) from None
        if length < 0:
            raise _OAuthError("invalid_request", "Bad Content-Length.", codes=[9002313])
        if length > MAX_BODY:
            self.close_connection = True
            # Read what was sent (within reason): closing on unread data resets the connection
            # before the client can read the answer.
            remaining = min(length, 16 * MAX_BODY)
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, MAX_BODY))):
                remaining -= len(chunk)
            raise _OAuthError("invalid_request", "The request body is too large.", status=413)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise _OAuthError("invalid_request", "The request body ended early.", codes=[9002313])
        if body and self.headers.get_content_type() != "application/x-www-form-urlencoded":
            raise _OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded.", codes=[9002313])
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise _OAuthError("invalid_request", "The body is not URL-encoded text.", codes=[9002313]) from None
        return _parse_params(text)

    def _client(self, params: Mapping[str, str], *, secret_check: bool) -> Client:
        """The client, authenticated by its secret (HTTP Basic or form fields) when it has one."""
        client_id, secret = params.get("client_id"), params.get("client_secret")
        authorization = self.headers.get("Authorization", "")
        if authorization[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
            except ValueError:
                raise _OAuthError("invalid_client", "Malformed Basic authorization.", status=401) from None
            if client_id and client_id != unquote(user):
                raise _OAuthError("invalid_request", "Two different client_ids.", codes=[9002313])
            client_id, secret = unquote(user), unquote(password)
        if not client_id:
            raise _missing("client_id", self._face or "entra")
        with self.provider._lock:
            client = self.provider._clients.get(client_id)
        if client is None:
            if self._face == "google":
                raise _OAuthError("invalid_client", "The OAuth client was not found.", status=401)
            raise _OAuthError(
                "unauthorized_client",
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.provider.tenant_id}'.",
                codes=[700016],
            )
        if secret_check:
            if client.secret is not None and secret is None:
                raise _OAuthError(
                    "invalid_client",
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                    codes=[7000218],
                    status=401,
                )
            if client.secret is None and secret is not None:
                raise _OAuthError(
                    "invalid_client",
                    "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
                    codes=[700025],
                    status=401,
                )
            if client.secret is not None and not secrets.compare_digest(
                client.secret.encode(), (secret or "").encode()
            ):
                raise _OAuthError(
                    "invalid_client",
                    "Unauthorized" if self._face == "google" else "Invalid client secret provided.",
                    codes=[7000215],
                    status=401,
                )
        return client

    def _scopes(self, face: Face, raw: str | None, *, required: bool) -> tuple[str, ...]:
        scopes = tuple(dict.fromkeys((raw or "").split()))
        if not scopes:
            if required:
                raise _missing("scope", face)
            return ()
        if face == "entra":
            resources = {_entra_resource(s) for s in scopes if s not in OIDC_SCOPES}
            if len(resources) > 1:
                raise _OAuthError(
                    "invalid_scope",
                    "Provided value for the input parameter scope is not valid because it contains more than one "
                    f"resource. Scope {' '.join(scopes)} is not valid.",
                    codes=[28000],
                )
        return scopes

    # --- responses ---

    def _send(self, status: int, content_type: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        request_id = self._request_header("client-request-id")
        if request_id:
            self.send_header("client-request-id", request_id[:100])
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def _request_header(self, name: str) -> str | None:
        headers = getattr(self, "headers", None)  # absent when the request line itself was bad
        return None if headers is None else headers.get(name)

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(payload).encode("utf-8"))

    def _send_page(self, status: int, title: str, body_html: str) -> None:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{body_html}"
            "<p><small>mailops local identity provider (a stand-in for local use)</small></p></body></html>"
        )
        self._send(status, "text/html; charset=utf-8", page.encode("utf-8"))

    def _redirect(self, location: str) -> None:
        self._send(302, "text/plain; charset=utf-8", b"Redirecting.", {"Location": location})

    def _respond_to_client(self, redirect_uri: str, params: Mapping[str, str | None], mode: str) -> None:
        """The authorization response: a redirect (query), or a self-submitting form (form_post)."""
        if mode != "form_post":
            self._redirect(_with_query(redirect_uri, params))
            return
        fields = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
            for k, v in params.items()
            if v is not None
        )
        self._send_page(
            200,
            "Continue",
            f"<form method='post' action='{html.escape(redirect_uri)}' id='response'>{fields}"
            "<noscript><button type='submit'>Continue</button></noscript></form>"
            "<script>document.getElementById('response').submit()</script>",
        )

    def _send_oauth_error(self, exc: _OAuthError) -> None:
        self._error = exc.error
        payload: dict[str, Any] = {"error": exc.error, "error_description": exc.description}
        if self._face == "entra" and exc.codes:
            now = dt.datetime.now(dt.UTC)
            stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
            trace_id = str(uuid.uuid4())
            correlation_id = self._request_header("client-request-id") or str(uuid.uuid4())
            description = exc.description
            if not description.startswith("AADSTS"):
                description = f"AADSTS{exc.codes[0]}: {description}"
            payload = {
                "error": exc.error,
                "error_description": f"{description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: "
                f"{correlation_id[:100]}\r\nTimestamp: {stamp}",
                "error_codes": list(exc.codes),
                "timestamp": stamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id[:100],
                "error_uri": f"{self.provider.base_url}/error?code={exc.codes[0]}",
            }
        self._send_json(exc.status, payload)

    # --- discovery ---

    def _entra_discovery(self, tenant: str) -> dict[str, Any]:
        base = f"{self.provider.base_url}/{tenant}"
        return {
            "issuer": self.provider._entra_issuer(tenant),
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
            "claims_supported": "sub iss aud exp iat nbf name nonce oid tid ver preferred_username upn email".split(),
            "request_uri_parameter_supported": False,
            "tenant_region_scope": None,
        }

    def _google_discovery(self) -> dict[str, Any]:
        base = self.provider.google_issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/auth",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }

    # --- the browser-facing pages ---

    def _authorize(self, face: Face, tenant: str) -> None:
        q = self._params
        provider = self.provider
        client_id = q.get("client_id")
        with provider._lock:
            client = provider._clients.get(client_id or "")
        if client is None:
            raise _PageError(
                400,
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
                if face == "entra"
                else "Error 401: invalid_client. The OAuth client was not found.",
                error="unauthorized_client",
            )
        redirect_uri = q.get("redirect_uri", "")
        if not client.allows_redirect(redirect_uri):
            raise _PageError(
                400,
                f"AADSTS{_AADSTS_REDIRECT_MISMATCH}: The redirect URI '{redirect_uri}' specified in the request "
                f"does not match the redirect URIs configured for the application '{client.client_id}'."
                if face == "entra"
                else "Error 400: redirect_uri_mismatch.",
                error="invalid_request",
            )
        state = q.get("state")

        mode = q.get("response_mode", "query")
        modes = {"query", "form_post"} if face == "entra" else {"query"}

        def fail(error: str, description: str, code: int | None = None) -> _RedirectError:
            text = f"AADSTS{code}: {description}" if face == "entra" and code else description
            return _RedirectError(redirect_uri, state, error, text, mode if mode in modes else "query")

        if mode not in modes:
            raise fail("invalid_request", f"response_mode must be one of: {', '.join(sorted(modes))}.", 9002313)
        if q.get("response_type") != "code":
            raise fail("unsupported_response_type", "Only response_type=code is supported.", 700054)
        try:
            scopes = self._scopes(face, q.get("scope"), required=True)
        except _OAuthError as exc:
            raise fail(exc.error, exc.description, exc.codes[0] if exc.codes else None) from None
        method = q.get("code_challenge_method", "plain")
        if method not in {"S256", "plain"}:
            raise fail("invalid_request", "code_challenge_method must be S256 or plain.", 9002313)

        login = q.get("login") or provider.browser_user
        if not login:
            if q.get("prompt") == "none":
                raise fail("login_required", "The user needs to sign in (prompt=none, and nobody is).", 50058)
            self._sign_in_form(q)
            return
        user = provider.user(login)
        if user is None:
            raise _PageError(
                400,
                f"AADSTS50034: The user account {login} does not exist in the '{provider.tenant_id}' directory."
                if face == "entra"
                else f"Couldn't find your Google Account ({login}).",
                error="access_denied",
            )
        self._user = user.email
        code = secrets.token_urlsafe(48)
        if face == "google":
            code = "4/" + code
        with provider._lock:
            provider._auth_codes[code] = _AuthCode(
                face=face,
                email=user.email,
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                scopes=scopes,
                nonce=q.get("nonce"),
                code_challenge=q.get("code_challenge"),
                code_challenge_method=method,
                offline=face == "entra" or q.get("access_type") == "offline",
                expires_at=time.time() + provider.code_lifetime,
            )
        params: dict[str, str | None] = {"code": code, "state": state}
        if face == "entra":
            params["session_state"] = str(uuid.uuid5(uuid.NAMESPACE_URL, user.object_id))
        else:
            params.update(scope=" ".join(scopes), authuser="0", prompt=q.get("prompt") or "none")
        self._respond_to_client(redirect_uri, params, mode)

    def _sign_in_form(self, q: Mapping[str, str]) -> None:
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
            for k, v in q.items()
            if k != "login"
        )
        hint = html.escape(q.get("login_hint", ""))
        self._send_page(
            200,
            "Sign in",
            "<p>This local stand-in has no passwords: name the account that signs in.</p>"
            f"<form method='get'>{hidden}<label>Account <input name='login' value='{hint}'></label> "
            "<button type='submit'>Sign in</button></form>",
        )

    def _device_page(self, params: Mapping[str, str]) -> None:
        provider = self.provider
        user_code = params.get("user_code", "").strip()
        login = params.get("login") or provider.browser_user
        deny = params.get("action") == "deny"
        if not user_code or not (login or deny):
            self._send_page(
                200,
                "Enter code",
                "<p>Enter the code displayed on your app or device, and the account that signs in.</p>"
                f"<form method='post'><label>Code <input name='user_code' value='{html.escape(user_code)}'></label> "
                f"<label>Account <input name='login' value='{html.escape(params.get('login', ''))}'></label> "
                "<button type='submit'>Next</button></form>",
            )
            return
        user = None if deny else provider.user(login or "")
        with provider._lock:
            try:
                device = provider._pending_device_code(user_code)
            except KeyError as exc:
                raise _PageError(400, f"Code not accepted: {exc.args[0]}.", error="invalid_grant") from None
            if deny:
                device.state = "declined"
            elif user is None:
                raise _PageError(
                    400,
                    f"AADSTS50034: The user account {login} does not exist in the directory.",
                    error="access_denied",
                )
            else:
                device.email, device.state = user.email, "approved"
        if user is None:
            self._send_page(200, "Declined", "<p>You declined to sign in to the application.</p>")
            return
        self._user = user.email
        self._send_page(
            200,
            "Signed in",
            f"<p>You have signed in to the application on your device as {html.escape(user.email)}. "
            "You may now close this window.</p>",
        )

    # --- JSON endpoints ---

    def _device_code(self, tenant: str) -> None:
        provider = self.provider
        client = self._client(self._params, secret_check=False)
        scopes = self._scopes("entra", self._params.get("scope"), required=True)
        device_code = secrets.token_urlsafe(48)
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
        verification_uri = f"{provider.base_url}/{tenant}/device"
        with provider._lock:
            provider._device_codes[device_code] = _DeviceCode(
                device_code, user_code, client.client_id, scopes, time.time() + provider.device_code_lifetime
            )
            provider._user_codes[user_code] = device_code
        self._send_json(
            200,
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": provider.device_code_lifetime,
                "interval": max(1, provider.device_interval),
                "message": f"To sign in, use a web browser to open the page {verification_uri} and enter the code "
                f"{user_code} to authenticate.",
            },
        )

    def _token(self, face: Face) -> None:
        params = self._params
        grant_type = params.get("grant_type")
        if not grant_type:
            raise _missing("grant_type", face)
        supported = {"authorization_code", "refresh_token"} | ({DEVICE_CODE_GRANT} if face == "entra" else set())
        if grant_type not in supported:
            raise _OAuthError(
                "unsupported_grant_type",
                f"The app requested an unsupported grant type '{grant_type}'."
                if face == "entra"
                else f"Invalid grant_type: {grant_type}",
                codes=[70003],
            )
        client = self._client(params, secret_check=True)
        if grant_type == "authorization_code":
            answer = self._redeem_code(face, client, params)
        elif grant_type == "refresh_token":
            answer = self._refresh(face, client, params)
        else:
            answer = self._redeem_device_code(client, params)
        self._send_json(200, answer)

    def _redeem_code(self, face: Face, client: Client, params: Mapping[str, str]) -> dict[str, Any]:
        provider = self.provider
        value = params.get("code")
        if not value:
            raise _missing("code", face)
        invalid = "Bad Request" if face == "google" else "The provided value for the 'code' parameter is not valid."
        with provider._lock:
            code = provider._auth_codes.get(value)
            if code is None or code.face != face:
                raise _OAuthError("invalid_grant", invalid, codes=[70000])
            if code.used:
                raise _OAuthError(
                    "invalid_grant",
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                    "existing refresh token."
                    if face == "entra"
                    else "Bad Request",
                    codes=[54005],
                )
            if code.expires_at < time.time():
                raise _OAuthError(
                    "invalid_grant",
                    "The provided authorization code has expired." if face == "entra" else "Bad Request",
                    codes=[70008],
                )
            if code.client_id != client.client_id:
                raise _OAuthError(
                    "invalid_grant",
                    "The code was issued to another client." if face == "entra" else "Bad Request",
                    codes=[70000],
                )
            if params.get("redirect_uri") != code.redirect_uri:
                raise _OAuthError(
                    "invalid_grant",
                    "The redirect_uri differs from the one in the authorization request."
                    if face == "entra"
                    else "Bad Request",
                    codes=[70000],
                )
            if code.code_challenge is not None:
                verifier = params.get("code_verifier")
                if not verifier:
                    raise _OAuthError(
                        "invalid_grant",
                        "The request body must contain the following parameter: 'code_verifier'."
                        if face == "entra"
                        else "Missing code verifier.",
                        codes=[50148],
                    )
                computed = (
                    _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                    if code.code_challenge_method == "S256"
                    else verifier
                )
                if not secrets.compare_digest(computed.encode(), code.code_challenge.encode()):
                    raise _OAuthError(
                        "invalid_grant",
                        "The code_verifier does not match the code_challenge supplied in the authorization request."
                        if face == "entra"
                        else "Invalid code verifier.",
                        codes=[501481],
                    )
            code.used = True
        user = provider.user(code.email)
        if user is None:
            raise _OAuthError("invalid_grant", "The user no longer exists.", codes=[50034])
        self._user = user.email
        scopes = code.scopes
        if face == "entra":
            requested = self._scopes("entra", params.get("scope"), required=False)
            return provider._entra_tokens(
                client,
                user,
                requested or scopes,
                nonce=code.nonce,
                client_info=params.get("client_info") == "1",
                refresh=False,
            )
        return provider._google_tokens(client, user, scopes, nonce=code.nonce, refresh=code.offline)

    def _redeem_device_code(self, client: Client, params: Mapping[str, str]) -> dict[str, Any]:
        provider = self.provider
        value = params.get("device_code") or params.get("code")
        if not value:
            raise _missing("device_code")
        with provider._lock:
            device = provider._device_codes.get(value)
            if device is None or device.client_id != client.client_id:
                raise _OAuthError(
                    "bad_verification_code", "The device_code parameter is not valid for this client.", codes=[70000]
                )
            if device.expires_at < time.time():
                raise _OAuthError("expired_token", "The device code has expired.", codes=[70019])
            if device.state == "pending":
                raise _OAuthError(
                    "authorization_pending",
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    codes=[70016],
                )
            if device.state == "declined":
                raise _OAuthError("authorization_declined", "The user declined to sign in.", codes=[65004])
            if device.state == "redeemed":
                raise _OAuthError("invalid_grant", "The device code has already been redeemed.", codes=[70000])
            device.state = "redeemed"
            email = device.email or ""
        user = provider.user(email)
        if user is None:
            raise _OAuthError("invalid_grant", "The user no longer exists.", codes=[50034])
        self._user = user.email
        return provider._entra_tokens(
            client, user, device.scopes, nonce=None, client_info=params.get("client_info") == "1", refresh=False
        )

    def _refresh(self, face: Face, client: Client, params: Mapping[str, str]) -> dict[str, Any]:
        provider = self.provider
        value = params.get("refresh_token")
        if not value:
            raise _missing("refresh_token", face)
        google_revoked = "Token has been expired or revoked."
        with provider._lock:
            token = provider._refresh_tokens.get(value)
            if token is None or token.face != face:
                raise _OAuthError(
                    "invalid_grant",
                    "The provided value for the 'refresh_token' is not valid." if face == "entra" else "Bad Request",
                    codes=[70000],
                )
            self._user = token.email
            if token.client_id != client.client_id:
                raise _OAuthError(
                    "invalid_grant",
                    "The refresh token was issued to a different client." if face == "entra" else "Bad Request",
                    codes=[70000],
                )
            if token.state == "rotated":
                raise _OAuthError(
                    "invalid_grant",
                    "The refresh token has already been used: this local stand-in revokes a refresh token when it "
                    "issues its successor."
                    if face == "entra"
                    else google_revoked,
                    codes=[70000],
                )
            if token.state == "revoked":
                raise _OAuthError(
                    "invalid_grant",
                    "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
                    "might have changed or reset their password."
                    if face == "entra"
                    else google_revoked,
                    codes=[50173],
                )
            if token.failure is not None:
                failure = token.failure
                if failure.description is not None:
                    description = failure.description
                elif face == "google":
                    description = google_revoked
                elif 700082 in failure.codes:
                    issued = dt.datetime.fromtimestamp(token.issued_at, dt.UTC)
                    description = (
                        f"The refresh token has expired due to inactivity. The token was issued on "
                        f"{issued:%Y-%m-%dT%H:%M:%S}Z and was inactive for 90.00:00:00."
                    )
                else:
                    description = "The refresh token is no longer valid."
                raise _OAuthError(failure.error, description, codes=failure.codes, status=failure.status)
            scopes = token.scopes
            requested = self._scopes(face, params.get("scope"), required=False)
            if face == "google" and requested and not set(requested) <= set(scopes):
                raise _OAuthError("invalid_scope", "Bad Request")
            if provider.rotate_refresh_tokens:
                token.state = "rotated"
        user = provider.user(token.email)
        if user is None:
            raise _OAuthError("invalid_grant", "The user no longer exists.", codes=[50034])
        if face == "entra":
            return provider._entra_tokens(
                client,
                user,
                requested or scopes,
                nonce=None,
                client_info=params.get("client_info") == "1",
                refresh=True,
            )
        return provider._google_tokens(client, user, requested or scopes, nonce=None, refresh=True)

    def _introspect(self, method: str, raw_query: str) -> None:
        """RFC 7662 for Dovecot: ``token`` in the form (mode post), or a Bearer header (mode auth)."""
        self._face = None
        self._params = self._read_form() if method == "POST" else _parse_params(raw_query)
        value = self._params.get("token")
        authorization = self.headers.get("Authorization", "")
        if not value and authorization[:7].lower() == "bearer ":
            value = authorization[7:].strip()
        if not value:
            raise _OAuthError("invalid_request", "Missing required parameter: token")
        info = self.provider.token_info(value)
        if info is None or not info["active"]:
            self._send_json(200, {"active": False})
            return
        self._user = info["username"]
        self._send_json(
            200,
            {
                "active": True,
                "username": info["username"],
                "email": info["email"],
                "client_id": info["client_id"],
                "scope": " ".join(info["scopes"]),
                "token_type": "Bearer",
                "iat": int(info["issued_at"]),
                "exp": int(info["expires_at"]),
            },
        )
