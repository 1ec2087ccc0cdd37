"""The training mask of a tomogram (spisonet.tomo.mask): on a synthetic tomogram it keeps
the specimen and drops empty ice and gold; on a tiny volume it equals a slow statement of
its definition (explicit local windows, np.percentile, explicit dilation)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spisonet.errors import EmptyMaskError, InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.tomo import tomogram_mask

SHAPE = (32, 48, 48)
BAND = 14  # x < BAND: empty ice (noise only); blobs live in x ≥ 18
GOLD = (16, 24, 30)


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Noise (σ 1) + 30 weak Gaussian blobs (0.8, σ 2.5 voxels) + one gold bead (20).

    Realistic contrast: the blobs are below 1 noise σ, the bead 20 σ (radius 2 voxels).
    The blobs do not overlap (a dense cluster has its own test).
    """
    rng = np.random.default_rng(0)
    vol = rng.normal(0.0, 1.0, size=SHAPE)
    zz, yy, xx = np.indices(SHAPE)
    centres: list[np.ndarray] = []
    while len(centres) < 30:  # apart from each other and from the gold (which hides none)
        c = rng.uniform([6, 4, 18], [26, 44, 44])
        if np.abs(c - GOLD).max() > 11 and all(np.linalg.norm(c - d) > 6 for d in centres):
            centres.append(c)
    for c in centres:
        r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        vol += 0.8 * np.exp(-r2 / (2 * 2.5**2))
    r2 = (zz - GOLD[0]) ** 2 + (yy - GOLD[1]) ** 2 + (xx - GOLD[2]) ** 2
    vol += 20.0 * (r2 <= 4)
    return vol.astype(np.float32), np.array(centres)


def test_mask_keeps_blobs_and_drops_ice_gold_and_cropped_planes() -> None:
    vol, centres = _synthetic()
    mask = tomogram_mask(vol, 30.0, 30.0, patch_size=4, z_crop=0.1, smooth=2.0)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    assert set(np.unique(mask)) <= {0, 1}
    zz, yy, xx = np.indices(SHAPE)
    for c in centres:  # every blob is (partly) in the mask
        near = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 9
        assert mask[near].any(), f"blob at {c} is not in the mask"
    assert mask[:, :, :BAND].mean() < 0.02  # empty ice
    assert mask[:, :, 18:].mean() > 10 * mask[:, :, :BAND].mean()
    cheb = np.maximum.reduce([abs(zz - GOLD[0]), abs(yy - GOLD[1]), abs(xx - GOLD[2])])
    assert not mask[cheb <= 5].any()  # the bead (⊇ its 3³ core) dilated by patch_size 4
    n_crop = int(0.1 * SHAPE[0])  # 3 planes at each end
    assert not mask[:n_crop].any() and not mask[-n_crop:].any()
    assert mask[n_crop].any() and mask[-n_crop - 1].any()


def test_density_criterion_is_sign_agnostic() -> None:
    vol, _ = _synthetic()
    a = tomogram_mask(vol, 40.0, 60.0, patch_size=3, z_crop=0.05, smooth=1.5)
    b = tomogram_mask(-vol, 40.0, 60.0, patch_size=3, z_crop=0.05, smooth=1.5)
    np.testing.assert_array_equal(a, b)


