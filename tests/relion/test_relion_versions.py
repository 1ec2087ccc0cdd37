"""The external-reconstruction protocol across RELION versions and job layouts.

What each version writes (``BackProjector::externalReconstruct``, src/backprojector.cpp):
3.1 ``# version 30001`` and no pixel size; 4.0 the same header plus ``rlnPixelSize`` and
``rlnParticleDiameter``; 5.x ``# version 50001`` with 4.0's labels. The jobs' data come from
``helpers.make_job``; the STAR is rewritten here as each version writes it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import make_job, write_model_star, write_sampling_star

from spisonet.relion import (
    RelionCorrection,
    RelionCorrectionSettings,
    read_external_star,
    reconstruct,
    run_external_reconstruct,
)
from spisonet.relion.runner import RELION_REFINE_MINRES_MAP

PIXEL, DIAMETER = 1.35, 180.0


def _as_version(star: Path, release: str, *, tau2_factor: float = 1.0) -> Path:
    """Rewrite ``make_job``'s (3.1) STAR as RELION ``release`` writes it; ``tau2_factor``
    scales the tau2 column (to show that its value matters)."""
    text = star.read_text()
    if release in ("4.0", "5.x"):
        text = re.sub(
            r"(_rlnCurrentImageSize\s+\d+\n)",
            rf"\1_rlnPixelSize  {PIXEL:.6f}\n_rlnParticleDiameter  {DIAMETER:.6f}\n",
            text,
        )
    if release == "5.x":
        text = text.replace("# version 30001", "# version 50001")
    if tau2_factor != 1.0:
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit():
                line = f"{parts[0]} {float(parts[1]) * tau2_factor:.12e} {parts[2]}"
            rows.append(line)
        text = "\n".join(rows) + "\n"
    star.write_text(text)
    return star


@pytest.mark.parametrize(
    ("release", "version", "pixel", "diameter"),
    [("3.1", 30001, None, None), ("4.0", 30001, PIXEL, DIAMETER), ("5.x", 50001, PIXEL, DIAMETER)],
)
def test_each_version_is_read_with_its_labels_and_version(
    tmp_path, monkeypatch, release, version, pixel, diameter
):
    monkeypatch.chdir(tmp_path)
    star = _as_version(make_job(tmp_path / "job", "run_it003_half1_class001"), release)
    job = read_external_star(star)
    assert (job.star_version, job.relion_release) == (version, release)
    assert job.pixel_size == pixel
    assert job.particle_diameter == diameter
    assert job.tau2.size == job.ori_size // 2 + 1
    # the map RELION reads back carries the STAR's pixel size when the STAR has one
    result = run_external_reconstruct(star, keep_inputs=True)
    with mrcfile.open(str(result)) as mrc:
        voxel = float(mrc.voxel_size.x)
    if pixel is not None:
        assert voxel == pytest.approx(pixel, rel=1e-6)


def test_a_star_without_a_version_line_is_read_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "run_it003_half1_class001")
    star.write_text(star.read_text().replace("# version 30001\n", ""))
    job = read_external_star(star)
    assert job.star_version is None
    assert job.relion_release == "unknown (version None)"


def test_tau2_means_the_same_in_every_version(tmp_path, monkeypatch):
    """RELION 5 divides tau2 by the mean CTF² (CTF-premultiplied data) only in a local copy
    for its data-vs-prior report, never in the tau2 it writes, so the Wiener term
    1 / (pad³ · fudge · tau2) is the same for a 3.1 and a 5.x STAR holding the same
    numbers; were 5.x's column divided by <CTF²> (here 0.25), the map would differ."""
    monkeypatch.chdir(tmp_path)
    maps = {}
    for release in ("3.1", "4.0", "5.x"):
        star = make_job(tmp_path / release.replace(".", ""), "run_it003_half1_class001", seed=4)
        maps[release] = reconstruct(read_external_star(_as_version(star, release)))
    np.testing.assert_array_equal(maps["3.1"], maps["4.0"])
    np.testing.assert_array_equal(maps["3.1"], maps["5.x"])
    star = make_job(tmp_path / "div", "run_it003_half1_class001", seed=4)
    divided = reconstruct(read_external_star(_as_version(star, "5.x", tau2_factor=1 / 0.25)))
    assert np.abs(divided - maps["5.x"]).max() > 1e-3 * np.abs(maps["5.x"]).max()


# --------------------------------------------------------------------------------------
# layouts: each job is corrected or keeps RELION's map with one logged reason


def _settings() -> RelionCorrectionSettings:
    # gates wide open: only the layout decides; a wrongly paired half would wait 20 s
    return RelionCorrectionSettings(start_healpix=0, start_resolution=1000.0, wait_timeout=20.0)


def _run(folder: Path, name: str, capsys) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Run job ``name`` with the correction; (written map, plain map, stdout, log)."""
    star = _as_version(make_job(folder, name, ori=16, pad=2), "5.x")
    # a 5.x STAR: relion_refine 4.0 and later skip the gridding correction
    plain = reconstruct(
        read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP, skip_gridding=True
    )
    start = time.perf_counter()
    run_external_reconstruct(star, correction=RelionCorrection(_settings()), keep_inputs=True)
    assert time.perf_counter() - start < 10  # decided at once, no waiting for a partner
    written = mrcfile.read(str(read_external_star(star).result))
    out = capsys.readouterr().out
    return written, plain, out, (folder / "spisonet_relion.log").read_text()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("run_it008_half1_body002", "multi-body refinement (body 002) keeps RELION's map"),
        ("run_it011_body002", "multi-body refinement (body 002) keeps RELION's map"),
        ("run_it025_class002", "3D classification (class 002) keeps RELION's map"),
        ("run_it025_class003", "3D classification (class 003) keeps RELION's map"),
        ("run_it025_half1_class002", "3D classification (class 002) keeps RELION's map"),
        ("run_it025_class001", "3D classification (no half maps in this run) keeps RELION's"),
        ("reconstruct", "reconstruct does not follow RELION's iteration naming"),
        ("run_it012_half1", "run_it012_half1 does not follow RELION's iteration naming"),
    ],
)
def test_layouts_not_corrected_keep_relions_map_with_one_reason(
    tmp_path, monkeypatch, capsys, name, reason
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    written, plain, out, log = _run(folder, name, capsys)
    np.testing.assert_array_equal(written, plain)
    for text in (out, log):
        (line,) = [ln for ln in text.splitlines() if f"{name}: plain map (" in ln]
        assert reason in line, line
        assert "correction failed" not in text
    assert not list(folder.glob("*_spisonet.*"))  # no rendezvous or model files left


def test_last_joined_iteration_of_an_auto_refine_is_still_told_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    make_job(folder, "run_it016_half1_class001")  # the run's earlier halves
    write_sampling_star(folder / "run_it016_sampling.star", 3)
    write_model_star(folder / "run_it016_half1_model.star", 2.0)
    written, plain, out, _ = _run(folder, "run_it017_class001", capsys)
    np.testing.assert_array_equal(written, plain)
    assert "last joined iteration keeps RELION's map" in out
    assert "3D classification" not in out
