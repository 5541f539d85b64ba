"""The raw message store: each imported message whole, as an .eml file named by its SHA-256.

Content-addressed, so a message written twice (a retry after a crash, the same mail in two
accounts) is one file, and a file's name says what its content must be.

Storing is two steps, so that an importer can write one batch while the one before is being synced:
:meth:`RawStore.write` puts each file under its final name (written to a temporary name beside it and
renamed, so a name never shows part of a message) without waiting for the disk, and :meth:`RawStore.sync`
makes a written batch durable, its directory entries included. The importer commits a batch's index
rows only after ``sync`` returned, so a committed row always has its whole file, whatever is cut when.

A crash between the two steps may leave a name whose bytes never reached the disk (an empty file, or on
some file systems zeros): no row points to it, and it is never trusted. A name that exists already is
taken only when its bytes are the message (it is read and compared), and it is synced with the batch
like a file written now, as another importer may have written it a moment ago; otherwise it is replaced
the same way. What a crash left is removed by :meth:`RawStore.remove_orphans` once no row has taken it
for a while.

Syncing is what costs, and more so per call than per byte: on Linux (5.8 and later, where it reports
write-back errors) one ``syncfs`` per batch writes back the batch's files and directories with one
journal commit. It writes back whatever else is dirty on that file system too: a message directory
on a file system of its own keeps other programs' writes out of the import's wait. Elsewhere each
file and each directory of the batch is fsynced, from a pool of threads so that the file system
commits them together.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mailops.fileio import FileReadError, FileWriteError, read_bytes
from mailops.settings import Settings
from mailops.state.location import sqlite_file

MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # what `read` accepts; mail servers refuse far smaller messages
SYNC_THREADS = 32  # files synced at once where each needs its own fsync: enough to share a journal commit
ORPHAN_GRACE_SECONDS = 24 * 3600  # an unreferenced file younger than this may be another importer's, in flight
ORPHAN_SWEEP_EVERY_SECONDS = 24 * 3600  # the sweep reads every file's age: not on every pass of the worker
_SHA256_HEX = re.compile("[0-9a-f]{64}")
_SWEPT_MARK = ".orphans-swept"  # in the store's directory: its time of change is when the last sweep began

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


@dataclass
class Written:
    """A batch that :meth:`RawStore.write` wrote and :meth:`RawStore.sync` has still to make durable."""

    hashes: list[str]  # the SHA-256 of each message written, in order
    files: list[str] = field(default_factory=list)  # every file of the batch: written now or found
    # Opened before the first write: syncfs reports the write-back errors since then to this descriptor.
    _syncfs_descriptor: int | None = None

    def close(self) -> None:
        """Give up the batch without syncing it (its files stay, unreferenced, for the orphan sweep)."""
        if self._syncfs_descriptor is not None:
            os.close(self._syncfs_descriptor)
            self._syncfs_descriptor = None


class RawStore:
    """The .eml files under one directory, fanned out by the first two hex digits of their hash."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._made: set[str] = set()  # the fan-out directories known to exist
        self._sweeping = threading.Lock()  # the accounts of a pass share the store: one sweep at a time

    def path_of(self, sha256: str) -> Path:
        return Path(self._file_of(sha256))

    def _file_of(self, sha256: str) -> str:
        # A name read from the state store is checked: a damaged or hostile row could name `../../x`.
        if _SHA256_HEX.fullmatch(sha256) is None:
            raise FileReadError(f"the state store names a stored message {sha256[:80]!r}, which is no SHA-256")
        # A string, not a Path: a batch looks up many, and pathlib costs more than the look.
        return os.path.join(self.directory, sha256[:2], f"{sha256}.eml")

    def put(self, raw: bytes) -> str:
        """Store ``raw`` durably (synced to disk) and return its SHA-256 (hex)."""
        return self.put_many([raw])[0]

    def put_many(self, raws: Sequence[bytes], hashes: Sequence[str] | None = None) -> list[str]:
        """Store each of ``raws`` (whose SHA-256s are ``hashes``, computed when not given) durably and return
        their SHA-256s (hex), in order; :class:`FileWriteError` says why not."""
        written = self.write(raws, hashes)
        self.sync(written)
        return written.hashes

    def write(self, raws: Sequence[bytes], hashes: Sequence[str] | None = None) -> Written:
        """Put each of ``raws`` (whose SHA-256s are ``hashes``, computed when not given) under its name,
        not durably yet: :meth:`sync` makes the result durable, :meth:`Written.close` gives it up. On a
        failure nothing is left under a temporary name, and :class:`FileWriteError` says why."""
        names = [sha256_of(raw) for raw in raws] if hashes is None else list(hashes)
        messages = dict(zip(names, raws, strict=True))
        written = Written(names)
        try:
            directories = {sha256[:2] for sha256 in messages} - self._made
            if directories:
                _make_durable_dirs([self.directory / name for name in sorted(directories)])
                self._made |= directories  # mailops never removes them: no need to look again
            if _syncfs_reports_errors():
                written._syncfs_descriptor = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            for sha256, raw in messages.items():
                path = self._file_of(sha256)
                _write_one(path, raw)
                written.files.append(path)
        except OSError as exc:
            written.close()
            raise FileWriteError(f"cannot store a message in {self.directory}: {exc.strerror or exc}") from None
        return written

    def sync(self, written: Written) -> None:
        """Make ``written`` durable: its files' bytes and their names (see the module doc)."""
        try:
            if written._syncfs_descriptor is not None:
                _syncfs(written._syncfs_descriptor)
            else:
                _all_from_pool([(_fsync_path, (path,)) for path in written.files])
                # The names are durable once their directories are synced (those of files found there too:
                # a name that a crash could still take away is not stored yet).
                directories = sorted({os.path.dirname(path) for path in written.files})
                _all_from_pool([(_fsync_path, (directory,)) for directory in directories])
        except OSError as exc:
            raise FileWriteError(f"cannot store a message in {self.directory}: {exc.strerror or exc}") from None
        finally:
            written.close()

    def read(self, sha256: str) -> bytes:
        """A stored message; :class:`mailops.fileio.FileReadError` when it is not there."""
        return read_bytes(self.path_of(sha256), limit=MAX_MESSAGE_BYTES, what="stored message")

    def has(self, sha256: str) -> bool:
        return os.path.isfile(self._file_of(sha256))

    def missing(self, hashes: Sequence[str]) -> set[str]:
        """Those of ``hashes`` that are not stored."""
        return {sha256 for sha256 in set(hashes) if not os.path.isfile(self._file_of(sha256))}

    def remove(self, sha256: str) -> bool:
        """Delete a stored message (the archive's retention); False when it was not there."""
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FileWriteError(f"cannot delete a message in {self.directory}: {exc.strerror or exc}") from None
        return True

    def remove_orphans_when_due(
        self, unreferenced: Callable[[list[str]], list[str]], *, every_seconds: float = ORPHAN_SWEEP_EVERY_SECONDS
    ) -> int | None:
        """:meth:`remove_orphans`, when no sweep of this directory (by any process) began in the last
        ``every_seconds``; None when none was due, or another thread is sweeping."""
        if not self._sweeping.acquire(blocking=False):
            return None
        try:
            if not os.path.isdir(self.directory):
                return None  # nothing stored yet (or no directory: the import says so)
            mark = os.path.join(self.directory, _SWEPT_MARK)
            try:
                age = time.time() - os.stat(mark).st_mtime
                if 0 <= age < every_seconds:
                    return None
            except FileNotFoundError:
                pass
            try:
                with open(mark, "a"):
                    pass
                os.utime(mark)  # marked before the sweep, so that other workers skip it meanwhile
            except OSError as exc:
                raise FileWriteError(f"cannot write {mark}: {exc.strerror or exc}") from None
            return self.remove_orphans(unreferenced)
        finally:
            self._sweeping.release()

    def remove_orphans(
        self,
        unreferenced: Callable[[list[str]], list[str]],
        *,
        grace_seconds: float = ORPHAN_GRACE_SECONDS,
        now: float | None = None,
    ) -> int:
        """Delete the .eml files (and temporary files) that no index row keeps and that were last changed
        more than ``grace_seconds`` ago: what an importer killed between writing a file and committing its
        row left behind. ``unreferenced`` tells which of some hashes no row keeps; it is asked per fan-out
        directory, so memory stays bounded. A younger file may be another importer's, written but not
        committed yet, and is left alone. The number of files deleted."""
        cutoff = (time.time() if now is None else now) - grace_seconds
        removed = 0
        try:
            fan_out = sorted(entry.name for entry in os.scandir(self.directory) if _is_fan_out(entry))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise FileWriteError(f"cannot read {self.directory}: {exc.strerror or exc}") from None
        for name in fan_out:
            old = dict(self._old_files(os.path.join(self.directory, name), cutoff))
            leftovers = [path for sha256, path in old.items() if not _is_sha256(sha256)]
            candidates = sorted(sha256 for sha256 in old if _is_sha256(sha256))
            for path in [*leftovers, *(old[sha256] for sha256 in unreferenced(candidates))]:
                try:
                    # Checked again right before: an importer may have found and synced it meanwhile.
                    if os.stat(path).st_mtime >= cutoff:
                        continue
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise FileWriteError(f"cannot delete {path}: {exc.strerror or exc}") from None
        return removed

    @staticmethod
    def _old_files(directory: str, cutoff: float) -> Iterator[tuple[str, str]]:
        """(hash or temporary name, path) of the files in ``directory`` last changed before ``cutoff``."""
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
            except OSError:
                continue
            if entry.name.endswith(".eml"):
                yield entry.name[: -len(".eml")], entry.path
            elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
                yield entry.name, entry.path


