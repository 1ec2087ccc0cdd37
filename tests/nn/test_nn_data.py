"""Tests of spisonet.nn.data: cube centres, cube extraction and paired batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spisonet.errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)
from spisonet.nn.data import CubePairs, extract_cubes, sample_cube_centres


def ball_mask(n: int, radius: float, centre: tuple[float, float, float]) -> np.ndarray:
    z, y, x = np.indices((n, n, n))
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2).astype(
        np.float32
    )


def fits(centres: np.ndarray, d: int, shape: tuple[int, ...]) -> bool:
    start = centres - d // 2
    return bool(np.all(start >= 0) and np.all(start + d <= np.asarray(shape)))


@pytest.mark.parametrize("d", [8, 9])
def test_centres_inside_mask_and_cubes_inside_map(d: int) -> None:
    # a ball that pokes out of the box: some mask voxels are too close to the edge
    mask = ball_mask(24, 9, (6, 12, 17))
    c = sample_cube_centres(mask, 200, d, rng=1)
    assert c.shape == (200, 3) and c.dtype == np.int64
    assert np.all(mask[tuple(c.T)] != 0)
    assert fits(c, d, mask.shape)
    # enough candidates: drawn without replacement
    assert len({tuple(v) for v in c}) == 200


def test_centres_cover_every_valid_position_uniformly() -> None:
    mask = np.zeros((16, 16, 16))
    mask[7:9, 7:10, 8] = 2.5  # 6 candidate voxels, all where an 8³ cube fits
    mask[0, 0, 0] = 1  # cannot hold a cube: never chosen
    c = sample_cube_centres(mask, 600, 8, rng=np.random.default_rng(3))
    keys, counts = np.unique(c, axis=0, return_counts=True)
    assert len(keys) == 6 and np.all(counts == 100)  # too few: balanced repetition
    # without replacement, over many seeds every candidate is drawn about equally often
    total = np.zeros((16, 16, 16))
    for seed in range(300):
        cc = sample_cube_centres(mask, 3, 8, rng=seed)
        np.add.at(total, tuple(cc.T), 1)
    valid = total[mask == 2.5]
    assert valid.sum() == 900 and total[0, 0, 0] == 0
    assert valid.min() > 110 and valid.max() < 190  # expected 150 each


def test_centres_are_seeded() -> None:
    mask = ball_mask(20, 7, (10, 10, 10))
    a = sample_cube_centres(mask, 30, 8, rng=5)
    np.testing.assert_array_equal(a, sample_cube_centres(mask, 30, 8, rng=5))
    assert not np.array_equal(a, sample_cube_centres(mask, 30, 8, rng=6))


def test_centre_sampling_errors() -> None:
    with pytest.raises(EmptyMaskError, match="the mask is zero everywhere"):
        sample_cube_centres(np.zeros((16, 16, 16)), 5, 8)
    edge_only = np.zeros((16, 16, 16))
    edge_only[0, :, :] = 1
    with pytest.raises(EmptyMaskError, match=r"no mask voxel lies where a whole 8³ cube fits"):
        sample_cube_centres(edge_only, 5, 8)
    with pytest.raises(InvalidValueError, match=r"cube_size 32 is larger than the map \(16,"):
        sample_cube_centres(np.ones((16, 16, 16)), 5, 32)
    with pytest.raises(MapShapeError, match=r"mask must be a 3D array; found shape \(16, 16\)"):
        sample_cube_centres(np.ones((16, 16)), 5, 8)
    bad = np.ones((16, 16, 16))
    bad[3, 3, 3] = np.nan
    with pytest.raises(NonFiniteMapError, match="mask contains NaN"):
        sample_cube_centres(bad, 5, 8)
    with pytest.raises(InvalidValueError, match="n_subvolume must be a positive integer; got 0"):
        sample_cube_centres(np.ones((16, 16, 16)), 0, 8)
    with pytest.raises(InvalidValueError, match=r"cube_size must be a positive integer; got 8\.0"):
        sample_cube_centres(np.ones((16, 16, 16)), 5, 8.0)


@pytest.mark.parametrize("d", [4, 5])
def test_extract_cubes_matches_slow_statement(d: int) -> None:
    rng = np.random.default_rng(d)
    vol = rng.standard_normal((12, 13, 14))
    centres = np.array([[d // 2, d // 2, d // 2], [6, 7, 8], [12 - d + d // 2, 13 - d + d // 2, 9]])
    cubes = extract_cubes(vol, centres, d)
    assert cubes.shape == (3, d, d, d) and cubes.dtype == np.float32
    for n, c in enumerate(centres):
        for i in range(d):
            for j in range(d):
                for k in range(d):
                    z, y, x = c[0] - d // 2 + i, c[1] - d // 2 + j, c[2] - d // 2 + k
                    assert cubes[n, i, j, k] == np.float32(vol[z, y, x])


def test_same_centres_cut_both_halves() -> None:
    rng = np.random.default_rng(0)
    h1 = rng.standard_normal((20, 20, 20)).astype(np.float32)
    h2 = h1 + 1.0
    c = sample_cube_centres(np.ones((20, 20, 20)), 10, 8, rng=0)
    np.testing.assert_array_equal(extract_cubes(h2, c, 8), extract_cubes(h1, c, 8) + 1.0)


def test_extract_cubes_errors() -> None:
    vol = np.zeros((10, 10, 10))
    with pytest.raises(InvalidValueError, match=r"cube centred at \[1, 5, 5\] does not fit"):
        extract_cubes(vol, np.array([[5, 5, 5], [1, 5, 5]]), 4)
    with pytest.raises(MapShapeError, match=r"centres must be an \(N, 3\) integer array"):
        extract_cubes(vol, np.array([[5.0, 5.0, 5.0]]), 4)
    with pytest.raises(MapShapeError, match="map must be a 3D array"):
        extract_cubes(np.zeros((10, 10)), np.array([[5, 5, 5]]), 4)
    with pytest.raises(InvalidValueError, match="larger than the map"):
        extract_cubes(vol, np.array([[5, 5, 5]]), 11)


def make_pairs(n: int = 10, d: int = 4, seed: int = 7) -> tuple[np.ndarray, np.ndarray, CubePairs]:
    rng = np.random.default_rng(0)
    c1 = rng.standard_normal((n, d, d, d)).astype(np.float32)
    c2 = rng.standard_normal((n, d, d, d)).astype(np.float32)
    return c1, c2, CubePairs(c1, c2, seed=seed)


def test_batches_cover_each_cube_once_with_consistent_swaps() -> None:
    c1, c2, pairs = make_pairs()
    assert len(pairs) == 10 and pairs.cube_size == 4 and pairs.paired
    batches = list(pairs.batches(epoch=0, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2] == [b.x1.shape[0] for b in batches]
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    swaps = np.concatenate([b.swapped for b in batches])
    assert swaps.any() and not swaps.all()
    for b in batches:
        assert b.x1.shape[1:] == (1, 4, 4, 4) and b.x1.dtype == torch.float32
        assert b.rotations.dtype == np.int64 and np.all((b.rotations >= 0) & (b.rotations < 24))
        for k, i in enumerate(b.indices):
            first, second = (c2[i], c1[i]) if b.swapped[k] else (c1[i], c2[i])
            np.testing.assert_array_equal(b.x1[k, 0].numpy(), first)
            np.testing.assert_array_equal(b.x2[k, 0].numpy(), second)
    assert len(list(pairs.batches(0, 4, drop_last=True))) == 2 == pairs.n_batches(4, True)


def test_batches_are_seeded_per_epoch_and_resumable() -> None:
    _, _, pairs = make_pairs(n=40)
    _, _, same = make_pairs(n=40)
    a = list(pairs.batches(3, 8))
    b = list(same.batches(3, 8))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u.x1, v.x1) and np.array_equal(u.rotations, v.rotations)
    other = list(pairs.batches(4, 8))
    assert not np.array_equal(a[0].indices, other[0].indices)
    resumed = list(pairs.batches(3, 8, start=2))
    assert len(resumed) == 3
    for u, v in zip(a[2:], resumed, strict=True):
        assert np.array_equal(u.indices, v.indices) and torch.equal(u.x2, v.x2)
    rots = np.concatenate([x.rotations for x in a] + [x.rotations for x in other])
    assert len(np.unique(rots)) > 12  # rotations are drawn per sample


def test_single_map_batches_and_no_swap() -> None:
    c1, c2, _ = make_pairs()
    single = CubePairs(c1, None, seed=1)
    assert not single.paired
    for b in single.batches(0, 3):
        assert b.x2 is None and not b.swapped.any()
        np.testing.assert_array_equal(b.x1[:, 0].numpy(), c1[b.indices])
    fixed = CubePairs(c1, c2, seed=1, swap=False)
    for b in fixed.batches(0, 5):
        np.testing.assert_array_equal(b.x1[:, 0].numpy(), c1[b.indices])
        np.testing.assert_array_equal(b.x2[:, 0].numpy(), c2[b.indices])


def test_split_into_micro_batches() -> None:
    _, _, pairs = make_pairs()
    b = next(iter(pairs.batches(0, 4)))
    parts = b.split(2)
    assert [len(p) for p in parts] == [2, 2]
    assert torch.equal(torch.cat([p.x1 for p in parts]), b.x1)
    assert torch.equal(torch.cat([p.x2 for p in parts]), b.x2)
    assert np.array_equal(np.concatenate([p.rotations for p in parts]), b.rotations)
    assert [len(p) for p in b.split(3)] == [1, 2, 1]
    assert [len(p) for p in b.split(8)] == [1, 1, 1, 1]
    moved = b.to("cpu")
    assert torch.equal(moved.x1, b.x1)


def test_cube_pairs_errors() -> None:
    c1, c2, pairs = make_pairs()
    with pytest.raises(MapMismatchError, match=r"differ in shape: \(10, 4, 4, 4\) and \(9, 4"):
        CubePairs(c1, c2[:9])
    with pytest.raises(MapShapeError, match=r"\(N, D, D, D\) array; found shape \(4, 4, 4\)"):
        CubePairs(c1[0])
    with pytest.raises(InvalidValueError, match="batch_size must be a positive integer; got 0"):
        next(pairs.batches(0, 0))
    with pytest.raises(InvalidValueError, match="acc_batches must be a positive integer"):
        next(pairs.batches(0, 2)).split(0)


def test_rotation_weights_steer_the_draw() -> None:
    """Zero-weight rotations never come; the others come about as often as weighted; all
    zero or None is the uniform draw; bad weights are refused."""
    c1 = np.zeros((3000, 2, 2, 2), dtype=np.float32)
    weights = np.zeros(24)
    weights[[5, 9, 17]] = [1.0, 2.0, 1.0]
    pairs = CubePairs(c1, None, seed=3, rotation_weights=weights)
    rots = np.concatenate([b.rotations for b in pairs.batches(0, 500)])
    counts = np.bincount(rots, minlength=24)
    assert set(np.flatnonzero(counts)) == {5, 9, 17}
    np.testing.assert_allclose(counts[[5, 9, 17]] / len(rots), [0.25, 0.5, 0.25], atol=0.04)
    uniform = CubePairs(c1, None, seed=3)
    zero = CubePairs(c1, None, seed=3, rotation_weights=np.zeros(24))
    for a, b in zip(uniform.batches(0, 500), zero.batches(0, 500), strict=True):
        np.testing.assert_array_equal(a.rotations, b.rotations)
    for bad in (np.ones(23), -np.ones(24), np.full(24, np.nan)):
        with pytest.raises(InvalidValueError, match="rotation_weights"):
            CubePairs(c1, None, rotation_weights=bad)
