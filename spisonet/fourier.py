"""Fourier conventions shared by every module.

Fourier arrays are ``fftshift``-ed, so the zero frequency of an n-voxel axis sits at
index ``n // 2``; integer frequencies run from ``-(n // 2)`` to ``(n - 1) // 2``. The
shell of a voxel is ``round(|k|)`` (``|k|`` never lies exactly half-way between two
integers, so rounding has no ties). Resolution of shell ``s``: ``n * voxel_size / s`` Å.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fourier_blend",
    "fourier_crop",
    "fourier_pad",
    "frequency_radius",
    "half_grid",
    "lowpass",
    "resolution_to_shell",
    "rfft_shells",
    "shell_cross",
    "shell_index",
    "shell_to_resolution",
    "soft_sphere",
]


def frequency_axis(n: int) -> np.ndarray:
    """Integer frequencies of an fftshift-ed axis of length n: -(n//2) … (n-1)//2."""
    return np.arange(n) - n // 2


def frequency_radius(n: int, dtype: type = np.float64) -> np.ndarray:
    """|k| for every voxel of an fftshift-ed (n, n, n) grid, in voxels of frequency."""
    k = frequency_axis(n).astype(dtype)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


def shell_index(n: int) -> np.ndarray:
    """Shell number ``round(|k|)`` of every voxel of an fftshift-ed (n, n, n) grid (int32)."""
    return np.rint(frequency_radius(n)).astype(np.int32)


def shell_to_resolution(shell: np.ndarray | float, n: int, voxel_size: float) -> np.ndarray:
    """Resolution in Å of shell(s) ``shell`` of an n-voxel box (inf for shell 0)."""
    s = np.asarray(shell, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return n * voxel_size / s


def resolution_to_shell(resolution: float, n: int, voxel_size: float) -> float:
    """Frequency radius (voxels) of a resolution in Å in an n-voxel box."""
    return n * voxel_size / resolution


def soft_sphere(n: int, radius: float, falloff: float = 3.0) -> np.ndarray:
    """Fourier-space sphere, fftshift-ed: 1 inside ``radius``, linear fall-off to 0.

    Values are ``clip((radius + falloff - |k|) / falloff, 0, 1)``: 1 for
    ``|k| <= radius``, 0 beyond ``radius + falloff`` (float32, (n, n, n)).
    """
    r = frequency_radius(n)
    if falloff <= 0:
        return (r <= radius).astype(np.float32)
    return np.clip((radius + falloff - r) / falloff, 0.0, 1.0).astype(np.float32)


def lowpass(
    volume: np.ndarray, resolution: float, voxel_size: float, falloff: float = 3.0
) -> np.ndarray:
    """Low-pass a real (n, n, n) map to ``resolution`` Å with a soft spherical edge.

    The filter is :func:`soft_sphere` of radius ``n * voxel_size / resolution`` with a
    ``falloff``-shell linear edge. Returns float32.
    """
    n = volume.shape[0]
    filt = np.fft.ifftshift(soft_sphere(n, resolution_to_shell(resolution, n, voxel_size), falloff))
    f = np.fft.rfftn(volume)
    filt_r = filt[:, :, : n // 2 + 1]
    return np.fft.irfftn(f * filt_r, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def fourier_blend(base: np.ndarray, replacement: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Mix two real (n, n, n) maps voxel by voxel in Fourier space.

    Returns the real map whose transform is ``(1 - w)·F(base) + w·F(replacement)``, with
    ``w`` the fftshift-ed (n, n, n) ``weight`` clipped to [0, 1]. Where ``w`` is 1 the
    result carries ``replacement``'s Fourier coefficients exactly, where it is 0
    ``base``'s. ``weight`` must be centrosymmetric (as a 3D FSC is) for the result to be
    the exact real map of that mix; only its half (rfft) part is read. Returns float32.
    """
    if base.shape != replacement.shape or weight.shape != base.shape or base.ndim != 3:
        from .errors import MapShapeError

        raise MapShapeError(
            f"fourier_blend needs three (n, n, n) arrays of one shape; got {base.shape}, "
            f"{replacement.shape} and {weight.shape}"
        )
    w = np.clip(half_grid(weight), 0.0, 1.0)
    fb = np.fft.rfftn(np.asarray(base, dtype=np.float64))
    fr = np.fft.rfftn(np.asarray(replacement, dtype=np.float64))
    return np.fft.irfftn(fb + w * (fr - fb), s=base.shape, axes=(0, 1, 2)).astype(np.float32)


def rfft_shells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shell ``round(|k|)`` and Friedel weight of every voxel of an ``rfftn`` half grid.

    Returns (shells, weights), both of shape (n, n, n // 2 + 1): int64 shells, and float64
    weights of 2 for columns that stand for themselves and their Friedel mate, 1 for
    column 0 (and column n/2 when n is even), so weighted sums equal full-grid sums.
    """
    k = np.fft.fftfreq(n, 1.0 / n)
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shells = np.rint(r).astype(np.int64)
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return shells, np.broadcast_to(w[None, None, :], shells.shape)


def half_grid(grid: np.ndarray) -> np.ndarray:
    """An fftshift-ed (n, n, n) grid in ``rfftn`` layout (n, n, n//2 + 1), float64."""
    n = grid.shape[0]
    return np.fft.ifftshift(np.asarray(grid, dtype=np.float64))[:, :, : n // 2 + 1]


def shell_cross(fa: np.ndarray, fb: np.ndarray, weight: np.ndarray | float, n: int) -> np.ndarray:
    """Re Σ weight · F_a F_b* per shell round(|k|) over ``rfftn`` half grids of an n-box,
    Friedel-weighted so the sums equal full-grid sums; (n//2 + 1,) float64 (corner shells
    beyond n/2 are left out). ``weight``: a half-grid array (:func:`half_grid`) or 1.0."""
    shells, friedel = rfft_shells(n)
    m = n // 2 + 1
    v = weight * friedel * np.real(fa * np.conj(fb))
    return np.bincount(shells.ravel(), weights=v.ravel(), minlength=m)[:m]


def _check_resize(
    volume: np.ndarray, new_box: int, name: str, smaller: bool
) -> tuple[np.ndarray, int]:
    """(volume as a cubic array, new_box as int) after the checks both resizes share."""
    from ._checks import check_cubic_map
    from .errors import InvalidValueError

    vol = check_cubic_map(volume, f"{name} input")
    n = vol.shape[0]
    ok = not isinstance(new_box, bool) and int(new_box) == new_box
    lo, hi = (2, n) if smaller else (n, None)
    if not ok or new_box < lo or (hi is not None and new_box > hi):
        bound = f"[2, {n}]" if smaller else f"≥ {n}"
        raise InvalidValueError(
            f"{name}: new_box must be an integer in {bound} for a {n}³ map, got {new_box!r}"
        )
    return vol, int(new_box)


def fourier_crop(volume: np.ndarray, new_box: int) -> np.ndarray:
    """Bin a cubic map to a smaller box by cropping its Fourier transform.

    The centred (new_box)³ block of the fftshift-ed FFT is kept, so frequencies up to
    the new Nyquist survive unchanged; the voxel size grows by n / new_box. Values are
    scaled by (new_box / n)³ so the mean density is kept.

    Parameters
    ----------
    volume : (n, n, n) real map.
    new_box : new edge, 2 ≤ new_box ≤ n.

    Returns
    -------
    (new_box, new_box, new_box) float32.
    """
    vol, m = _check_resize(volume, new_box, "fourier_crop", smaller=True)
    return _fourier_resize(vol, m)


def fourier_pad(volume: np.ndarray, new_box: int) -> np.ndarray:
    """Resample a cubic map onto a larger box by zero-padding its Fourier transform.

    The inverse of :func:`fourier_crop` for a map without content beyond its Nyquist: the
    (n)³ transform is placed at the centre of a zero (new_box)³ one (same frequencies in
    1/Å; the voxel size shrinks by new_box / n) and values are scaled by (new_box / n)³ so
    the map's values are kept. ``fourier_crop(fourier_pad(v, N), n)`` returns ``v`` up to
    its Nyquist plane.

    Parameters
    ----------
    volume : (n, n, n) real map.
    new_box : new edge ≥ n.

    Returns
    -------
    (new_box, new_box, new_box) float32.
    """
    vol, m = _check_resize(volume, new_box, "fourier_pad", smaller=False)
    return _fourier_resize(vol, m)


def _fourier_resize(vol: np.ndarray, m: int) -> np.ndarray:
    """``vol`` (n³) on an m³ grid with the same frequencies: its transform's centre cropped
    (m < n) or zero-padded (m > n), values kept (scaled by (m / n)³); float32."""
    n = vol.shape[0]
    if m == n:
        return vol.astype(np.float32, copy=True)
    small, big = min(n, m), max(n, m)
    lo = big // 2 - small // 2
    inner = (slice(lo, lo + small),) * 3
    f = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    if m < n:
        g = f[inner]
    else:
        g = np.zeros((m, m, m), dtype=np.complex128)
        g[inner] = f
    out = np.fft.ifftn(np.fft.ifftshift(g)).real * (m / n) ** 3
    return out.astype(np.float32)
