"""Training the correction network on tomograms and running it over whole tomograms.

The single-particle machinery is reused unchanged (:mod:`spisonet.nn`): the training
cubes are cut from the tomograms inside their masks, W is the missing wedge
(:func:`~spisonet.tomo.wedge.wedge_weight`) instead of the 3D FSC, and with even/odd
tomograms the Noise2Noise terms pair the two. Prediction streams through the tomogram in
slabs along y (:func:`predict_tomogram`), so a 1000 × 1000 × 300 tomogram needs a few
GiB, and gives the same map as one whole-volume :func:`~spisonet.nn.predict_map` call.

No file is touched here: tomograms come in as arrays (memory maps work) or as slab
readers, and the corrected tomogram goes out through a slab writer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..correction.pipeline import TrainSummary, network_on_map
from ..correction.settings import PRESETS, CorrectionSettings, resolve_preset
from ..errors import EmptyMaskError, InvalidValueError, MapMismatchError, NonFiniteMapError
from ..progress import Progress, relabel, report
from .wedge import wedge_weight

__all__ = [
    "TOMO_PRESETS",
    "SlabReader",
    "TomoTraining",
    "combined_wedge",
    "measured_low_frequencies",
    "predict_tomogram",
    "prediction_rows",
    "tomo_settings",
    "tomogram_stats",
    "train_tomo_network",
    "training_cubes",
]

#: Reads rows ``y0 … y1 − 1`` of a (Z, Y, X) tomogram as a float32 (Z, y1 − y0, X) array.
SlabReader = Callable[[int, int], np.ndarray]

#: The presets of ``spisonet tomo refine``: the single-particle ones, with the ``cpu``
#: preset cut to 240 optimiser steps (160 cubes × 6 epochs) so that a 128 × 128 × 64 pair
#: trains within ~15 minutes on 2 AVX2 cores in float32 (0.26 steps/s measured,
#: benchmarks/RESULTS.md), where the single-particle ``cpu`` preset's 600 steps take ~40.
TOMO_PRESETS: dict[str, CorrectionSettings] = {
    "gpu": replace(PRESETS["gpu"], preset="gpu"),
    # one network: tomograms are corrected slab by slab by a single model
    "cpu": replace(PRESETS["cpu"], preset="cpu", n_subvolume=160, epochs=6, ensemble=1),
    "tiny": replace(PRESETS["tiny"], preset="tiny", n_subvolume=8),
}


def tomo_settings(name: str = "auto", **overrides: Any) -> CorrectionSettings:
    """The settings of tomogram preset ``name`` (``auto``: gpu with CUDA, else cpu) with
    some fields replaced (None values are ignored). Only the network, training and
    prediction fields of :class:`~spisonet.correction.CorrectionSettings` are used."""
    name, _ = resolve_preset(name)
    if name not in TOMO_PRESETS:
        raise InvalidValueError(f"unknown preset {name!r}; choose one of {', '.join(TOMO_PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    known = set(CorrectionSettings.__dataclass_fields__)
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InvalidValueError(f"unknown setting(s) {', '.join(unknown)}")
    if "widths" in changes:
        changes["widths"] = tuple(int(w) for w in changes["widths"])
    base = TOMO_PRESETS[name]
    if "cube_size" in changes and "predict_crop_size" not in changes:
        # the preset's margin around the new cube, rounded to what the U-Net accepts
        cube, edge = (
            int(changes["cube_size"]),
            min(base.predict_edge, int(changes["cube_size"]) // 2),
        )
        mult = 2 ** (len(changes.get("widths", base.widths)) - 1)
        changes["predict_edge"] = edge
        changes["predict_crop_size"] = -(-(cube + 2 * edge) // mult) * mult
    out = replace(base, **changes)
    out.train_settings()  # validates the training part (imports torch)
    return out


def _rows_per_slab(shape: Sequence[int], budget_mib: float) -> int:
    per_row = max(int(shape[0]) * int(shape[2]) * 4, 1)
    return max(int(budget_mib * 2**20 // per_row), 1)


def tomogram_stats(read: SlabReader, shape: Sequence[int], budget_mib: float = 256.0):
    """Mean and standard deviation of a whole (Z, Y, X) tomogram, read slab by slab
    (float64 sums). Raises :class:`NonFiniteMapError` on NaN or infinity."""
    ny = int(shape[1])
    step = _rows_per_slab(shape, budget_mib)
    total = total2 = 0.0
    count = 0
    for y0 in range(0, ny, step):
        slab = np.asarray(read(y0, min(y0 + step, ny)), dtype=np.float64)
        if not np.all(np.isfinite(slab)):
            raise NonFiniteMapError(
                f"the tomogram contains NaN or infinite values (rows y {y0}…{y0 + step - 1})"
            )
        total += float(slab.sum())
        total2 += float(np.square(slab).sum())
        count += slab.size
    mean = total / count
    var = max(total2 / count - mean * mean, 0.0)
    std = math.sqrt(var)
    if not std > 0:
        raise InvalidValueError("the tomogram is constant (standard deviation 0)")
    return mean, std


def combined_wedge(
    cube_size: int, ranges: Sequence[tuple[float, float, float]], soft_edge: float = 0.0
) -> np.ndarray:
    """W for training one network on several tomograms: measured only where every
    tomogram measured it (the minimum of their wedges). ``ranges``: (tilt_min, tilt_max,
    axis_angle) in degrees per tomogram."""
    if not ranges:
        raise InvalidValueError("no tomogram given")
    ws = [wedge_weight(cube_size, lo, hi, axis, soft_edge) for lo, hi, axis in set(ranges)]
    return np.minimum.reduce(ws) if len(ws) > 1 else ws[0]


def training_cubes(
    tomograms: Sequence[Sequence[np.ndarray]],
    masks: Sequence[np.ndarray | None],
    stats: Sequence[tuple[float, float]],
    n_subvolume: int,
    cube_size: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Training cubes from several tomograms, z-scored by each one's (mean, std).

    ``tomograms[i]`` is ``[even, odd]`` or ``[single]`` (all entries alike); the
    ``n_subvolume`` cubes are shared out in proportion to each mask's voxel count (at
    least one per tomogram) and cut at the same centres from even and odd. Arrays may be
    memory maps: only the cubes are read. Returns ``(cubes1, cubes2 or None)``, each
    (N, D, D, D) float32.
    """
    from ..nn.data import extract_cubes, sample_cube_centres

    if not tomograms:
        raise InvalidValueError("no tomogram given")
    kinds = {len(t) for t in tomograms}
    if len(kinds) != 1 or kinds - {1, 2}:
        raise InvalidValueError(
            "either every tomogram is an even/odd pair or none is; the list mixes them"
        )
    d = int(cube_size)
    counts = []
    for i, (vols, mask) in enumerate(zip(tomograms, masks, strict=True)):
        shape = vols[0].shape
        if len(vols) == 2 and vols[1].shape != shape:
            raise MapMismatchError(
                f"tomogram {i + 1}: even and odd differ in shape: {shape} and {vols[1].shape}"
            )
        if mask is not None and mask.shape != shape:
            raise MapMismatchError(
                f"tomogram {i + 1}: the mask's shape {mask.shape} differs from the "
                f"tomogram's {shape}"
            )
        if min(shape) < d:
            raise InvalidValueError(
                f"tomogram {i + 1} ({shape}) is smaller than the {d}³ training cube; use a "
                "smaller --cube-size"
            )
        counts.append(float(np.count_nonzero(mask)) if mask is not None else float(np.prod(shape)))
    if sum(counts) == 0:
        raise EmptyMaskError("every mask is empty: nothing to train on")
    share = [max(1, round(n_subvolume * c / sum(counts))) if c > 0 else 0 for c in counts]
    rng = np.random.default_rng(seed)
    out1, out2 = [], []
    for vols, mask, (mean, std), n in zip(tomograms, masks, stats, share, strict=True):
        if n == 0:
            continue
        m = mask if mask is not None else np.ones(vols[0].shape, dtype=np.uint8)
        centres = sample_cube_centres(m, n, d, rng=rng)
        cubes = [(extract_cubes(v, centres, d) - mean) / std for v in vols]
        out1.append(cubes[0].astype(np.float32))
        if len(cubes) == 2:
            out2.append(cubes[1].astype(np.float32))
    c1 = np.concatenate(out1)
    c2 = np.concatenate(out2) if out2 else None
    return c1, c2


