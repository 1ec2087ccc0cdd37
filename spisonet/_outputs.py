"""Output paths: checked before any work starts, and one writer per output folder.

A command that would fail to write its results only after minutes (or hours) of
computation checks its outputs first: :func:`check_output_file` and
:func:`check_output_dir` raise :class:`~spisonet.errors.OutputPathError` when the path
is an existing folder where a file is expected (or the reverse), when a parent folder
cannot be created (a file is in the way) or when the folder is not writable. They test
writability by creating and removing a temporary file, so a read-only file system or a
path under ``/proc`` fails even for root, and they create nothing.

:func:`output_lock` keeps two runs from writing into the same folder: it holds an
exclusive ``flock`` on ``<folder>/.spisonet.lock`` for the run. The operating system
releases it when the process ends, however it ends, so a crashed run never blocks a
rerun.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputLockedError, OutputPathError

__all__ = [
    "LOCK_NAME",
    "check_output_dir",
    "check_output_file",
    "check_output_lock",
    "output_lock",
]

#: Name of the lock file inside a locked output folder (removed when the run ends).
LOCK_NAME = ".spisonet.lock"


def check_output_file(path: str | os.PathLike, option: str = "-o") -> Path:
    """Check that a file can be written at ``path``; create nothing.

    Parameters
    ----------
    path : the output file.
    option : how the user gave it (``-o``, ``OUT_MAP``), used in the message.

    Raises
    ------
    OutputPathError
        ``path`` is an existing folder, its folder cannot be created or is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(
            f"{option} {p}: expected an output file name, found an existing folder; "
            f"give a file name (e.g. {p / 'out.mrc'})"
        )
    _check_writable_folder(p.parent, option, p)
    return p


def check_output_dir(path: str | os.PathLike, option: str = "--output-dir") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; create nothing.

    Raises
    ------
    OutputPathError
        ``path`` is an existing file, or cannot be created, or is not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(
            f"{option} {p}: expected an output folder, found an existing file; give a folder name"
        )
    _check_writable_folder(p, option, p)
    return p


def _check_writable_folder(folder: Path, option: str, target: Path) -> None:
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"{option} {target}: cannot create the folder {folder}: {existing} is a file, "
            "not a folder; choose another output path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".spisonet-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputPathError(
            f"{option} {target}: cannot write in {existing} ({why}); choose a writable output path"
        ) from exc


def _owner(fd: int) -> str:
    """The ``pid`` (and host, when not this one) written in a lock file."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if not text:
        return "pid unknown"
    pid, host = text[0], (text[1] if len(text) > 1 else "")
    if host and host != socket.gethostname():
        return f"pid {pid} on {host}"
    return f"pid {pid}"


def check_output_lock(
    folder: str | os.PathLike, command: str = "reconstruct", option: str = "--output-dir"
) -> None:
    """Raise :class:`~spisonet.errors.OutputLockedError` now when another run holds
    ``folder`` (a quick look before slow imports; :func:`output_lock` takes the lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    lock = Path(folder) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OutputLockedError(_locked_message(folder, _owner(fd), command, option)) from None
    finally:
        os.close(fd)  # also releases the lock if we got it


def _locked_message(folder, owner: str, command: str, option: str) -> str:
    return (
        f"another spisonet {command} is writing to {folder} ({owner}); wait for it or "
        f"choose another {option}"
    )


@contextmanager
def output_lock(
    folder: str | os.PathLike,
    command: str = "reconstruct",
    option: str = "--output-dir",
) -> Iterator[Path]:
    """Hold the output folder for one run; refuse when another run holds it.

    Checks the folder (:func:`check_output_dir`), creates it, then takes an exclusive,
    non-blocking ``flock`` on ``<folder>/.spisonet.lock`` (holding this process's pid and
    host) until the block ends. On exit the lock file is removed, and so is the folder
    when this call created it and nothing was written into it.

    Raises
    ------
    OutputPathError
        The folder cannot be created or written.
    OutputLockedError
        Another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        fcntl = None
    path = check_output_dir(folder, option)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"{option} {path}: cannot create the folder ({exc.strerror})"
        ) from exc
    if fcntl is None:  # pragma: no cover
        yield path
        return
    lock = path / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputPathError(
                f"{option} {path}: cannot create the lock file {lock} ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutputPathError(
                    f"{option} {path}: cannot lock {lock} ({exc.strerror})"
                ) from exc
            raise OutputLockedError(_locked_message(path, owner, command, option)) from None
        # the previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a deleted file and must try again with the new one
        try:
            now = os.stat(lock)
            mine = os.fstat(fd)
            same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        # remove while still holding the lock, then release (see the retry above)
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            try:
                path.rmdir()  # only when empty: a failed start leaves nothing behind
            except OSError:
                pass
