"""The Fourier sampling operator P_W and the 24 proper rotations of the cube.

P_W models how the data were sampled in Fourier space: ``W`` is the 3D FSC of the half
maps resized to the training cube (1 where the data are well sampled, towards 0 where
views are missing) and ``P_W(v) = Re(ifftn(ifftshift(W) · fftn(v)))``.

Implementation note: for a real ``v`` and a real ``W``,
``Re(ifftn(W · fftn(v))) = ifftn(W_s · fftn(v))`` with the centrosymmetric part
``W_s(k) = (W(k) + W(-k)) / 2`` (the imaginary part cancels exactly). ``W_s`` makes the
product Hermitian, so the half-spectrum transforms ``rfftn``/``irfftn`` give the same
result at half the cost. This holds for every real ``W``, not only symmetric ones.

Rotations act on the last three axes ``(z, y, x)`` of a tensor about the geometric centre
of the voxel grid, ``(D - 1) / 2`` on each axis, so they are exact index permutations
(``torch.flip``/``permute``), with no interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._cube import check_rotation_index, rotate_fourier, rotation_specs
from ..errors import InvalidValueError, MapShapeError, NonFiniteMapError
from ..fourier import frequency_radius

__all__ = [
    "apply_sampling",
    "cube_rotations",
    "inverse_rotation",
    "prepare_sampling_weight",
    "rotate",
    "rotate_batch",
    "rotate_sampling",
    "rotation_asymmetry",
    "rotation_index",
    "rotation_information",
    "sampling_tensor",
    "symmetry_rotations",
]


# --------------------------------------------------------------------------- W


def prepare_sampling_weight(fsc3d: np.ndarray, cube_size: int) -> np.ndarray:
    """Turn a 3D FSC into the sampling weight ``W`` of a training cube.

    The 3D FSC (fftshift-ed, zero frequency at ``n // 2``) is resized to
    ``(cube_size,) * 3`` with linear interpolation and Gaussian anti-aliasing exactly as
    ``skimage.transform.resize(fsc3d, (cube_size,) * 3, anti_aliasing=True)`` does,
    negative values are set to 0 and, when the range of the result exceeds 1e-3, it is
    min-max scaled to [0, 1].

    Parameters
    ----------
    fsc3d : (n, n, n) array
        The 3D FSC, fftshift-ed. Any real dtype.
    cube_size : int
        Edge of the training cube in voxels.

    Returns
    -------
    (cube_size, cube_size, cube_size) float32 array, fftshift-ed like the input.

    Raises
    ------
    MapShapeError
        ``fsc3d`` is not a cubic 3D array.
    NonFiniteMapError
        ``fsc3d`` contains NaN or infinity.
    InvalidValueError
        ``cube_size`` is not a positive integer.
    """
    arr = np.asarray(fsc3d)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise MapShapeError(f"the 3D FSC must be a cubic 3D array; found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise MapShapeError(f"the 3D FSC must hold real numbers; found dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteMapError("the 3D FSC contains NaN or infinite values")
    if isinstance(cube_size, bool) or not isinstance(cube_size, int | np.integer) or cube_size < 1:
        raise InvalidValueError(f"cube_size must be a positive integer; got {cube_size!r}")
    from skimage.transform import resize  # slow import, needed only here

    shape = (int(cube_size),) * 3
    w = resize(arr.astype(np.float64), shape, order=1, mode="reflect", anti_aliasing=True)
    w[w < 0] = 0.0
    span = float(w.max() - w.min())
    if span > 1e-3:
        w = (w - w.min()) / span
    return w.astype(np.float32)


def sampling_tensor(
    w: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Move a centred (fftshift-ed) weight ``W`` to ``device``, ready for :func:`apply_sampling`.

    Returns ``ifftshift(W)`` (zero frequency at index 0), computed once so that the
    training loop does not shift ``W`` at every step.

    Parameters
    ----------
    w : (D, D, D) array or tensor
        The fftshift-ed weight, e.g. from :func:`prepare_sampling_weight`.
    device, dtype
        Where and how to store it (default: ``w``'s device, or CPU for arrays; float32).

    Returns
    -------
    (D, D, D) tensor, ``ifftshift(W)``.
    """
    t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
    if t.ndim != 3 or len(set(t.shape)) != 1:
        raise MapShapeError(f"W must be a cubic 3D array; found shape {tuple(t.shape)}")
    if t.is_complex():
        raise MapShapeError("W must be real; found a complex array")
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    return torch.fft.ifftshift(t, dim=(-3, -2, -1))


def _symmetric_half(w_shifted: torch.Tensor) -> torch.Tensor:
    """Half spectrum (D, D, D//2+1) of the centrosymmetric part of an unshifted W."""
    dims = (-3, -2, -1)
    w_neg = torch.roll(torch.flip(w_shifted, dims=dims), shifts=(1, 1, 1), dims=dims)
    d = w_shifted.shape[-1]
    return 0.5 * (w_shifted[..., : d // 2 + 1] + w_neg[..., : d // 2 + 1])


def apply_sampling(v: torch.Tensor, w_shifted: torch.Tensor) -> torch.Tensor:
    """The sampling operator ``P_W(v) = Re(ifftn(ifftshift(W) · fftn(v)))``, batched.

    The FFTs run over the last three axes on ``v``'s device, for the whole batch at once.
    Computed in float32 (float64 when ``v`` is float64; bfloat16/float16 inputs, e.g.
    under autocast, are promoted to float32).

    Parameters
    ----------
    v : (..., D, D, D) real tensor
        Typically (B, 1, D, D, D).
    w_shifted : (..., D, D, D) real tensor
        ``ifftshift(W)``, zero frequency at index 0, as returned by :func:`sampling_tensor`;
        leading axes broadcast against ``v``'s (e.g. (B, 1, D, D, D): one W per sample).

    Returns
    -------
    Tensor of ``v``'s shape, float32 (float64 for float64 input).
    """
    if v.ndim < 3 or w_shifted.ndim < 3 or v.shape[-3:] != w_shifted.shape[-3:]:
        raise MapShapeError(
            f"P_W needs a tensor ending in W's shape {tuple(w_shifted.shape[-3:])}; "
            f"found {tuple(v.shape)}"
        )
    real = torch.float64 if v.dtype == torch.float64 else torch.float32
    dims = (-3, -2, -1)
    w_half = _symmetric_half(w_shifted.to(device=v.device, dtype=real))
    spec = torch.fft.rfftn(v.to(real), dim=dims)
    return torch.fft.irfftn(spec * w_half, s=v.shape[-3:], dim=dims)


# --------------------------------------------------------------------------- rotations


_rotation_specs = rotation_specs


def cube_rotations() -> np.ndarray:
    """The 24 proper rotations of the cube as integer matrices.

    Returns
    -------
    (24, 3, 3) int64 array. Index 0 is the identity. Matrix ``R`` acts on centred voxel
    coordinates ``c = (z, y, x) - (D - 1) / 2``: :func:`rotate` moves the value at ``c``
    to ``R @ c``.
    """
    return np.stack([m for m, _, _ in _rotation_specs()])


def rotation_index(matrix: np.ndarray) -> int:
    """Index in :func:`cube_rotations` of a (3, 3) rotation matrix (exact match)."""
    m = np.rint(np.asarray(matrix)).astype(np.int64)
    for i, (r, _, _) in enumerate(_rotation_specs()):
        if np.array_equal(r, m):
            return i
    raise InvalidValueError(f"not one of the 24 cube rotations: {np.asarray(matrix).tolist()}")


def inverse_rotation(index: int) -> int:
    """Index of the inverse of rotation ``index`` (its transpose)."""
    _check_index(index)
    return rotation_index(_rotation_specs()[int(index)][0].T)


_check_index = check_rotation_index


def _index_list(indices: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    """Rotation indices as plain ints, from a list, a NumPy array or a tensor."""
    return [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]


def rotation_information(weight: np.ndarray) -> np.ndarray:
    """How much measured data each cube rotation moves into the region W hides.

    For rotation ``R`` (index into :func:`cube_rotations`): the mean over the cube's
    Fourier sphere (``0 < |k| ≤ D/2``) of ``(1 − W(k)) · W(R⁻¹k)``: after a map is rotated
    by ``R`` the content at ``k`` came from ``R⁻¹k``, measured there to the degree
    ``W(R⁻¹k)``, and ``P_W`` removes ``1 − W(k)`` of it. That is what the equivariance
    term can teach with ``R``; a rotation mapping the missing cone onto itself (about the
    cone's axis, the identity) teaches nothing new.

    ``weight``: (D, D, D) fftshift-ed W in [0, 1]. Returns (24,) float64 ≥ 0.
    """
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, 1.0)
    if w.ndim != 3 or len(set(w.shape)) != 1:
        raise MapShapeError(f"W must be a cubic (D, D, D) array; found shape {w.shape}")
    d = w.shape[0]
    radius = frequency_radius(d)
    sphere = (radius > 0) & (radius <= d / 2)
    hidden = (1.0 - w)[sphere]
    return np.array([float((hidden * rotate_fourier(w, i)[sphere]).mean()) for i in range(24)])


def rotation_asymmetry(weight: np.ndarray) -> np.ndarray:
    """How far each cube rotation moves the sampling pattern W off itself.

    For rotation ``R``: ``mean |W(R⁻¹k) − W(k)|`` over the cube's Fourier sphere
    (``0 < |k| ≤ D/2``), divided by ``mean |W(k) − W̄|`` there (W̄ the sphere's mean W), so
    0 means R maps W onto itself (the identity, or a turn about the axis of a missing
    cone) and ≈ 1 or more means R moves unmeasured directions onto measured ones as much
    as an unrelated pattern would. A W without contrast (all equal) gives 0 for every R.

    ``weight``: (D, D, D) fftshift-ed W. Returns (24,) float64 ≥ 0, identity first.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 3 or len(set(w.shape)) != 1:
        raise MapShapeError(f"W must be a cubic (D, D, D) array; found shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise NonFiniteMapError("W holds NaN or infinite values")
    d = w.shape[0]
    radius = frequency_radius(d)
    sphere = (radius > 0) & (radius <= d / 2)
    inside = w[sphere]
    spread = float(np.abs(inside - inside.mean()).mean())
    if spread <= 1e-12:
        return np.zeros(24)
    return np.array(
        [float(np.abs(rotate_fourier(w, i)[sphere] - inside).mean()) / spread for i in range(24)]
    )


def symmetry_rotations(
    weight: np.ndarray, tolerance: float = 0.5, limit: int = 8
) -> tuple[int, ...]:
    """The cube rotations that map W (nearly) onto itself: those whose
    :func:`rotation_asymmetry` is at most ``tolerance``, at most ``limit`` of them (the
    least asymmetric; ties by index), the identity always, first, the rest by index.

    A network trained with this W sees the same sampling pattern in a map turned by such
    a rotation, so its predictions of the turned copies are equally valid and can be
    averaged (test-time augmentation, ``predict_rotations``).
    """
    if not tolerance >= 0:
        raise InvalidValueError(f"tolerance must be ≥ 0; got {tolerance}")
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
        raise InvalidValueError(f"limit must be a positive integer; got {limit!r}")
    asym = rotation_asymmetry(weight)
    near = [i for i in range(1, 24) if asym[i] <= tolerance]
    near = sorted(sorted(near, key=lambda i: (asym[i], i))[: int(limit) - 1])
    return (0, *near)


def rotate(x: torch.Tensor, index: int) -> torch.Tensor:
    """Rotate the last three axes of ``x`` by cube rotation ``index`` (exact, no interpolation).

    Parameters
    ----------
    x : (..., D, D, D) tensor
        Typically (B, 1, D, D, D); all samples get the same rotation.
    index : int
        0 … 23, an index into :func:`cube_rotations`.

    Returns
    -------
    Tensor of ``x``'s shape with ``out[R c] = x[c]`` (centred coordinates). Differentiable.
    """
    _check_index(index)
    if x.ndim < 3 or len(set(x.shape[-3:])) != 1:
        raise MapShapeError(f"rotate needs a tensor ending in a cube; found {tuple(x.shape)}")
    _, perm, flips = _rotation_specs()[int(index)]
    lead = x.ndim - 3
    out = x.permute(*range(lead), *(lead + p for p in perm))
    if flips:
        out = torch.flip(out, dims=[lead + f for f in flips])
    return out.contiguous()


def rotate_sampling(
    w_shifted: torch.Tensor, indices: Sequence[int] | np.ndarray | torch.Tensor
) -> torch.Tensor:
    """W turned by each sample's cube rotation, in Fourier space: ``out[i][k] = W(R_i⁻¹k)``.

    ``w_shifted`` is ``ifftshift(W)`` (zero frequency at index 0, (D, D, D)); the result is
    (B, D, D, D) in the same layout. After a map is turned by ``R``, its content at
    frequency ``k`` came from ``R⁻¹k``, so this says how well measured that content was.
    A flip of a Fourier axis maps k to −k modulo D (index j to (D − j) mod D), not j to
    D − 1 − j as a real-space flip does, hence the roll after each flip.
    """
    idx = _index_list(indices)
    if w_shifted.ndim != 3 or len(set(w_shifted.shape)) != 1:
        raise MapShapeError(f"W must be a cubic (D, D, D) tensor; found {tuple(w_shifted.shape)}")
    turned: dict[int, torch.Tensor] = {}
    for i in idx:
        _check_index(i)
        if i not in turned:
            _, perm, flips = _rotation_specs()[i]
            out = w_shifted.permute(*perm)
            if flips:
                out = torch.roll(torch.flip(out, dims=flips), shifts=(1,) * len(flips), dims=flips)
            turned[i] = out.contiguous()
    return torch.stack([turned[i] for i in idx])


def rotate_batch(
    x: torch.Tensor, indices: Sequence[int] | np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Rotate each sample of a batch by its own cube rotation.

    Parameters
    ----------
    x : (B, ..., D, D, D) tensor
    indices : B integers in 0 … 23
        Rotation of each sample.

    Returns
    -------
    Tensor of ``x``'s shape; sample ``i`` is ``rotate(x[i], indices[i])``. Differentiable.
    """
    idx = _index_list(indices)
    if len(idx) != x.shape[0]:
        raise InvalidValueError(
            f"need one rotation index per sample: {x.shape[0]} samples, {len(idx)} indices"
        )
    for i in idx:
        _check_index(i)
    groups: dict[int, list[int]] = {}
    for pos, r in enumerate(idx):
        groups.setdefault(r, []).append(pos)
    if len(groups) == 1:
        return rotate(x, idx[0])
    parts, order = [], []
    for r, positions in groups.items():
        sel = torch.as_tensor(positions, device=x.device)
        parts.append(rotate(x.index_select(0, sel), r))
        order.extend(positions)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    return torch.cat(parts).index_select(0, inverse.to(x.device))
