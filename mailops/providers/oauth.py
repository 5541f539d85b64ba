"""What the OAuth providers (Microsoft 365, Google) share: consent instead of a password.

The contract of a subclass:

- :meth:`OAuthProvider.consent` runs the provider's consent flow for an account and
  returns the identity the token belongs to, with the token cache to store;
- :meth:`OAuthProvider.access_token` gives a valid access token from a stored cache,
  refreshing it when needed, and the cache again when the refresh changed it.

This class does the rest the same way for both: it checks that the token's identity is
the declared address (or one of its aliases, or the delegate of a shared mailbox),
stores the cache encrypted after every change, so a rotated refresh token is never
lost, and turns a refused or vanished grant into a ``token`` failure, which marks the
account ``needs_reconnect``.
"""

from __future__ import annotations

import json
import threading
import webbrowser
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mailops.errors import MailopsError
from mailops.providers.base import AccountProvider, Completion, CredentialContext
from mailops.providers.presets import ServerPreset
from mailops.spec.models import Account, OAuthApps
from mailops.transport.connection import Credential
from mailops.transport.failures import FailureClass, TransportError

if TYPE_CHECKING:
    from mailops.state.tokens import TokenVault  # imports SQLAlchemy: only where tokens are used

ConsentMethod = Literal["device-code", "browser"]
Show = Callable[[str], None]


class ConsentError(MailopsError):
    """Consent did not give a usable token for this account; nothing was stored."""


class ConsentCancelled(ConsentError):
    """The person cancelled the consent while it waited for the sign-in; nothing was stored."""

    def __init__(self) -> None:
        super().__init__("the sign-in was cancelled: nothing was stored")


@dataclass(frozen=True)
class Consented:
    """What a consent flow produced: whose token it is, and the cache that holds it."""

    identity: str
    cache: str  # the provider's serialized token cache (plaintext; stored encrypted)


@dataclass(frozen=True)
class Token:
    access_token: str
    cache: str | None  # the cache after a refresh that changed it; None when unchanged


