"""Files that survive a crash and one writer at a time: atomic writes with the mode the umask gives, JSON read
with one clear sentence when it cannot be, and an advisory lock on a directory. A record's files are regular
files: opened without following symlinks, so a planted link never redirects a read or a write."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tinymnist.errors import CheckpointError, UsageError


def _file_mode() -> int:
    """The mode the umask gives a new file (0o666 less the umask), as open() would."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())  # mkstemp creates 0600, and rename keeps the mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of ``path`` opened with ``flags`` without following a symlink, refused (CheckpointError)
    unless it is a regular file; FileNotFoundError passes through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), mode)
    except FileNotFoundError:
        raise
    except OSError as e:
        if os.path.islink(path):
            raise CheckpointError(f"{path} is a symbolic link, not a file; a run record's files are regular "
                                  f"files: remove the link.") from None
        raise CheckpointError(f"{path} cannot be opened ({e.strerror}).") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a regular file; a run record's files are regular files: remove it.")
    return fd


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (never through a symlink); FileNotFoundError passes through."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def append_regular(path: Path, data: bytes) -> None:
    """Append ``data`` to the regular file ``path`` (created when missing, never through a symlink), fsynced."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _file_mode())
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> object:
    try:
        return json.loads(read_regular(path))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; is {path.parent} a tinymnist run directory?") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); the run record is corrupt.") from None


@contextlib.contextmanager
def exclusive(directory: Path, name: str, busy: str) -> Iterator[None]:
    """Hold the advisory lock file ``directory/name`` (created, with the directory, when missing); the system
    drops it when the process ends, crash included. Held elsewhere: a UsageError from ``busy``, whose
    ``{holder}`` is the holder's pid and host."""
    import fcntl

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = open_regular(directory / name, os.O_RDWR | os.O_CREAT, _file_mode())
    except OSError as e:
        raise UsageError(f"cannot write the run directory {directory} ({e.strerror}); choose another --out.") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise UsageError(busy.format(holder=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {platform.node()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
