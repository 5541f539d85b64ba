"""Reading and writing files safely: bounded reads of regular files only, atomic writes.

A path in the spec or on the command line may name anything: a FIFO that never
ends, ``/dev/zero``, a directory, a file of several gigabytes. :func:`read_bytes`
refuses all of these before reading. :func:`atomic_write` replaces a file so that a
reader (or a crash, or a full disk) sees either the old or the new content, never
a truncated mix.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from mailops.errors import MailopsError

MiB = 1024 * 1024


class FileReadError(MailopsError):
    """A file could not be read; the message names the file and says why (``missing``: it does not exist)."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing


class FileWriteError(MailopsError):
    """A file could not be written; the file as it was before is unchanged."""


def read_bytes(path: Path | str, *, limit: int, what: str = "file") -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes, else :class:`FileReadError`.

    The file is opened without blocking (a FIFO would otherwise wait for a writer
    forever) and checked to be a regular file before a byte is read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileReadError(f"{what} {path} not found", missing=True) from None
    except OSError as exc:  # no permission, a name too long, a symlink loop, ...
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise FileReadError(f"{what} {path} is {_kind_of(mode)}, not a regular file")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise FileReadError(f"{what} {path} is larger than {_size(limit)}; refusing to read it")
    return data


class NotUtf8Error(ValueError):
    """Bytes that are not UTF-8; ``line`` and ``column`` (1-based) locate the first bad byte."""

    def __init__(self, line: int, column: int, byte: int):
        super().__init__(f"not valid UTF-8 (byte 0x{byte:02x}); save the file as UTF-8")
        self.line, self.column = line, column


# What editors and libyaml count as the end of a line.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def line_and_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at ``index``, counting every kind of line break."""
    line, line_start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, line_start = line + 1, match.end()
    return line, index - line_start + 1


def decode_utf8(data: bytes) -> str:
    """``data`` as text (a leading byte order mark dropped), or :class:`NotUtf8Error` located by line and column."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        # Count characters, not bytes, before the bad byte: that is the column an editor shows.
        before = data[: exc.start].decode("utf-8", errors="replace")
        raise NotUtf8Error(*line_and_column(before, len(before)), data[exc.start]) from None


def read_text(path: Path | str, *, limit: int, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`read_bytes`), else :class:`FileReadError`;
    bytes that are not UTF-8 are located as ``path:line:column``."""
    try:
        return decode_utf8(read_bytes(path, limit=limit, what=what))
    except NotUtf8Error as exc:
        raise FileReadError(f"{path}:{exc.line}:{exc.column}: {what} is {exc}") from None


def regular_file_problem(path: Path | str) -> str | None:
    """Why ``path`` is not a readable regular file ("not found", "is a directory", ...), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be used: {exc.strerror}"
    return None if stat.S_ISREG(mode) else f"is {_kind_of(mode)}, not a regular file"


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit // 1024} KiB"


def atomic_write(path: Path | str, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync the directory.

    A symlink is followed: the file it points to is replaced, and the link stays. The
    new file keeps the mode and owner of the file it replaces; a new file gets ``mode``,
    or the usual 0666 minus the umask. Only a writable regular file is replaced: a
    read-only file, a FIFO or a device is refused. On any failure (a full disk, a
    missing directory) the old file is untouched, no temp file is left, and
    :class:`FileWriteError` says why.
    """
    write_together({Path(path): data}, mode=mode)


# Content made piece by piece: it is given the temporary file to write into.
Writer = Callable[[BinaryIO], None]


def atomic_write_from(path: Path | str, writer: Writer, *, mode: int | None = None) -> None:
    """:func:`atomic_write` of content that ``writer`` writes into the open temporary file, piece by piece:
    for a file too large to hold in memory. Whatever ``writer`` raises leaves the old file untouched and
    no temporary file, and is raised as it is (an :class:`OSError` as :class:`FileWriteError`). Such a write
    may take minutes: a SIGTERM or SIGHUP meanwhile ends the process the same way (exit code 128 + the
    signal's number), not with the temporary file left behind."""
    with _signals_as_exit():
        write_together({Path(path): writer}, mode=mode)


@contextlib.contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit while the block runs, so that it cleans up after itself; only where
    they would end the process anyway (their default action, in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(number: int, _frame: object) -> None:
        raise SystemExit(128 + number)

    replaced = {}
    for number in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(number) is signal.SIG_DFL:
            replaced[number] = signal.signal(number, leave)
    try:
        yield
    finally:
        for number, handler in replaced.items():
            signal.signal(number, handler)


def write_together(
    files: Mapping[Path, str | bytes | Writer], *, mode: int | None = None, follow_symlinks: bool = True
) -> None:
    """Replace each of ``files`` with its data as :func:`atomic_write` does, all of them or none.

    Every file is written and synced under a temporary name first; only then are they renamed,
    in order, so that a failure while writing (a full disk, a read-only file) leaves every file
    as it was. Without ``follow_symlinks`` a symlink among them is replaced by the file itself
    and what it points to is left alone: for files of generated names in a directory that
    others may write to.
    """
    staged: list[tuple[str, Path]] = []  # (temporary, target)
    renamed = 0
    try:
        for path, data in files.items():
            staged.append(_stage(path, data, mode=mode, follow_symlinks=follow_symlinks))
        for temporary, target in staged:
            os.replace(temporary, target)
            renamed += 1
    except BaseException as exc:
        for temporary, _target in staged:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(exc, OSError):  # a rename failed (the staging raises FileWriteError)
            done = "the file is unchanged" if not renamed else f"the {renamed} file(s) before it are replaced"
            raise FileWriteError(f"cannot write {staged[renamed][1]}: {exc.strerror or exc}; {done}") from None
        raise
    for directory in dict.fromkeys(target.parent for _temporary, target in staged):
        _fsync_directory(directory)


def _stage(path: Path, data: str | bytes | Writer, *, mode: int | None, follow_symlinks: bool) -> tuple[str, Path]:
    """The new content of ``path`` under a temporary name beside it, synced; (that name, the file to replace)."""
    shown = path
    path = Path(os.path.realpath(path) if follow_symlinks else os.path.abspath(path))
    try:
        existing: os.stat_result | None = os.stat(path) if follow_symlinks else os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise FileWriteError(f"cannot write {shown}: {exc.strerror}") from None
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        existing = None  # the link is replaced, as a new file
    if existing is not None:
        if not stat.S_ISREG(existing.st_mode):
            raise FileWriteError(f"cannot write {shown}: it is {_kind_of(existing.st_mode)}, not a regular file")
        if not existing.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise FileWriteError(f"cannot write {shown}: it is read-only; the file is unchanged")
    existing_mode = stat.S_IMODE(existing.st_mode) if existing is not None else None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FileWriteError(f"cannot write {shown}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, existing_mode if existing_mode is not None else (mode or _default_mode()))
        if existing is not None and (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.chown(temporary, existing.st_uid, existing.st_gid)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise FileWriteError(f"cannot write {shown}: {exc.strerror or exc}; the file is unchanged") from None
        raise
    return temporary, path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself already happened
    finally:
        os.close(descriptor)
