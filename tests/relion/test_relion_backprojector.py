"""The back-projector port (spisonet.relion.backprojector): our map vs a slow statement of
RELION's steps, and vs RELION 3.1's own ``relion_external_reconstruct`` where it is
installed. Jobs are written in RELION's format by ``helpers.make_job``."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.special
from helpers import make_job

from spisonet.errors import MapShapeError
from spisonet.relion import blob_fourier_table, read_external_star, reconstruct, reconstruct_arrays
from spisonet.relion.backprojector import _shell_of, relion_round

HAVE_RELION = shutil.which("relion_external_reconstruct") is not None


# --------------------------------------------------------------------------------------
# A slow, literal statement of RELION 3.1's steps (loops as in backprojector.cpp)


def _rnd(x: float) -> int:
    """C ROUND: halves away from zero."""
    return int(x + 0.5) if x > 0 else int(x - 0.5)


def slow_relion(
    star: Path, *, wiener: bool = True, skip_gridding: bool = False, minres_map: int = -1
) -> np.ndarray:
    job = read_external_star(star)
    re_ = mrcfile.read(str(job.data_real)).astype(np.float64)
    im_ = mrcfile.read(str(job.data_imag)).astype(np.float64)
    wt_ = mrcfile.read(str(job.weight)).astype(np.float64)
    ori, pad, cur = job.ori_size, job.padding_factor, job.current_size
    tau2 = job.tau2
    r_max = min(cur // 2, ori // 2)
    big_r = _rnd(r_max * pad)
    max_r2 = big_r * big_r
    n = 2 * (big_r + 1) + 1
    h = n // 2 + 1

    def fftw_loop(size):  # FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM
        half = size // 2 + 1
        for k in range(size):
            kp = k if k < half else k - size
            for i in range(size):
                ip = i if i < half else i - size
                for j in range(half):
                    yield k, i, j, kp, ip, j

    # centred BackProjector arrays, stored by logical index
    data: dict[tuple[int, int, int], complex] = {}
    weight: dict[tuple[int, int, int], float] = {}
    for k, i, j, kp, ip, jp in fftw_loop(re_.shape[0]):
        if kp * kp + ip * ip + jp * jp < max_r2:
            data[kp, ip, jp] = complex(re_[k, i, j], im_[k, i, j])
            weight[kp, ip, jp] = wt_[k, i, j]
    fconv = np.zeros((n, n, h), complex)
    fweight = np.zeros((n, n, h))
    for k, i, j, kp, ip, jp in fftw_loop(n):
        if kp * kp + ip * ip + jp * jp <= max_r2:
            fweight[k, i, j] = weight.get((kp, ip, jp), 0.0)
    if wiener:
        for k, i, j, kp, ip, jp in fftw_loop(n):
            r2 = kp * kp + ip * ip + jp * jp
            if r2 < max_r2:
                ires = _rnd(math.sqrt(r2) / pad)
                w = fweight[k, i, j]
                if ires < minres_map:  # RELION: the term only for ires >= minres_map
                    continue
                if tau2[ires] > 0:
                    inv = 1.0 / (pad**3 * job.tau2_fudge * tau2[ires])
                elif tau2[ires] < 1e-20:
                    inv = 1.0 / (0.001 * w) if w > 1e-20 else 0.0
                fweight[k, i, j] = w + inv
    if skip_gridding:
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp <= max_r2:
                fconv[k, i, j] = data.get((kp, ip, jp), 0.0)
        radavg = np.zeros(r_max)
        count = np.zeros(r_max)
        round_max_r2 = _rnd(r_max * pad * r_max * pad)
        for k, i, j, kp, ip, jp in fftw_loop(n):
            r2 = kp * kp + ip * ip + jp * jp
            if r2 < round_max_r2:
                ires = math.floor(math.sqrt(r2) / pad)
                radavg[ires] += fweight[k, i, j]
                count[ires] += 1
        radavg /= 1000.0 * count
        for k, i, j, kp, ip, jp in fftw_loop(n):
            ires = math.floor(math.sqrt(kp * kp + ip * ip + jp * jp) / pad)
            w = max(fweight[k, i, j], radavg[min(ires, r_max - 1)])
            if w != 0:
                fconv[k, i, j] /= w
    else:
        table_w = np.arange(10000) * (0.5 / 10000)
        sigma = np.sqrt(15.0**2 - (2 * math.pi * 3.8 * table_w) ** 2)
        table = scipy.special.iv(1.5, sigma) / sigma**1.5
        table /= table[0]
        blob = np.zeros((n, n, n))
        for k in range(n):
            for i in range(n):
                for j in range(n):
                    kk, ii, jj = (x if x < n // 2 else x - n for x in (k, i, j))
                    rval = math.sqrt(kk * kk + ii * ii + jj * jj) / (ori * pad)
                    idx = int(rval / (0.5 / 10000))
                    blob[k, i, j] = table[idx] if idx < 10000 else 0.0
        newweight = np.zeros((n, n, h))
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp < max_r2:
                newweight[k, i, j] = 1.0
        for _ in range(10):
            real = np.fft.irfftn(newweight * fweight, s=(n, n, n), axes=(0, 1, 2)) * n**3
            conv = np.fft.rfftn(real * blob) / n**3
            for k, i, j, kp, ip, jp in fftw_loop(n):
                if kp * kp + ip * ip + jp * jp < max_r2:
                    newweight[k, i, j] /= max(1e-6, abs(conv[k, i, j]))
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp <= max_r2:
                fconv[k, i, j] = data.get((kp, ip, jp), 0.0) * newweight[k, i, j]
    # window to the even padded size, centre by sign, inverse FFT, crop, normalise
    big_n = _rnd(pad * ori)
    big_n += big_n % 2
    out = np.zeros((big_n, big_n, big_n // 2 + 1), complex)
    for k, i, j, kp, ip, jp in fftw_loop(n):
        if fconv[k, i, j] != 0:
            out[kp % big_n, ip % big_n, jp] = fconv[k, i, j]
    for k in range(big_n):
        for i in range(big_n):
            for j in range(big_n // 2 + 1):
                if (k ^ i ^ j) & 1:
                    out[k, i, j] *= -1
    real = np.fft.irfftn(out, s=(big_n,) * 3, axes=(0, 1, 2)) * big_n**3
    s0 = big_n // 2 - ori // 2
    vol = real[s0 : s0 + ori, s0 : s0 + ori, s0 : s0 + ori] / (pad**3 * ori)
    # softMaskOutsideMap, then griddingCorrect
    c = np.arange(ori) - ori // 2
    radius, width = ori / 2.0, 3.0
    sum_w = sum_bg = 0.0
    for k in c:
        for i in c:
            for j in c:
                r = math.sqrt(k * k + i * i + j * j)
                if r < radius:
                    continue
                w = (
                    1.0
                    if r > radius + width
                    else 0.5 + 0.5 * math.cos(math.pi * (radius + width - r) / width)
                )
                sum_w += w
                sum_bg += w * vol[k + ori // 2, i + ori // 2, j + ori // 2]
    bg = sum_bg / sum_w
    for k in c:
        for i in c:
            for j in c:
                r = math.sqrt(k * k + i * i + j * j)
                z, y, x = k + ori // 2, i + ori // 2, j + ori // 2
                if r >= radius:
                    w = (
                        1.0
                        if r > radius + width
                        else 0.5 + 0.5 * math.cos(math.pi * (radius + width - r) / width)
                    )
                    vol[z, y, x] = (1 - w) * vol[z, y, x] + w * bg
                if r > 0:
                    rv = r / (ori * pad)
                    vol[z, y, x] /= (math.sin(math.pi * rv) / (math.pi * rv)) ** 2
    return vol


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------------------
# Reconstruction vs the slow statement


@pytest.mark.parametrize(
    ("ori", "pad", "current", "wiener", "skip"),
    [
        (10, 2, 10, True, False),
        (9, 3, 6, True, False),
        (9, 1, 9, False, False),
        (10, 2, 7, True, True),
        (9, 2, 9, False, True),
    ],
)
def test_reconstruct_equals_slow_statement(tmp_path, monkeypatch, ori, pad, current, wiener, skip):
    monkeypatch.chdir(tmp_path)
    star = make_job(
        tmp_path / "job", ori=ori, pad=pad, current=current, tau2_zero_from=4, tau2_scale=0.05
    )
    job = read_external_star(star)
    ours = reconstruct(job, wiener=wiener, skip_gridding=skip)
    slow = slow_relion(star, wiener=wiener, skip_gridding=skip)
    assert ours.shape == (ori, ori, ori) and ours.dtype == np.float32
    assert _rel_err(ours, slow) < 2e-6


@pytest.mark.parametrize(("minres", "skip"), [(5, False), (2, True), (0, False)])
def test_minres_map_equals_slow_statement(tmp_path, monkeypatch, minres, skip):
    """relion_refine's own reconstruction: no Wiener term below shell ``minres_map``."""
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=12, pad=2, current=12, tau2_scale=0.05)
    job = read_external_star(star)
    ours = reconstruct(job, skip_gridding=skip, minres_map=minres)
    slow = slow_relion(star, skip_gridding=skip, minres_map=minres)
    assert _rel_err(ours, slow) < 2e-6
    # shell 0 is the only one below 1: minres_map 0 and 1 differ, -1 and 0 do not
    if minres == 0:
        assert _rel_err(ours, reconstruct(job, skip_gridding=skip)) < 1e-12
    else:
        assert _rel_err(ours, reconstruct(job, skip_gridding=skip)) > 1e-4


