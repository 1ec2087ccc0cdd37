"""``spisonet fsd3d``: the sampling density of top views, its report, the public tool's
spellings and the symmetry option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from spisonet.io import read_map

APIX = 1.7
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _star_31(path: Path, angles: np.ndarray) -> None:
    lines = [
        "",
        "data_optics",
        "",
        "loop_",
        "_rlnOpticsGroup #1",
        "_rlnImagePixelSize #2",
        "1 1.7",
        "",
        "data_particles",
        "",
        "loop_",
        "_rlnImageName #1",
        "_rlnAngleRot #2",
        "_rlnAngleTilt #3",
        "_rlnAnglePsi #4",
        "_rlnOpticsGroup #5",
    ]
    lines += [f"{i + 1:06d}@p.mrcs {r:.4f} {t:.4f} {p:.4f} 1" for i, (r, t, p) in enumerate(angles)]
    path.write_text("\n".join(lines) + "\n")


def test_fsd3d_command_top_views(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    angles = np.stack(
        [rng.uniform(-180, 180, n), rng.uniform(0, 5, n), rng.uniform(-180, 180, n)], axis=1
    )
    star = tmp_path / "top.star"
    _star_31(star, angles)
    out = tmp_path / "FSD3D.mrc"
    text = invoke("fsd3d", star, "--box", 32, "--apix", APIX, "-o", out, "--sym", "C1")
    m = read_map(out)
    assert m.voxel_size == pytest.approx(APIX, rel=1e-5)
    assert m.data.shape == (32, 32, 32)
    k = np.arange(32) - 16
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    band = (r >= 4) & (r <= 16)
    equator = band & (np.abs(kz) <= 1)
    off = band & (np.abs(kz) >= 0.5 * r)
    assert m.data[equator].mean() > 50 * max(m.data[off].mean(), 1e-6)
    assert (tmp_path / "FSD3D_report.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((tmp_path / "FSD3D_report.json").read_text())
    assert data["n_particles"] == n and data["group_order"] == 1
    assert len(data["scf"]["value"]) == 17
    assert "particles" in text
    # the public tool's spellings and the symmetry option
    out4 = tmp_path / "c4.mrc"
    invoke(
        "fsd3d",
        star,
        "--map_dim",
        32,
        "--apix",
        APIX,
        "--o",
        out4,
        "--sym",
        "C4",
        "--low_res",
        20,
        "--high_res",
        4,
    )
    d4 = read_map(out4).data
    assert np.all(d4[r <= 32 * APIX / 20] == 1.0)
    assert np.all(d4[r > 32 * APIX / 4 + 0.5] == 0.0)
