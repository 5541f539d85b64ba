"""OAuth tokens in the state store, encrypted with MAILOPS_SECRET_KEY (Fernet).

A token cache is saved whole, after every acquire or refresh that changed it, so a
rotated refresh token is never lost. Each save bumps a version: when two processes
refresh the same cache at once, the second save finds a newer version and reports a
conflict instead of overwriting the other's tokens (the caller reloads and retries).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken

from mailops.state.accounts import aware, utcnow
from mailops.state.schema import StateError
from mailops.state.tables import ConsentRow, TokenCacheRow

if TYPE_CHECKING:
    from mailops.state.store import StateStore


class SecretKeyError(StateError):
    """The secret key is missing, malformed, or not the one the stored tokens were encrypted with."""


def make_key() -> str:
    """A new key for MAILOPS_SECRET_KEY."""
    return Fernet.generate_key().decode("ascii")


def cipher_for(key: str | None) -> Fernet:
    if not key:
        raise SecretKeyError(
            "OAuth tokens are stored encrypted, and MAILOPS_SECRET_KEY is not set: make a key with "
            "`mailops keygen --out FILE` and set MAILOPS_SECRET_KEY=file:FILE (or the key itself)"
        )
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SecretKeyError(
            "MAILOPS_SECRET_KEY is not a key mailops made (44 characters of URL-safe base64); "
            "make one with `mailops keygen`"
        ) from None


@dataclass(frozen=True)
class StoredCache:
    plaintext: str
    version: int


@dataclass(frozen=True)
class Consent:
    address: str
    identity: str
    cache: str
    consented_at: dt.datetime


class TokenVault:
    """Encrypted token caches and consents, in the state store."""

    def __init__(self, store: StateStore, key: str | None):
        self._store = store
        self._cipher = cipher_for(key)

    def load(self, name: str) -> StoredCache | None:
        with self._store.session() as session:
            row = session.get(TokenCacheRow, name)
            if row is None:
                return None
            ciphertext, version = row.ciphertext, row.version
        try:
            return StoredCache(self._cipher.decrypt(ciphertext.encode("ascii")).decode("utf-8"), version)
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                "MAILOPS_SECRET_KEY does not decrypt the stored OAuth tokens (a different key?); "
                "set the key they were stored with. The stored tokens were not changed."
            ) from None

    def save(self, name: str, plaintext: str, *, expected_version: int | None) -> int | None:
        """Store ``plaintext`` if the stored version is still ``expected_version`` (None: not stored yet).

        Returns the new version, or None when another process saved in between.
        """
        ciphertext = self._cipher.encrypt(plaintext.encode("utf-8")).decode("ascii")
        with self._store.session() as session:
            row = session.get(TokenCacheRow, name, with_for_update=True)
            current = row.version if row is not None else None
            if current != expected_version:
                return None
            if row is None:
                row = TokenCacheRow(name=name, version=0)
                session.add(row)
            row.ciphertext, row.version, row.updated_at = ciphertext, row.version + 1, utcnow()
            return row.version

    def record_consent(self, address: str, identity: str, cache: str) -> None:
        with self._store.session() as session:
            row = session.get(ConsentRow, address.lower())
            if row is None:
                row = ConsentRow(address=address.lower())
                session.add(row)
            row.identity, row.cache, row.consented_at = identity.lower(), cache, utcnow()

    def consent(self, address: str) -> Consent | None:
        with self._store.session() as session:
            row = session.get(ConsentRow, address.lower())
            if row is None:
                return None
            consented_at = aware(row.consented_at)
            return Consent(row.address, row.identity, row.cache, consented_at)
