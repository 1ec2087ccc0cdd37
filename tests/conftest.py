"""Shared fixtures: small maps made on the fly (tests never need external data)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test-only helpers (slow references)


def blobs(n: int, seed: int = 0, n_blobs: int = 40, width: float = 1.5) -> np.ndarray:
    """A structured test map: Gaussian blobs inside a sphere of radius n/3 (float32)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    out = np.zeros((n, n, n), dtype=np.float64)
    centres = rng.uniform(-n / 3.5, n / 3.5, size=(n_blobs, 3))
    for cz, cy, cx in centres:
        out += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return out.astype(np.float32)


def soft_sphere_mask(n: int, radius: float, edge: float = 3.0) -> np.ndarray:
    k = np.arange(n) - n // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.clip((radius + edge - r) / edge, 0.0, 1.0).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def noisy_pair():
    """Factory: (half1, half2) = structured map + independent noise, float32."""

    def make(n: int, seed: int = 0, noise: float = 0.5):
        r = np.random.default_rng(seed)
        signal = blobs(n, seed)
        signal /= signal.std()
        h1 = signal + noise * r.standard_normal(signal.shape)
        h2 = signal + noise * r.standard_normal(signal.shape)
        return h1.astype(np.float32), h2.astype(np.float32)

    return make


def write_noisy_pair(folder, n: int, voxel_size: float) -> dict:
    """Write h1.mrc, h2.mrc (blobs × 3 plus unit noise, offset 5) and mask.mrc (a soft
    sphere of radius n/3) into ``folder``; returns {name: path}."""
    from spisonet.io import write_map

    r = np.random.default_rng(0)
    s = blobs(n, 0) * 3
    paths = {}
    for name in ("h1", "h2"):
        paths[name] = folder / f"{name}.mrc"
        write_map(paths[name], (s + r.standard_normal(s.shape) + 5).astype(np.float32), voxel_size)
    paths["mask"] = folder / "mask.mrc"
    write_map(paths["mask"], soft_sphere_mask(n, n / 3), voxel_size)
    return paths
