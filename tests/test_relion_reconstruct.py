"""RELION external reconstruction: our map vs a slow statement of RELION's steps, and vs
RELION 3.1's own ``relion_external_reconstruct`` where it is installed."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.special

from spisonet import relion
from spisonet.errors import InvalidValueError, MapShapeError, StarFormatError

HAVE_RELION = shutil.which("relion_external_reconstruct") is not None


# --------------------------------------------------------------------------------------
# Writing jobs in RELION's own format (what BackProjector::externalReconstruct writes)


def _hermitian(a: np.ndarray) -> np.ndarray:
    """Make the x = 0 (and even-size Nyquist) planes Hermitian, as RELION's data are."""
    p = a.shape[0]
    idx = (-np.arange(p)) % p
    for x in [0] + ([p // 2] if p % 2 == 0 else []):
        plane = a[:, :, x]
        a[:, :, x] = 0.5 * (plane + np.conj(plane[idx][:, idx]))
    return a


def _write_mrc(path: Path, array: np.ndarray) -> None:
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(array, dtype=np.float32))


def make_job(
    folder: Path,
    root: str = "run_ab_it003_half1_class001",
    *,
    ori: int = 16,
    pad: float = 2,
    current: int | None = None,
    seed: int = 0,
    fudge: float = 1.0,
    tau2_scale: float = 1.0,
    tau2_zero_from: int | None = None,
    weight_floor: float = 0.5,
    labels_drop: tuple[str, ...] = (),
    padded_size: int | None = None,
) -> Path:
    """Random Hermitian data and weights (rfftn of real maps) plus a tau2 table."""
    rng = np.random.default_rng(seed)
    current = ori if current is None else current
    p = int(math.floor(pad * ori + 0.5)) if padded_size is None else padded_size
    folder.mkdir(parents=True, exist_ok=True)
    data = _hermitian(np.fft.rfftn(rng.standard_normal((p, p, p))))
    weight = _hermitian(
        (weight_floor + np.abs(np.fft.rfftn(rng.standard_normal((p, p, p)))) ** 2 / p**3).astype(
            complex
        )
    ).real
    prefix = f"{root}_external_reconstruct"
    _write_mrc(folder / f"{prefix}_data_real.mrc", data.real)
    _write_mrc(folder / f"{prefix}_data_imag.mrc", data.imag)
    _write_mrc(folder / f"{prefix}_weight.mrc", weight)
    shells = ori // 2 + 1
    tau2 = tau2_scale * np.exp(-np.arange(shells) / 4.0) * (1 + 0.2 * rng.random(shells))
    if tau2_zero_from is not None:
        tau2[tau2_zero_from:] = 0.0
    fsc = np.linspace(1.0, 0.0, shells)
    rel = folder.name
    general = {
        "rlnExtReconsDataReal": f"{rel}/{prefix}_data_real.mrc",
        "rlnExtReconsDataImag": f"{rel}/{prefix}_data_imag.mrc",
        "rlnExtReconsWeight": f"{rel}/{prefix}_weight.mrc",
        "rlnExtReconsResult": f"{rel}/{prefix}.mrc",
        "rlnExtReconsResultStarfile": f"{rel}/{prefix}_out.star",
        "rlnTau2FudgeFactor": f"{fudge:.6f}",
        "rlnPaddingFactor": f"{pad:.6f}",
        "rlnReferenceDimensionality": "3",
        "rlnOriginalImageSize": str(ori),
        "rlnCurrentImageSize": str(current),
    }
    lines = ["", "# version 30001", "", "data_external_reconstruct_general", ""]
    lines += [f"_{k}  {v}" for k, v in general.items() if k not in labels_drop]
    lines += ["", "", "# version 30001", "", "data_external_reconstruct_tau2", "", "loop_"]
    lines += ["_rlnSpectralIndex #1", "_rlnReferenceTau2 #2", "_rlnGoldStandardFsc #3"]
    lines += [f"{i:6d} {t:.12e} {f:.6f}" for i, (t, f) in enumerate(zip(tau2, fsc, strict=True))]
    star = folder / f"{prefix}.star"
    star.write_text("\n".join(lines) + "\n\n")
    return star


# --------------------------------------------------------------------------------------
# A slow, literal statement of RELION 3.1's steps (loops as in backprojector.cpp)


def _rnd(x: float) -> int:
    """C ROUND: halves away from zero."""
    return int(x + 0.5) if x > 0 else int(x - 0.5)


def slow_relion(star: Path, *, wiener: bool = True, skip_gridding: bool = False) -> np.ndarray:
    job = relion.read_external_star(star)
    re_ = mrcfile.read(str(job.data_real)).astype(np.float64)
    im_ = mrcfile.read(str(job.data_imag)).astype(np.float64)
    wt_ = mrcfile.read(str(job.weight)).astype(np.float64)
    ori, pad, cur = job.ori_size, job.padding_factor, job.current_size
    tau2 = job.tau2
    r_max = min(cur // 2, ori // 2)
    big_r = _rnd(r_max * pad)
    max_r2 = big_r * big_r
    n = 2 * (big_r + 1) + 1
    h = n // 2 + 1

    def fftw_loop(size):  # FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM
        half = size // 2 + 1
        for k in range(size):
            kp = k if k < half else k - size
            for i in range(size):
                ip = i if i < half else i - size
                for j in range(half):
                    yield k, i, j, kp, ip, j

    # centred BackProjector arrays, stored by logical index
    data: dict[tuple[int, int, int], complex] = {}
    weight: dict[tuple[int, int, int], float] = {}
    for k, i, j, kp, ip, jp in fftw_loop(re_.shape[0]):
        if kp * kp + ip * ip + jp * jp < max_r2:
            data[kp, ip, jp] = complex(re_[k, i, j], im_[k, i, j])
            weight[kp, ip, jp] = wt_[k, i, j]
    fconv = np.zeros((n, n, h), complex)
    fweight = np.zeros((n, n, h))
    for k, i, j, kp, ip, jp in fftw_loop(n):
        if kp * kp + ip * ip + jp * jp <= max_r2:
            fweight[k, i, j] = weight.get((kp, ip, jp), 0.0)
    if wiener:
        for k, i, j, kp, ip, jp in fftw_loop(n):
            r2 = kp * kp + ip * ip + jp * jp
            if r2 < max_r2:
                ires = _rnd(math.sqrt(r2) / pad)
                w = fweight[k, i, j]
                if tau2[ires] > 0:
                    inv = 1.0 / (pad**3 * job.tau2_fudge * tau2[ires])
                elif tau2[ires] < 1e-20:
                    inv = 1.0 / (0.001 * w) if w > 1e-20 else 0.0
                fweight[k, i, j] = w + inv
    if skip_gridding:
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp <= max_r2:
                fconv[k, i, j] = data.get((kp, ip, jp), 0.0)
        radavg = np.zeros(r_max)
        count = np.zeros(r_max)
        round_max_r2 = _rnd(r_max * pad * r_max * pad)
        for k, i, j, kp, ip, jp in fftw_loop(n):
            r2 = kp * kp + ip * ip + jp * jp
            if r2 < round_max_r2:
                ires = math.floor(math.sqrt(r2) / pad)
                radavg[ires] += fweight[k, i, j]
                count[ires] += 1
        radavg /= 1000.0 * count
        for k, i, j, kp, ip, jp in fftw_loop(n):
            ires = math.floor(math.sqrt(kp * kp + ip * ip + jp * jp) / pad)
            w = max(fweight[k, i, j], radavg[min(ires, r_max - 1)])
            if w != 0:
                fconv[k, i, j] /= w
    else:
        table_w = np.arange(10000) * (0.5 / 10000)
        sigma = np.sqrt(15.0**2 - (2 * math.pi * 3.8 * table_w) ** 2)
        table = scipy.special.iv(1.5, sigma) / sigma**1.5
        table /= table[0]
        blob = np.zeros((n, n, n))
        for k in range(n):
            for i in range(n):
                for j in range(n):
                    kk, ii, jj = (x if x < n // 2 else x - n for x in (k, i, j))
                    rval = math.sqrt(kk * kk + ii * ii + jj * jj) / (ori * pad)
                    idx = int(rval / (0.5 / 10000))
                    blob[k, i, j] = table[idx] if idx < 10000 else 0.0
        newweight = np.zeros((n, n, h))
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp < max_r2:
                newweight[k, i, j] = 1.0
        for _ in range(10):
            real = np.fft.irfftn(newweight * fweight, s=(n, n, n), axes=(0, 1, 2)) * n**3
            conv = np.fft.rfftn(real * blob) / n**3
            for k, i, j, kp, ip, jp in fftw_loop(n):
                if kp * kp + ip * ip + jp * jp < max_r2:
                    newweight[k, i, j] /= max(1e-6, abs(conv[k, i, j]))
        for k, i, j, kp, ip, jp in fftw_loop(n):
            if kp * kp + ip * ip + jp * jp <= max_r2:
                fconv[k, i, j] = data.get((kp, ip, jp), 0.0) * newweight[k, i, j]
    # window to the even padded size, centre by sign, inverse FFT, crop, normalise
    big_n = _rnd(pad * ori)
    big_n += big_n % 2
    out = np.zeros((big_n, big_n, big_n // 2 + 1), complex)
    for k, i, j, kp, ip, jp in fftw_loop(n):
        if fconv[k, i, j] != 0:
            out[kp % big_n, ip % big_n, jp] = fconv[k, i, j]
    for k in range(big_n):
        for i in range(big_n):
            for j in range(big_n // 2 + 1):
                if (k ^ i ^ j) & 1:
                    out[k, i, j] *= -1
    real = np.fft.irfftn(out, s=(big_n,) * 3, axes=(0, 1, 2)) * big_n**3
    s0 = big_n // 2 - ori // 2
    vol = real[s0 : s0 + ori, s0 : s0 + ori, s0 : s0 + ori] / (pad**3 * ori)
    # softMaskOutsideMap, then griddingCorrect
    c = np.arange(ori) - ori // 2
    radius, width = ori / 2.0, 3.0
    sum_w = sum_bg = 0.0
    for k in c:
        for i in c:
            for j in c:
                r = math.sqrt(k * k + i * i + j * j)
                if r < radius:
                    continue
                w = (
                    1.0
                    if r > radius + width
                    else 0.5 + 0.5 * math.cos(math.pi * (radius + width - r) / width)
                )
                sum_w += w
                sum_bg += w * vol[k + ori // 2, i + ori // 2, j + ori // 2]
    bg = sum_bg / sum_w
    for k in c:
        for i in c:
            for j in c:
                r = math.sqrt(k * k + i * i + j * j)
                z, y, x = k + ori // 2, i + ori // 2, j + ori // 2
                if r >= radius:
                    w = (
                        1.0
                        if r > radius + width
                        else 0.5 + 0.5 * math.cos(math.pi * (radius + width - r) / width)
                    )
                    vol[z, y, x] = (1 - w) * vol[z, y, x] + w * bg
                if r > 0:
                    rv = r / (ori * pad)
                    vol[z, y, x] /= (math.sin(math.pi * rv) / (math.pi * rv)) ** 2
    return vol


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------------------
# Reconstruction vs the slow statement


@pytest.mark.parametrize(
    ("ori", "pad", "current", "wiener", "skip"),
    [
        (10, 2, 10, True, False),
        (9, 3, 6, True, False),
        (9, 1, 9, False, False),
        (10, 2, 7, True, True),
        (9, 2, 9, False, True),
    ],
)
def test_reconstruct_equals_slow_statement(tmp_path, monkeypatch, ori, pad, current, wiener, skip):
    monkeypatch.chdir(tmp_path)
    star = make_job(
        tmp_path / "job", ori=ori, pad=pad, current=current, tau2_zero_from=4, tau2_scale=0.05
    )
    job = relion.read_external_star(star)
    ours = relion.reconstruct(job, wiener=wiener, skip_gridding=skip)
    slow = slow_relion(star, wiener=wiener, skip_gridding=skip)
    assert ours.shape == (ori, ori, ori) and ours.dtype == np.float32
    assert _rel_err(ours, slow) < 2e-6


def test_wiener_term_and_gridding_change_the_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=12, pad=2, tau2_scale=0.05)
    job = relion.read_external_star(star)
    base = relion.reconstruct(job)
    assert _rel_err(relion.reconstruct(job, wiener=False), base) > 1e-3
    assert _rel_err(relion.reconstruct(job, skip_gridding=True), base) > 1e-3


def test_relion_rounding_is_half_away_from_zero():
    # |k| = 5, pad 2 -> 2.5 -> shell 3 (numpy's rint would say 2); |k| = 3 -> 1.5 -> 2
    shells = relion._shell_of(np.array([25, 9, 49]), 2.0)
    assert shells.tolist() == [3, 2, 4]
    assert relion._relion_round(2.5) == 3 and relion._relion_round(-2.5) == -3


def test_blob_table_matches_bessel_definition():
    table = relion.blob_fourier_table()
    w = np.arange(table.size) * (0.5 / table.size)
    sigma = np.sqrt(15.0**2 - (2 * np.pi * 3.8 * w) ** 2)
    ref = scipy.special.iv(1.5, sigma) / sigma**1.5
    np.testing.assert_allclose(table, ref / ref[0], rtol=1e-12)
    assert table[0] == 1.0 and np.all(np.diff(table) < 0)


def test_odd_padded_grid_and_sizes(tmp_path, monkeypatch):
    # box 11, pad 3 -> P = 33 (odd): RELION's files are not made even
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=11, pad=3, current=11)
    job = relion.read_external_star(star)
    assert job.padded_size == 33
    assert mrcfile.read(str(job.weight)).shape == (33, 33, 17)
    vol = relion.reconstruct(job)
    assert vol.shape == (11, 11, 11) and np.all(np.isfinite(vol))


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
    job = relion.read_external_star(star)
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
    job = relion.read_external_star(star)
    assert job.weight.exists() and job.weight.parent == star.parent
    assert job.result.parent == star.parent


def test_missing_star(tmp_path):
    with pytest.raises(StarFormatError, match="STAR file not found"):
        relion.read_external_star(tmp_path / "nope.star")


def test_corrupt_star(tmp_path):
    bad = tmp_path / "bad.star"
    bad.write_bytes(b"\x00\xff garbage\nloop_\n_rlnA #1\n_rlnB #2\n1\n")
    with pytest.raises(StarFormatError, match=r"bad\.star"):
        relion.read_external_star(bad)


def test_missing_general_block(tmp_path):
    star = tmp_path / "x.star"
    star.write_text("data_other\n\nloop_\n_rlnSpectralIndex #1\n0\n1\n")
    with pytest.raises(StarFormatError, match="no 'external_reconstruct_general' block"):
        relion.read_external_star(star)


def test_missing_label(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", labels_drop=("rlnPaddingFactor",))
    with pytest.raises(StarFormatError, match="lacks rlnPaddingFactor"):
        relion.read_external_star(star)


def test_non_numeric_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    star.write_text(
        star.read_text().replace("_rlnOriginalImageSize  16", "_rlnOriginalImageSize  big")
    )
    with pytest.raises(StarFormatError, match="rlnOriginalImageSize is 'big', expected a number"):
        relion.read_external_star(star)


def test_missing_tau2_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    text = star.read_text()
    star.write_text(text[: text.index("# version 30001", 10)])
    with pytest.raises(StarFormatError, match="no 'external_reconstruct_tau2' block"):
        relion.read_external_star(star)


def test_padding_below_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job")
    star.write_text(
        star.read_text().replace("_rlnPaddingFactor  2.000000", "_rlnPaddingFactor  0.5")
    )
    with pytest.raises(InvalidValueError, match=r"rlnPaddingFactor is 0\.5, expected >= 1"):
        relion.read_external_star(star)


def test_wrong_padded_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=2, padded_size=18)
    job = relion.read_external_star(star)
    with pytest.raises(MapShapeError, match=r"padded size 18, expected ROUND\(pad \* box\) = 16"):
        relion.reconstruct(job)


def test_data_weight_shape_mismatch():
    with pytest.raises(MapShapeError, match="differs from weight shape"):
        relion.reconstruct_arrays(
            np.zeros((8, 8, 5), complex),
            np.zeros((8, 8, 4)),
            ori_size=8,
            current_size=8,
            padding_factor=1,
            tau2=None,
        )


def test_not_half_complex():
    with pytest.raises(MapShapeError, match=r"expected half-complex \(P, P, P//2\+1\)"):
        relion.reconstruct_arrays(
            np.zeros((8, 8, 8), complex),
            np.zeros((8, 8, 8)),
            ori_size=8,
            current_size=8,
            padding_factor=1,
            tau2=None,
        )


# --------------------------------------------------------------------------------------
# Running a job as RELION does


def _model_star(path: Path, pixel: float) -> None:
    path.write_text(
        "\n# version 30001\n\ndata_model_general\n\n_rlnReferenceDimensionality 3\n"
        f"_rlnOriginalImageSize 16\n_rlnPixelSize {pixel:.6f}\n\n"
    )


def test_run_writes_map_with_pixel_size_and_removes_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D" / "job_0_1"
    star = make_job(folder, "run_x_y_it004_half1_class001", ori=12, pad=2)
    _model_star(folder / "run_x_y_it003_half1_model.star", 1.37)
    _model_star(folder / "run_x_y_it002_half1_model.star", 9.9)  # older: not used
    _model_star(folder / "other_run_it003_half1_model.star", 5.5)  # another run: not used
    job = relion.read_external_star(star)
    expected = relion.reconstruct(job)
    out = relion.run_external_reconstruct(star)
    assert out == job.result
    with mrcfile.open(str(out)) as mrc:
        np.testing.assert_array_equal(mrc.data, expected)
        assert mrc.voxel_size.x == pytest.approx(1.37)
    assert not job.data_real.exists() and not job.data_imag.exists() and not job.weight.exists()
    line = capsys.readouterr().out
    assert "run_x_y_it004_half1_class001: plain map" in line and "1.37" in line
    assert "run_x_y_it003_half1_model.star" in line
    assert (folder / "spisonet_relion.log").read_text().count("plain map") == 1


def test_pixel_size_from_data_star_optics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "R"
    star = make_job(folder, "run_it002_class001", ori=8, pad=1)
    (folder / "run_it001_data.star").write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 0.85\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n"
    )
    assert relion.find_pixel_size(relion.read_external_star(star)).value == pytest.approx(0.85)


def test_pixel_size_unknown_falls_back_to_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "lonely_it001_half2_class001", ori=8, pad=1)
    out = relion.run_external_reconstruct(star, keep_inputs=True)
    with mrcfile.open(str(out)) as mrc:
        assert mrc.voxel_size.x == pytest.approx(1.0)
    text = capsys.readouterr().out
    assert "pixel size not found" in text and "writing 1.0 Å" in text
    assert relion.read_external_star(star).weight.exists()  # kept


def test_correction_is_applied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    plain = relion.reconstruct(relion.read_external_star(star))
    seen = {}

    def double(job, volume, pixel):
        seen["pixel"] = pixel
        return 2 * volume

    out = relion.run_external_reconstruct(star, correction=double)
    np.testing.assert_allclose(mrcfile.read(str(out)), 2 * plain, rtol=1e-6)
    assert seen["pixel"] == 1.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda job, v, px: 1 / 0, "ZeroDivisionError"),
        (lambda job, v, px: v[:4], "correction returned shape"),
        (lambda job, v, px: v * np.nan, "NaN or infinite"),
    ],
)
def test_failing_correction_writes_the_plain_map(tmp_path, monkeypatch, capsys, bad, message):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    plain = relion.reconstruct(relion.read_external_star(star))
    out = relion.run_external_reconstruct(star, correction=bad)
    np.testing.assert_array_equal(mrcfile.read(str(out)), plain)
    text = capsys.readouterr().out
    assert "correction failed, writing the plain reconstruction" in text and message in text
    assert "plain (correction failed) map" in text
    assert "Traceback" in (star.parent / "spisonet_relion.log").read_text()


