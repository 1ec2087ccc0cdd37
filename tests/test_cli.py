"""The CLI: each command runs on small simulated maps, writes what it says, keeps the
voxel size, accepts the public tool's spellings; user errors exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spisonet.anisotropy import analyse_anisotropy
from spisonet.cli import app
from spisonet.io import read_map, write_map
from spisonet.maps import combine_map, whiten
from spisonet.simulate import make_molecule, simulate_half_maps

APIX = 1.7
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    """Simulated 32³ half maps, mask and ground truth at 1.7 Å/voxel."""
    d = simulate_half_maps(make_molecule(32, APIX, seed=0), APIX, "tilt:20+uniform:0.1", 1000)
    folder = tmp_path_factory.mktemp("maps")
    paths = {}
    for name in ("half1", "half2", "mask", "gt"):
        paths[name] = folder / f"{name}.mrc"
        write_map(paths[name], getattr(d, name), voxel_size=APIX)
    small = folder / "small.mrc"
    write_map(small, np.zeros((24, 24, 24), np.float32) + 1, voxel_size=APIX)
    paths["small"] = small
    return paths


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def run_module(*args, cwd: Path) -> subprocess.CompletedProcess:
    # rich wraps the red error line at the console width (80 when not a terminal);
    # a wide COLUMNS keeps the message on the one line main() prints
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run(
        [sys.executable, "-m", "spisonet", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env=env,
    )


# --------------------------------------------------------------------------- fsc3d
def test_fsc3d_writes_map_with_the_inputs_voxel_size(maps, tmp_path) -> None:
    out = tmp_path / "FSC3D.mrc"
    invoke("fsc3d", maps["half1"], maps["half2"], "--mask", maps["mask"], "-o", out)
    m = read_map(out)
    assert m.voxel_size == pytest.approx(APIX, rel=1e-5)
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
    assert data["voxel_size_A"] == pytest.approx(APIX)
    assert data["n_directions"] == 500 and data["cone_angle_deg"] == 20.0
    assert data["inputs"]["mask"].endswith("mask.mrc")
    # the same figures as the API on the same inputs
    h1, h2, m = (read_map(maps[k]).data for k in ("half1", "half2", "mask"))
    rep = analyse_anisotropy(h1, h2, APIX, mask=m)
    assert data["area_ratio"] == pytest.approx(rep.area_ratio, rel=1e-9)
    assert data["global_resolution_0143_A"] == pytest.approx(rep.global_fsc.resolution_0143)
    assert "sphericity" in text and "worst direction" in text and "area ratio" in text


# --------------------------------------------------------------------------- anisotropy
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
    rep = analyse_anisotropy(h1, h2, APIX, mask=m, n_directions=120, cone_angle_deg=25.0)
    assert data["sphericity"] == pytest.approx(rep.sphericity, rel=1e-9, nan_ok=True)
    assert data["worst_direction"]["vector_xyz"] == pytest.approx(list(rep.worst_direction))
    assert "global resolution" in text
    assert not list(tmp_path.glob("diag/*.mrc"))  # diagnostics only


# --------------------------------------------------------------------------- fsd3d
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


# --------------------------------------------------------------------------- map tools
def test_whitening_command(maps, tmp_path) -> None:
    out = tmp_path / "white.mrc"
    invoke(
        "whitening", maps["gt"], "-o", out, "--mask", maps["mask"], "--low-res", 10, "--high_res", 4
    )
    got = read_map(out)
    gt, mask = read_map(maps["gt"]).data, read_map(maps["mask"]).data
    expected = whiten(gt, APIX, mask=mask, low_res=10, high_res=4)
    np.testing.assert_allclose(got.data, expected, rtol=1e-6, atol=1e-6)
    assert got.voxel_size == pytest.approx(APIX, rel=1e-5)
    # default output name next to the input
    invoke("whitening", maps["gt"])
    assert (maps["gt"].parent / "gt_whitened.mrc").exists()


@pytest.mark.parametrize("name", ["combine-map", "combine_map"])
def test_combine_map_command(maps, tmp_path, name) -> None:
    out = tmp_path / f"{name}.mrc"
    invoke(name, maps["half1"], maps["gt"], out, 8.0, "--mask", maps["mask"])
    got = read_map(out)
    lo, hi, m = (read_map(maps[k]).data for k in ("half1", "gt", "mask"))
    np.testing.assert_allclose(got.data, combine_map(lo, hi, 8.0, APIX, mask=m), atol=1e-6)
    assert got.voxel_size == pytest.approx(APIX, rel=1e-5)


def test_combine_map_alias_is_hidden() -> None:
    result = runner.invoke(app, ["--help"])
    assert "combine-map" in result.output
    assert "combine_map" not in result.output


# --------------------------------------------------------------------------- errors
def _one_error_line(proc: subprocess.CompletedProcess, name: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and name in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_map_exits_2_naming_the_file(maps, tmp_path) -> None:
    proc = run_module("anisotropy", "nothere_half1.mrc", maps["half2"], cwd=tmp_path)
    _one_error_line(proc, "nothere_half1.mrc")


def test_mismatched_maps_exit_2_naming_the_file(maps, tmp_path) -> None:
    proc = run_module("combine-map", maps["half1"], maps["small"], "o.mrc", 8, cwd=tmp_path)
    _one_error_line(proc, "small.mrc")
    assert not (tmp_path / "o.mrc").exists()


def test_star_without_angles_exits_2_naming_the_file(tmp_path) -> None:
    star = tmp_path / "noangles.star"
    star.write_text("\ndata_particles\n\nloop_\n_rlnImageName #1\n000001@p.mrcs\n")
    proc = run_module("fsd3d", star, "--box", 16, "--apix", 1.0, cwd=tmp_path)
    _one_error_line(proc, "noangles.star")


def test_bad_value_exits_2(maps, tmp_path) -> None:
    proc = run_module(
        "whitening", maps["gt"], "-o", "w.mrc", "--low-res", 3, "--high-res", 10, cwd=tmp_path
    )
    _one_error_line(proc, "low_res")


def test_help_does_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, spisonet.cli; sys.exit('torch' in sys.modules)"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom spisonet.cli import main\nsys.argv = ['spisonet', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "anisotropy" in proc.stdout and "fsd3d" in proc.stdout


def test_demo_without_correction_writes_and_reports_its_outputs(tmp_path) -> None:
    out = tmp_path / "demo"
    output = invoke("demo", "--out", out, "--no-correct")
    for name in ("gt.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "FSC3D.mrc"):
        assert (out / name).exists(), name
    assert "Outputs are in" in output
    assert "along z" in output  # the directional summary table


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_with_the_tiny_preset(tmp_path) -> None:
    out = tmp_path / "demo"
    output = invoke("demo", "--out", out, "--preset", "tiny", "--epochs", "1")
    assert any(p.name.startswith("corrected_") for p in out.rglob("*.mrc")), output
    assert any(p.suffix == ".png" for p in out.rglob("*.png"))


def test_demo_data_has_a_real_missing_cone(tmp_path) -> None:
    """The demo must show the method where it matters: the raw data's cone around the
    view axis is empty (not merely thinner), while the best direction is well measured."""
    from spisonet.correct import ground_truth_metrics

    out = tmp_path / "demo"
    invoke("demo", "--out", out, "--no-correct")
    gt, h1, h2, mask = (read_map(out / f"{k}.mrc") for k in ("gt", "half1", "half2", "mask"))
    raw = {"raw": 0.5 * (h1.data + h2.data)}
    m = ground_truth_metrics(gt.data, raw, gt.voxel_size, mask.data, n_directions=50)["raw"]
    assert m["cone_mean"] < 0.2, m["cone_mean"]  # mean FSC with the truth in the 20° cone
    assert m["res05_best"] < 8.0 < m["res05_worst"], (m["res05_best"], m["res05_worst"])


@pytest.mark.parametrize(
    "bad",
    [["--preset", "fast"], ["--epochs", "-1"], ["--seed", "-3"], ["--out", "a_file.txt"]],
)
def test_demo_checks_its_options_before_simulating(tmp_path, monkeypatch, bad) -> None:
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("not a folder")
    args = ["--out", "demo_out", *bad] if bad[0] != "--out" else bad
    t0 = time.perf_counter()
    result = runner.invoke(app, ["demo", *args])
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 2, (result.output, result.exception)
    assert bad[0] in result.output  # the message names the option
    assert elapsed < 3.0, elapsed  # well under a second when quiet; simulating takes > 10 s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt"]  # nothing written
