"""Shared fixtures: small maps made on the fly (tests never need external data).

Shared helper functions live in ``tests/helpers.py``; test modules import them from
there, never from each other or from this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py and the slow references

from helpers import blobs, soft_sphere_mask, write_noisy_pair  # noqa: F401


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
