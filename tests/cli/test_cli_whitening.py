"""``spisonet whitening``: the same map as :func:`spisonet.maps.whiten`, the voxel size
kept, the default output name next to the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_APIX, invoke, simulated_maps

from spisonet.io import read_map
from spisonet.maps import whiten


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return simulated_maps(tmp_path_factory.mktemp("maps"))


def test_whitening_command(maps, tmp_path) -> None:
    out = tmp_path / "white.mrc"
    invoke(
        "whitening", maps["gt"], "-o", out, "--mask", maps["mask"], "--low-res", 10, "--high_res", 4
    )
    got = read_map(out)
    gt, mask = read_map(maps["gt"]).data, read_map(maps["mask"]).data
    expected = whiten(gt, CLI_APIX, mask=mask, low_res=10, high_res=4)
    np.testing.assert_allclose(got.data, expected, rtol=1e-6, atol=1e-6)
    assert got.voxel_size == pytest.approx(CLI_APIX, rel=1e-5)
    # default output name next to the input
    invoke("whitening", maps["gt"])
    assert (maps["gt"].parent / "gt_whitened.mrc").exists()


@pytest.mark.parametrize("spelling", ["--output-map", "--output_map", "--o"])
def test_whitening_output_spellings(maps, tmp_path, spelling) -> None:
    out = tmp_path / "w.mrc"
    invoke("whitening", maps["gt"], spelling, out)
    assert read_map(out).data.shape == (32, 32, 32)
