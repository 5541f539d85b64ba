"""Manual accounts: the password comes from the place the spec's reference names."""

from __future__ import annotations

import os
from pathlib import Path

from mailops.spec.models import Account, SecretRef
from mailops.transport.connection import Credential
from mailops.transport.failures import FailureClass, TransportError


def read_secret(ref: SecretRef, config_dir: Path) -> str:
    """The secret behind ``ref``; a missing one is a classified failure naming the reference."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise TransportError(FailureClass.SECRET, f"environment variable {ref.env} is not set")
        return value
    path = config_dir / str(ref.file)
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise TransportError(FailureClass.SECRET, f"cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise TransportError(FailureClass.SECRET, f"secret file {path} is empty")
    return value


def password_credential(account: Account, config_dir: Path) -> Credential:
    assert account.password is not None and account.username is not None  # the spec checks guarantee it
    return Credential(username=account.username, password=read_secret(account.password, config_dir))
