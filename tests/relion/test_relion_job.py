"""The job RELION hands us (spisonet.relion.job): reading its STAR, one failure mode per
test, its Fourier files, the current resolution from its FSC column, the STAR we write
back. Jobs are written in RELION's format by ``helpers.make_job``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import make_job

from spisonet.errors import InvalidValueError, MapShapeError, StarFormatError
from spisonet.relion import (
    ExternalReconstructJob,
    current_resolution,
    read_external_star,
    reconstruct,
    write_result_star,
)

# --------------------------------------------------------------------------------------
# Reading the STAR


def test_read_external_star_fields_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(
        tmp_path / "Refine_3d",
        "my_run_v2_it012_half2_class001",
        ori=12,
        pad=2,
        current=8,
        fudge=4.0,
    )
    job = read_external_star(star)
    assert (job.ori_size, job.current_size, job.padding_factor, job.tau2_fudge) == (12, 8, 2, 4)
    assert job.ref_dim == 3 and job.pixel_size is None
    assert job.data_real == tmp_path / "Refine_3d" / star.name.replace(".star", "_data_real.mrc")
    assert job.result.parent == tmp_path / "Refine_3d"
    assert job.result_star is not None and job.result_star.name.endswith("_out.star")
    assert job.tau2.shape == (7,) and job.fsc is not None and job.fsc[0] == 1.0
    assert job.spectral_index.tolist() == list(range(7))
    assert job.name == "my_run_v2_it012_half2_class001"
    assert job.labels["rlnOriginalImageSize"] == "12"


def test_paths_fall_back_to_the_star_folder(tmp_path, monkeypatch):
    star = make_job(tmp_path / "job", ori=8, pad=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the STAR's relative paths do not resolve from here
    job = read_external_star(star)
    assert job.weight.exists() and job.weight.parent == star.parent
    assert job.result.parent == star.parent


def test_missing_star(tmp_path):
    with pytest.raises(StarFormatError, match="STAR file not found"):
        read_external_star(tmp_path / "nope.star")


def test_corrupt_star(tmp_path):
    bad = tmp_path / "bad.star"
    bad.write_bytes(b"\x00\xff garbage\nloop_\n_rlnA #1\n_rlnB #2\n1\n")
    with pytest.raises(StarFormatError, match=r"bad\.star"):
        read_external_star(bad)


def test_missing_general_block(tmp_path):
    star = tmp_path / "x.star"
    star.write_text("data_other\n\nloop_\n_rlnSpectralIndex #1\n0\n1\n")
    with pytest.raises(StarFormatError, match="no 'external_reconstruct_general' block"):
        read_external_star(star)


def test_missing_label(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", labels_drop=("rlnPaddingFactor",))
    with pytest.raises(StarFormatError, match="lacks rlnPaddingFactor"):
        read_external_star(star)


def test_non_numeric_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    star.write_text(
        star.read_text().replace("_rlnOriginalImageSize  16", "_rlnOriginalImageSize  big")
    )
    with pytest.raises(StarFormatError, match="rlnOriginalImageSize is 'big', expected a number"):
        read_external_star(star)


def test_missing_tau2_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    text = star.read_text()
    star.write_text(text[: text.index("# version 30001", 10)])
    with pytest.raises(StarFormatError, match="no 'external_reconstruct_tau2' block"):
        read_external_star(star)


def test_padding_below_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    star.write_text(
        star.read_text().replace("_rlnPaddingFactor  2.000000", "_rlnPaddingFactor  0.5")
    )
    with pytest.raises(InvalidValueError, match=r"rlnPaddingFactor is 0\.5, expected >= 1"):
        read_external_star(star)


def test_wrong_padded_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=2, padded_size=18)
    job = read_external_star(star)
    with pytest.raises(MapShapeError, match=r"padded size 18, expected ROUND\(pad \* box\) = 16"):
        reconstruct(job)


def test_write_result_star_roundtrip(tmp_path):
    import starfile

    path = write_result_star(tmp_path / "o.star", np.arange(4), fsc=np.array([1, 0.9, 0.5, 0.1]))
    table = starfile.read(path)
    assert table["rlnSpectralIndex"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(table["rlnFourierShellCorrelation"], [1, 0.9, 0.5, 0.1])
    with pytest.raises(InvalidValueError, match="exactly one of tau2 or fsc"):
        write_result_star(tmp_path / "p.star", np.arange(2))


# --------------------------------------------------------------------------------------
# The current resolution


def _slow_resolution(fsc: np.ndarray, box: int, pixel: float) -> float:
    for s in range(1, len(fsc)):
        if fsc[s] < 0.143:
            return box * pixel / s
    return 2 * pixel


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_current_resolution_from_fsc_column(tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", f"r_it00{seed + 1}_half1_class001", ori=24, pad=1)
    rng = np.random.default_rng(seed)
    fsc = np.clip(np.cos(np.linspace(0, 2.5, 13)) + 0.1 * rng.standard_normal(13), -0.2, 1)
    fsc[0] = 1.0
    text = star.read_text().splitlines()
    head = text[: text.index("_rlnGoldStandardFsc #3") + 1]
    rows = [f"{i:6d} 1.0e-3 {f:.6f}" for i, f in enumerate(fsc)]
    star.write_text("\n".join(head + rows) + "\n\n")
    job = read_external_star(star)
    assert current_resolution(job, 1.3) == pytest.approx(_slow_resolution(fsc, 24, 1.3))


def test_current_resolution_structured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = read_external_star(make_job(tmp_path / "j", ori=16, pad=1))
    # make_job's FSC is linspace(1, 0, 9): 0.125 at shell 7 is the first below 0.143
    assert current_resolution(job, 2.0) == pytest.approx(16 * 2.0 / 7)
    never = ExternalReconstructJob(**{**job.__dict__, "fsc": np.ones(9)})
    assert current_resolution(never, 2.0) == pytest.approx(4.0)  # Nyquist
    none = ExternalReconstructJob(**{**job.__dict__, "fsc": None})
    assert math.isinf(current_resolution(none, 2.0))
