"""``spisonet combine-map`` (and its hidden alias ``combine_map``): the same map as
:func:`spisonet.maps.combine_map`, with HIGH_MAP's voxel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_APIX, invoke, simulated_maps
from typer.testing import CliRunner

from spisonet.cli import app
from spisonet.io import read_map
from spisonet.maps import combine_map


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return simulated_maps(tmp_path_factory.mktemp("maps"))


@pytest.mark.parametrize("name", ["combine-map", "combine_map"])
def test_combine_map_command(maps, tmp_path, name) -> None:
    out = tmp_path / f"{name}.mrc"
    invoke(name, maps["half1"], maps["gt"], out, 8.0, "--mask", maps["mask"])
    got = read_map(out)
    lo, hi, m = (read_map(maps[k]).data for k in ("half1", "gt", "mask"))
    np.testing.assert_allclose(got.data, combine_map(lo, hi, 8.0, CLI_APIX, mask=m), atol=1e-6)
    assert got.voxel_size == pytest.approx(CLI_APIX, rel=1e-5)


def test_combine_map_alias_is_hidden() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "combine-map" in result.output
    assert "combine_map" not in result.output
