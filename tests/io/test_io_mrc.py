"""spisonet.io.mrc: reading/writing MRC maps and one test per input error."""

from __future__ import annotations

import os
import warnings

import mrcfile
import numpy as np
import pytest

from spisonet.errors import (
    EmptyMaskError,
    MapFormatError,
    MapMismatchError,
    MapNotFoundError,
    MapShapeError,
    NonFiniteMapError,
    SpisonetError,
    VoxelSizeError,
)
from spisonet.io import Map, check_half_maps, check_mask, read_map, write_map


def _write_raw(path, data, voxel=1.5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns on NaN stats
        _write_raw_unchecked(path, data, voxel)


def _write_raw_unchecked(path, data, voxel):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)],
)
def test_reads_every_supported_mode_as_float32(tmp_path, dtype, mode):
    data = (np.arange(4 * 4 * 4) % 50).reshape(4, 4, 4).astype(dtype)
    path = tmp_path / f"m{mode}.mrc"
    _write_raw(path, data, voxel=2.25)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == mode
    m = read_map(path)
    assert m.data.dtype == np.float32
    np.testing.assert_array_equal(m.data, data.astype(np.float32))
    assert m.voxel_size == pytest.approx(2.25)


def test_write_keeps_voxel_size_and_origin_and_is_float32(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 6, 6)).astype(np.float64)
    path = tmp_path / "out.mrc"
    write_map(path, data, voxel_size=1.7, origin=(10.0, -5.0, 2.5))
    m = read_map(path)
    assert m.data.dtype == np.float32
    np.testing.assert_allclose(m.data, data.astype(np.float32))
    assert m.voxel_size == pytest.approx(1.7)
    assert m.origin == pytest.approx((10.0, -5.0, 2.5))
    # a Map round-trips with its own sampling
    write_map(tmp_path / "again.mrc", m)
    m2 = read_map(tmp_path / "again.mrc")
    assert m2.voxel_size == pytest.approx(1.7) and m2.origin == pytest.approx(m.origin)


def test_zero_voxel_size_is_an_error_unless_given(tmp_path):
    path = tmp_path / "zero.mrc"
    _write_raw(path, np.ones((4, 4, 4), np.float32), voxel=0.0)
    with pytest.raises(VoxelSizeError, match=r"zero\.mrc: the header's voxel size is 0 Å.*--apix"):
        read_map(path)
    assert read_map(path, voxel_size=1.3).voxel_size == pytest.approx(1.3)


def test_missing_file(tmp_path):
    with pytest.raises(MapNotFoundError, match=r"nothere\.mrc: file not found"):
        read_map(tmp_path / "nothere.mrc")


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "text.mrc"
    path.write_bytes(b"this is not a map\n" * 3)
    with pytest.raises(MapFormatError, match=r"text\.mrc: not .*MRC"):
        read_map(path)


def test_truncated_mrc(tmp_path):
    path = tmp_path / "cut.mrc"
    _write_raw(path, np.ones((8, 8, 8), np.float32))
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(MapFormatError, match=r"cut\.mrc: .*truncated"):
        read_map(path)


def test_non_cubic_map(tmp_path):
    path = tmp_path / "slab.mrc"
    _write_raw(path, np.ones((4, 6, 6), np.float32))
    with pytest.raises(MapShapeError, match=r"slab\.mrc: expected a cubic 3D map .*\(4, 6, 6\)"):
        read_map(path)


def test_nan_values(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = tmp_path / "nan.mrc"
    _write_raw(path, data)
    with pytest.raises(NonFiniteMapError, match=r"nan\.mrc: contains 2 NaN or infinite"):
        read_map(path)


def test_half_maps_of_different_shape():
    a = Map(np.zeros((4, 4, 4), np.float32), 1.0, path="h1.mrc")
    b = Map(np.zeros((6, 6, 6), np.float32), 1.0, path="h2.mrc")
    with pytest.raises(MapMismatchError, match=r"h2\.mrc: shape \(6, 6, 6\) differs from h1\.mrc"):
        check_half_maps(a, b)


def test_half_maps_of_different_voxel_size():
    a = Map(np.zeros((4, 4, 4), np.float32), 1.0, path="h1.mrc")
    b = Map(np.zeros((4, 4, 4), np.float32), 1.2, path="h2.mrc")
    with pytest.raises(
        MapMismatchError, match=r"voxel size 1\.2000 Å differs from h1\.mrc 1\.0000"
    ):
        check_half_maps(a, b)


def test_mask_of_wrong_shape():
    m = Map(np.ones((5, 5, 5), np.float32), 1.0, path="mask.mrc")
    ref = Map(np.zeros((4, 4, 4), np.float32), 1.0, path="h1.mrc")
    with pytest.raises(MapMismatchError, match=r"mask\.mrc: mask shape \(5, 5, 5\) differs"):
        check_mask(m, ref)


def test_empty_mask():
    m = Map(np.zeros((4, 4, 4), np.float32), 1.0, path="mask.mrc")
    ref = Map(np.zeros((4, 4, 4), np.float32), 1.0, path="h1.mrc")
    with pytest.raises(EmptyMaskError, match=r"mask\.mrc: mask is zero everywhere"):
        check_mask(m, ref)


def test_every_error_is_a_spisonet_error():
    for cls in (
        MapNotFoundError,
        MapFormatError,
        MapShapeError,
        MapMismatchError,
        NonFiniteMapError,
        EmptyMaskError,
    ):
        assert issubclass(cls, SpisonetError)