def test_console_main_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    assert relion.console_main(["--keep-inputs", str(star)]) == 0
    assert relion.read_external_star(star).result.exists()
    job = relion.read_external_star(star)
    job.weight.unlink()
    assert relion.console_main([str(star)]) == 1
    assert "spisonet-relion: error:" in capsys.readouterr().err


def test_cli_relion_reconstruct(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spisonet.cli import app

    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=2)
    result = CliRunner().invoke(app, ["relion-reconstruct", str(star), "--no-correction"])
    assert result.exit_code == 0, result.output
    job = relion.read_external_star(star)
    assert job.result.exists() and not job.weight.exists()


def test_write_result_star_roundtrip(tmp_path):
    import starfile

    path = relion.write_result_star(
        tmp_path / "o.star", np.arange(4), fsc=np.array([1, 0.9, 0.5, 0.1])
    )
    table = starfile.read(path)
    assert table["rlnSpectralIndex"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(table["rlnFourierShellCorrelation"], [1, 0.9, 0.5, 0.1])
    with pytest.raises(InvalidValueError, match="exactly one of tau2 or fsc"):
        relion.write_result_star(tmp_path / "p.star", np.arange(2))


# --------------------------------------------------------------------------------------
# Against RELION 3.1's own program


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_RELION, reason="relion_external_reconstruct not on PATH")
@pytest.mark.parametrize("ori", [24, 25])
@pytest.mark.parametrize("pad", [1, 2, 3])
def test_matches_relion_external_reconstruct(tmp_path, monkeypatch, ori, pad):
    monkeypatch.chdir(tmp_path)
    for current in (ori, ori // 2 + 3):
        star = make_job(
            tmp_path / f"c{current}",
            "run_a_b_it002_half1_class001",
            ori=ori,
            pad=pad,
            current=current,
            seed=current,
            tau2_scale=0.05,
            tau2_zero_from=ori // 3,
        )
        job = relion.read_external_star(star)
        for flags in ([], ["--skip_gridding"], ["--no_map"]):
            ref_path = tmp_path / f"ref_{current}.mrc"
            subprocess.run(
                [
                    "relion_external_reconstruct",
                    str(star.relative_to(tmp_path)),
                    "--o",
                    str(ref_path),
                    *flags,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            ref = mrcfile.read(str(ref_path)).astype(np.float64)
            ours = relion.reconstruct(
                job, wiener="--no_map" not in flags, skip_gridding="--skip_gridding" in flags
            )
            assert ours.shape == ref.shape == (ori, ori, ori)
            err = _rel_err(ours, ref)
            assert err <= 1e-6, f"current {current} {flags}: relative difference {err:.2e}"
