"""``spisonet fsd3d``: the sampling density of top views, its report, the public tool's
spellings and the symmetry option; a cryoSPARC ``.cs`` file gives the same map as the
STAR file of the same orientations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke, one_error_line, run_module
from scipy.spatial.transform import Rotation

from spisonet.io import read_map

APIX = 1.7
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _star_31(path: Path, angles: np.ndarray, decimals: int = 4) -> None:
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
    d = decimals
    lines += [
        f"{i + 1:06d}@p.mrcs {r:.{d}f} {t:.{d}f} {p:.{d}f} 1" for i, (r, t, p) in enumerate(angles)
    ]
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


def _cs(path: Path, poses: np.ndarray | None, fields=()) -> Path:
    """A cryoSPARC particles .cs (np.save of a structured array) with ``poses`` (N, 3) rad."""
    n = 4 if poses is None else poses.shape[0]
    dtype = [("uid", "<u8"), ("blob/psize_A", "<f4"), ("alignments3D/shift", "<f4", (2,))]
    if poses is not None:
        dtype.append(("alignments3D/pose", "<f4", (3,)))
    a = np.zeros(n, dtype=[*dtype, *fields])
    a["uid"] = np.arange(n)
    a["blob/psize_A"] = APIX
    if poses is not None:
        a["alignments3D/pose"] = poses
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, a, allow_pickle=False)
    return path


def test_fsd3d_cryosparc_equals_star(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n = 300
    # a preferred orientation: most views within 25° of the top, a few anywhere
    tilt = np.where(rng.uniform(size=n) < 0.8, rng.uniform(0, 25, n), rng.uniform(0, 180, n))
    angles = np.stack([rng.uniform(-180, 180, n), tilt, rng.uniform(-180, 180, n)], axis=1)
    # RELION's A(rot, tilt, psi) = Rz(-psi)·Ry(-tilt)·Rz(-rot) and cryoSPARC's R(p) = Aᵀ
    # = Rz(rot)·Ry(tilt)·Rz(psi): scipy's intrinsic ZYZ (docs/cli.md, spisonet.io.cryosparc)
    poses = Rotation.from_euler("ZYZ", angles, degrees=True).as_rotvec().astype(np.float32)
    cs = _cs(tmp_path / "J12_particles.cs", poses)
    # the STAR file holds the orientations the float32 poses hold, to 1e-10°
    exact = Rotation.from_rotvec(poses.astype(np.float64)).as_euler("ZYZ", degrees=True)
    star = tmp_path / "J12_particles.star"
    _star_31(star, exact, decimals=10)
    for src, out in ((cs, "cs.mrc"), (star, "star.mrc")):
        invoke("fsd3d", src, "--box", 32, "--apix", APIX, "-o", tmp_path / out, "--sym", "C2")
    from_cs, from_star = read_map(tmp_path / "cs.mrc").data, read_map(tmp_path / "star.mrc").data
    assert from_cs.max() == 1.0 and 0 < from_cs.mean() < 1
    np.testing.assert_array_equal(from_cs, from_star)
    js_cs = json.loads((tmp_path / "cs_report.json").read_text())
    js_star = json.loads((tmp_path / "star_report.json").read_text())
    assert js_cs["star"] == str(cs) and js_cs["n_particles"] == n
    assert js_cs["directions"] == js_star["directions"]
    assert js_cs["scf"] == js_star["scf"]


def _pickled(path: Path) -> Path:
    objects = np.empty(3, dtype=object)
    objects[:] = [{"pose": (0, 0, 0)}] * 3
    with open(path, "wb") as fh:
        np.save(fh, objects, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: _cs(p, None), "no alignments3D/pose field"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "corrupt .cs header"),
        (_pickled, "holds Python objects (pickled data"),
    ],
    ids=["no-pose", "corrupt", "pickled"],
)
def test_fsd3d_bad_cs_is_one_error_line(tmp_path, make, words) -> None:
    bad = tmp_path / "bad_particles.cs"
    make(bad)
    proc = run_module("fsd3d", bad, "--box", 16, "--apix", APIX, "-o", "f.mrc", cwd=tmp_path)
    one_error_line(proc, "bad_particles.cs")
    assert words in proc.stderr
    assert not (tmp_path / "f.mrc").exists()
