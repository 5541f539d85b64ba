"""The local identity provider against the real, unpatched msal and google-auth(-oauthlib).

The tests play "the person at the browser" themselves: they follow the URLs the libraries print
with `requests` (no redirects followed), adding ``login=EMAIL`` to say who signs in, or set the
provider's ``browser_user`` (the account the browser is already signed in to).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import google.auth.exceptions
import google.auth.transport.requests
import jwt
import msal
import pytest
import requests
from google.oauth2 import id_token
from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import Flow, InstalledAppFlow

from mailops.demo import free_port
from mailops.localservers.certificates import write_self_signed_certificate
from mailops.localservers.idp import DEVICE_CODE_GRANT, LocalIdentityProvider, read_form_post

IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
SMTP = "https://outlook.office.com/SMTP.Send"
ENTRA_SCOPES = [IMAP, SMTP]
GMAIL = "https://mail.google.com/"
GOOGLE_SCOPES = [GMAIL, "openid", "email"]
MS_CLIENT = "5d1c7a4e-0000-4000-8000-00000000c11e"
GOOGLE_CLIENT = "123456789012-local.apps.googleusercontent.com"
GOOGLE_SECRET = "GOCSPX-local-test-only"  # Google's installed apps have a (non-confidential) secret
TOKEN = "/organizations/oauth2/v2.0/token"
DEVICECODE = "/organizations/oauth2/v2.0/devicecode"


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIdentityProvider]:
    cert, key = write_self_signed_certificate(tmp_path_factory.mktemp("idp"))
    provider = LocalIdentityProvider(cert, key)
    provider.device_interval = 1  # msal sleeps this long between polls
    provider.add_client(MS_CLIENT)
    provider.add_client(GOOGLE_CLIENT, secret=GOOGLE_SECRET, redirect_uris=["http://localhost"])
    with provider:
        yield provider


def _session(idp: LocalIdentityProvider) -> requests.Session:
    session = requests.Session()
    session.verify = str(idp.ca_file)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would silently override verify
    return session


@pytest.fixture(scope="session")
def session(idp: LocalIdentityProvider) -> requests.Session:
    return _session(idp)


def _app(
    idp: LocalIdentityProvider, session: requests.Session, cache: msal.TokenCache | None = None
) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        MS_CLIENT,
        authority=idp.entra_authority("organizations"),
        instance_discovery=False,
        http_client=session,
        token_cache=cache,
    )


def _device_sign_in(idp: LocalIdentityProvider, app: msal.PublicClientApplication, email: str) -> dict[str, Any]:
    """The demo's way: approve the code from Python before msal polls (no waiting)."""
    flow = app.initiate_device_flow(scopes=ENTRA_SCOPES)
    idp.approve_device_code(flow["user_code"], email)
    result: dict[str, Any] = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    return result


def _refresh_token_in(cache: msal.TokenCache) -> str:
    [entry] = list(cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
    return str(entry["secret"])


def _query(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query))


# --- Entra face with msal ---------------------------------------------------------------


