"""The rendezvous of the two halves: each hands the other its unregularised map.

RELION runs the two halves of an iteration at the same time, one process each. Each half
publishes ``<job>_spisonet.lock`` already holding an exclusive ``flock``
(:func:`publish_lock`), writes ``<job>_spisonet_unreg.mrc`` atomically (or nothing, when
its gates are closed or it fails), then releases the lock (:func:`release_lock`). The other
half waits for the lock file to appear and then blocks in the kernel on a shared flock
(:func:`wait_for_partner`): it wakes the moment the map is ready, or when the other process
dies (the kernel drops its lock), or at the timeout. No polling, no deadlock. While it
waits, an optional ``check`` runs every :data:`CHECK_EVERY_S` seconds and may raise to
stop the wait (the RELION watch does: :mod:`.watchdog`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_map
from ..io.relion_runs import JobName, parse_run_file

__all__ = [
    "CHECK_EVERY_S",
    "LOCK_SUFFIX",
    "UNREG_SUFFIX",
    "HalfFiles",
    "RendezvousResult",
    "half_files",
    "publish_lock",
    "release_lock",
    "remove_earlier_files",
    "wait_for_partner",
]

#: Suffixes of the two rendezvous files after the job name.
LOCK_SUFFIX = "_spisonet.lock"
UNREG_SUFFIX = "_spisonet_unreg.mrc"

#: While waiting, :func:`wait_for_partner` runs its ``check`` at least this often (s).
CHECK_EVERY_S = 0.2


@dataclass(frozen=True)
class HalfFiles:
    """The rendezvous files of one half: its lock and its unregularised map."""

    lock: Path
    unreg: Path


def half_files(folder: Path, job_name: str) -> HalfFiles:
    """The rendezvous files of job ``job_name`` in ``folder``."""
    return HalfFiles(folder / f"{job_name}{LOCK_SUFFIX}", folder / f"{job_name}{UNREG_SUFFIX}")


def publish_lock(path: Path) -> int:
    """Create ``path`` already holding an exclusive flock (lock a temporary, then rename),
    so whoever sees the file sees it locked until we release it. Returns the fd."""
    import fcntl
    import threading

    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return fd


def release_lock(fd: int | None) -> None:
    """Release and close a lock from :func:`publish_lock` (None: nothing to do)."""
    import fcntl

    if fd is None:
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def _flock_shared(fd: int, timeout: float, check: Callable[[], None] | None = None) -> bool:
    """Block until a shared flock on ``fd`` is granted (the owner released its exclusive
    lock, or died), at most ``timeout`` seconds. No polling: a helper thread blocks in the
    kernel; on timeout (or when ``check``, run every :data:`CHECK_EVERY_S` s, raises) it is
    left behind (daemon) and the fd is not closed."""
    import fcntl
    import threading

    granted = threading.Event()

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            return
        granted.set()

    try:  # fast path
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        pass
    worker = threading.Thread(target=take, name="spisonet-rendezvous", daemon=True)
    worker.start()
    end = time.monotonic() + max(0.0, timeout)
    while True:
        remaining = max(0.0, end - time.monotonic())
        if granted.wait(min(remaining, CHECK_EVERY_S) if check is not None else remaining):
            return True
        if time.monotonic() >= end:
            return False
        if check is not None:
            check()


@dataclass(frozen=True)
class RendezvousResult:
    """What the other half left: its unregularised map (None if none), why, and the
    seconds waited."""

    volume: np.ndarray | None
    reason: str
    waited: float


def _fresh(path: Path, not_before: float) -> bool:
    """``path`` exists and was modified at or after ``not_before`` (epoch seconds)."""
    try:
        return os.stat(path).st_mtime >= not_before
    except OSError:
        return False


def wait_for_partner(
    lock: Path,
    result: Path,
    *,
    not_before: float,
    timeout: float,
    check: Callable[[], None] | None = None,
) -> RendezvousResult:
    """Wait for the other half's unregularised map, without polling delays.

    Waits for ``lock`` to appear (short sleeps, 5 ms doubling to 100 ms: only while the
    other process has not started), then blocks on a shared flock until it is released,
    then reads ``result``. Files older than ``not_before`` (epoch seconds) are stale (an
    earlier run) and ignored. Gives up after ``timeout`` seconds in all. ``check`` runs
    at least every :data:`CHECK_EVERY_S` seconds while waiting; what it raises ends the
    wait (e.g. :class:`~spisonet.relion.watchdog.RelionGone`).
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while not _fresh(lock, not_before):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return RendezvousResult(
                None, f"the other half never started (no {lock.name} after {timeout:g} s)",
                time.monotonic() - start,
            )  # fmt: skip
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 0.1)
        if check is not None:
            check()
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError as exc:
        return RendezvousResult(None, f"cannot open {lock.name}: {exc}", time.monotonic() - start)
    granted = _flock_shared(fd, deadline - time.monotonic(), check)
    waited = time.monotonic() - start
    if not granted:
        return RendezvousResult(
            None, f"timed out after {timeout:g} s waiting for the other half", waited
        )
    release_lock(fd)
    if not _fresh(result, not_before):
        return RendezvousResult(
            None,
            "the other half finished without an unregularised map (its gate was closed or "
            "it failed: see its log lines)",
            waited,
        )
    volume = read_map(result, voxel_size=1.0).data  # only the values are used
    return RendezvousResult(np.asarray(volume, dtype=np.float32), "ok", waited)


def remove_earlier_files(folder: Path, jn: JobName) -> None:
    """Remove rendezvous files (locks, unregularised maps) of earlier iterations of this
    run (this half's, or both halves' for the joined iteration): nobody needs them now."""
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        other = parse_run_file(name)
        if (
            other is not None
            and other.root == jn.root
            and other.iteration < jn.iteration
            and other.half is not None
            and (jn.half is None or other.half == jn.half)
            and (other.kind, other.number) == (jn.kind, jn.number)
            and other.suffix in (LOCK_SUFFIX, UNREG_SUFFIX)
        ):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
