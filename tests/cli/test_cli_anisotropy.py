"""``spisonet anisotropy``: the diagnostics only, the same figures as the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CLI_APIX, invoke, simulated_maps

from spisonet.anisotropy import analyse_anisotropy
from spisonet.io import read_map

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return simulated_maps(tmp_path_factory.mktemp("maps"))


def test_anisotropy_command(maps, tmp_path) -> None:
    prefix = tmp_path / "diag" / "job7"
    text = invoke(
        "anisotropy",
        maps["half1"],
        maps["half2"],
        "--mask",
        maps["mask"],
        "-o",
        prefix,
        "--n-directions",
        120,
        "--cone-angle",
        25,
    )
    assert (tmp_path / "diag" / "job7_report.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((tmp_path / "diag" / "job7_report.json").read_text())
    assert data["n_directions"] == 120 and data["cone_angle_deg"] == 25.0
    assert len(data["directions"]["tilt_deg"]) == 120
    h1, h2, m = (read_map(maps[k]).data for k in ("half1", "half2", "mask"))
    rep = analyse_anisotropy(h1, h2, CLI_APIX, mask=m, n_directions=120, cone_angle=25.0)
    assert data["sphericity"] == pytest.approx(rep.sphericity, rel=1e-9, nan_ok=True)
    assert data["worst_direction"]["vector_xyz"] == pytest.approx(list(rep.worst_direction))
    assert "global resolution" in text
    assert not list(tmp_path.glob("diag/*.mrc"))  # diagnostics only


def test_anisotropy_public_spellings(maps, tmp_path) -> None:
    invoke(
        "anisotropy", maps["half1"], maps["half2"], "--o", tmp_path / "p",
        "--n_directions", 60, "--cone_angle", 30,
    )  # fmt: skip
    data = json.loads((tmp_path / "p_report.json").read_text())
    assert data["n_directions"] == 60 and data["cone_angle_deg"] == 30.0
