"""Data-parallel training and prediction with torch.distributed (torchrun, SLURM, --gpus).

One process per device ("rank"). Every rank builds the same training cubes from the same
seed, so the global batch of step k is identical to a single-process run; each rank
trains on its contiguous slice of it, and DistributedDataParallel averages the gradients.
With per-slice losses weighted by the slice's share of the rank's batch, that average is
exactly the gradient of the single-process global-batch loss (up to BatchNorm statistics,
which are per rank: see :func:`wrap_model`).

Only rank 0 writes files, logs and progress bars. Prediction tiles are dealt round-robin
to the ranks and the blended outputs are summed in memory with ``all_reduce``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InvalidValueError

__all__ = [
    "World",
    "check_batch_layout",
    "current_world",
    "init_from_environment",
    "is_main_process",
    "shutdown",
    "world_slice",
]


@dataclass(frozen=True)
class World:
    """Where this process stands: rank in 0 … size−1, its local rank on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as exc:
                raise InvalidValueError(
                    f"environment variable {name}={value!r} is not an integer"
                ) from exc
    return None


def launched_world() -> World:
    """The world described by the launcher's environment (torchrun, or SLURM's srun).

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; under ``srun`` without torchrun we read
    SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID. No variables: a single process.
    """
    size = _env_int("WORLD_SIZE")
    if size is not None:
        return World(_env_int("RANK") or 0, size, _env_int("LOCAL_RANK") or 0)
    size = _env_int("SLURM_NTASKS")
    if size is not None and size > 1 and os.environ.get("MASTER_ADDR"):
        return World(_env_int("SLURM_PROCID") or 0, size, _env_int("SLURM_LOCALID") or 0)
    return World()


def init_from_environment(device: torch.device, timeout_s: float = 1800.0) -> World:
    """Join the process group described by the environment (no-op for one process).

    NCCL on CUDA, gloo on CPU. On CUDA each rank uses GPU ``local_rank``.
    """
    world = launched_world()
    if not world.distributed:
        return world
    if dist.is_initialized():
        return current_world()
    if world.rank >= world.size or world.rank < 0:
        raise InvalidValueError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank % max(torch.cuda.device_count(), 1))
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(
        backend=backend,
        rank=world.rank,
        world_size=world.size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return world


def current_world() -> World:
    """The world of the initialised process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), launched_world().local_rank)
    return World()


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return current_world().is_main


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_layout(batch_size: int, acc_batches: int, world_size: int) -> int:
    """Validate (batch, accumulation, world size) up front; return the per-rank batch.

    The global batch is split evenly over the ranks, and each rank's share evenly into
    ``acc_batches`` micro-batches, so ``batch_size`` must be a multiple of
    ``world_size × acc_batches``.
    """
    if batch_size < 1 or acc_batches < 1 or world_size < 1:
        raise InvalidValueError(
            f"batch_size, acc_batches and the number of processes must be ≥ 1; got "
            f"{batch_size}, {acc_batches}, {world_size}"
        )
    if batch_size % (world_size * acc_batches):
        raise InvalidValueError(
            f"batch_size {batch_size} cannot be split over {world_size} process(es) × "
            f"{acc_batches} accumulation step(s): it must be a multiple of "
            f"{world_size * acc_batches} (e.g. --batch-size "
            f"{max(1, round(batch_size / (world_size * acc_batches))) * world_size * acc_batches})"
        )
    return batch_size // world_size


def world_slice(n_items: int, world: World) -> slice:
    """This rank's contiguous slice of a global batch of ``n_items`` (even split)."""
    per = n_items // world.size
    rem = n_items % world.size
    start = world.rank * per + min(world.rank, rem)
    return slice(start, start + per + (1 if world.rank < rem else 0))


def wrap_model(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several ranks.

    BatchNorm: on CUDA the layers become SyncBatchNorm, so statistics are over the global
    batch as in one process. On CPU (gloo) PyTorch has no SyncBatchNorm; statistics are per
    rank, which changes the loss by a little (the tests state the tolerance).
    """
    if not world.distributed:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index], output_device=device.index
        )
    return torch.nn.parallel.DistributedDataParallel(model)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
