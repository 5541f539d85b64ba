"""OAuth accounts end to end: consent against the local identity provider, XOAUTH2 to Dovecot and
aiosmtpd, token storage, rotation, revocation and the identity check. msal and google-auth-oauthlib
run unpatched; "the person" is a test client that follows the URL the command shows."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from typer.testing import CliRunner

from mailops.cli import app
from mailops.engine.connect import connect_account
from mailops.errors import MailopsError
from mailops.localservers.idp import read_form_post
from mailops.providers.oauth import ConsentCancelled
from mailops.settings import load_settings
from mailops.spec import load_spec
from mailops.state import StateStore
from mailops.state.tokens import TokenVault, make_key
from mailops.transport.http import https_session
from tests.servers import HOST, ConnectProxy, free_port

runner = CliRunner()
MAILOPS = [sys.executable, "-m", "mailops"]
CLIENT_ID = "mailops-tests"
GOOGLE_CLIENT_ID = "mailops-tests-google"
RESERVED = ("openid", "profile", "offline_access")


@pytest.fixture
def idp(identity_provider):
    identity_provider.device_interval = 1  # msal polls once a second
    identity_provider.browser_user = None
    # Access tokens that expire within minutes are refreshed by msal and google-auth before use:
    # with a short lifetime, every login after the consent refreshes, as a day later would.
    identity_provider.token_lifetime = 60
    if identity_provider.client(CLIENT_ID) is None:  # registered once per session
        identity_provider.add_client(CLIENT_ID)
        identity_provider.add_client(GOOGLE_CLIENT_ID, public=False, secret="not-very-secret")
    yield identity_provider
    identity_provider.token_lifetime = 3600


@pytest.fixture
def oauth_env(engine_env, monkeypatch, idp):
    """A working directory whose spec declares the local provider's apps, and a token key."""
    monkeypatch.setenv("MAILOPS_SECRET_KEY", make_key())
    return engine_env