def test_wiener_term_and_gridding_change_the_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=12, pad=2, tau2_scale=0.05)
    job = read_external_star(star)
    base = reconstruct(job)
    assert _rel_err(reconstruct(job, wiener=False), base) > 1e-3
    assert _rel_err(reconstruct(job, skip_gridding=True), base) > 1e-3


def test_relion_rounding_is_half_away_from_zero():
    # |k| = 5, pad 2 -> 2.5 -> shell 3 (numpy's rint would say 2); |k| = 3 -> 1.5 -> 2
    shells = _shell_of(np.array([25, 9, 49]), 2.0)
    assert shells.tolist() == [3, 2, 4]
    assert relion_round(2.5) == 3 and relion_round(-2.5) == -3


def test_blob_table_matches_bessel_definition():
    table = blob_fourier_table()
    w = np.arange(table.size) * (0.5 / table.size)
    sigma = np.sqrt(15.0**2 - (2 * np.pi * 3.8 * w) ** 2)
    ref = scipy.special.iv(1.5, sigma) / sigma**1.5
    np.testing.assert_allclose(table, ref / ref[0], rtol=1e-12)
    assert table[0] == 1.0 and np.all(np.diff(table) < 0)


def test_odd_padded_grid_and_sizes(tmp_path, monkeypatch):
    # box 11, pad 3 -> P = 33 (odd): RELION's files are not made even
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=11, pad=3, current=11)
    job = read_external_star(star)
    assert job.padded_size == 33
    assert mrcfile.read(str(job.weight)).shape == (33, 33, 17)
    vol = reconstruct(job)
    assert vol.shape == (11, 11, 11) and np.all(np.isfinite(vol))


