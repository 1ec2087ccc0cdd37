"""The oracle reference of benchmarks/bench_relion.py (benchmarks/oracle_reconstruct.py)
against a slow statement of its definition: the truth's phases, RELION's mean amplitude
per shell, nothing beyond the current resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from oracle_reconstruct import oracle_map


def _slow_oracle(truth: np.ndarray, plain: np.ndarray, current_size: int) -> np.ndarray:
    n = truth.shape[0]
    ft, fp = np.fft.fftn(truth), np.fft.fftn(plain)
    k = np.fft.fftfreq(n) * n
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    out = np.zeros_like(ft)
    for s in np.unique(shell):
        sel = shell == s
        if s > current_size // 2:
            continue
        a_t, a_p = np.abs(ft[sel]).mean(), np.abs(fp[sel]).mean()
        if a_t > 0:
            out[sel] = ft[sel] * (a_p / a_t)
    return np.fft.ifftn(out).real


def test_oracle_follows_its_definition_on_random_and_structured_maps() -> None:
    from helpers import blobs

    rng = np.random.default_rng(1)
    for n, truth in ((16, rng.standard_normal((16, 16, 16))), (20, blobs(20, 2))):
        plain = 0.3 * truth + rng.standard_normal(truth.shape)
        for current in (n, n // 2 + 2):
            got = oracle_map(truth, plain, current)
            want = _slow_oracle(truth, plain, current)
            # float32 output; an unweighted half-grid mean was off by 4e-3 of the maximum
            assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # without noise in the amplitudes (plain = a multiple of the truth) the oracle is it
    got = oracle_map(truth, 2.5 * truth, 4 * n)
    np.testing.assert_allclose(got, 2.5 * truth, atol=1e-4 * np.abs(truth).max() * 2.5)
