"""RELION 5.1 from a Debian sid root (built by ``.ci/relion5-root``), for the tests.

RELION 5.1.0 is packaged only in Debian's unstable suite, built against its C library, so
it runs from a chroot. :func:`run_in_root` runs a shell command there inside a private
mount namespace (``unshare -m``: every mount disappears when the command returns) with

- ``/proc`` and ``/dev`` mounted,
- the host's ``/`` at ``/host``,
- the job folder at the same path as on the host (so RELION and ``spisonet-relion`` read
  the same paths),

and ``/usr/local/bin/spisonet-relion-host`` in the root: the external reconstructor RELION
is given. It ``chroot``s back into ``/host`` and runs the host's ``spisonet-relion`` there
(the root has no torch), in the job folder, with RELION's arguments. The environment
passes through both chroots. Set ``SPISONET_RELION5_ROOT`` to the root (``.ci/run`` does).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

#: RELION's external reconstructor inside the root ({exe}: the host's spisonet-relion).
HOST_EXE_SCRIPT = """#!/bin/sh
# RELION 5.1 runs this as its external reconstructor: back to the host, same folder.
exec chroot /host /bin/sh -c 'cd "$1" || exit 1; shift; exec "$@"' spisonet-relion-host \\
    "$PWD" {exe} "$@"
"""


def relion5_root() -> Path | None:
    """The RELION 5.1 root named by ``SPISONET_RELION5_ROOT``, when it can be used here."""
    text = os.environ.get("SPISONET_RELION5_ROOT")
    if not text or os.geteuid() != 0:
        return None
    root = Path(text)
    if not (root / "usr" / "bin" / "relion_refine_mpi").exists():
        return None
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return None
    if shutil.which("spisonet-relion") is None:
        return None
    return root


def skip_reason() -> str:
    """Why the RELION 5.1 tests are skipped (for pytest's report)."""
    if not os.environ.get("SPISONET_RELION5_ROOT"):
        return "SPISONET_RELION5_ROOT not set (.ci/run builds the root with .ci/relion5-root)"
    return (
        "RELION 5.1 root unusable here (needs root, unshare, chroot, spisonet-relion on PATH "
        f"and {os.environ['SPISONET_RELION5_ROOT']}/usr/bin/relion_refine_mpi)"
    )


def run_in_root(
    root: Path,
    command: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 1500.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (a shell line) in ``cwd`` inside the RELION 5.1 root."""
    exe = shutil.which("spisonet-relion")
    script = root / "usr" / "local" / "bin" / "spisonet-relion-host"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(HOST_EXE_SCRIPT.format(exe=shlex.quote(str(exe))), encoding="utf-8")
    script.chmod(0o755)
    cwd = Path(cwd).resolve()
    r = shlex.quote(str(root))
    inside = shlex.quote(str(root) + str(cwd))
    inner = f"cd {shlex.quote(str(cwd))} && {command}"
    outer = " && ".join(
        [
            f"mount --rbind / {r}/host",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"mkdir -p {inside}",
            f"mount --bind {shlex.quote(str(cwd))} {inside}",
            f"exec chroot {r} /bin/sh -c {shlex.quote(inner)}",
        ]
    )
    full_env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    full_env.update(env or {})
    full_env["PATH"] = full_env.get("PATH", "") + ":/usr/local/bin:/usr/bin:/bin"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", outer],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: Runs any host command from inside the root (the oracle, ``spisonet-relion --no-correction``).
HOST_EXEC_SCRIPT = """#!/bin/sh
# back to the host, same folder, then the host command given as arguments
exec chroot /host /bin/sh -c 'cd "$1" || exit 1; shift; exec "$@"' host-exec "$PWD" "$@"
"""


def host_executable(root: Path, command: str) -> str:
    """An external-reconstruct executable for RELION 5.1 in ``root`` that runs the host's
    ``command`` (a shell word list, e.g. ``"spisonet-relion --no-correction"``)."""
    script = root / "usr" / "local" / "bin" / "host-exec"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(HOST_EXEC_SCRIPT, encoding="utf-8")
    script.chmod(0o755)
    return f"/usr/local/bin/host-exec {command}"