def account_yaml(mail_servers, address: str, provider: str = "microsoft", **extra: str) -> str:
    imap, smtp = mail_servers.ports("ssl", "starttls")
    lines = [
        f"  - address: {address}",
        f"    provider: {provider}",
        f"    imap: {{host: {HOST}, port: {imap}, encryption: ssl}}",
        f"    smtp: {{host: {HOST}, port: {smtp}, encryption: starttls}}",
    ] + [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def write_spec(directory: Path, idp, accounts: str) -> Path:
    config = directory / "config"
    config.mkdir(exist_ok=True)
    first = accounts.split("address: ", 1)[1].split("\n", 1)[0].strip()
    (config / "accounts.yaml").write_text(f"accounts:\n{accounts}", encoding="utf-8")
    (config / "google.json").write_text(json.dumps(idp.google_client_config(GOOGLE_CLIENT_ID)), encoding="utf-8")
    (config / "defaults.yaml").write_text(
        f"defaults: {{email: {first}, sender_name: Test}}\n"
        "oauth:\n"
        f"  microsoft: {{client_id: {CLIENT_ID}, authority: '{idp.base_url}', tenant: organizations}}\n"
        "  google: {client_secrets: {file: google.json}}\n",
        encoding="utf-8",
    )
    return config


class Person:
    """Someone at a browser, signed in as ``login``: approves the device code, or signs in at the URL shown."""

    def __init__(self, idp, login: str):
        self.idp, self.login = idp, login
        self.shown: list[str] = []
        self.errors: list[BaseException] = []

    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify, session.trust_env = str(self.idp.ca_file), False
        return session

    def __call__(self, text: str) -> None:
        self.shown.append(text)
        code = re.search(r"enter the code (\S+) to authenticate", text)
        if code:  # device code: open the verification page and approve
            page = re.search(r"open the page (\S+)", text)
            assert page is not None
            self.session().get(page.group(1), params={"user_code": code.group(1), "login": self.login}, timeout=10)
            return
        url = re.search(r"https://\S+", text)
        assert url is not None, text
        # The flow waits for the redirect on its loopback port: act from another thread.
        thread = threading.Thread(target=self._sign_in, args=(url.group(0),), daemon=True)
        thread.start()

    def _sign_in(self, url: str) -> None:
        try:
            session = self.session()
            answer = session.get(url, params={"login": self.login}, allow_redirects=False, timeout=10)
            if answer.status_code in (301, 302, 303):  # query response: go back to the loopback port
                requests.get(answer.headers["Location"], timeout=10)
            else:  # form_post (msal): the page posts the code to the loopback port
                action, fields = read_form_post(answer.text)
                requests.post(action, data=fields, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


def connect(
    address: str,
    person: Callable[[str], None],
    *,
    method: str = "device-code",
    reconnect: bool = False,
    cancel: threading.Event | None = None,
):
    settings = load_settings()
    return connect_account(
        load_spec(settings.config_dir),
        StateStore.open(settings.state_url),
        settings,
        address,
        method=method,  # type: ignore[arg-type]
        show=person,
        reconnect=reconnect,
        cancel=cancel,
    )


def store(directory: Path) -> StateStore:
    return StateStore.open(f"sqlite:///{directory / 'state.db'}")


def run(*args: str):
    return runner.invoke(app, list(args))


# -- the key ---------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_and_never_overwrites_one(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    made = run("keygen", "--out", str(key_file))
    assert made.exit_code == 0, made.output
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = key_file.read_text().strip()
    assert len(key) == 44 and key not in made.output
    again = run("keygen", "--out", str(key_file))
    assert again.exit_code != 0
    assert key_file.read_text().strip() == key


def test_connect_without_a_key_says_how_to_make_one(engine_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(engine_env, idp, account_yaml(mail_servers, address))
    result = run("connect", address)
    assert result.exit_code == 1
    assert "MAILOPS_SECRET_KEY is not set: make a key with `mailops keygen --out FILE`" in result.stderr
    assert not (engine_env / "state.db").exists() or store(engine_env).accounts() == []


def test_a_wrong_key_is_a_clear_error_and_the_tokens_stay(oauth_env, mail_servers, idp, new_oauth_account, monkeypatch):
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    before = (oauth_env / "state.db").read_bytes()
    monkeypatch.setenv("MAILOPS_SECRET_KEY", make_key())
    checked = run("check")
    assert checked.exit_code == 1
    assert "does not decrypt the stored OAuth tokens" in checked.output
    with sqlite3.connect(oauth_env / "state.db") as connection:
        assert connection.execute("SELECT count(*) FROM token_caches").fetchone() == (1,)
    assert len((oauth_env / "state.db").read_bytes()) == len(before)


# -- Microsoft --------------------------------------------------------------------------------


def test_connect_by_device_code_then_plan_test_mail_and_check(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert f"! {address.lower()}" not in run("plan").stdout  # not live yet: + create, then consent
    process = subprocess.Popen(
        [*MAILOPS, "connect", address, "--device-code"],
        cwd=oauth_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    person = Person(idp, address)
    line = process.stderr.readline()
    person(line)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stdout + stderr
    assert f"{address} is connected: IMAP and SMTP log in with XOAUTH2; test mail sent to {address}" in stdout
    assert [m["Subject"] for m in mail_servers.users.messages(address)] == [f"mailops test mail for {address}"]
    assert store(oauth_env).account(address).status == "connected"
    assert run("plan", "--detailed-exitcode").exit_code == 0
    assert run("check").exit_code == 0
    assert run("test-mail", address, "--wait").exit_code == 0


def test_connect_in_a_browser_uses_login_hint_and_select_account(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    person = Person(idp, address)
    report = connect(address, person, method="browser")
    assert (report.status, report.identity, person.errors) == ("connected", address, [])
    authorize = [r for r in idp.requests if r.endpoint == "entra.authorize"][-1]
    assert authorize.params.get("login_hint") == address
    assert authorize.params.get("prompt") == "select_account"


def test_a_browser_signed_in_as_someone_else_is_refused_and_nothing_stored(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    address, other = new_oauth_account(), new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    with pytest.raises(MailopsError) as refused:
        connect(address, Person(idp, other))
    assert f"the sign-in was as {other}, not as {address}: nothing was stored" in str(refused.value)
    assert store(oauth_env).accounts() == []
    vault = TokenVault(store(oauth_env), os.environ["MAILOPS_SECRET_KEY"])
    assert vault.consent(address) is None


@pytest.mark.parametrize("provider", ["microsoft", "google"])
def test_a_consent_cancelled_before_its_link_is_out_declines_it_once_it_is(
    oauth_env, mail_servers, idp, new_oauth_account, provider
) -> None:
    """The libraries wait for the sign-in on a loopback port (ten minutes); a cancel that came before the port
    was open is carried out once it is: the redirect is answered with access_denied."""
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address, provider=provider))
    shown: list[str] = []
    cancel = threading.Event()
    cancel.set()
    raised: list[BaseException] = []

    def consent() -> None:
        try:
            connect(address, shown.append, method="browser", cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - checked below
            raised.append(exc)

    thread = threading.Thread(target=consent, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the consent still waits for a sign-in that nobody makes"
    assert [(type(exc), str(exc)) for exc in raised] == [
        (ConsentCancelled, "the sign-in was cancelled: nothing was stored")
    ]
    assert len(shown) == 1 and "sign in as" in shown[0]  # the link went out, and was declined
    assert store(oauth_env).accounts() == []
    assert TokenVault(store(oauth_env), os.environ["MAILOPS_SECRET_KEY"]).consent(address) is None


class Listener:
    """A loopback HTTP listener that records each request (path with query, and body) and answers with a
    redirect to ``location`` when given, else 200."""

    def __init__(self, location: str | None = None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str, bytes]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                listener.requests.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_decline_answers_the_librarys_own_loopback_redirect_and_follows_nothing() -> None:
    from urllib.parse import parse_qs, quote, urlsplit

    from mailops.providers.oauth import _decline

    elsewhere = Listener()
    waiting = Listener(location=f"{elsewhere.url}collect")  # answers the decline with a redirect
    try:
        # An endpoint whose own query names another redirect_uri and state: the library's come last.
        _decline(
            f"https://idp.example/authorize?redirect_uri={quote(elsewhere.url)}&state=theirs"
            f"&client_id=x&redirect_uri={quote(waiting.url)}&state=ours"
        )
        _decline(f"https://idp.example/authorize?response_mode=form_post&redirect_uri={quote(waiting.url)}")
        for broken in ("http://localhost:abc/", "http://user:pw@127.0.0.1:1/", "https://127.0.0.1/", "x"):
            _decline(f"https://idp.example/authorize?redirect_uri={quote(broken)}")  # nothing, and no exception
    finally:
        elsewhere.close()
        waiting.close()
    assert elsewhere.requests == []  # neither named first nor reached by the redirect
    [(method, path, _), (posted, _, body)] = waiting.requests
    assert method == "GET" and parse_qs(urlsplit(path).query) == {
        "error": ["access_denied"],
        "error_description": ["cancelled in mailops"],
        "state": ["ours"],
    }
    assert posted == "POST" and parse_qs(body.decode())["error"] == ["access_denied"]


def test_sign_in_urls_go_to_their_own_consent_and_other_pages_to_the_next_browser() -> None:
    """Two consents at once (two widgets), the browser opened on threads of the libraries' own: each sign-in URL
    reaches the consent whose identity it names; a page that is no sign-in is left to the next browser."""
    from mailops.providers import oauth

    shown: dict[str, list[str]] = {"a": [], "b": []}
    with (
        oauth.consent_browser(shown["a"].append, "a@example.com", threading.Event()),
        oauth.consent_browser(shown["b"].append, "b@example.com", threading.Event()),
    ):
        browser = oauth._BROWSER
        assert browser is not None
        sign_in = "https://idp.example/authorize?redirect_uri=http%3A%2F%2Flocalhost%3A1%2F&login_hint="
        opened = []
        for who in ("A@example.com", "b@example.com"):
            thread = threading.Thread(target=lambda who=who: opened.append(browser.open(sign_in + who)))
            thread.start()
            thread.join()
        assert browser.open("http://127.0.0.1:8866/voila/") is False  # say, the console's own page
    assert opened == [True, True]
    assert [len(texts) for texts in shown.values()] == [1, 1]
    assert shown["a"][0].endswith("login_hint=A@example.com") and shown["b"][0].endswith("login_hint=b@example.com")
    assert browser.active == []


def test_an_alias_is_accepted(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address, alias = new_oauth_account(), new_oauth_account("alias")
    mail_servers.users.grant_access(address, alias)  # the same mailbox, reached through its alias identity
    write_spec(oauth_env, idp, account_yaml(mail_servers, address, aliases=f"[{alias}]"))
    report = connect(address, Person(idp, alias))
    assert (report.status, report.identity) == ("connected", alias)


def test_a_shared_mailbox_connects_through_its_delegate(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    delegate = new_oauth_account("alice")
    shared = f"team{delegate.partition('-')[0].removeprefix('alice')}-shared@example.com"
    mail_servers.users.grant_access(shared, delegate)
    write_spec(oauth_env, idp, account_yaml(mail_servers, shared, delegate=delegate))
    report = connect(shared, Person(idp, delegate))
    assert (report.status, report.identity) == ("connected", delegate)
    assert [m["Subject"] for m in mail_servers.users.messages(shared)] == [f"mailops test mail for {shared}"]


def test_five_refreshes_in_five_processes_keep_the_rotated_token(oauth_env, mail_servers, idp, new_oauth_account):
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    refreshes = idp.refreshes(address)
    for _ in range(5):
        idp.expire_access_tokens(address)
        checked = subprocess.run([*MAILOPS, "check"], cwd=oauth_env, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert idp.refreshes(address) == refreshes + 5  # each revoked the one before: only the stored one works


def test_a_revoked_grant_needs_a_person_and_reconnect_repairs_it(oauth_env, mail_servers, idp, new_oauth_account):
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    idp.revoke(address)
    checked = run("check")
    assert checked.exit_code == 1
    assert f"needs_reconnect {address}" in checked.stdout
    assert f"Run `mailops reconnect {address}`" in checked.stdout
    assert store(oauth_env).account(address).status == "needs_reconnect"
    planned = run("plan", "--detailed-exitcode")
    assert f"! {address.lower()} (microsoft)" in planned.stdout
    assert f"needs reconnect: run `mailops reconnect {address}`" in planned.stdout
    assert connect(address, Person(idp, address), reconnect=True).status == "connected"
    assert run("check").exit_code == 0


def test_the_worker_marks_a_revoked_grant_and_stops_asking_until_reconnect(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address, archive="{enabled: true}"))
    assert connect(address, Person(idp, address)).status == "connected"
    assert run("run", "--once").exit_code == 0
    idp.revoke(address)
    failed = run("run", "--once", "--log-format", "json")
    assert failed.exit_code == 1
    assert store(oauth_env).account(address).status == "needs_reconnect"
    assert store(oauth_env).account(address).last_error_class == "token"
    asked = len(idp.requests)
    skipped = run("run", "--once", "--log-format", "json")
    assert skipped.exit_code == 1
    assert f"{address} is not connected (status needs_reconnect)" in skipped.output
    assert len(idp.requests) == asked  # the identity provider is not asked again
    assert connect(address, Person(idp, address), reconnect=True).status == "connected"
    assert run("run", "--once").exit_code == 0


def test_an_expired_grant_names_its_remedy(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    idp.fail_refresh(
        address, codes=[700082], description="AADSTS700082: The refresh token has expired due to inactivity."
    )
    idp.expire_access_tokens(address)
    checked = json.loads(run("check", "--json").stdout)
    assert checked[0]["status"] == "needs_reconnect"
    assert checked[0]["error_class"] == "token"
    assert "AADSTS700082" in checked[0]["error"]


def test_an_identity_provider_outage_is_a_connection_failure_not_a_lost_grant(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    """A 503 from the token endpoint: msal raises instead of answering an error. The grant may be fine, so the
    account is in `error` (class connect, which the worker still tries), not `needs_reconnect`."""
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    idp.fail_refresh(address, error="temporarily_unavailable", description="Service unavailable", status=503)
    idp.expire_access_tokens(address)
    checked = run("check", "--json")
    assert checked.exit_code == 1
    [account] = json.loads(checked.stdout)
    assert (account["status"], account["error_class"]) == ("error", "connect")
    assert "the Microsoft identity platform at" in account["error"]
    shown = run("check")
    assert shown.exit_code == 1
    assert "connect" in shown.stdout and "through the proxy that HTTPS_PROXY names" in shown.stdout
    assert "Traceback" not in shown.output


def test_the_identity_platform_is_reached_through_the_proxy_of_the_environment(
    oauth_env, mail_servers, idp, new_oauth_account, monkeypatch
) -> None:
    """A company network reaches Microsoft and Google only through its proxy: HTTPS_PROXY is taken, and
    NO_PROXY; inside the tunnel the provider's certificate is checked against MAILOPS_CA_FILE as without it
    (the system's CAs alone would refuse the local provider's)."""
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    refreshes = idp.refreshes(address)
    proxy = ConnectProxy().start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "mail.example.com")
        idp.expire_access_tokens(address)
        checked = run("check")
        assert checked.exit_code == 0, checked.output
        assert idp.refreshes(address) == refreshes + 1
        assert set(proxy.targets) == {f"{idp.host}:{idp.port}"}  # IMAP is no HTTPS: it goes directly
        tunnels = len(proxy.targets)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        idp.expire_access_tokens(address)
        assert run("check").exit_code == 0
        assert idp.refreshes(address) == refreshes + 2 and len(proxy.targets) == tunnels
    finally:
        proxy.stop()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")  # no proxy there
    monkeypatch.delenv("NO_PROXY")
    idp.expire_access_tokens(address)
    shown = run("check")
    assert shown.exit_code == 1
    assert "connect" in shown.stdout and "through the proxy that HTTPS_PROXY names" in shown.stdout
    assert idp.refreshes(address) == refreshes + 2


@pytest.mark.parametrize(
    "variable, proxy, refused",
    [
        # Only HTTPS_PROXY: ALL_PROXY is often a desktop's SOCKS proxy, which mailops does not speak.
        ("ALL_PROXY", "socks5h://127.0.0.1:1", None),
        ("HTTPS_PROXY", "socks5://127.0.0.1:1", "HTTPS_PROXY names no HTTP proxy"),
        # A password with a `/` that is not percent-encoded: the parser's message would show it.
        ("HTTPS_PROXY", "http://alice:S3cret/Pw@proxy.example:3128", "HTTPS_PROXY is no URL that can be read"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_named_without_its_password(
    idp, monkeypatch, variable: str, proxy: str, refused: str | None
) -> None:
    monkeypatch.setenv(variable, proxy)
    session = https_session(idp.ca_file)
    if refused is None:
        assert session.get(f"{idp.base_url}/google/certs").status_code == 200  # directly
        return
    with pytest.raises(requests.exceptions.InvalidProxyURL) as raised:
        session.get(f"{idp.base_url}/google/certs")
    assert str(raised.value).startswith(refused)
    assert "alice" not in str(raised.value) and "S3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "authority",
    ["https://127.0.0.1:1", "{base}/organizations"],  # nothing listens; the tenant written into the authority
)
def test_an_identity_platform_that_cannot_be_used_is_one_error_line(
    oauth_env, mail_servers, idp, new_oauth_account, authority: str
) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    defaults = oauth_env / "config" / "defaults.yaml"
    text = defaults.read_text(encoding="utf-8")
    defaults.write_text(text.replace(f"'{idp.base_url}'", f"'{authority.format(base=idp.base_url)}'"), "utf-8")
    result = run("connect", address, "--device-code")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: OAUTH connect: the Microsoft identity platform at ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_tenant_edited_after_the_consent_keeps_the_account_connected(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    """The tokens stay where the consent stored them: `organizations` written as `common` later (the same
    users) does not put every Microsoft account into needs_reconnect."""
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    defaults = oauth_env / "config" / "defaults.yaml"
    text = defaults.read_text(encoding="utf-8")
    defaults.write_text(text.replace("tenant: organizations", "tenant: common"), encoding="utf-8")
    idp.expire_access_tokens(address)  # the check refreshes, at the tenant the spec names now
    checked = run("check", "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)[0]["status"] == "connected"


def test_smtp_auth_switched_off_is_its_own_class(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    assert connect(address, Person(idp, address)).status == "connected"
    mail_servers.users.disable_smtp_auth(address)
    checked = run("check")
    assert checked.exit_code == 1
    assert "SMTP smtp_auth_disabled [535 5.7.139]" in checked.stdout
    assert "Set-CASMailbox" in checked.stdout


def test_no_token_appears_in_clear_anywhere(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    person = Person(idp, address)
    outputs = [str(connect(address, person))] + person.shown
    idp.expire_access_tokens(address)
    outputs += [run(*command).output for command in (["check"], ["plan", "--json"], ["accounts", "--json"])]
    vault = TokenVault(store(oauth_env), os.environ["MAILOPS_SECRET_KEY"])
    cache = json.loads(vault.load(vault.consent(address).cache).plaintext)
    secrets = [entry["secret"] for section in ("AccessToken", "RefreshToken") for entry in cache[section].values()]
    assert secrets
    database = (oauth_env / "state.db").read_bytes()
    for secret in secrets:
        assert secret.encode() not in database
        assert all(secret not in output for output in outputs)


def test_msal_is_never_given_a_reserved_scope(oauth_env, mail_servers, idp, new_oauth_account) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address))
    idp.clear_log()
    assert connect(address, Person(idp, address)).status == "connected"
    asked = [r.scope.split() for r in idp.requests if r.scope and r.endpoint in ("entra.devicecode", "entra.token")]
    assert asked
    for scopes in asked:
        assert "https://outlook.office.com/IMAP.AccessAsUser.All" in scopes
        assert all(scopes.count(reserved) <= 1 for reserved in RESERVED)  # msal adds them once, itself


# -- Google ---------------------------------------------------------------------------------


def test_google_connects_in_a_browser_with_a_verified_identity(oauth_env, mail_servers, idp, new_oauth_account):
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address, provider="google"))
    person = Person(idp, address)
    report = connect(address, person, method="browser")
    assert (report.status, report.identity, person.errors) == ("connected", address, [])
    assert "sign in as" in person.shown[0]
    assert dict(parse_qsl(urlsplit(re.search(r"https://\S+", person.shown[0]).group(0)).query))["login_hint"] == address
    idp.expire_access_tokens(address)
    assert run("check").exit_code == 0  # the Google credentials refresh too


def test_a_google_token_that_dies_a_week_after_consent_points_at_testing_apps(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    address = new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, address, provider="google"))
    assert connect(address, Person(idp, address), method="browser").status == "connected"
    with sqlite3.connect(oauth_env / "state.db") as connection:
        connection.execute("UPDATE consents SET consented_at = datetime('now', '-7 days')")
    idp.revoke(address)
    idp.expire_access_tokens(address)
    checked = run("check")
    assert checked.exit_code == 1
    result = json.loads(run("check", "--json").stdout)[0]
    assert result["status"] == "needs_reconnect"
    assert 'the OAuth app is in "testing" status' in result["fix"]
    assert f"`mailops reconnect {address}`" in result["fix"]
    state = store(oauth_env).account(address)
    assert state.last_error_class == "token"


def test_a_connected_account_is_applied_like_a_manual_one_and_accounts_share_one_cache(
    oauth_env, mail_servers, idp, new_oauth_account
) -> None:
    first, second = new_oauth_account(), new_oauth_account()
    write_spec(oauth_env, idp, account_yaml(mail_servers, first) + account_yaml(mail_servers, second))
    assert connect(first, Person(idp, first)).status == "connected"
    assert connect(second, Person(idp, second)).status == "connected"
    with sqlite3.connect(oauth_env / "state.db") as connection:
        assert connection.execute("SELECT count(*) FROM token_caches").fetchone() == (1,)  # one app, one cache
    # A connection change is verified again, with XOAUTH2, and sends a new test mail.
    tls_port = mail_servers.smtp.tls_port
    changed = account_yaml(mail_servers, first).replace(
        f"port: {mail_servers.smtp.starttls_port}, encryption: starttls", f"port: {tls_port}, encryption: ssl"
    )
    write_spec(oauth_env, idp, changed + account_yaml(mail_servers, second))
    planned = run("plan")
    assert f"~ {first.lower()} (microsoft)" in planned.stdout
    assert "(verify IMAP and SMTP login, send test mail)" in planned.stdout
    applied = run("apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output
    assert len(mail_servers.users.messages(first)) == 2
    assert run("plan", "--detailed-exitcode").exit_code == 0
