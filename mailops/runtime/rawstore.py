"""The raw message store: each imported message whole, as an .eml file named by its SHA-256.

Content-addressed, so a message written twice (a retry after a crash, the same mail in two
accounts) is one file, and a file's name proves its content. A file is written to a temporary
name, synced and renamed (:func:`mailops.fileio.atomic_write`): a crash leaves either the whole
file or none, never a truncated one under the final name. The importer writes it *before* it
commits the message's index row, so a committed row always has its file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mailops.fileio import FileWriteError, atomic_write, read_bytes
from mailops.settings import Settings
from mailops.state.location import sqlite_file

MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # what `read` accepts; mail servers refuse far smaller messages


def message_dir_of(settings: Settings) -> Path:
    """Where the raw messages live: the setting, else beside a SQLite state file, else .mailops/messages."""
    if settings.message_dir is not None:
        return settings.message_dir
    state_file = sqlite_file(settings.state_url)
    if state_file is not None:
        return state_file.parent / "messages"
    return Path(".mailops") / "messages"


class RawStore:
    """The .eml files under one directory, fanned out by the first two hex digits of their hash."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path_of(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.eml"

    def put(self, raw: bytes) -> str:
        """Store ``raw`` durably (synced to disk) and return its SHA-256 (hex)."""
        sha256 = hashlib.sha256(raw).hexdigest()
        path = self.path_of(sha256)
        try:
            if path.is_file() and path.stat().st_size == len(raw):
                return sha256  # only a complete, synced file ever gets this name
            _make_durable_dir(path.parent)
        except OSError as exc:
            raise FileWriteError(f"cannot store a message in {self.directory}: {exc.strerror or exc}") from None
        atomic_write(path, raw, mode=0o600)  # mail is personal data: for the owner only
        return sha256

    def read(self, sha256: str) -> bytes:
        """A stored message; :class:`mailops.fileio.FileReadError` when it is not there."""
        return read_bytes(self.path_of(sha256), limit=MAX_MESSAGE_BYTES, what="stored message")

    def has(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def remove(self, sha256: str) -> bool:
        """Delete a stored message (the archive's retention); False when it was not there."""
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FileWriteError(f"cannot delete a message in {self.directory}: {exc.strerror or exc}") from None
        return True


def _make_durable_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) so that the new entries survive a crash: each parent that
    got a new entry is synced, as atomic_write does for the file's own directory."""
    if directory.is_dir():
        return
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another worker made it meanwhile
            pass
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(descriptor)
