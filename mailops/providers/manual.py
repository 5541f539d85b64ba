"""Manual accounts (any IMAP/SMTP provider): a login name and a password the spec references."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mailops.fileio import FileReadError, read_bytes
from mailops.providers.base import AccountProvider, Completion, CredentialContext, register
from mailops.spec.models import Account, SecretRef
from mailops.transport.connection import Credential
from mailops.transport.failures import FailureClass, TransportError

MAX_SECRET_BYTES = 64 * 1024
# A secret goes into an IMAP or SMTP command: a line break there would end the command
# and send the rest of the secret as a command of its own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def read_secret(ref: SecretRef, config_dir: Path, *, single_line: bool = True) -> str:
    """The secret behind ``ref``; a missing or unusable one is a ``secret`` failure naming the reference.

    A file's one trailing line break (as editors write it) is not part of the secret. A
    password is one line; a document (``single_line=False``, e.g. an OAuth client's JSON)
    may have more.
    """
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise TransportError(FailureClass.SECRET, f"environment variable {ref.env} is not set")
        where = f"environment variable {ref.env}"
    else:
        path = config_dir / str(ref.file)
        try:
            raw = read_bytes(path, limit=MAX_SECRET_BYTES, what="secret file")
        except FileReadError as exc:
            raise TransportError(FailureClass.SECRET, str(exc)) from None
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TransportError(FailureClass.SECRET, f"secret file {path} is not UTF-8 text") from None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            raise TransportError(FailureClass.SECRET, f"secret file {path} is empty")
        where = f"secret file {path}"
    if single_line and _CONTROL.search(value):
        # Never show the secret, nor where in it the character sits.
        raise TransportError(
            FailureClass.SECRET,
            f"{where} holds a line break or another control character; a secret must be one line",
        )
    return value


@register
class ManualProvider(AccountProvider):
    name = "manual"

    def complete(self, account: Account) -> Completion:
        """Name, login and password must be given; servers may come from the domain's preset."""
        servers = super().complete(account)
        missing = [
            (name, "required for manual accounts", False)
            for name in ("display_name", "username", "password")
            if getattr(account, name) is None
        ]
        return Completion(servers.updates, missing + servers.problems, servers.filled_from)

    def credential(self, account: Account, context: CredentialContext) -> Credential:
        assert account.password is not None and account.username is not None  # complete() requires both
        return Credential(username=account.username, password=read_secret(account.password, context.config_dir))