def _slow_mask(vol, dens_pct, std_pct, p, z_crop, smooth):
    """The definition, voxel by voxel, in float64; also the values at both cuts."""
    v = vol.astype(np.float64)
    sm = ndimage.gaussian_filter(v, smooth) if smooth > 0 else v
    lo, hi = -(p // 2), (p - 1) // 2  # scipy's window for edge p (reflect at the borders)
    pad = np.pad(sm, [(-lo, hi)] * 3, mode="symmetric")
    mean = np.empty_like(sm)
    std = np.empty_like(sm)
    for z, y, x in np.ndindex(sm.shape):
        w = pad[z : z + p, y : y + p, x : x + p]
        mean[z, y, x] = w.mean()
        std[z, y, x] = w.std()
    dev = np.abs(mean - np.median(mean))
    dens_cut = np.percentile(dev, 100 - dens_pct)
    std_cut = np.percentile(std, 100 - std_pct)
    keep = (dev >= dens_cut) & (std >= std_cut)
    med = np.median(v)  # outliers are judged on the unsmoothed values
    robust_sd = 1.4826 * np.median(np.abs(v - med))
    outlier = np.abs(v - med) > 8 * robust_sd
    for z, y, x in np.argwhere(outlier):  # dilation by p voxels (a cube of edge 2p + 1)
        keep[max(z - p, 0) : z + p + 1, max(y - p, 0) : y + p + 1, max(x - p, 0) : x + p + 1] = 0
    n = int(np.floor(z_crop * vol.shape[0]))
    keep[:n] = False
    keep[vol.shape[0] - n :] = False
    return keep, (dev, dens_cut), (std, std_cut)


@pytest.mark.parametrize(
    "dens_pct, std_pct, p, z_crop, smooth",
    [(50.0, 50.0, 3, 0.0, 0.0), (35.0, 70.0, 4, 0.2, 1.0), (100.0, 25.0, 2, 0.1, 0.7)],
)
def test_mask_matches_the_slow_definition(dens_pct, std_pct, p, z_crop, smooth) -> None:
    rng = np.random.default_rng(7)
    vol = rng.normal(size=(10, 11, 12)).astype(np.float32)
    vol[5, 5, 6] = 60.0  # a gold voxel: excluded with its neighbourhood
    got = tomogram_mask(vol, dens_pct, std_pct, patch_size=p, z_crop=z_crop, smooth=smooth)
    want, (dev, dens_cut), (std, std_cut) = _slow_mask(vol, dens_pct, std_pct, p, z_crop, smooth)
    differ = got.astype(bool) != want
    # float32 local statistics may flip a voxel that sits on a cut (within round-off)
    on_cut = (np.abs(dev - dens_cut) < 1e-5) | (np.abs(std - std_cut) < 1e-5)
    assert not (differ & ~on_cut).any()
    assert differ.sum() <= 2
    assert want.sum() > 0 and not got[5, 5, 6]


def test_hundred_percent_keeps_every_voxel_but_outliers_and_crop() -> None:
    vol = np.random.default_rng(1).normal(size=(8, 9, 10)).astype(np.float32)
    assert tomogram_mask(vol, 100.0, 100.0, smooth=0.0).all()
    mask = tomogram_mask(vol, 100.0, 100.0, z_crop=0.25, smooth=0.0)
    assert mask[2:6].all() and not mask[:2].any() and not mask[6:].any()


def test_empty_masks_name_the_criterion() -> None:
    vol = np.random.default_rng(2).normal(size=(8, 9, 10)).astype(np.float32)
    with pytest.raises(EmptyMaskError, match=r"density \(0\.1 %\) and std \(0\.1 %\) criteria"):
        tomogram_mask(vol, 0.1, 0.1, patch_size=2, smooth=0.0)
    gold = vol.copy()
    gold[4, 4, 5] = 500.0  # the only high-density, high-std voxels are gold's
    with pytest.raises(EmptyMaskError, match=r"excluding gold/carbon .* raise density_percentage"):
        tomogram_mask(gold, 1.0, 100.0, patch_size=2, smooth=0.0)
    thin = np.zeros((4, 9, 10), dtype=np.float32)
    thin[0] = np.random.default_rng(3).normal(size=(9, 10))
    with pytest.raises(EmptyMaskError, match=r"z_crop=0\.25 removed .* lower z_crop"):
        tomogram_mask(thin, 10.0, 10.0, patch_size=1, z_crop=0.25, smooth=0.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"density_percentage": 0.0}, InvalidValueError, r"density_percentage must be a percen"),
        ({"std_percentage": 101}, InvalidValueError, r"std_percentage .* \(0, 100\], got 101"),
        ({"std_percentage": "x"}, InvalidValueError, r"std_percentage .* got 'x'"),
        ({"patch_size": 0}, InvalidValueError, r"patch_size must be an integer ≥ 1 voxels, got 0"),
        ({"patch_size": 2.0}, InvalidValueError, r"patch_size .* got 2\.0"),
        ({"z_crop": 0.5}, InvalidValueError, r"z_crop must be a fraction of Z in \[0, 0\.5\)"),
        ({"z_crop": -0.1}, InvalidValueError, r"z_crop .* got -0\.1"),
        ({"smooth": -1.0}, InvalidValueError, r"smooth must be a Gaussian sigma ≥ 0 voxels"),
    ],
)
def test_bad_parameters_are_refused(kwargs, error, match) -> None:
    vol = np.random.default_rng(4).normal(size=(6, 6, 6)).astype(np.float32)
    with pytest.raises(error, match=match):
        tomogram_mask(vol, **kwargs)


def test_bad_tomograms_are_refused() -> None:
    with pytest.raises(MapShapeError, match=r"expected a non-empty 3D \(Z, Y, X\) array"):
        tomogram_mask(np.zeros((5, 5)))
    vol = np.zeros((4, 4, 4), dtype=np.float32)
    vol[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteMapError, match="contains 1 NaN or infinite values"):
        tomogram_mask(vol)


def test_a_dense_cluster_of_specimen_is_not_taken_for_gold() -> None:
    """Smoothed, a cluster of overlapping weak blobs in mostly empty ice exceeds 8 robust
    SDs of the smoothed values; judged on the raw values (noise σ 1) it is specimen."""
    rng = np.random.default_rng(3)
    vol = rng.normal(0.0, 1.0, size=SHAPE)
    zz, yy, xx = np.indices(SHAPE)
    centre = np.array([16.0, 24.0, 30.0])
    for _ in range(8):
        c = centre + rng.uniform(-2, 2, 3)
        vol += 0.8 * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 12.5)
    sm = ndimage.gaussian_filter(vol, 2.0)
    robust = 1.4826 * np.median(np.abs(sm - np.median(sm)))
    assert np.abs(sm - np.median(sm)).max() > 8 * robust  # would have been "gold"
    mask = tomogram_mask(vol.astype(np.float32), 30.0, 30.0, patch_size=4, smooth=2.0)
    assert mask[16, 24, 30] == 1