def test_msal_device_code_flow_approved_in_the_browser(idp: LocalIdentityProvider, session: requests.Session) -> None:
    user = idp.add_user("alice@example.com", name="Alice")
    app = _app(idp, session)
    start = len(idp.requests)
    flow = app.initiate_device_flow(scopes=ENTRA_SCOPES)
    assert "user_code" in flow, flow
    # What msal prints for the person: the page and the code.
    assert flow["verification_uri"] in flow["message"] and flow["user_code"] in flow["message"]

    pages: list[requests.Response] = []

    def person() -> None:
        # Approve only after msal was told "authorization_pending", to prove it keeps polling.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.error == "authorization_pending" for r in idp.requests[start:]):
            time.sleep(0.02)
        browser = _session(idp)
        pages.append(
            browser.get(flow["verification_uri"], params={"user_code": flow["user_code"], "login": user.email})
        )

    thread = threading.Thread(target=person)
    thread.start()
    result = app.acquire_token_by_device_flow(flow)
    thread.join(10)

    assert pages and pages[0].status_code == 200 and user.email in pages[0].text
    assert "access_token" in result, result
    claims = result["id_token_claims"]
    assert claims["preferred_username"] == claims["upn"] == user.email
    assert claims["oid"] == user.object_id and claims["tid"] == idp.tenant_id and claims["aud"] == MS_CLIENT
    assert [a["username"] for a in app.get_accounts()] == [user.email]

    # The id_token is really signed with the key the provider publishes.
    keys = session.get(f"{idp.entra_authority()}/discovery/v2.0/keys").json()
    [key] = jwt.PyJWKSet.from_dict(keys).keys
    verified = jwt.decode(result["id_token"], key.key, algorithms=["RS256"], audience=MS_CLIENT)
    assert verified["preferred_username"] == user.email

    info = idp.token_info(result["access_token"])
    assert info is not None and info["active"] and info["username"] == user.email
    assert {IMAP, SMTP} <= set(info["scopes"]) and info["expires_at"] > time.time() + 3000
    # Dovecot's oauth2 passdb (introspection_mode = post) asks like this:
    answer = session.post(idp.introspection_url, data={"token": result["access_token"]}).json()
    assert answer["active"] is True and answer["username"] == user.email
    assert session.post(idp.introspection_url, data={"token": "forged"}).json() == {"active": False}

    records = idp.requests[start:]
    assert any(r.endpoint == "entra.token" and r.error == "authorization_pending" for r in records)
    for record in records:  # the raw scope parameter, as msal sent it: nothing twice
        if record.scope is not None:
            words = record.scope.split()
            assert len(words) == len(set(words)), record.scope
    [request] = [r for r in records if r.endpoint == "entra.devicecode"]
    assert request.scope is not None and {IMAP, SMTP, "openid", "profile", "offline_access"} == set(
        request.scope.split()
    )
    assert all(r.params.get("device_code") in (None, "<redacted>") for r in records)


