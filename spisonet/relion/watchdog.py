"""When RELION dies, so do we: :class:`RelionWatch`.

RELION runs its external reconstructor through ``system()``, i.e. ``/bin/sh -c "$EXE
<star>"``, and waits for it. When RELION is killed or aborted (a time limit, the GUI's
abort, ``kill``), nothing stops that child: it goes on training for minutes, writing into
the job folder and leaving its rendezvous lock behind for the next run. So each corrected
call watches the process that started it and stops within seconds once it is gone,
removing this call's rendezvous files and partial model, with exit code
:data:`EXIT_RELION_GONE`.

A process is orphaned when its parent dies: the kernel hands it to init or a subreaper,
so ``os.getppid()`` changes (the portable check). Debian's ``/bin/sh`` (dash) does not
``exec`` the command it is given, so our parent is usually that shell, which outlives
RELION (it is blocked waiting for us); on Linux the watch therefore also follows the
chain of shells above us (``/proc/<pid>/stat``) and checks that the first non-shell
ancestor, RELION, is still the parent of the shell below it. ``prctl(PR_SET_PDEATHSIG)``
is not used: it only fires when the direct parent dies, which is that shell.

The checks run where the time goes: between training steps and prediction batches
(:meth:`RelionWatch.progress`, the progress callback of the correction), while waiting for
the other half (:func:`spisonet.relion.rendezvous.wait_for_partner`'s ``check``), and in
a monitor thread every :attr:`RelionWatch.poll` seconds for the stretches in between (the
reconstructions, the 3D FSC). A check that finds RELION gone raises :class:`RelionGone`
(a :class:`SystemExit`, so that the runner's never-kill-RELION ``except Exception`` does
not turn it into a plain map nobody reads); when the main flow does not reach a check
within :attr:`RelionWatch.grace` seconds (a long computation), the monitor removes the
files itself and ends the process with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from .job import log_line

__all__ = ["EXIT_RELION_GONE", "RelionGone", "RelionWatch", "lineage"]

#: Exit code of ``spisonet-relion`` when it stopped because RELION was gone (0, 1, 2 and
#: 130 are taken by the runner); nobody reads it but a person or a test.
EXIT_RELION_GONE = 3

#: Names (argv[0]'s base name) of the shells between RELION and us that are walked through.
_SHELLS = frozenset({"sh", "dash", "bash", "ash", "zsh", "ksh", "mksh", "busybox", "csh", "tcsh"})


class RelionGone(SystemExit):
    """RELION, which started this process, is gone: stop (exit code
    :data:`EXIT_RELION_GONE`)."""


def _parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` from ``/proc``; None if unknown (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("utf-8", "replace")
        # "pid (name) state ppid ...": the name may hold spaces and parentheses
        return int(stat.rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _program(pid: int) -> str:
    """The base name of process ``pid``'s argv[0] ("" if unknown). For a script this is
    its interpreter (``/bin/sh``), where the kernel's ``comm`` would be the script's name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv0 = fh.read().split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        return ""
    return os.path.basename(argv0).lstrip("-")  # "-bash": a login shell


def lineage(parent: int, *, max_depth: int = 8) -> tuple[int, ...]:
    """``parent`` and, while it is a shell, its ancestors: (parent, ..., RELION).

    Stops at the first process that is not a shell (RELION), at init, or where ``/proc``
    cannot tell (not Linux): then only ``parent`` is watched.
    """
    chain = [parent]
    while len(chain) < max_depth and _program(chain[-1]) in _SHELLS:
        above = _parent_of(chain[-1])
        if above is None or above <= 1:
            break
        chain.append(above)
    return tuple(chain)


class RelionWatch:
    """Watches the process that started this one (RELION, maybe through shells).

    Parameters
    ----------
    parent : the parent pid to watch (default ``os.getppid()`` now); a pid that is not our
        parent reads as gone at once.
    poll : seconds between the monitor thread's checks.
    grace : seconds the monitor gives the main flow to reach a check and stop cleanly
        before it removes the files and ends the process itself.
    """

    def __init__(self, parent: int | None = None, *, poll: float = 0.5, grace: float = 2.0) -> None:
        self.lineage = lineage(os.getppid() if parent is None else parent)
        self.poll = poll
        self.grace = grace
        self._noticed = threading.Event()
        self._notice_lock = threading.Lock()
        self._star: Path | None = None
        self._name = "spisonet-relion"
        self._files: tuple[Path, ...] = ()

    @property
    def relion_pid(self) -> int:
        """The pid of the watched process (the first non-shell ancestor)."""
        return self.lineage[-1]

    def gone(self) -> bool:
        """Whether the watched process is gone (we, or a shell above us, were orphaned)."""
        if os.getppid() != self.lineage[0]:
            return True
        return any(
            _parent_of(child) != parent
            for child, parent in zip(self.lineage, self.lineage[1:], strict=False)
        )

    # -- the checks

    def check(self) -> None:
        """Raise :class:`RelionGone` (after removing the files) if RELION is gone."""
        if self._noticed.is_set() or self.gone():
            self.stop()

    def progress(self, stage: str, done: float, total: float, info: Any = None) -> None:
        """A progress callback (:class:`spisonet.progress.Progress`) that only checks."""
        self.check()

    def stop(self) -> NoReturn:
        """Log once, remove the registered files, raise :class:`RelionGone`."""
        self._notice()
        self._remove_files()
        raise RelionGone(EXIT_RELION_GONE)

    @contextlib.contextmanager
    def watching(self, star: Path, name: str, files: Iterable[Path] = ()) -> Iterator[None]:
        """Watch RELION while the block runs; on its death remove ``files``.

        ``star`` and ``name`` say where the log line goes and whose it is. The monitor
        thread runs only inside the block. When RELION died while the block ran, leaving
        it (normally or with an ordinary exception) stops too: there is nobody to hand a
        map to.
        """
        self._star, self._name, self._files = star, name, tuple(files)
        done = threading.Event()
        monitor = threading.Thread(
            target=self._monitor, args=(done,), name="spisonet-relion-watch", daemon=True
        )
        monitor.start()
        try:
            yield
        except Exception:
            if self._noticed.is_set() or self.gone():
                self.stop()
            raise
        else:
            self.check()
        finally:
            done.set()

    # -- inside

    def _notice(self) -> None:
        """Log "RELION (pid N) is gone: stopping" once (log file and stdout)."""
        with self._notice_lock:
            if self._noticed.is_set():
                return
            self._noticed.set()
            message = f"{self._name}: RELION (pid {self.relion_pid}) is gone: stopping"
            if self._star is not None:
                log_line(self._star, message, echo=False)
            # os.write, not print: stdout may be a pipe nobody reads now, and a failed
            # buffered flush at exit would replace our exit code with 120
            with contextlib.suppress(OSError):
                os.write(1, f"spisonet-relion: {message}\n".encode())

    def _remove_files(self) -> None:
        """Remove the registered files and their temporaries (atomic writes, locks)."""
        for path in self._files:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                for other in os.listdir(path.parent):
                    if other.endswith(".tmp") and other.lstrip(".").startswith(f"{path.name}."):
                        with contextlib.suppress(OSError):
                            (path.parent / other).unlink()

    def _monitor(self, done: threading.Event) -> None:
        """Check every ``poll`` s; when RELION is gone, give the main flow ``grace`` s to
        stop at a check, then remove the files and end the process."""
        while not done.wait(self.poll):
            if not self.gone():
                continue
            self._notice()
            if done.wait(self.grace):
                return
            self._remove_files()
            os._exit(EXIT_RELION_GONE)
