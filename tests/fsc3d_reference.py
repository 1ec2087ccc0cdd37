"""A slow, literal numpy statement of the spIsoNet-flavour 3D FSC, for tests only."""

from __future__ import annotations

import numpy as np


def reference_fsc3d(
    half1, half2, voxel_size=1.0, mask=None, limit_res=None, angle=10.0, keep_highres=False
):
    """Return (volume float64, limit_res, limit_r) by the definition, brute force."""
    n = half1.shape[0]
    h1 = (half1.astype(np.float64) - half1.mean(dtype=np.float64)) / half1.astype(np.float64).std()
    h2 = (half2.astype(np.float64) - half2.mean(dtype=np.float64)) / half2.astype(np.float64).std()
    if mask is not None:
        h1 = h1 * mask
        h2 = h2 * mask
    f1 = np.fft.fftshift(np.fft.fftn(h1))
    f2 = np.fft.fftshift(np.fft.fftn(h2))
    num = np.real(f1 * np.conj(f2))
    den = np.sqrt(np.abs(f1) ** 2 * np.abs(f2) ** 2)
    f = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    f[n // 2, n // 2, n // 2] = 1.0  # zero frequency: defined as 1 (see spisonet.fsc3d)
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    radius = np.sqrt(kz**2 + ky**2 + kx**2)
    if limit_res is None:
        trunc = radius.astype(np.int64)
        limit_res = 2.0 * voxel_size
        for i in range(n // 2):
            if f[trunc == i].mean() < 0.143:
                limit_res = 2.0 * (n // 2) * voxel_size / (i + 1)
                break
    limit_r = int(2.0 * voxel_size / limit_res * (n / 2.0) + 1)
    shell = np.rint(radius).astype(np.int64)
    out = np.zeros((n, n, n))
    out[n // 2, n // 2, n // 2] = 1.0
    for s in range(1, limit_r):
        idx = np.argwhere(shell == s)
        if len(idx) == 0:
            continue
        values = f[tuple(idx.T)]
        d = s * 2.0 * np.sin(np.deg2rad(angle) / 2.0)
        res = np.empty(len(idx))
        for start in range(0, len(idx), 512):
            p = idx[start : start + 512]
            dist2 = ((p[:, None, :] - idx[None, :, :]) ** 2).sum(axis=2).astype(np.float64)
            near = np.sqrt(dist2) <= d
            res[start : start + 512] = (near * values[None, :]).sum(axis=1) / near.sum(axis=1)
        out[tuple(idx.T)] = res
    if keep_highres:
        rad = limit_r - 2
        sphere = np.clip((rad - shell) / 6.0, 0.0, 1.0)
        out = np.maximum(out, 1.0 - sphere)
    return out, limit_res, limit_r
