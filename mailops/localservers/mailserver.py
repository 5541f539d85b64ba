"""The demo's embedded mail server: mail-devel (in-memory IMAP and SMTP), taught XOAUTH2.

Run as its own process: ``python -m mailops.localservers.mailserver --oauth-introspect URL
--oauth-ca FILE [mail-devel's options]``. Besides mail-devel's password logins, IMAP and
SMTP accept ``AUTH XOAUTH2`` with a token that the identity provider at URL says is
active and belongs to the login (RFC 7662 introspection over HTTPS, trusting FILE), so
the demo's OAuth account really logs in with its token. mail-devel builds its servers
from the classes named in its ``service`` module; this process puts XOAUTH2-capable
subclasses in their place before it starts. It listens where mail-devel is told to
(the demo says 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import urllib.parse
import urllib.request
from typing import Any

from mailops.localservers import xoauth2


class Introspection:
    """Asks the identity provider whether a token is active, and whose it is."""

    def __init__(self, url: str, ca_file: str):
        self.url = url
        self.context = ssl.create_default_context(cafile=ca_file)

    def owner(self, token: str) -> str | None:
        body = urllib.parse.urlencode({"token": token}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as answer:
                info = json.loads(answer.read(65536))
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("active") is not True:
            return None
        username = info.get("username")
        return username.lower() if isinstance(username, str) else None

    async def allows(self, login: str, token: str) -> bool:
        owner = await asyncio.to_thread(self.owner, token)
        return owner is not None and owner == login.lower()


def extend_mail_devel(introspection: Introspection) -> None:
    """Put XOAUTH2-capable servers in the place of mail-devel's own."""
    from mail_devel import service
    from mail_devel.auth import IMAPAuthenticator
    from mail_devel.smtp import MemoryHandler
    from pymap.backend.dict import Config, Identity
    from pymap.exceptions import InvalidAuth
    from pymap.user import UserMetadata
    from pysasl import SASLAuth
    from pysasl.creds.external import ExternalCredentials, ExternalVerificationRequired
    from pysasl.mechanism.login import LoginMechanism
    from pysasl.mechanism.oauth import OAuth2Mechanism
    from pysasl.mechanism.plain import PlainMechanism

    class OAuthConfig(Config):
        @property
        def initial_auth(self) -> SASLAuth:
            return SASLAuth([PlainMechanism(), LoginMechanism(), OAuth2Mechanism()])

        @property
        def tls_auth(self) -> SASLAuth:
            return self.initial_auth

    class OAuthLogin(IMAPAuthenticator):  # type: ignore[misc]
        async def authenticate(self, credentials: Any) -> Any:
            if not isinstance(credentials, ExternalCredentials):
                return await super().authenticate(credentials)
            try:  # pysasl hands out the token only through this exception
                credentials.verify(None)
            except ExternalVerificationRequired as needed:
                token = needed.token or ""
            login = credentials.authzid
            if not await introspection.allows(login, token):
                raise InvalidAuth()
            self.users_dict.setdefault(login, UserMetadata(self.config, login))
            return Identity(login, self, None, frozenset())

    class OAuthHandler(MemoryHandler):  # type: ignore[misc]
        async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:  # noqa: N802 - aiosmtpd's hook name
            async def check(login: str, token: str) -> str | None:
                return None if await introspection.allows(login, token) else xoauth2.REFUSED

            return await xoauth2.authenticate(server, args, check)

    service.Config, service.IMAPAuthenticator, service.MemoryHandler = OAuthConfig, OAuthLogin, OAuthHandler


def main(argv: list[str] | None = None) -> None:
    from mail_devel.__main__ import run
    from mail_devel.service import Service

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--oauth-introspect", required=True)
    ours.add_argument("--oauth-ca", required=True)
    known, rest = ours.parse_known_args(sys.argv[1:] if argv is None else argv)
    extend_mail_devel(Introspection(known.oauth_introspect, known.oauth_ca))
    asyncio.run(run(Service.parse(rest)))


if __name__ == "__main__":
    main()
