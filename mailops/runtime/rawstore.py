"""The raw message store: each imported message whole, as an .eml file named by its SHA-256.

Content-addressed, so a message written twice (a retry after a crash, the same mail in two
accounts) is one file, and a file's name proves its content. A file is written to a temporary
name in its final directory, synced, renamed, and the directory synced: a crash leaves either the
whole file or none, never a truncated one under the final name. The importer stores a batch's
files this way *before* it commits their index rows, so a committed row always has its file.

Syncing is what costs: one fsync waits for the disk, 200 of them one after another wait 200
times. :meth:`RawStore.put_many` therefore writes, syncs and renames a batch's files from a pool of
threads at once, so that the file system commits them together, and then syncs their directories
the same way; every file is still synced before its rename, and every rename is synced before the
method returns.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from mailops.fileio import FileWriteError, read_bytes
from mailops.settings import Settings
from mailops.state.location import sqlite_file

MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # what `read` accepts; mail servers refuse far smaller messages
SYNC_THREADS = 32  # files written and synced at once: enough for the file system to commit a batch together

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def message_dir_of(settings: Settings) -> Path:
    """Where the raw messages live: the setting, else beside a SQLite state file, else .mailops/messages."""
    if settings.message_dir is not None:
        return settings.message_dir
    state_file = sqlite_file(settings.state_url)
    if state_file is not None:
        return state_file.parent / "messages"
    return Path(".mailops") / "messages"


def sha256_of(raw: bytes) -> str:
    """The name a message gets in the store (hex)."""
    return hashlib.sha256(raw).hexdigest()


class RawStore:
    """The .eml files under one directory, fanned out by the first two hex digits of their hash."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._made: set[str] = set()  # the fan-out directories known to exist

    def path_of(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.eml"

    def _file_of(self, sha256: str) -> str:
        # path_of as a string: a batch looks up many, and pathlib costs more than the look.
        return os.path.join(self.directory, sha256[:2], f"{sha256}.eml")

    def put(self, raw: bytes) -> str:
        """Store ``raw`` durably (synced to disk) and return its SHA-256 (hex)."""
        return self.put_many([raw])[0]

    def put_many(self, raws: Sequence[bytes]) -> list[str]:
        """Store each of ``raws`` durably (see the module doc) and return their SHA-256s (hex), in order.
        On a failure nothing is left under a temporary name, and :class:`FileWriteError` says why."""
        hashes = [sha256_of(raw) for raw in raws]
        messages = dict(zip(hashes, raws, strict=True))
        try:
            directories = {sha256[:2] for sha256 in messages} - self._made
            if directories:
                _make_durable_dirs([self.directory / name for name in sorted(directories)])
                self._made |= directories  # mailops never removes them: no need to look again
            _all_from_pool([(_write_one, (self._file_of(sha256), raw)) for sha256, raw in messages.items()])
            # The renames are durable once their directories are synced (those of files there already too:
            # a name that a crash could still take away is not stored yet).
            names = sorted({sha256[:2] for sha256 in messages})
            _all_from_pool([(_fsync_dir, (os.path.join(self.directory, name),)) for name in names])
        except OSError as exc:
            raise FileWriteError(f"cannot store a message in {self.directory}: {exc.strerror or exc}") from None
        return hashes

    def read(self, sha256: str) -> bytes:
        """A stored message; :class:`mailops.fileio.FileReadError` when it is not there."""
        return read_bytes(self.path_of(sha256), limit=MAX_MESSAGE_BYTES, what="stored message")

    def has(self, sha256: str) -> bool:
        return os.path.isfile(self._file_of(sha256))

    def missing(self, hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` that are not stored (looked up from the pool, as :meth:`put_many` writes)."""
        gone: set[str] = set()
        _all_from_pool([(_note_missing, (self._file_of(sha256), sha256, gone)) for sha256 in set(hashes)])
        return gone

    def remove(self, sha256: str) -> bool:
        """Delete a stored message (the archive's retention); False when it was not there."""
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FileWriteError(f"cannot delete a message in {self.directory}: {exc.strerror or exc}") from None
        return True


def _write_one(path: str, raw: bytes) -> None:
    """``raw`` under ``path``, unless it is there: written to a temporary name beside it, synced, and only
    then renamed, so that the name never shows less than the whole message. On a failure no temporary file
    is left."""
    try:
        if os.stat(path).st_size == len(raw):
            return  # only a complete, synced file ever gets this name: one of the right size is this message
    except FileNotFoundError:
        pass
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    # 0600 (the umask can only take away): mail is personal data, for the owner only.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _note_missing(path: str, sha256: str, gone: set[str]) -> None:
    if not os.path.isfile(path):
        gone.add(sha256)  # set.add holds the interpreter lock: safe from the pool's threads


def _make_durable_dirs(directories: Iterable[Path]) -> None:
    """Create the missing ``directories`` (and their parents) so that the new entries survive a crash:
    each parent that got a new entry is synced, as the files' own directories are."""
    created: list[Path] = []
    for directory in sorted(set(directories)):
        if directory.is_dir():
            continue
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
            created.append(path)
    # All of them are synced before a file is written into the new directories.
    for parent in sorted({path.parent for path in created}):
        _fsync_dir(parent)


def _all_from_pool(calls: Sequence[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    """Make ``calls`` from the pool of threads, spread over its threads, and wait for all of them; then
    raise the first error.

    The system calls are made on the pool's threads: a thread that makes many small system calls waits for
    the interpreter lock after each one, and while the import's other thread parses mail that wait is long.
    Spread over the pool, the waits overlap (and the file system syncs the files together). A few calls per
    task: a task per call would cost more in handing them over than the calls themselves."""
    if len(calls) <= 1:
        for function, arguments in calls:
            function(*arguments)
        return
    tasks = min(SYNC_THREADS, len(calls))
    futures = [_sync_pool().submit(_make_all, calls[start::tasks]) for start in range(tasks)]
    wait(futures)
    for future in futures:
        future.result()


def _make_all(calls: Sequence[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    """Each of ``calls``, also when one fails; then its (first) error is raised."""
    failure: BaseException | None = None
    for function, arguments in calls:
        try:
            function(*arguments)
        except BaseException as exc:  # noqa: BLE001 - the others are still made; the caller gets this one
            failure = failure or exc
    if failure is not None:
        raise failure


def _sync_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="mailops-sync")
        return _pool


def _fsync_dir(directory: Path | str) -> None:
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