# --------------------------------------------------------------------------------------
# Shapes


def test_data_weight_shape_mismatch():
    with pytest.raises(MapShapeError, match="differs from weight shape"):
        reconstruct_arrays(
            np.zeros((8, 8, 5), complex),
            np.zeros((8, 8, 4)),
            ori_size=8,
            current_size=8,
            padding_factor=1,
            tau2=None,
        )


def test_not_half_complex():
    with pytest.raises(MapShapeError, match=r"expected half-complex \(P, P, P//2\+1\)"):
        reconstruct_arrays(
            np.zeros((8, 8, 8), complex),
            np.zeros((8, 8, 8)),
            ori_size=8,
            current_size=8,
            padding_factor=1,
            tau2=None,
        )


# --------------------------------------------------------------------------------------
# Against RELION 3.1's own program


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_RELION, reason="relion_external_reconstruct not on PATH")
@pytest.mark.parametrize("ori", [24, 25])
@pytest.mark.parametrize("pad", [1, 2, 3])
def test_matches_relion_external_reconstruct(tmp_path, monkeypatch, ori, pad):
    monkeypatch.chdir(tmp_path)
    for current in (ori, ori // 2 + 3):
        star = make_job(
            tmp_path / f"c{current}",
            "run_a_b_it002_half1_class001",
            ori=ori,
            pad=pad,
            current=current,
            seed=current,
            tau2_scale=0.05,
            tau2_zero_from=ori // 3,
        )
        job = read_external_star(star)
        for flags in ([], ["--skip_gridding"], ["--no_map"]):
            ref_path = tmp_path / f"ref_{current}.mrc"
            subprocess.run(
                [
                    "relion_external_reconstruct",
                    str(star.relative_to(tmp_path)),
                    "--o",
                    str(ref_path),
                    *flags,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            ref = mrcfile.read(str(ref_path)).astype(np.float64)
            ours = reconstruct(
                job, wiener="--no_map" not in flags, skip_gridding="--skip_gridding" in flags
            )
            assert ours.shape == ref.shape == (ori, ori, ori)
            err = _rel_err(ours, ref)
            assert err <= 1e-6, f"current {current} {flags}: relative difference {err:.2e}"
