"""``spisonet fsc3d``: writes the 3D FSC with the inputs' voxel size, takes both spellings
of --limit-res, and with --report also the anisotropy report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_APIX, invoke, simulated_maps

from spisonet.anisotropy import analyse_anisotropy
from spisonet.io import read_map

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return simulated_maps(tmp_path_factory.mktemp("maps"))


def test_fsc3d_writes_map_with_the_inputs_voxel_size(maps, tmp_path) -> None:
    out = tmp_path / "FSC3D.mrc"
    invoke("fsc3d", maps["half1"], maps["half2"], "--mask", maps["mask"], "-o", out)
    m = read_map(out)
    assert m.voxel_size == pytest.approx(CLI_APIX, rel=1e-5)
    assert m.data.shape == (32, 32, 32)
    assert np.all(m.data <= 1.0 + 1e-6)
    assert not (tmp_path / "FSC3D_report.png").exists()  # only with --report


def test_fsc3d_limit_res_both_spellings(maps, tmp_path) -> None:
    a, b = tmp_path / "a.mrc", tmp_path / "b.mrc"
    invoke("fsc3d", maps["half1"], maps["half2"], maps["mask"], "-o", a, "--limit_res", 6.0)
    invoke("fsc3d", maps["half1"], maps["half2"], maps["mask"], "-o", b, "--limit-res", 6.0)
    np.testing.assert_array_equal(read_map(a).data, read_map(b).data)
    # the limit matters: without it the default (0.143 rule) gives a different map
    c = tmp_path / "c.mrc"
    invoke("fsc3d", maps["half1"], maps["half2"], maps["mask"], "-o", c, "--limit-res", 12.0)
    assert not np.array_equal(read_map(a).data, read_map(c).data)


def test_fsc3d_report_writes_png_and_json(maps, tmp_path) -> None:
    out = tmp_path / "sub" / "run1.mrc"
    text = invoke(
        "fsc3d", maps["half1"], maps["half2"], "--mask", maps["mask"], "-o", out, "--report"
    )
    assert read_map(out).data.shape == (32, 32, 32)
    png = tmp_path / "sub" / "run1_report.png"
    js = tmp_path / "sub" / "run1_report.json"
    assert png.read_bytes()[:8] == PNG_MAGIC
    data = json.loads(js.read_text())
    assert data["box"] == 32
    assert data["voxel_size_A"] == pytest.approx(CLI_APIX)
    assert data["n_directions"] == 500 and data["cone_angle_deg"] == 20.0
    assert data["inputs"]["mask"].endswith("mask.mrc")
    # the same figures as the API on the same inputs
    h1, h2, m = (read_map(maps[k]).data for k in ("half1", "half2", "mask"))
    rep = analyse_anisotropy(h1, h2, CLI_APIX, mask=m)
    assert data["area_ratio"] == pytest.approx(rep.area_ratio, rel=1e-9)
    assert data["global_resolution_0143_A"] == pytest.approx(rep.global_fsc.resolution_0143)
    assert "sphericity" in text and "worst direction" in text and "area ratio" in text


def test_fsc3d_mask_as_argument_or_option_but_not_two_different(maps, tmp_path) -> None:
    from typer.testing import CliRunner

    from spisonet.cli import app
    from spisonet.errors import InvalidValueError

    args = ["fsc3d", maps["half1"], maps["half2"], maps["mask"], "--mask", maps["gt"]]
    result = CliRunner().invoke(app, [*map(str, args), "-o", str(tmp_path / "x.mrc")])
    assert isinstance(result.exception, InvalidValueError)
    assert "two different masks" in str(result.exception)
    assert not (tmp_path / "x.mrc").exists()
