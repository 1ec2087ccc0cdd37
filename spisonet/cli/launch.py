"""Several processes for one ``reconstruct``: ``--gpus`` / ``--processes`` start one rank
per device under torch's elastic launcher, each running this command line again; under
``torchrun`` or ``srun`` the ranks are started from outside. Also what every rank shares:
the lock on ``--output-dir`` and the torch.distributed set-up.

torch is imported inside the functions: ``spisonet --help`` must not load it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from typer.main import get_command

from .._outputs import check_output_dir, check_output_lock, output_lock
from ..correction import CorrectionSettings
from ..errors import InvalidValueError
from ._app import app

__all__ = [
    "argv_without",
    "check_output_dir_early",
    "distributed_training",
    "launched_world",
    "output_dir_lock",
    "run_ranks",
]

#: Set by a process that starts ranks and holds --output-dir for them.
_HELD = "SPISONET_HELD_OUTPUT_DIR"


def launched_world():
    """This process's :class:`spisonet.nn.distributed.World` (imports torch)."""
    from ..nn.distributed import launched_world as world

    return world()


def check_output_dir_early(output_dir: Path) -> None:
    """--output-dir writable and not held by another run, told in the first second. Only
    where this process would take the lock: not on ranks > 0 (torchrun, srun) nor in ranks
    whose launching process holds it."""
    check_output_dir(output_dir, "--output-dir")
    # read from the environment, not from torch: this runs before the slow imports
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    if rank.strip() == "0" and not os.environ.get(_HELD):
        check_output_lock(output_dir, "reconstruct", "--output-dir")


@contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """Hold --output-dir for this run (on rank 0 only: the ranks share one run), unless
    the process that launched this rank holds it already (``--gpus`` / ``--processes``)."""
    held = os.environ.get(_HELD)
    if not launched_world().is_main or held == str(Path(output_dir).resolve()):
        yield
        return
    with output_lock(output_dir, "reconstruct", "--output-dir"):
        yield


@contextmanager
def _lock_for_ranks(output_dir: Path) -> Iterator[None]:
    """This launching process holds --output-dir for the ranks it starts (they inherit
    SPISONET_HELD_OUTPUT_DIR and do not lock it again)."""
    with output_lock(output_dir, "reconstruct", "--output-dir") as folder:
        before = os.environ.get(_HELD)
        os.environ[_HELD] = str(folder.resolve())
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_HELD, None)
            else:
                os.environ[_HELD] = before


def _rank_count(gpus: str | None, processes: int | None) -> int:
    """How many ranks --gpus / --processes ask for; --gpus also picks the visible GPUs."""
    if not gpus:
        n = int(processes or 1)
        if n < 1:
            raise InvalidValueError(f"--processes must be ≥ 1, got {n}")
        return n
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip() != ""]
    except ValueError as exc:
        raise InvalidValueError(
            f"--gpus must be a comma-separated list of GPU numbers, got {gpus!r}"
        ) from exc
    if not ids:
        raise InvalidValueError("--gpus is empty")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    return len(ids)


def run_ranks(gpus: str | None, processes: int | None, output_dir: Path) -> None:
    """Start one rank per GPU (or CPU process) with torch's elastic launcher, each
    running this command line without --gpus / --processes; wait for them."""
    n = _rank_count(gpus, processes)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"spisonet-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    argv = argv_without(sys.argv[1:], ("--gpus", "--processes"))
    with _lock_for_ranks(output_dir):
        elastic_launch(config, _worker)(argv)


def argv_without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--x v`` or ``--x=v``)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options):
            continue
        out.append(a)
    return out


def _worker(argv: list[str]) -> None:
    """One rank started by :func:`run_ranks`: run the command line again."""
    get_command(app)(args=argv, standalone_mode=False)


@contextmanager
def distributed_training(world, settings: CorrectionSettings, console: Console) -> Iterator[None]:
    """Join the other ranks (when there are any) for the block; leave them after it."""
    from ..nn.distributed import check_batch_layout, init_from_environment, shutdown
    from ..nn.train import resolve_device

    if world.distributed:
        # one clear line before any work when the batch cannot be split over the ranks
        check_batch_layout(settings.batch_size, settings.acc_batches, world.size)
        init_from_environment(resolve_device(settings.device))
        console.print(
            f"Data-parallel training on {world.size} processes "
            f"(global batch {settings.batch_size}, {settings.batch_size // world.size} per "
            "process); rank 0 writes the outputs"
        )
    try:
        yield
    finally:
        shutdown()