@dataclass
class TomoTraining:
    """The trained network, its loss history and how the training went."""

    model: Any
    history: dict[str, list[float]]
    summary: TrainSummary


def train_tomo_network(
    cubes1: np.ndarray,
    cubes2: np.ndarray | None,
    weight: np.ndarray,
    settings: CorrectionSettings,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    pretrained: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> TomoTraining:
    """Train the correction network on tomogram cubes with the wedge ``weight`` as W."""
    from ..nn.data import CubePairs
    from ..nn.train import load_checkpoint, model_from_checkpoint, train_network

    pairs = CubePairs(cubes1, cubes2, seed=settings.seed)
    model = None
    if pretrained is not None and not resume:
        model = model_from_checkpoint(load_checkpoint(pretrained), pretrained)
    run = train_network(
        pairs,
        weight,
        settings.train_settings(),
        model=model,
        checkpoint=checkpoint,
        resume=resume,
        progress=relabel(progress, "train"),
    )
    return TomoTraining(run.model, run.history, TrainSummary.of(run, pairs))


def prediction_rows(shape: Sequence[int], settings: CorrectionSettings, budget_mib: float) -> int:
    """Rows along y that each slab of :func:`predict_tomogram` writes: a multiple of the
    tile stride, as many as fit in ``budget_mib`` with the 2-stride halo on each side."""
    s = int(settings.cube_size)
    rows = _rows_per_slab(shape, budget_mib)
    return max(s, (rows // s) * s - 4 * s)


def predict_tomogram(
    model: Any,
    readers: Sequence[SlabReader],
    stats: Sequence[tuple[float, float]],
    shape: Sequence[int],
    write: Callable[[int, int, np.ndarray], None],
    settings: CorrectionSettings,
    *,
    budget_mib: float = 1024.0,
    progress: Progress | None = None,
) -> None:
    """Run ``model`` over a whole tomogram, slab by slab along y, and write the result.

    Parameters
    ----------
    model : the trained network.
    readers : one :data:`SlabReader` per input tomogram of the same area (even and odd,
        or one); each is z-scored by its ``stats`` (mean, std), run through the network,
        brought back to its units, and the results are averaged.
    shape : (Z, Y, X) of the tomogram.
    write : called as ``write(y0, y1, slab)`` with the float32 (Z, y1 − y0, X) result.
    settings : tile stride ``cube_size``, tile edge ``predict_crop_size``, blend
        ``predict_edge``, ``batch_size``, ``device``, ``amp``.
    budget_mib : memory for one input slab; the peak is about three slabs per input.

    Each slab is read with a halo of two tile strides on both sides, so every tile that
    touches the rows written sees only real data: the result equals a single
    :func:`~spisonet.nn.predict_map` over the whole tomogram, up to float round-off.
    """
    if len(readers) != len(stats) or not readers:
        raise InvalidValueError("give one (mean, std) per input tomogram")
    nz, ny, nx = (int(v) for v in shape)
    s = int(settings.cube_size)
    rows = prediction_rows(shape, settings, budget_mib)
    halo = 2 * s
    slabs = list(range(0, ny, rows))
    tiles_per_slab = []
    for y0 in slabs:
        lo, hi = max(0, y0 - halo), min(ny, y0 + rows + halo)
        tiles_per_slab.append(-(-nz // s) * -(-(hi - lo) // s) * -(-nx // s))
    total = sum(tiles_per_slab) * len(readers)
    done = 0
    for k, y0 in enumerate(slabs):
        y1 = min(ny, y0 + rows)
        lo, hi = max(0, y0 - halo), min(ny, y1 + halo)
        acc = np.zeros((nz, y1 - y0, nx), dtype=np.float64)
        for read, (mean, std) in zip(readers, stats, strict=True):
            slab = np.asarray(read(lo, hi), dtype=np.float32)
            if slab.shape != (nz, hi - lo, nx):
                raise MapMismatchError(
                    f"a tomogram slab read as {slab.shape}; expected {(nz, hi - lo, nx)}"
                )
            if not np.all(np.isfinite(slab)):
                raise NonFiniteMapError(
                    f"the tomogram contains NaN or infinite values (rows y {lo}…{hi - 1})"
                )
            z = (slab - np.float32(mean)) / np.float32(std)
            del slab
            base = done

            def tiles(stage: str, n: float, of: float, info: Any = None, b: int = base) -> None:
                report(progress, "predict", b + n, total)

            out = network_on_map(model, settings, tiles if progress is not None else None)(z)
            done += tiles_per_slab[k]
            acc += out[:, y0 - lo : y1 - lo] * std + mean
            del out, z
        write(y0, y1, (acc / len(readers)).astype(np.float32))


def measured_low_frequencies(
    difference: np.ndarray,
    cube_size: int,
    tilt_min: float,
    tilt_max: float,
    axis_angle: float = 0.0,
    high_from: float | None = None,
) -> np.ndarray:
    """The part of ``difference`` (original − corrected) that the corrected tomogram
    should get back: its Fourier components that were measured (outside the wedge) and
    whose wavelength exceeds the training cube of ``cube_size`` voxels — and, with
    ``high_from`` (cycles/voxel), the measured components above that frequency too
    (a cosine hand-over from ``high_from`` to 1.125 × ``high_from``).

    Why: a network trained on D³ cubes never saw a whole period of a wave longer than D
    voxels, so it cannot have learned those frequencies, and where the tilt series
    measured them the data are the best estimate (the signal dominates there). Below 1/D
    cycles/voxel outside the wedge the original's components are restored, with a cosine
    hand-over to the network's up to 1.5/D; inside the wedge the network's fill stays at
    every frequency. On the benchmark (docs/tomo.md) the measured-region FSC with the
    truth dropped by 0.1 at the lowest shell without this step. ``high_from`` serves
    CTF-affected tomograms: near the CTF's first zero the data hold almost no signal
    (the deconvolution filter all but removes that band), and there the network's
    measured-region output was worse than the input (docs/tomo.md).

    ``difference``: (Z, Y, X) float32, overwritten (used as FFT workspace). Returns a new
    float32 (Z, Y, X) array. Memory: about twice the tomogram (the half spectrum is
    filtered plane by plane, in place).
    """
    import scipy.fft

    if high_from is not None and not high_from > 0:
        raise InvalidValueError(f"high_from must be > 0 cycles/voxel; got {high_from!r}")
    d = np.asarray(difference)
    if d.ndim != 3:
        raise MapMismatchError(f"expected a 3D tomogram; found shape {d.shape}")
    shape = d.shape
    f = scipy.fft.rfftn(d.astype(np.float32, copy=False), workers=-1, overwrite_x=True)
    del d
    ky = np.fft.fftfreq(shape[1]).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(shape[2]).astype(np.float32)[None, :]
    psi = np.radians(float(axis_angle))
    kb = np.float32(-np.sin(psi)) * ky + np.float32(np.cos(psi)) * kx
    size = np.float32(cube_size)
    pi = np.float32(np.pi)
    for iz, kz in enumerate(np.fft.fftfreq(shape[0]).astype(np.float32)):
        k = np.sqrt(kz * kz + ky * ky + kx * kx)
        r = k * size  # in units of 1/D
        keep = np.float32(0.5) * (1 + np.cos(pi * np.clip((r - 1) / 0.5, 0, 1)))
        if high_from is not None:
            h = np.float32(high_from)
            ramp = np.clip((k - h) / (np.float32(0.125) * h), 0, 1)
            keep = np.maximum(keep, np.float32(0.5) * (1 - np.cos(pi * ramp)))
        theta = np.degrees(np.arctan2(-kz, kb))
        theta = np.where(theta > 90.0, theta - 180.0, theta)
        theta = np.where(theta <= -90.0, theta + 180.0, theta)
        measured = (theta >= tilt_min - 1e-4) & (theta <= tilt_max + 1e-4)
        measured |= (abs(kz) < 1e-9) & (np.abs(kb) < 1e-9)
        f[iz] *= keep * measured
    return scipy.fft.irfftn(f, s=shape, workers=-1, overwrite_x=True).astype(np.float32, copy=False)
