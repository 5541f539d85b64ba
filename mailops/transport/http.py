"""HTTPS to identity providers (Microsoft, Google, or a local stand-in), with the same trust as IMAP and SMTP.

msal and google-auth use requests. Its sessions here verify certificates against the
system's CAs plus MAILOPS_CA_FILE (an adapter with the same SSL context as the mail
protocols), and ignore proxy and CA variables from the environment: the trust mailops
is configured with is the trust it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from mailops.transport.connection import client_tls_context

TIMEOUT = 30.0


class _TrustingAdapter(HTTPAdapter):
    def __init__(self, ca_file: Path | None, **kwargs: Any):
        self._context = client_tls_context(ca_file)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        # No request waits forever, whatever the library forgot to pass.
        return super().send(request, stream, timeout or TIMEOUT, verify, cert, proxies)


def https_session(ca_file: Path | None, session: requests.Session | None = None) -> requests.Session:
    """``session`` (or a new one) set up to trust what mailops trusts, and nothing from the environment."""
    session = session or requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE and proxies would silently override the trust set here
    session.mount("https://", _TrustingAdapter(ca_file))
    return session