def test_msal_silent_refresh_rotates_across_processes(
    idp: LocalIdentityProvider, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = idp.add_user("carol@example.com").email
    monkeypatch.setattr(idp, "token_lifetime", 1)
    cache = msal.SerializableTokenCache()
    first = _device_sign_in(idp, _app(idp, session, cache), email)
    serialized = cache.serialize()
    access_token, refresh_token = first["access_token"], _refresh_token_in(cache)
    time.sleep(1.1)
    info = idp.token_info(access_token)
    assert info is not None and not info["active"]  # expired

    for _ in range(5):  # five separate processes sharing one serialized cache
        cache = msal.SerializableTokenCache()
        cache.deserialize(serialized)
        app = _app(idp, session, cache)
        [account] = app.get_accounts(username=email)
        result = app.acquire_token_silent(ENTRA_SCOPES, account=account)
        assert result is not None and "access_token" in result, result
        assert result["access_token"] != access_token
        assert result.get("token_source") == "identity_provider"
        new_refresh_token = _refresh_token_in(cache)
        assert new_refresh_token != refresh_token
        assert idp.refresh_token_state(refresh_token) == "rotated"
        assert idp.refresh_token_state(new_refresh_token) == "active"
        reused = session.post(
            idp.base_url + TOKEN,
            data={"grant_type": "refresh_token", "client_id": MS_CLIENT, "refresh_token": refresh_token},
        )
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        assert cache.has_state_changed
        serialized = cache.serialize()
        access_token, refresh_token = result["access_token"], new_refresh_token

    assert idp.refreshes(email) == 5
    assert idp.count("entra.token", grant_type="refresh_token", user=email, status=400) == 5


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")  # query on purpose
def test_msal_auth_code_flow_with_loopback_redirect(idp: LocalIdentityProvider, session: requests.Session) -> None:
    email = idp.add_user("dora@example.com").email
    app = _app(idp, session)
    redirect_uri = f"http://localhost:{free_port()}"  # nothing listens: the test reads the Location header
    flow = app.initiate_auth_code_flow(
        ENTRA_SCOPES, redirect_uri=redirect_uri, login_hint=email, prompt="select_account"
    )

    # Nobody signed in yet: a sign-in form, prefilled from login_hint, and no redirect.
    form = session.get(flow["auth_uri"], allow_redirects=False)
    assert form.status_code == 200 and f"value='{email}'" in form.text

    answer = session.get(flow["auth_uri"], params={"login": email}, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(redirect_uri + "?")
    result = app.acquire_token_by_auth_code_flow(flow, _query(location))
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == email  # msal checked the nonce
    assert idp.refresh_token_state(result["refresh_token"]) == "active"

    [authorize] = [r for r in idp.requests if r.endpoint == "entra.authorize" and r.status == 302]
    assert authorize.params["login_hint"] == email and authorize.params["prompt"] == "select_account"
    assert authorize.params["code_challenge_method"] == "S256" and authorize.user == email


def test_msal_interactive_with_its_own_loopback_server_and_form_post(
    idp: LocalIdentityProvider, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acquire_token_interactive: msal's loopback server takes only response_mode=form_post."""
    email = idp.add_user("ivy@example.com").email

    def person_at_the_browser(url: str, new: int = 0, autoraise: bool = True) -> bool:
        def act() -> None:
            page = _session(idp).get(url, params={"login": email}, allow_redirects=False)
            action, fields = read_form_post(page.text)  # what the page's script submits
            loopback = requests.Session()
            loopback.trust_env = False
            loopback.post(action, data=fields, timeout=5)

        threading.Thread(target=act, daemon=True).start()
        return True

    monkeypatch.setattr(webbrowser, "open", person_at_the_browser)
    app = _app(idp, session)
    result = app.acquire_token_interactive(ENTRA_SCOPES, login_hint=email, prompt="select_account", timeout=10)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == email
    [authorize] = [r for r in idp.requests if r.endpoint == "entra.authorize" and r.user == email]
    assert authorize.params["response_mode"] == "form_post" and authorize.status == 200


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")  # query on purpose
def test_the_browser_signed_in_as_someone_else_gets_tokens_for_them(
    idp: LocalIdentityProvider, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classic trap, reproducible: login_hint names one account, the browser signs in another."""
    wanted = idp.add_user("ops@example.com").email
    other = idp.add_user("private@example.com").email
    monkeypatch.setattr(idp, "browser_user", other)
    app = _app(idp, session)
    flow = app.initiate_auth_code_flow(
        ENTRA_SCOPES, redirect_uri=f"http://localhost:{free_port()}", login_hint=wanted, prompt="select_account"
    )
    answer = session.get(flow["auth_uri"], allow_redirects=False)  # the browser adds nothing
    assert answer.status_code == 302
    result = app.acquire_token_by_auth_code_flow(flow, _query(answer.headers["Location"]))
    assert result["id_token_claims"]["preferred_username"] == other  # not `wanted`: the caller must check
    info = idp.token_info(result["access_token"])
    assert info is not None and info["username"] == other


def test_msal_revoked_and_expired_refresh_tokens(
    idp: LocalIdentityProvider, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = idp.add_user("erin@example.com").email
    monkeypatch.setattr(idp, "token_lifetime", 60)  # under 5 minutes: msal refreshes rather than use its cache
    app = _app(idp, session)
    first = _device_sign_in(idp, app, email)
    [account] = app.get_accounts()

    assert idp.revoke(email) == 1
    info = idp.token_info(first["access_token"])
    assert info is not None and not info["active"] and info["revoked"]
    result = app.acquire_token_silent_with_error(ENTRA_SCOPES, account=account)
    assert result is not None and result["error"] == "invalid_grant"
    assert result["error_description"].startswith("AADSTS50173:") and result["error_codes"] == [50173]

    # A new sign-in works again; then the refresh token expires by inactivity.
    _device_sign_in(idp, app, email)
    [account] = app.get_accounts()
    assert idp.fail_refresh(email) == 1
    result = app.acquire_token_silent_with_error(ENTRA_SCOPES, account=account)
    assert result is not None and result["error"] == "invalid_grant"
    assert "AADSTS700082" in result["error_description"] and result["error_codes"] == [700082]

    # Any other failure a test wants:
    _device_sign_in(idp, app, email)
    [account] = app.get_accounts()
    idp.fail_refresh(email, error="interaction_required", description="AADSTS50076: MFA required.", codes=[50076])
    result = app.acquire_token_silent_with_error(ENTRA_SCOPES, account=account)
    assert result is not None and result["error"] == "interaction_required" and result["error_codes"] == [50076]


# --- Google face with google-auth-oauthlib ------------------------------------------------


def _google_flow(idp: LocalIdentityProvider, cls: type[Flow] = Flow, **kwargs: Any) -> Flow:
    flow = cls.from_client_config(idp.google_client_config(GOOGLE_CLIENT), scopes=GOOGLE_SCOPES, **kwargs)
    flow.oauth2session.verify = str(idp.ca_file)
    flow.oauth2session.trust_env = False
    return flow


def test_google_flow_id_token_and_rotating_refresh(idp: LocalIdentityProvider, session: requests.Session) -> None:
    email = idp.add_user("frank@example.com").email
    flow = _google_flow(idp, redirect_uri=f"http://localhost:{free_port()}")
    url, state = flow.authorization_url(login_hint=email, prompt="consent")
    answer = session.get(url, params={"login": email}, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    query = _query(answer.headers["Location"])
    assert query["state"] == state
    flow.fetch_token(code=query["code"])
    credentials = flow.credentials

    request = google.auth.transport.requests.Request(session=session)
    for certs_url in (idp.google_certs_url, f"{idp.base_url}/google/jwks"):  # PEM by key id, and JWKS
        claims = id_token.verify_token(credentials.id_token, request, audience=GOOGLE_CLIENT, certs_url=certs_url)
        assert claims["email"] == email and claims["email_verified"] is True
        assert claims["iss"] == idp.google_issuer and claims["aud"] == GOOGLE_CLIENT
    info = idp.token_info(credentials.token)
    assert info is not None and info["active"] and info["username"] == email and GMAIL in info["scopes"]

    old_token, old_refresh = credentials.token, credentials.refresh_token
    credentials.refresh(request)
    assert credentials.token != old_token and credentials.refresh_token not in (None, old_refresh)
    assert idp.refresh_token_state(old_refresh) == "rotated"
    assert idp.refreshes(email) == 1
    stale = Credentials(
        None,
        refresh_token=old_refresh,
        token_uri=f"{idp.base_url}/google/token",
        client_id=GOOGLE_CLIENT,
        client_secret=GOOGLE_SECRET,
    )
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        stale.refresh(request)
    assert idp.fail_refresh(email) == 1
    with pytest.raises(google.auth.exceptions.RefreshError, match="Token has been expired or revoked"):
        credentials.refresh(request)

    # Without access_type=offline Google gives no refresh token; google-auth-oauthlib asks for it by default.
    [authorize] = [r for r in idp.requests if r.endpoint == "google.auth" and r.user == email]
    assert authorize.params["access_type"] == "offline" and authorize.params["login_hint"] == email


def test_google_installed_app_flow_run_local_server(idp: LocalIdentityProvider) -> None:
    email = idp.add_user("gina@example.com").email

    class PersonAtTheBrowser(webbrowser.BaseBrowser):
        def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
            def act() -> None:
                answer = _session(idp).get(url, params={"login": email}, allow_redirects=False)
                loopback = requests.Session()
                loopback.trust_env = False
                loopback.get(answer.headers["Location"], timeout=5)  # back to the flow's own local server

            threading.Thread(target=act, daemon=True).start()
            return True

    webbrowser.register("mailops-test-person", None, PersonAtTheBrowser("mailops-test-person"))
    flow = _google_flow(idp, cls=InstalledAppFlow)
    assert isinstance(flow, InstalledAppFlow)
    credentials = flow.run_local_server(
        host="localhost", port=0, browser="mailops-test-person", timeout_seconds=10, login_hint=email
    )
    request = google.auth.transport.requests.Request(session=_session(idp))
    claims = id_token.verify_token(
        credentials.id_token, request, audience=GOOGLE_CLIENT, certs_url=idp.google_certs_url
    )
    assert claims["email"] == email and credentials.refresh_token


# --- robustness ---------------------------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", TOKEN, {}, 400, "invalid_request"),
    ("POST", TOKEN, {"data": {"grant_type": "password", "client_id": MS_CLIENT}}, 400, "unsupported_grant_type"),
    ("POST", TOKEN, {"data": b"\xff\xfe\x00{{garbage", "headers": FORM}, 400, "invalid_request"),
    ("POST", TOKEN, {"json": {"grant_type": "refresh_token"}}, 400, "invalid_request"),
    ("POST", TOKEN, {"data": "grant_type=refresh_token&grant_type=x", "headers": FORM}, 400, "invalid_request"),
    ("POST", TOKEN, {"data": {"grant_type": DEVICE_CODE_GRANT, "client_id": MS_CLIENT}}, 400, "invalid_request"),
    (
        "POST",
        TOKEN,
        {"data": {"grant_type": DEVICE_CODE_GRANT, "client_id": MS_CLIENT, "device_code": "forged"}},
        400,
        "bad_verification_code",
    ),
    (
        "POST",
        TOKEN,
        {"data": {"grant_type": "refresh_token", "client_id": "nobody", "refresh_token": "x"}},
        400,
        "unauthorized_client",
    ),
    (
        "POST",
        TOKEN,
        {"data": {"grant_type": "authorization_code", "client_id": MS_CLIENT, "code": "forged"}},
        400,
        "invalid_grant",
    ),
    (
        "POST",
        TOKEN,
        {"data": {"grant_type": "refresh_token", "client_id": MS_CLIENT, "refresh_token": "forged"}},
        400,
        "invalid_grant",
    ),
    (
        "POST",
        TOKEN,
        {"data": {"grant_type": "refresh_token", "client_id": MS_CLIENT, "client_secret": "s", "refresh_token": "x"}},
        401,
        "invalid_client",
    ),
    ("GET", TOKEN, {}, 405, "invalid_request"),
    ("DELETE", TOKEN, {}, 405, "invalid_request"),
    ("POST", "/no-such-tenant/oauth2/v2.0/token", {"data": {"grant_type": "x"}}, 400, "invalid_tenant"),
    ("GET", "/no-such-tenant/v2.0/.well-known/openid-configuration", {}, 400, "invalid_tenant"),
    ("POST", DEVICECODE, {"data": {"client_id": MS_CLIENT}}, 400, "invalid_request"),
    ("POST", DEVICECODE, {"data": {"scope": IMAP}}, 400, "invalid_request"),
    (
        "POST",
        DEVICECODE,
        {"data": {"client_id": MS_CLIENT, "scope": f"{IMAP} https://graph.microsoft.com/Mail.Send"}},
        400,
        "invalid_scope",
    ),
    (
        "POST",
        "/google/token",
        {"data": {"grant_type": "authorization_code", "client_id": GOOGLE_CLIENT, "code": "x"}},
        401,
        "invalid_client",
    ),
    (
        "POST",
        "/google/token",
        {"data": {"grant_type": "refresh_token", "client_id": "nobody", "refresh_token": "x"}},
        401,
        "invalid_client",
    ),
    (
        "POST",
        "/google/token",
        {
            "data": {
                "grant_type": "refresh_token",
                "client_id": GOOGLE_CLIENT,
                "client_secret": "wrong",
                "refresh_token": "x",
            }
        },
        401,
        "invalid_client",
    ),
    ("POST", "/google/token", {"data": {"grant_type": DEVICE_CODE_GRANT}}, 400, "unsupported_grant_type"),
    ("POST", "/introspect", {}, 400, "invalid_request"),
    ("POST", "/introspect", {"data": "token=" + "x" * 70_000, "headers": FORM}, 413, "invalid_request"),
    ("GET", "/nowhere", {}, 404, "not_found"),
    ("GET", "/organizations/oauth2/v2.0/elsewhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "error"), BAD_REQUESTS)
def test_malformed_requests_get_oauth_errors(
    idp: LocalIdentityProvider,
    session: requests.Session,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    error: str,
) -> None:
    answer = session.request(method, idp.base_url + path, timeout=5, **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error and body["error_description"]
    if path.startswith("/organizations") and status in (400, 401):  # Entra's shape
        assert body["error_description"].startswith("AADSTS") and body["error_codes"]


def test_browser_pages_reject_what_they_cannot_serve(idp: LocalIdentityProvider, session: requests.Session) -> None:
    email = idp.add_user("hank@example.com").email
    authorize = f"{idp.entra_authority()}/oauth2/v2.0/authorize"
    good = {
        "client_id": MS_CLIENT,
        "response_type": "code",
        "redirect_uri": "http://localhost:8400",
        "scope": IMAP,
        "state": "s1",
        "login": email,
    }

    def get(url: str, **changes: str) -> requests.Response:
        return session.get(url, params={**good, **changes}, allow_redirects=False, timeout=5)

    assert get(authorize).status_code == 302
    assert get(authorize, client_id="nobody").status_code == 400
    answer = get(authorize, redirect_uri="https://attacker.example/callback")
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert get(authorize, login="stranger@example.com").status_code == 400
    wrong_type = _query(get(authorize, response_type="token").headers["Location"])
    assert wrong_type["error"] == "unsupported_response_type" and wrong_type["state"] == "s1"
    assert _query(get(authorize, scope="").headers["Location"])["error"] == "invalid_request"
    assert get(f"{idp.base_url}/google/auth", client_id="nobody").status_code == 400

    app = _app(idp, session)
    flow = app.initiate_device_flow(scopes=ENTRA_SCOPES)
    device = flow["verification_uri"]
    assert session.get(device).status_code == 200  # the form
    assert session.get(device, params={"user_code": "NOSUCHCODE", "login": email}).status_code == 400
    assert session.get(device, params={"user_code": flow["user_code"], "login": "nobody@x.test"}).status_code == 400
    assert session.get(device, params={"user_code": flow["user_code"], "action": "deny", "login": email}).ok
    flow["expires_at"] = time.time() + 5
    result = app.acquire_token_by_device_flow(flow)
    assert result["error"] == "authorization_declined"
    assert session.get(device, params={"user_code": flow["user_code"], "login": email}).status_code == 400  # used
    with pytest.raises(KeyError):
        idp.approve_device_code(flow["user_code"], email)

    # The page's own form posts; that approves too.
    flow = app.initiate_device_flow(scopes=ENTRA_SCOPES)
    assert session.post(device, data={"user_code": flow["user_code"].lower(), "login": email}).status_code == 200
    assert app.acquire_token_by_device_flow(flow)["id_token_claims"]["preferred_username"] == email


def test_garbage_on_the_wire_leaves_the_server_up(
    idp: LocalIdentityProvider, session: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    errors_before = idp.connection_errors
    with socket.create_connection(("127.0.0.1", idp.port), timeout=5) as plain:  # no TLS at all
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert not plain.recv(100).startswith(b"HTTP")  # the handshake fails; the server hangs up
    with socket.create_connection(("127.0.0.1", idp.port), timeout=5):
        pass  # connect and leave

    context = ssl.create_default_context(cafile=str(idp.ca_file))

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", idp.port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(request)
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
                return data

    assert raw(b"\x00\x01\x02 nonsense\r\n\r\n").startswith(b"HTTP/1.0 400")
    answer = raw(b"POST /introspect HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") and b"invalid_request" in answer
    answer = raw(b"POST /introspect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411")

    deadline = time.monotonic() + 5
    while idp.connection_errors < errors_before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert idp.connection_errors >= errors_before + 1
    assert session.get(f"{idp.entra_authority()}/v2.0/.well-known/openid-configuration").status_code == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_listens_on_127_0_0_1_only(idp: LocalIdentityProvider) -> None:
    assert idp.server_address[0] == "127.0.0.1" and idp.base_url == f"https://127.0.0.1:{idp.port}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", idp.port), timeout=2).close()
    outward = _outward_address()
    if outward is not None:
        with pytest.raises(OSError):
            socket.create_connection((outward, idp.port), timeout=2).close()
    for host in ("0.0.0.0", "192.0.2.1", "localhost"):
        with pytest.raises(ValueError):
            LocalIdentityProvider(idp.cert_file, idp.key_file, host=host)


def _outward_address() -> str | None:
    """This machine's address on its default route, if it has one (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_discovery_documents(idp: LocalIdentityProvider, session: requests.Session) -> None:
    entra = session.get(f"{idp.entra_authority()}/v2.0/.well-known/openid-configuration").json()
    assert entra["token_endpoint"] == f"{idp.entra_authority()}/oauth2/v2.0/token"
    assert entra["device_authorization_endpoint"].endswith("/organizations/oauth2/v2.0/devicecode")
    assert entra["issuer"] == f"{idp.base_url}/{{tenantid}}/v2.0"
    by_id = session.get(f"{idp.entra_authority(idp.tenant_id)}/v2.0/.well-known/openid-configuration").json()
    assert by_id["issuer"] == f"{idp.base_url}/{idp.tenant_id}/v2.0"
    certs = session.get(idp.google_certs_url).json()
    assert all(pem.startswith("-----BEGIN CERTIFICATE-----") for pem in certs.values())
    google = session.get(f"{idp.google_issuer}/.well-known/openid-configuration").json()
    assert google["issuer"] == idp.google_issuer
    assert json.loads(json.dumps(idp.google_client_config(GOOGLE_CLIENT)))["installed"]["token_uri"].startswith(
        idp.base_url
    )
    assert isinstance(idp.ca_file, Path)
