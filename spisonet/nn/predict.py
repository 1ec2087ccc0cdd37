"""Tiled prediction of a whole map with overlapping, linearly blended tiles (ALGORITHM.md §3).

The map is cut into a grid of cores of edge ``S = cube_size`` (the last ones reaching
past the map's edge). Each core is predicted from a tile of edge ``C = crop_size``
centred on it, read from the map padded by mirroring. Of each output tile the central
``(S + 2e)³`` is kept, ``e = edge``: the core plus ``e`` voxels each side. Neighbouring
kept regions overlap by ``2e`` voxels, where they are blended with linear ramps that
sum to 1 (separable: the 3D weight is the product of three 1D ramps). An identity
network therefore returns its input exactly.

Memory: only the padded map, the output accumulator and one batch of tiles exist at a
time; tiles stream through the network ``batch_size`` at a time.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidValueError, MapShapeError, NonFiniteMapError
from ..progress import Progress
from .distributed import World, all_reduce_sum_

__all__ = ["blend_ramp", "predict_map"]


def blend_ramp(cube_size: int, edge: int, first: bool = False, last: bool = False) -> np.ndarray:
    """1D blending weights over one kept tile region of ``cube_size + 2 * edge`` voxels.

    Voxel ``j`` of the region lies at ``j - edge`` relative to the start of its core. The
    weight rises linearly over the first ``2 * edge`` voxels (``(j + 0.5) / (2 * edge)``),
    is 1 in between, and falls symmetrically over the last ``2 * edge``; the tile before
    and the tile after ramp the other way over the same voxels, so overlapping weights
    sum to 1. ``first``/``last``: no neighbour on that side, the weight stays 1 there.

    Returns
    -------
    (cube_size + 2 * edge,) float64 array.
    """
    w = np.ones(cube_size + 2 * edge)
    if edge > 0:
        up = (np.arange(2 * edge) + 0.5) / (2 * edge)
        if not first:
            w[: 2 * edge] = up
        if not last:
            w[cube_size:] = up[::-1]
    return w


def _box(tile: tuple[int, int, int], stride: int, size: int) -> tuple[slice, ...]:
    """Slices of the ``size``-voxel box starting at ``tile * stride`` on each axis."""
    return tuple(slice(i * stride, i * stride + size) for i in tile)


def _model_device(model: nn.Module) -> torch.device:
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")


def predict_map(
    model: nn.Module,
    volume: np.ndarray,
    cube_size: int = 64,
    crop_size: int = 80,
    edge: int = 7,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
    world: World | None = None,
) -> np.ndarray:
    """Apply ``model`` to a whole map tile by tile and blend the tiles.

    Parameters
    ----------
    model : nn.Module
        (B, 1, C, C, C) → (B, 1, C, C, C). Put in eval mode during the call (restored
        afterwards); run without gradients.
    volume : (Z, Y, X) array
        The (z-scored) map; any size, not necessarily a multiple of ``cube_size``.
    cube_size : int
        Stride ``S`` between tiles (the training cube size, 64).
    crop_size : int
        Edge ``C`` of the tiles fed to the network (80); ``C ≥ S + 2·edge``.
    edge : int
        Half-width ``e`` of the blending overlap (7); ``2·edge ≤ S``.
    batch_size : int
        Tiles per forward pass.
    device : torch device, optional
        Where the network runs; default: where the model's parameters are. A model
        elsewhere is moved there for the call and moved back afterwards.
    amp_dtype : torch dtype, optional
        Run the forward pass under ``torch.autocast`` with this dtype (e.g. bfloat16).
    progress : :class:`spisonet.progress.Progress`, optional
        Called as ``("predict", tiles done, tiles in all)``.
        Called after every batch.
    world : World, optional
        Several processes (:mod:`spisonet.nn.distributed`): each predicts every
        ``world.size``-th tile and the blended sums are added over the ranks in memory, so
        every rank returns the whole map.

    Returns
    -------
    (Z, Y, X) float32 array.

    Raises
    ------
    MapShapeError
        ``volume`` is not 3D, or the network changes the tile shape.
    NonFiniteMapError
        ``volume`` contains NaN or infinity.
    InvalidValueError
        Sizes out of range (see above).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise MapShapeError(f"the map must be a 3D array; found shape {vol.shape}")
    for name, val, low in (
        ("cube_size", cube_size, 1),
        ("crop_size", crop_size, 1),
        ("edge", edge, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < low:
            raise InvalidValueError(f"{name} must be an integer ≥ {low}; got {val!r}")
    s, c, e = int(cube_size), int(crop_size), int(edge)
    if c < s + 2 * e:
        raise InvalidValueError(
            f"crop_size must be at least cube_size + 2·edge = {s + 2 * e}; got {c}"
        )
    if 2 * e > s:
        raise InvalidValueError(f"edge must be at most cube_size / 2 = {s // 2}; got {e}")
    if not np.all(np.isfinite(vol)):
        raise NonFiniteMapError("the map contains NaN or infinite values")

    dev = torch.device(device) if device is not None else _model_device(model)
    p0 = (c - s) // 2
    tiles_per_axis = [-(-n // s) for n in vol.shape]
    pads = [(p0, t * s - n + c - s - p0) for n, t in zip(vol.shape, tiles_per_axis, strict=True)]
    padded = np.pad(vol.astype(np.float32, copy=False), pads, mode="reflect")
    acc = np.zeros([t * s + 2 * e for t in tiles_per_axis], dtype=np.float32)
    ramps = [
        [blend_ramp(s, e, first=i == 0, last=i == t - 1).astype(np.float32) for i in range(t)]
        for t in tiles_per_axis
    ]
    tiles = list(itertools.product(*(range(t) for t in tiles_per_axis)))
    if world is not None and world.distributed:
        tiles = tiles[world.rank :: world.size]
    total = len(tiles)
    keep = slice(p0 - e, p0 + s + e)

    was_training = model.training
    home = _model_device(model)
    model.eval()
    if home != dev:
        model.to(dev)
    try:
        with torch.inference_mode():
            for b0 in range(0, total, int(batch_size)):
                chunk = tiles[b0 : b0 + int(batch_size)]
                batch = np.stack([padded[_box(t, s, c)] for t in chunk])[:, None]
                inp = torch.from_numpy(batch).to(dev)
                if amp_dtype is not None:
                    with torch.autocast(device_type=dev.type, dtype=amp_dtype):
                        out = model(inp)
                else:
                    out = model(inp)
                if out.shape != inp.shape:
                    raise MapShapeError(
                        f"the network turned tiles of shape {tuple(inp.shape)} into "
                        f"{tuple(out.shape)}; it must keep the shape"
                    )
                kept = out[:, 0, keep, keep, keep].float().cpu().numpy()
                for (z, y, x), tile in zip(chunk, kept, strict=True):
                    w = (
                        ramps[0][z][:, None, None]
                        * ramps[1][y][None, :, None]
                        * ramps[2][x][None, None, :]
                    )
                    acc[_box((z, y, x), s, s + 2 * e)] += tile * w
                if progress is not None:
                    progress("predict", min(b0 + len(chunk), total), total)
    finally:
        model.train(was_training)
        if home != dev:
            model.to(home)
    if world is not None and world.distributed:
        summed = torch.from_numpy(acc)
        if dist.get_backend() == "nccl":  # NCCL reduces device memory only
            summed = summed.to(dev)
        all_reduce_sum_(summed)
        acc = summed.cpu().numpy()
    return np.ascontiguousarray(
        acc[e : e + vol.shape[0], e : e + vol.shape[1], e : e + vol.shape[2]]
    )