class OAuthProvider(AccountProvider):
    needs_consent: ClassVar[bool] = True
    has_aliases: ClassVar[bool] = True
    # An example of the app's entry in defaults.yaml, for the message when it is missing.
    app_example: ClassVar[str]
    consent_methods: ClassVar[tuple[ConsentMethod, ...]]

    # -- the spec ------------------------------------------------------------------

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

    # -- what subclasses implement -------------------------------------------------

    @abstractmethod
    def cache_name(self, account: Account, apps: OAuthApps) -> str:
        """Under which name the account's token cache is stored (accounts may share one)."""

    @abstractmethod
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
        """Run the consent flow (``stored``: the cache as stored now, to add to); raise ConsentError. Setting
        ``cancel`` ends the wait for the sign-in within a second or so (:meth:`connect` then says it was
        cancelled)."""

    @abstractmethod
    def access_token(self, account: Account, context: CredentialContext, stored: str, identity: str) -> Token:
        """A valid access token from ``stored``, refreshed when needed; raise TransportError(TOKEN) when refused."""

    # -- shared ----------------------------------------------------------------------

    def consenting_identity(self, account: Account) -> str:
        """Who signs in to consent: the delegate of a shared mailbox, else the mailbox itself."""
        return account.delegate or account.address

    def accepted_identities(self, account: Account) -> set[str]:
        accepted = {self.consenting_identity(account).lower()}
        if account.delegate is None:
            accepted |= {alias.lower() for alias in account.aliases}
        return accepted

    def connect(
        self,
        account: Account,
        context: CredentialContext,
        *,
        method: ConsentMethod,
        show: Show,
        cancel: threading.Event | None = None,
    ) -> str:
        """Consent, check the identity, and store the token; the identity that consented. Setting ``cancel``
        while the consent waits for the sign-in stores nothing and raises :class:`ConsentCancelled`."""
        if method not in self.consent_methods:
            offered = " or ".join(f"--{name}" for name in self.consent_methods)
            raise ConsentError(f"{self.name} accounts connect with {offered}")
        vault = _vault(context)
        name = self.cache_name(account, context.apps)
        stored = vault.load(name)
        cancel = cancel or threading.Event()
        plaintext = stored.plaintext if stored else None
        try:
            consented = self.consent(account, context, plaintext, method=method, show=show, cancel=cancel)
        except ConsentError:
            if cancel.is_set():
                raise ConsentCancelled() from None
            raise
        if cancel.is_set():  # the sign-in completed as the person cancelled: they asked for nothing to be stored
            raise ConsentCancelled()
        if consented.identity.lower() not in self.accepted_identities(account):
            wanted = self.consenting_identity(account)
            raise ConsentError(
                f"the sign-in was as {consented.identity}, not as {wanted}: nothing was stored. A browser that is "
                f"already signed in to another account signs in as that one; sign in again as {wanted}"
                + ("" if account.delegate else ", or declare the other address under `aliases:`")
            )
        _save(vault, name, consented.cache, stored.version if stored else None)
        vault.record_consent(account.address, consented.identity, name)
        return consented.identity

    def credential(self, account: Account, context: CredentialContext) -> Credential:
        vault = _vault_or_token_error(context)
        consent = vault.consent(account.address)
        if consent is None:
            raise TransportError(
                FailureClass.TOKEN,
                f"{account.address} has no OAuth consent yet; run `mailops connect {account.address}`",
            )
        # The cache the consent stored its tokens in: an edit of the app's authority or tenant since then does
        # not lose them (the refresh goes to the one the spec names now). A new client_id has no token there.
        name = consent.cache
        for attempt in range(3):
            stored = vault.load(name)
            if stored is None:
                raise TransportError(FailureClass.TOKEN, f"the stored token of {account.address} is gone")
            try:
                token = self.access_token(account, context, stored.plaintext, consent.identity)
            except TransportError:
                latest = vault.load(name)
                if attempt < 2 and latest is not None and latest.version != stored.version:
                    continue  # another process refreshed (and rotated the token) meanwhile: use its tokens
                raise
            if token.cache is not None and _save(vault, name, token.cache, stored.version) is None:
                continue
            return Credential(username=account.username or account.address, oauth_token=token.access_token)
        raise TransportError(FailureClass.TOKEN, f"the token of {account.address} kept changing under this process")


@dataclass
class _Consent:
    """One consent in progress: whom to show the sign-in URL, and the URL once the library opened it."""

    show: Show
    identity: str
    opened: str | None = None


class _ConsentBrowser(webbrowser.BaseBrowser):
    """The "browser" msal and google-auth-oauthlib open during a consent: it hands the sign-in URL
    to the person (the CLI prints it), which works on a server, over SSH and in a notebook.
    Outside a consent it declines, and Python's next browser is tried.

    Consents may run at once (two widgets), and msal opens the browser on a thread of its own: a URL
    goes to the consent whose identity it names as ``login_hint`` (both flows pass it), the newest
    one still without a URL when several do."""

    def __init__(self) -> None:
        super().__init__("mailops-consent")
        self.lock = threading.Lock()
        self.active: list[_Consent] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(url).query)
        if "redirect_uri" not in query:  # not a sign-in: some other code opening a page meanwhile
            return False
        hint = (query.get("login_hint") or [""])[-1].lower()
        with self.lock:
            waiting = [consent for consent in self.active if consent.opened is None] or self.active
            named = [consent for consent in waiting if consent.identity.lower() == hint]
            chosen = (named or waiting)[-1] if waiting else None
            if chosen is None:
                return False
            chosen.opened = url
        chosen.show(f"Open this address in a browser and sign in as {chosen.identity}:\n{url}")
        return True


_BROWSER: _ConsentBrowser | None = None
_BROWSER_LOCK = threading.Lock()
DECLINE_WAIT = 10.0  # seconds the end of a consent waits for its decline to be answered


