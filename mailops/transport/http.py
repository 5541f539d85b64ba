"""HTTPS to identity providers (Microsoft, Google, or a local stand-in), with the same trust as IMAP and SMTP.

msal and google-auth use requests. Its sessions here verify certificates against the
system's CAs plus MAILOPS_CA_FILE (an adapter with the same SSL context as the mail
protocols), and ignore the CA variables of the environment (REQUESTS_CA_BUNDLE and the
like) and ~/.netrc: the trust mailops is configured with is the trust it uses. A proxy
is taken from the environment as usual (HTTPS_PROXY, NO_PROXY), since many company
networks reach the identity providers only through one; inside its tunnel the server's
certificate is checked as without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from mailops.transport.connection import client_tls_context

TIMEOUT = 30.0


class _TrustingAdapter(HTTPAdapter):
    def __init__(self, ca_file: Path | None, **kwargs: Any):
        self._context = client_tls_context(ca_file)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._context  # the server's TLS inside the proxy's tunnel
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        if not proxies:  # the session ignores the environment; its proxy for this URL is taken here
            proxies = environment_proxy(request.url or "")
        # No request waits forever, whatever the library forgot to pass.
        return super().send(request, stream, timeout or TIMEOUT, verify, cert, proxies)


def environment_proxy(url: str) -> dict[str, str]:
    """The proxy of the environment for the HTTPS ``url``: HTTPS_PROXY's, unless NO_PROXY lists its host (ALL_PROXY
    and the like are not taken: a SOCKS proxy there is often a desktop's, which mailops does not speak). A
    proxy that cannot be used raises :class:`requests.exceptions.InvalidProxyURL`, whose text never holds the
    proxy's user name or password."""
    found = requests.utils.get_environ_proxies(url).get("https")
    if not found:
        return {}
    try:
        parsed = parse_url(found)
    except LocationParseError:  # its text would show the user name and the password: not passed on
        raise requests.exceptions.InvalidProxyURL(
            "HTTPS_PROXY is no URL that can be read (percent-encode `/`, `#`, `@` and `:` in its user name and "
            "password)"
        ) from None
    if parsed.scheme not in (None, "http", "https") or not parsed.host:
        raise requests.exceptions.InvalidProxyURL(
            f"HTTPS_PROXY names no HTTP proxy (such as http://proxy.example:3128): scheme {parsed.scheme!r}, "
            f"host {parsed.host!r}"
        )
    return {"https": found}


def https_session(ca_file: Path | None, session: requests.Session | None = None) -> requests.Session:
    """``session`` (or a new one) set up to trust what mailops trusts, and nothing from the environment."""
    session = session or requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would silently override the trust set here (proxies: the adapter)
    session.mount("https://", _TrustingAdapter(ca_file))
    return session
