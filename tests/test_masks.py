"""Tests of spisonet.masks against slow numpy statements of the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.masks import soft_mask, spherical_mask


def _raised_cosine(distance: np.ndarray, flat: float, edge: float) -> np.ndarray:
    """1 up to ``flat``, 0.5(1 + cos(π (d − flat)/edge)) on the edge, 0 beyond."""
    out = np.zeros_like(distance, dtype=np.float64)
    out[distance <= flat] = 1.0
    on_edge = (distance > flat) & (distance < flat + edge)
    out[on_edge] = 0.5 * (1.0 + np.cos(np.pi * (distance[on_edge] - flat) / edge))
    return out


def _distance_to_centre(n: int) -> np.ndarray:
    z, y, x = np.indices((n, n, n), dtype=np.float64) - n // 2
    return np.hypot(np.hypot(z, y), x)


@pytest.mark.parametrize(("n", "radius", "edge"), [(24, 6.0, 4.0), (25, 5.5, 3.0), (16, 4.0, 0.0)])
def test_spherical_mask_matches_definition(n: int, radius: float, edge: float) -> None:
    got = spherical_mask(n, radius, edge)
    assert got.dtype == np.float32 and got.shape == (n, n, n)
    want = _raised_cosine(_distance_to_centre(n), radius, edge)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[n // 2, n // 2, n // 2] == 1.0
    assert got[0, 0, 0] == 0.0


def test_spherical_mask_half_way_down_the_edge() -> None:
    m = spherical_mask(32, 5.0, 6.0)
    # voxel at distance 8 from the centre along x: half-way through the 6-voxel edge
    assert m[16, 16, 16 + 8] == pytest.approx(0.5, abs=1e-6)


def test_soft_mask_of_a_point_is_a_soft_sphere() -> None:
    n = 32
    vol = np.zeros((n, n, n), dtype=np.float32)
    vol[n // 2, n // 2, n // 2] = 1.0
    got = soft_mask(vol, threshold=0.5, dilate_voxels=3, soft_edge_voxels=4, lowpass_voxels=0)
    want = _raised_cosine(_distance_to_centre(n), 3.0, 4.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_soft_mask_of_an_off_centre_box() -> None:
    # binary region: a 4×6×3 block; the distance to it computed voxel by voxel
    n = 20
    vol = np.zeros((n, n, n), dtype=np.float32)
    vol[5:9, 6:12, 10:13] = 2.0
    got = soft_mask(vol, threshold=1.0, dilate_voxels=2, soft_edge_voxels=3, lowpass_voxels=0)
    region = np.argwhere(vol > 1.0).astype(np.float64)
    grid = np.indices((n, n, n)).reshape(3, -1).T.astype(np.float64)
    dist = np.sqrt(((grid[:, None, :] - region[None, :, :]) ** 2).sum(-1)).min(1)
    want = _raised_cosine(dist.reshape(n, n, n), 2.0, 3.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_soft_mask_covers_a_molecule_with_a_soft_edge() -> None:
    from spisonet.simulate import make_molecule

    gt = make_molecule(40, 2.0, seed=1)
    mask = soft_mask(gt)
    assert mask.dtype == np.float32 and mask.shape == gt.shape
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    # every voxel with real density is fully inside the mask
    assert np.all(mask[gt > 0.05 * gt.max()] == 1.0)
    # a soft edge (values strictly between 0 and 1) and empty corners
    edge = (mask > 0.01) & (mask < 0.99)
    assert edge.sum() > 0.05 * (mask > 0.99).sum()
    assert mask[:4, :4, :4].max() == 0.0
    # a larger dilation gives a superset
    bigger = soft_mask(gt, dilate_voxels=6)
    assert np.all(bigger >= mask - 1e-6) and bigger.sum() > mask.sum()


def test_soft_mask_threshold_above_max_is_an_error() -> None:
    vol = np.zeros((8, 8, 8), dtype=np.float32)
    vol[4, 4, 4] = 1.0
    with pytest.raises(InvalidValueError, match="leaves an empty mask"):
        soft_mask(vol, threshold=2.0, lowpass_voxels=0)


def test_soft_mask_without_positive_density_needs_a_threshold() -> None:
    with pytest.raises(InvalidValueError, match="no positive density"):
        soft_mask(-np.ones((8, 8, 8), dtype=np.float32))


def test_soft_mask_needs_3d() -> None:
    with pytest.raises(MapShapeError, match="needs a 3D map"):
        soft_mask(np.ones((8, 8), dtype=np.float32))


def test_soft_mask_rejects_nan() -> None:
    vol = np.ones((8, 8, 8), dtype=np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(NonFiniteMapError, match="NaN or infinite"):
        soft_mask(vol)


def test_soft_mask_rejects_negative_width() -> None:
    with pytest.raises(InvalidValueError, match="dilate_voxels must be a finite number"):
        soft_mask(np.ones((8, 8, 8), dtype=np.float32), dilate_voxels=-1)


def test_spherical_mask_rejects_bad_radius() -> None:
    with pytest.raises(InvalidValueError, match="radius must be > 0"):
        spherical_mask(16, 0.0, 3.0)


def test_spherical_mask_rejects_bad_box() -> None:
    with pytest.raises(InvalidValueError, match="box n must be a positive integer"):
        spherical_mask(0, 3.0, 3.0)


def test_spherical_mask_rejects_negative_edge() -> None:
    with pytest.raises(InvalidValueError, match="soft_edge_voxels must be a finite number"):
        spherical_mask(16, 3.0, -2.0)