@contextmanager
def consent_browser(show: Show, identity: str, cancel: threading.Event) -> Iterator[None]:
    """While this lasts, a library that opens a browser for this consent hands the URL to ``show`` instead;
    setting ``cancel`` declines the sign-in (:func:`_decline`), which ends the library's wait for it."""
    global _BROWSER
    with _BROWSER_LOCK:
        if _BROWSER is None:
            _BROWSER = _ConsentBrowser()
            webbrowser.register(_BROWSER.name, None, _BROWSER, preferred=True)
    browser = _BROWSER
    consent = _Consent(show, identity)
    with browser.lock:
        browser.active.append(consent)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if cancel.is_set() and consent.opened is not None:  # cancelled earlier: declined once it waits
                _decline(consent.opened)
                return

    watcher = threading.Thread(target=watch, name="mailops-consent-cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(DECLINE_WAIT)  # a listener that answers slowly does not hold the consent up
        with browser.lock:
            browser.active.remove(consent)


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _decline(sign_in_url: str) -> None:
    """Answer the loopback redirect of ``sign_in_url`` (an authorization request) as the identity provider does
    when the person declines (``error=access_denied``, RFC 6749 4.1.2.1; posted where the request asks for
    ``response_mode=form_post``, as msal's does): the waiting library stops waiting. Only a redirect to this
    machine is answered, and nothing it answers is followed.

    The libraries add their parameters after any query the authorization endpoint itself has: of a parameter
    given twice, the last one is theirs."""
    from urllib.parse import parse_qs, urlencode, urlsplit
    from urllib.request import HTTPRedirectHandler, ProxyHandler, Request, build_opener

    class NoRedirects(HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # the decline goes to this machine only

    query = parse_qs(urlsplit(sign_in_url).query)

    def last(name: str) -> str:
        return (query.get(name) or [""])[-1]

    redirect = last("redirect_uri")
    answer = {"error": "access_denied", "error_description": "cancelled in mailops"}
    if last("state"):
        answer["state"] = last("state")
    try:
        parts = urlsplit(redirect)
        if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or parts.username or parts.password:
            return
        if last("response_mode") == "form_post":
            request = Request(redirect, data=urlencode(answer).encode("ascii"), method="POST")
        else:
            request = Request(f"{redirect}{'&' if parts.query else '?'}{urlencode(answer)}")
        # No proxy (the redirect goes to this machine), no redirects followed.
        build_opener(ProxyHandler({}), NoRedirects()).open(request, timeout=5).close()
    except Exception:  # noqa: BLE001 - a broken address, a refused or odd answer
        pass  # the library stopped waiting, or its consent times out as it would have without the cancel


def _vault(context: CredentialContext) -> TokenVault:
    if context.vault is None:
        raise ConsentError("the state store is needed to keep OAuth tokens")
    return context.vault


def _vault_or_token_error(context: CredentialContext) -> TokenVault:
    if context.vault is None:
        raise TransportError(
            FailureClass.SECRET,
            "the OAuth token cannot be read: MAILOPS_SECRET_KEY (the key it is stored with) is not set",
            remedy="Set MAILOPS_SECRET_KEY to the key the tokens were stored with (the key itself, or file:PATH).",
        )
    return context.vault


def _save(vault: TokenVault, name: str, cache: str, version: int | None) -> int | None:
    """Store ``cache``; when another process saved in between, merge ours over theirs and store that.

    Several accounts share one msal cache: a save must keep the other accounts' tokens.
    """
    for _ in range(5):
        saved = vault.save(name, cache, expected_version=version)
        if saved is not None:
            return saved
        latest = vault.load(name)
        if latest is None:
            version = None
            continue
        cache, version = merge_caches(latest.plaintext, cache), latest.version
    return None


def merge_caches(theirs: str, ours: str) -> str:
    """Two serialized token caches as one: ours wins for every entry both hold (it is the newer)."""
    try:
        base: dict[str, Any] = json.loads(theirs)
        mine: dict[str, Any] = json.loads(ours)
    except ValueError:
        return ours
    for section, entries in mine.items():
        if isinstance(entries, dict) and isinstance(base.get(section), dict):
            base[section].update(entries)
        else:
            base[section] = entries
    return json.dumps(base)
