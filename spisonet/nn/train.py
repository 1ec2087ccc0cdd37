"""Training the correction network (ALGORITHM.md §3, "Loss" and the training schedule).

One epoch is one pass over the in-memory training cubes (:class:`~spisonet.nn.CubePairs`)
in batches of ``batch_size``; each batch is split into ``acc_batches`` micro-batches whose
gradients are accumulated before one optimiser step. The accumulated gradient is exactly
the gradient of the batch's mean loss: each micro-batch's loss is weighted by its share of
the batch (``len(micro) / len(batch)``; ``1 / acc_batches`` when they divide evenly, as the
public tool). Only BatchNorm statistics see the smaller micro-batches.

Optimiser: AdamW (weight decay 0.01). Learning rate: constant (the published setting) or a
one-cycle schedule (warm-up to ``learning_rate`` over the first 30 % of the steps, cosine
annealing after; it gave better results than a constant rate in short CPU runs).

Mixed precision: ``amp="bf16"`` runs the network under ``torch.autocast(dtype=bfloat16)``;
the Fourier operator and the losses stay in float32. ``amp="auto"`` picks bf16 on CUDA
devices that support it and float32 on the CPU. Measured on the 2-core development CPU
(shared with other jobs, so ±30 %): a (16, 32, 64, 128) network on 32³ cubes, batch 4,
took 1.43 s per step in float32 and 0.90 s under bf16 (1.6× faster); the tiny (8, 16, 32)
network on 16³ cubes gained nothing. Hence the ``cpu`` preset of
:mod:`spisonet.correction.settings` asks for bf16 explicitly and ``tiny`` does not.

Checkpoints: after every epoch a file with the model, optimiser and scheduler states, the
epoch, the loss history, the settings and the RNG state is written atomically; ``resume``
continues from it and gives the same weights as an uninterrupted run with the same seed
(every random choice of epoch ``e`` depends only on ``(seed, e)``). Files are read with
``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_nonnegative_int
from ..errors import InvalidValueError, ModelFileError
from ..progress import Progress
from .checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from .data import CubePairs
from .distributed import (
    all_reduce_sum_,
    barrier,
    check_batch_layout,
    current_world,
    world_slice,
    wrap_model,
)
from .losses import LOW_RESIDUAL_MAX_FREQ, correction_loss
from .operators import sampling_tensor
from .unet import WIDTH_PRESETS, UNet3D

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelFileError",
    "TrainProgress",
    "TrainResult",
    "TrainSettings",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "resolve_amp",
    "resolve_device",
    "save_checkpoint",
    "set_cpu_threads",
    "train_network",
]

#: Where the consistency may be taken on the W-weighted residual (TrainSettings).
RESIDUAL_CHOICES = ("off", "low", "all")

#: Which part of the equivariance residual is scored (TrainSettings.equivariance_weight).
EQUIVARIANCE_WEIGHTS = ("all", "measured", "high")


def _residual_choice(value: Any) -> Any:
    """``consistency_residual`` as a choice: checkpoints of 2026-12-04 stored a boolean."""
    if isinstance(value, bool):
        return "all" if value else "off"
    return value


#: Settings that must agree between a checkpoint and the run that resumes it.
_RESUME_KEYS = (
    "widths",
    "batch_size",
    "acc_batches",
    "learning_rate",
    "weight_decay",
    "alpha",
    "beta",
    "self_weight",
    "consistency_border",
    "consistency_residual",
    "equivariance_weight",
    "schedule",
    "seed",
)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run.

    Attributes
    ----------
    widths : channel widths of the U-Net per level (published: 64, 128, 256, 320).
    epochs : passes over the training cubes.
    batch_size : cubes per optimiser step.
    acc_batches : micro-batches per step (gradient accumulation); ≤ ``batch_size``.
    learning_rate : AdamW learning rate (the peak rate with the one-cycle schedule).
    weight_decay : AdamW weight decay.
    alpha, beta : weights of the equivariance and Noise2Noise terms.
    self_weight : weight of the consistency term against the input half itself when a
        Noise2Noise pair is used (1: published; 0: pure Noise2Noise in the measured region).
    consistency_border : voxels at each face of a cube left out of the consistency terms
        (0: published; see :func:`~spisonet.nn.losses.correction_loss`).
    consistency_residual : where the consistency is taken on the W-weighted residual
        ``P_W(f(x) − x)``: ``"off"`` (published ``P_W(f(x)) − x``), ``"low"`` (at
        ``|k| ≤`` :data:`~spisonet.nn.losses.LOW_RESIDUAL_MAX_FREQ` of the cube) or ``"all"``;
        see :func:`~spisonet.nn.losses.correction_loss`. The booleans of older checkpoints
        read as ``"all"`` (True) and ``"off"`` (False).
    equivariance_weight : ``"all"`` (published: the equivariance residual over the whole
        cube), ``"measured"`` (filtered by ``1 − (1 − W(k))·(1 − W(R⁻¹k))``, leaving out
        where the target is the network's own fill and the input lacks it; see
        :func:`~spisonet.nn.losses.correction_loss`) or ``"high"`` (filtered only above
        :data:`~spisonet.nn.losses.LOW_RESIDUAL_MAX_FREQ` of the cube).
    schedule : ``"constant"`` (published) or ``"onecycle"``.
    amp : ``"auto"`` (bf16 on CUDA when supported, else float32), ``"bf16"`` or ``"off"``.
    compile : wrap the network in ``torch.compile`` (opt-in; slow first steps).
    seed : seeds the network's initialisation (batch order, swaps and rotations are
        seeded by the :class:`~spisonet.nn.CubePairs`).
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
    """

    widths: tuple[int, ...] = WIDTH_PRESETS["large"]
    epochs: int = 30
    batch_size: int = 4
    acc_batches: int = 2
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    alpha: float = 1.0
    beta: float = 0.5
    self_weight: float = 1.0
    consistency_border: int = 0
    consistency_residual: str = "off"
    equivariance_weight: str = "all"
    schedule: str = "constant"
    amp: str = "auto"
    compile: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name in ("batch_size", "acc_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InvalidValueError(f"{name} must be a positive integer; got {v!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise InvalidValueError(f"epochs must be an integer ≥ 0; got {self.epochs!r}")
        if self.acc_batches > self.batch_size:
            raise InvalidValueError(
                f"acc_batches ({self.acc_batches}) cannot exceed batch_size ({self.batch_size})"
            )
        if not self.learning_rate > 0:
            raise InvalidValueError(f"learning_rate must be > 0; got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise InvalidValueError(f"weight_decay must be ≥ 0; got {self.weight_decay}")
        if not (self.alpha >= 0 and self.beta >= 0 and self.self_weight >= 0):
            raise InvalidValueError(
                f"alpha, beta and self_weight must be ≥ 0; got alpha={self.alpha}, "
                f"beta={self.beta}, self_weight={self.self_weight}"
            )
        if self.schedule not in ("constant", "onecycle"):
            raise InvalidValueError(
                f"schedule must be 'constant' or 'onecycle'; got {self.schedule!r}"
            )
        residual = _residual_choice(self.consistency_residual)
        object.__setattr__(self, "consistency_residual", residual)
        if residual not in RESIDUAL_CHOICES:
            raise InvalidValueError(
                f"consistency_residual must be one of {', '.join(RESIDUAL_CHOICES)}; "
                f"got {residual!r}"
            )
        if self.equivariance_weight not in EQUIVARIANCE_WEIGHTS:
            raise InvalidValueError(
                f"equivariance_weight must be one of {', '.join(EQUIVARIANCE_WEIGHTS)}; "
                f"got {self.equivariance_weight!r}"
            )
        border = check_nonnegative_int(self.consistency_border, "consistency_border")
        object.__setattr__(self, "consistency_border", border)
        if self.amp not in ("auto", "bf16", "off"):
            raise InvalidValueError(f"amp must be 'auto', 'bf16' or 'off'; got {self.amp!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists, numbers, strings): JSON- and checkpoint-safe."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback receives after every optimiser step.

    Attributes
    ----------
    epoch : current epoch, 1-based.
    epochs : total epochs of the run.
    step : step inside the epoch, 1-based.
    steps_per_epoch : steps in one epoch.
    loss : total loss of this step (batch mean).
    steps_per_second : steps per second since this run (or resume) started.
    elapsed : seconds since this run (or resume) started.
    resumed_from_epoch : epochs done in the checkpoint this run resumed from (0: none).
    checkpoint : where the checkpoint is written after every epoch (None: nowhere).
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    steps_per_second: float
    elapsed: float
    resumed_from_epoch: int = 0
    checkpoint: str | None = None

    @property
    def steps_done(self) -> int:
        """Optimiser steps done in the whole run (epochs resumed from included)."""
        return (self.epoch - 1) * self.steps_per_epoch + self.step

    @property
    def steps_total(self) -> int:
        """Optimiser steps of the whole run."""
        return self.epochs * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Fraction of all steps done (0–1)."""
        return self.steps_done / max(self.steps_total, 1)


@dataclass
class TrainResult:
    """Outcome of :func:`train_network`.

    Attributes
    ----------
    model : the trained network (the plain module, also when it was compiled), eval mode.
    history : per-epoch mean of each loss part (``total``, ``consistency``,
        ``equivariance`` and, with Noise2Noise, ``consistency2``, ``equivariance2``),
        including epochs done before a resume.
    epochs_done : epochs completed in total.
    steps_run : optimiser steps run in this call.
    seconds : wall time of this call's training steps.
    device : device used (e.g. ``"cpu"``).
    amp_dtype : ``"bfloat16"`` or ``"float32"``.
    resumed_from_epoch : epochs already done in the checkpoint resumed from (0 if none).
    """

    model: nn.Module
    history: dict[str, list[float]]
    epochs_done: int
    steps_run: int
    seconds: float
    device: str
    amp_dtype: str
    resumed_from_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        """Optimiser steps per second in this call (0 if none ran)."""
        return self.steps_run / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda[:N]"`` into a torch device.

    ``"auto"`` picks CUDA when available. Asking for CUDA without one raises
    :class:`~spisonet.errors.InvalidValueError`.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError) as exc:
            raise InvalidValueError(
                f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}"
            ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidValueError(
            f"device {device!r} asked for, but this PyTorch build sees no CUDA GPU; "
            "use --device cpu or auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise InvalidValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    return dev


def set_cpu_threads(n: int) -> None:
    """Let torch use ``n`` CPU threads in this process (intra-op parallelism).

    For callers that must not import torch themselves (the RELION step, whose two half
    processes share the machine's cores).
    """
    if n < 1:
        raise InvalidValueError(f"CPU threads must be >= 1; got {n}")
    torch.set_num_threads(int(n))


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN's own test).

    Without AVX-512 (e.g. an AVX2-only AMD EPYC) bf16 is emulated: a bf16-autocast Conv3d
    of the ``cpu`` preset measured 39× slower than float32 on such a machine, while on an
    AVX-512 machine bf16 trained 1.58× faster (benchmarks/RESULTS.md).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the private probe
        return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: float32, no autocast).

    ``auto``: bf16 on a CUDA device that supports it and on a CPU with native bf16
    (:func:`cpu_has_fast_bf16`), float32 elsewhere.
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return None
    raise InvalidValueError(f"amp must be 'auto', 'bf16' or 'off'; got {amp!r}")


def build_model(widths: tuple[int, ...], seed: int = 0) -> UNet3D:
    """A freshly initialised :class:`~spisonet.nn.UNet3D`, seeded without touching the
    global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return UNet3D(widths)


# --------------------------------------------------------------------------- checkpoints


def _check_resumable(saved: dict[str, Any], settings: TrainSettings, path: Path) -> None:
    mine = settings.to_dict()
    if "consistency_residual" in saved:
        saved = {**saved, "consistency_residual": _residual_choice(saved["consistency_residual"])}
    diff = [k for k in _RESUME_KEYS if k in saved and _norm(saved[k]) != _norm(mine[k])]
    if settings.schedule == "onecycle" and saved.get("epochs") != settings.epochs:
        diff.append("epochs")
    if diff:
        shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine[k]!r}" for k in diff)
        raise ModelFileError(
            f"{path}: cannot resume, the settings differ ({shown}); resume with the "
            "same settings or start a new run"
        )


def _norm(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    if isinstance(v, float):
        return round(v, 12)
    return v


# --------------------------------------------------------------------------- training


def _make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if settings.schedule == "onecycle" and total_steps > 0:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=settings.learning_rate,
            total_steps=total_steps,
            pct_start=0.3,
            anneal_strategy="cos",
        )
    return None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def train_network(
    pairs: CubePairs,
    weight: np.ndarray,
    settings: TrainSettings,
    *,
    model: nn.Module | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the correction network on paired (or single) training cubes.

    Parameters
    ----------
    pairs : CubePairs
        The training cubes; without a second half the Noise2Noise terms are dropped.
        ``len(pairs) / batch_size`` (rounded up) steps make one epoch.
    weight : (D, D, D) array
        The sampling weight ``W`` (fftshift-ed) for this cube size, from
        :func:`~spisonet.nn.prepare_sampling_weight`.
    settings : TrainSettings
    model : nn.Module, optional
        Start from this network (e.g. a pretrained one); default: a new
        :class:`~spisonet.nn.UNet3D` of ``settings.widths`` seeded by ``settings.seed``.
    checkpoint : path, optional
        Written (atomically) after every epoch.
    resume : bool
        Continue from ``checkpoint`` (it must exist and match the settings).
    progress : :class:`spisonet.progress.Progress`, optional
        Called after every optimiser step as ``("train", steps done, steps in all,
        TrainProgress)``.

    Returns
    -------
    TrainResult
    """
    dev = resolve_device(settings.device)
    world = current_world()
    if world.distributed:
        check_batch_layout(settings.batch_size, settings.acc_batches, world.size)
        if dev.type == "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
    amp_dtype = resolve_amp(settings.amp, dev)
    d = pairs.cube_size
    w = np.asarray(weight)
    if w.shape != (d, d, d):
        raise InvalidValueError(f"W must have the cube shape {(d, d, d)}; found {w.shape}")
    steps_per_epoch = pairs.n_batches(settings.batch_size)
    history: dict[str, list[float]] = {}
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    saved = None
    if resume:
        if ckpt_path is None:
            raise InvalidValueError("resume needs a checkpoint path")
        saved = load_checkpoint(ckpt_path)
        _check_resumable(saved["settings"], settings, ckpt_path)
        for key, now in (("cube_size", d), ("n_cubes", len(pairs))):
            if saved["settings"].get(key, now) != now:
                raise ModelFileError(
                    f"{ckpt_path}: cannot resume, the training data differ ({key}: "
                    f"checkpoint {saved['settings'][key]} vs now {now})"
                )
        model = model_from_checkpoint(saved, ckpt_path)
        start_epoch = int(saved["epoch"])
        history = {k: [float(x) for x in v] for k, v in saved.get("history", {}).items()}
    elif model is None:
        model = build_model(settings.widths, settings.seed)
    model = model.to(dev)
    multiple = getattr(model, "size_multiple", 1)
    if d % multiple:
        raise InvalidValueError(
            f"cube_size {d} must be a multiple of {multiple} for a U-Net of depth "
            f"{int(math.log2(multiple))}"
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = _make_scheduler(optimizer, settings, settings.epochs * steps_per_epoch)
    if saved is not None:
        if "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if "rng" in saved and "torch" in saved["rng"]:
            torch.set_rng_state(saved["rng"]["torch"])
    # several ranks: DDP averages the gradients of the ranks' slices of each global batch
    net = wrap_model(model, dev, world)
    net = torch.compile(net) if settings.compile else net
    w_t = sampling_tensor(w, device=dev)

    t0 = time.perf_counter()
    steps_run = 0
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        sums: dict[str, float] = {}
        n_seen = 0
        for k, global_batch in enumerate(pairs.batches(epoch, settings.batch_size)):
            batch = global_batch.select(world_slice(len(global_batch), world))
            batch = batch.to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            step_parts: dict[str, torch.Tensor] = {}
            micros = batch.split(settings.acc_batches)
            for j, micro in enumerate(micros):
                share = len(micro) / len(batch)
                # gradients are all-reduced once per step, on the last micro-batch
                defer = world.distributed and j < len(micros) - 1
                with net.no_sync() if defer else contextlib.nullcontext():
                    with torch.autocast(
                        device_type=dev.type,
                        dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None,
                    ):
                        loss, parts = correction_loss(
                            net,
                            micro.x1,
                            micro.x2,
                            w_t,
                            micro.rotations,
                            alpha=settings.alpha,
                            beta=settings.beta,
                            self_weight=settings.self_weight,
                            border=settings.consistency_border,
                            weighted_residual=settings.consistency_residual != "off",
                            residual_max_freq=(
                                LOW_RESIDUAL_MAX_FREQ
                                if settings.consistency_residual == "low"
                                else None
                            ),
                            equivariance_measured=settings.equivariance_weight != "all",
                            equivariance_min_freq=(
                                LOW_RESIDUAL_MAX_FREQ
                                if settings.equivariance_weight == "high"
                                else None
                            ),
                        )
                    (loss * share).backward()
                for name, value in parts.items():
                    step_parts[name] = step_parts.get(name, 0.0) + value * share
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps_run += 1
            if world.distributed:
                # the loss of the global batch: the mean of the ranks' equal-sized slices
                names = sorted(step_parts)
                packed = torch.stack(
                    [torch.as_tensor(step_parts[n], dtype=torch.float64) for n in names]
                )
                packed = all_reduce_sum_(packed.to(dev)) / world.size
                step_parts = dict(zip(names, packed.cpu(), strict=True))
            values = {name: float(v) for name, v in step_parts.items()}
            if not math.isfinite(values["total"]):
                raise InvalidValueError(
                    f"training diverged: the loss became {values['total']} at epoch "
                    f"{epoch + 1}, step {k + 1}; try a lower learning rate"
                )
            for name, v in values.items():
                sums[name] = sums.get(name, 0.0) + v * len(global_batch)
            n_seen += len(global_batch)
            if progress is not None and world.is_main:
                elapsed = time.perf_counter() - t0
                info = TrainProgress(
                    epoch=epoch + 1,
                    epochs=settings.epochs,
                    step=k + 1,
                    steps_per_epoch=steps_per_epoch,
                    loss=values["total"],
                    steps_per_second=steps_run / elapsed if elapsed > 0 else 0.0,
                    elapsed=elapsed,
                    resumed_from_epoch=start_epoch,
                    checkpoint=None if ckpt_path is None else str(ckpt_path),
                )
                progress("train", info.steps_done, info.steps_total, info)
        for name, s in sums.items():
            history.setdefault(name, []).append(s / max(n_seen, 1))
        if ckpt_path is not None and world.is_main:
            # the plain module's weights (no DDP wrapper): resumable on any number of ranks
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "settings": {**settings.to_dict(), "cube_size": d, "n_cubes": len(pairs)},
                    "rng": _rng_state(),
                },
            )
        barrier()  # no rank runs ahead of the checkpoint
    seconds = time.perf_counter() - t0
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        epochs_done=max(settings.epochs, start_epoch),
        steps_run=steps_run,
        seconds=seconds,
        device=str(dev),
        amp_dtype="bfloat16" if amp_dtype is torch.bfloat16 else "float32",
        resumed_from_epoch=start_epoch,
    )