def _is_fan_out(entry: os.DirEntry[str]) -> bool:
    return len(entry.name) == 2 and all(c in "0123456789abcdef" for c in entry.name) and entry.is_dir()


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _write_one(path: str, raw: bytes) -> None:
    """``raw`` under ``path``, not synced: the file there when it holds exactly ``raw``, else written to a
    temporary name beside it and renamed into place, so that no one ever reads part of a message under
    its name (two importers of one message rename the same bytes)."""
    if _holds(path, raw):
        os.utime(path)  # taken now: the orphan sweep's grace period starts again
        return
    _replace(path, raw)


def _holds(path: str, raw: bytes) -> bool:
    """Whether the file ``path`` holds exactly ``raw`` (False when it cannot be read)."""
    try:
        if os.stat(path).st_size != len(raw):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(raw) + 1) == raw
    except OSError:
        return False


def _replace(path: str, raw: bytes) -> None:
    """Put ``raw`` under ``path`` (new, or in place of what is there), atomically: written to a temporary
    name beside it, then renamed. On a failure no temporary file is left."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(descriptor, raw)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _write_all(descriptor: int, raw: bytes) -> None:
    view = memoryview(raw)
    while view:
        view = view[os.write(descriptor, view) :]


@cache
def _syncfs_reports_errors() -> bool:
    """Whether this system has syncfs(2) and it reports write-back errors (Linux 5.8 and later)."""
    if not os.uname().sysname == "Linux":
        return False
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8) and _libc_syncfs() is not None


@cache
def _libc_syncfs() -> Any:
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _syncfs(descriptor: int) -> None:
    """Write back everything of the file system that ``descriptor`` is on, and wait for it; OSError for a
    write-back error since ``descriptor`` was opened."""
    import ctypes

    if _libc_syncfs()(descriptor) != 0:  # ctypes lets go of the interpreter lock for the call
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


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

    Each fsync waits for the disk; made one after another, those waits add up, made at once the file
    system commits them together. A few calls per task: a task per call would cost more in handing them
    over than the calls themselves."""
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


def _fsync_path(path: str) -> None:
    """fsync the file or directory ``path``; its errors are raised (a directory that cannot be synced on
    this file system is no error)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(descriptor)


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
