"""Atomic file writes: a file appears under its final name complete, or not at all.

The package's writers of maps, JSON, PNG figures and checkpoints go through
:func:`atomic_path`: write to a temporary file in the same folder, then rename it onto
the final name, with the permissions a plain ``open(path, "w")`` would have given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore at once (process-global)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or interrupt while writing never leaves a half-written file under the final
    name, and an existing file is only replaced once the new one is complete. The final
    file gets the permissions a plain ``open(path, "w")`` of a new file would give,
    ``0o666 & ~umask`` (not mkstemp's private 0o600), so colleagues can read outputs.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError:  # a file system without POSIX modes: keep what it gives
            pass
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
