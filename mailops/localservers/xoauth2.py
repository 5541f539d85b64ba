"""The server side of SMTP ``AUTH XOAUTH2`` for aiosmtpd, as Gmail and Exchange Online speak it.

The client sends ``user=<login>^Aauth=Bearer <token>^A^A`` in base64, on the AUTH line or
after an empty ``334`` challenge. A refused token first gets ``334 <base64 JSON error>``,
to which the client answers with an empty line, then ``535 5.7.3``. Used by the demo's
embedded mail server and by the test suite's SMTP server; each decides which tokens to
accept.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

REFUSED = "535 5.7.3 Authentication unsuccessful"

# (login, token) -> None when accepted, else the SMTP reply to refuse with.
TokenCheck = Callable[[str, str], Awaitable[str | None]]


def parse_xoauth2(blob: bytes) -> tuple[str, str]:
    """The login and the bearer token of an XOAUTH2 initial response; empty strings when malformed."""
    fields = dict(part.split("=", 1) for part in blob.decode("utf-8", "replace").split("\x01") if "=" in part)
    auth = fields.get("auth", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return fields.get("user", ""), token


async def authenticate(
    server: Any, args: list[str], check: TokenCheck, *, error_challenge: bool = True, scope: str = ""
) -> Any:
    """aiosmtpd's ``auth_XOAUTH2`` hook: read the response, ``check`` it, answer as the big providers do."""
    from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

    if len(args) > 1:  # the initial response, on the AUTH line
        try:
            blob = b"" if args[1] == "=" else base64.b64decode(args[1], validate=True)
        except binascii.Error:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
    else:
        response = await server.challenge_auth("")
        if response is MISSING:
            return AuthResult(success=False, handled=True)  # challenge_auth has answered
        blob = response
    login, token = parse_xoauth2(blob)
    refusal = await check(login, token) if login and token else REFUSED
    if refusal is None:
        return AuthResult(success=True, auth_data=LoginPassword(login.encode(), b""))
    if refusal == REFUSED and error_challenge:
        error = {"status": "401", "schemes": "bearer", **({"scope": scope} if scope else {})}
        if await server.challenge_auth(json.dumps(error)) is MISSING:
            return AuthResult(success=False, handled=True)
    return AuthResult(success=False, handled=False, message=refusal)
