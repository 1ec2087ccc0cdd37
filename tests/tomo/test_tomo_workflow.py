"""``spisonet tomo``: the tomogram list, the streamed prediction, and the whole CLI workflow
(prepare → deconv → make-mask → refine --preset tiny → predict) on a small simulated pair,
with the bad inputs a user meets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spisonet.cli import app
from spisonet.errors import InvalidValueError, MapMismatchError, StarFormatError
from spisonet.io import open_map_mmap, read_map, write_map
from spisonet.io.tomograms import (
    TomogramEntry,
    import_relion_tomograms,
    read_tomogram_list,
    write_tomogram_list,
)

pytest.importorskip("torch_fourier_slice")

runner = CliRunner()


def _run(*args: str, ok: bool = True):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


# ----------------------------------------------------------------------------- the list


def test_list_round_trip_keeps_every_field(tmp_path: Path) -> None:
    entries = [
        TomogramEntry(
            name="TS_01",
            voxel_size=13.5,
            even=str(tmp_path / "e.mrc"),
            odd=str(tmp_path / "o.mrc"),
            tilt_min=-52.5,
            tilt_max=61.0,
            tilt_axis=85.3,
            defocus=3.25,
            mask=str(tmp_path / "m.mrc"),
        ),
        TomogramEntry(name='odd "name"', voxel_size=10, tomogram=str(tmp_path / "t.mrc")),
    ]
    path = write_tomogram_list(tmp_path / "t.toml", entries)
    assert read_tomogram_list(path) == entries


def test_list_relative_paths_are_taken_from_the_list_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "t.toml"
    p.write_text('[[tomogram]]\nname = "a"\nvoxel_size = 10\ntomogram = "x.mrc"\n')
    (entry,) = read_tomogram_list(p)
    assert entry.tomogram == str((tmp_path / "sub" / "x.mrc").resolve())
    assert not entry.paired and entry.inputs() == [entry.tomogram]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [[", "not a readable TOML"),
        ("[other]\na = 1\n", r"no \[\[tomogram\]\]"),
        ('[[tomogram]]\nname = "a"\nvoxel_size = 10\ntomogram = "t"\ncolour = 1\n', "unknown key"),
        ('[[tomogram]]\nname = "a"\ntomogram = "t"\n', "needs a name and a voxel_size"),
        ('[[tomogram]]\nname = "a"\nvoxel_size = 10\neven = "e"\n', "both even and odd"),
        (
            '[[tomogram]]\nname = "a"\nvoxel_size = 10\neven = "e"\nodd = "o"\ntomogram = "t"\n',
            "either even",
        ),
        (
            '[[tomogram]]\nname = "a"\nvoxel_size = 10\ntomogram = "t"\ntilt_min = 60\n'
            "tilt_max = -60\n",
            "tilt range",
        ),
        ('[[tomogram]]\nname = "a"\nvoxel_size = "ten"\ntomogram = "t"\n', "must be a number"),
    ],
)
def test_bad_lists_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(InvalidValueError, match=message):
        read_tomogram_list(p)


def test_missing_list_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="spisonet tomo prepare"):
        read_tomogram_list(tmp_path / "none.toml")


def test_relion5_tomograms_star_is_imported(tmp_path: Path) -> None:
    (tmp_path / "tilt_series").mkdir()
    (tmp_path / "tilt_series" / "TS_01.star").write_text(
        "data_TS_01\n\nloop_\n_rlnTomoNominalStageTiltAngle #1\n_rlnDefocusU #2\n"
        "_rlnDefocusV #3\n-51.0 41000 39000\n0.0 30000 28000\n3.0 31000 29000\n"
        "57.0 45000 43000\n"
    )
    (tmp_path / "tomograms.star").write_text(
        "data_global\n\nloop_\n_rlnTomoName #1\n_rlnVoltage #2\n_rlnSphericalAberration #3\n"
        "_rlnAmplitudeContrast #4\n_rlnTomoTiltSeriesPixelSize #5\n_rlnTomoTomogramBinning #6\n"
        "_rlnTomoTiltSeriesStarFile #7\n_rlnTomoReconstructedTomogramHalf1 #8\n"
        "_rlnTomoReconstructedTomogramHalf2 #9\n"
        "TS_01 300.0 2.7 0.1 1.35 8.0 tilt_series/TS_01.star tomo/TS_01_half1.mrc "
        "tomo/TS_01_half2.mrc\n"
        "TS_02 300.0 2.7 0.1 1.35 8.0 tilt_series/missing.star tomo/TS_02_half1.mrc "
        "tomo/TS_02_half2.mrc\n"
    )
    entries, notes = import_relion_tomograms(tmp_path / "tomograms.star")
    a, b = entries
    assert a.name == "TS_01" and a.voxel_size == pytest.approx(10.8)
    assert (a.tilt_min, a.tilt_max) == (-51.0, 57.0)
    assert a.defocus == pytest.approx(2.9)  # mean of U and V of the 0° image, in µm
    assert a.amplitude_contrast == pytest.approx(0.1)
    assert a.even == str((tmp_path / "tomo" / "TS_01_half1.mrc").resolve())
    assert (b.tilt_min, b.tilt_max, b.defocus) == (-60.0, 60.0, None)
    assert any("TS_02" in n and "−60…60" in n for n in notes)


def test_star_without_tomograms_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.star"
    p.write_text("data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesPixelSize #2\nA 1.0\n")
    with pytest.raises(StarFormatError, match="rlnTomoReconstructedTomogram"):
        import_relion_tomograms(p)


# ----------------------------------------------------------------------------- prediction


def test_streamed_prediction_equals_one_whole_volume_prediction() -> None:
    """Slabs with a two-stride halo see exactly what the whole-volume tiles see."""
    from spisonet.nn.predict import predict_map
    from spisonet.nn.train import build_model
    from spisonet.tomo.network import predict_tomogram, prediction_rows, tomo_settings

    s = tomo_settings("tiny")
    model = build_model(s.widths, 3)
    rng = np.random.default_rng(1)
    vol = (rng.normal(size=(20, 150, 37)) * 3 + 1).astype(np.float32)
    budget = 20 * 37 * 4 * 90 / 2**20  # 90 rows: slabs of 16 rows, many seams
    assert prediction_rows(vol.shape, s, budget) == 16
    out = np.full_like(vol, np.nan)
    calls = []

    def write(y0: int, y1: int, slab: np.ndarray) -> None:
        calls.append((y0, y1))
        out[:, y0:y1] = slab

    predict_tomogram(
        model, [lambda a, b: vol[:, a:b]], [(1.0, 3.0)], vol.shape, write, s, budget_mib=budget
    )
    whole = (
        predict_map(
            model,
            (vol - 1) / 3,
            cube_size=s.cube_size,
            crop_size=s.predict_crop_size,
            edge=s.predict_edge,
            batch_size=2,
        )
        * 3
        + 1
    )
    assert len(calls) == 10 and calls[0] == (0, 16) and calls[-1] == (144, 150)
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_prediction_of_a_pair_is_the_mean_of_both() -> None:
    from spisonet.nn.predict import predict_map
    from spisonet.nn.train import build_model
    from spisonet.tomo.network import predict_tomogram, tomo_settings

    s = tomo_settings("tiny")
    model = build_model(s.widths, 0)
    rng = np.random.default_rng(2)
    a, b = (rng.normal(size=(16, 40, 24)).astype(np.float32) for _ in range(2))
    out = np.zeros_like(a)

    def write(y0: int, y1: int, slab: np.ndarray) -> None:
        out[:, y0:y1] = slab

    predict_tomogram(
        model,
        [lambda p, q: a[:, p:q], lambda p, q: b[:, p:q]],
        [(0.5, 2.0), (0.5, 2.0)],
        a.shape,
        write,
        s,
    )
    kw = dict(cube_size=s.cube_size, crop_size=s.predict_crop_size, edge=s.predict_edge)
    expect = [predict_map(model, (v - 0.5) / 2, **kw) * 2 + 0.5 for v in (a, b)]
    np.testing.assert_allclose(out, (expect[0] + expect[1]) / 2, atol=1e-5)


def test_training_cubes_are_z_scored_and_cut_inside_the_mask() -> None:
    from spisonet.tomo.network import training_cubes

    rng = np.random.default_rng(0)
    even = rng.normal(5.0, 2.0, size=(20, 40, 40)).astype(np.float32)
    odd = even + 1.0
    mask = np.zeros(even.shape, np.uint8)
    mask[10, 5, 30] = 1  # one possible centre: every cube is the same
    c1, c2 = training_cubes([[even, odd]], [mask], [(5.0, 2.0)], 3, 8)
    assert c1.shape == (3, 8, 8, 8) and c2 is not None
    np.testing.assert_allclose(c1[0], (even[6:14, 1:9, 26:34] - 5) / 2, atol=1e-6)
    np.testing.assert_allclose(c2 - c1, 0.5, atol=1e-5)
    with pytest.raises(MapMismatchError, match="mask"):
        training_cubes([[even, odd]], [mask[:-1]], [(5.0, 2.0)], 3, 8)
    with pytest.raises(InvalidValueError, match="smaller than the 32³"):
        training_cubes([[even[:16], odd[:16]]], [None], [(5.0, 2.0)], 3, 32)


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tomo_sim")
    _run(
        "tomo",
        "simulate",
        "-o",
        str(out),
        "--shape",
        "32,48,48",
        "--defocus",
        "2.5",
        "--snr",
        "1.0",
        "--tilt-step",
        "5",
    )
    return out


def test_whole_workflow_from_the_command_line(simulated: Path, tmp_path: Path) -> None:
    lst = tmp_path / "tomos.toml"
    _run(
        "tomo",
        "prepare",
        str(lst),
        "--even",
        str(simulated / "even.mrc"),
        "--odd",
        str(simulated / "odd.mrc"),
        "--name",
        "sim",
        "--tilt-range",
        "-60,60",
        "--defocus",
        "2.5",
    )
    _run("tomo", "deconv", str(lst), "-o", str(tmp_path / "deconv"))
    _run("tomo", "make-mask", str(lst), "-o", str(tmp_path / "masks"))
    (entry,) = read_tomogram_list(lst)
    assert entry.deconv_even and entry.deconv_odd and entry.mask
    assert Path(entry.deconv_even).parent == (tmp_path / "deconv").resolve()
    mask = read_map(entry.mask, require_cubic=False).data
    assert mask.shape == (32, 48, 48) and 0 < mask.mean() < 1
    result = _run("tomo", "refine", str(lst), "-o", str(tmp_path / "refine"), "--preset", "tiny")
    assert "trained" in result.output and "Noise2Noise" in result.output
    report = json.loads((tmp_path / "refine" / "refine.json").read_text())
    assert report["training"]["paired"] and report["training"]["steps"] > 0
    assert (tmp_path / "refine" / "loss.png").stat().st_size > 0
    _run(
        "tomo",
        "predict",
        str(lst),
        str(tmp_path / "refine" / "model.pt"),
        "-o",
        str(tmp_path / "pred"),
        "--preset",
        "tiny",
        "--device",
        "cpu",
    )
    out = tmp_path / "pred" / "corrected_sim.mrc"
    corrected = read_map(out, require_cubic=False)
    deconv = read_map(entry.deconv_even, require_cubic=False)
    assert corrected.data.shape == (32, 48, 48)
    assert corrected.voxel_size == pytest.approx(deconv.voxel_size)
    assert np.isfinite(corrected.data).all() and corrected.data.std() > 0
    assert (tmp_path / "pred" / "corrected_sim.png").stat().st_size > 0
    # resume: every epoch is already done, the model file stays valid
    _run("tomo", "refine", str(lst), "-o", str(tmp_path / "refine"), "--preset", "tiny", "--resume")


def test_tilt_range_not_numbers_is_one_red_line(simulated: Path, tmp_path: Path) -> None:
    from tests.helpers import one_error_line, run_module

    proc = run_module(
        "tomo",
        "prepare",
        tmp_path / "t.toml",
        "--even",
        simulated / "even.mrc",
        "--odd",
        simulated / "odd.mrc",
        "--tilt-range",
        "a,b",
        cwd=tmp_path,
    )
    one_error_line(proc, "--tilt-range must be two numbers")
    assert not (tmp_path / "t.toml").exists()


def test_bad_inputs_say_what_is_wrong(simulated: Path, tmp_path: Path) -> None:
    from spisonet.errors import EmptyMaskError, MapNotFoundError
    from spisonet.tomo.files import deconv_tomograms, entry_from_options, prepare_list, refine
    from spisonet.tomo.network import tomo_settings

    even, odd = simulated / "even.mrc", simulated / "odd.mrc"
    lst = tmp_path / "t.toml"
    # a pair of different shapes
    small = write_map(tmp_path / "small.mrc", np.zeros((32, 48, 40), np.float32), 10.0)
    with pytest.raises(MapMismatchError, match=r"differ in shape"):
        prepare_list(lst, entries=[entry_from_options("x", even=even, odd=small)])
    # the voxel size given disagrees with the header
    with pytest.raises(InvalidValueError, match="header says 10 Å"):
        prepare_list(lst, entries=[entry_from_options("x", even=even, odd=odd, voxel_size=7.0)])
    # a file that is not there
    with pytest.raises(MapNotFoundError, match="file not found"):
        prepare_list(
            lst, entries=[entry_from_options("x", tomogram=tmp_path / "none.mrc", voxel_size=10.0)]
        )
    assert not lst.exists()  # nothing written by a refused prepare
    # a mask that leaves nothing to train on
    empty = write_map(tmp_path / "empty.mrc", np.zeros((32, 48, 48), np.float32), 10.0)
    prepare_list(lst, entries=[entry_from_options("x", even=even, odd=odd)])
    lst.write_text(lst.read_text() + f'mask = "{empty}"\n')
    with pytest.raises(EmptyMaskError, match="nothing to train on"):
        refine(lst, tmp_path / "r", tomo_settings("tiny"))
    # deconv without a defocus
    with pytest.raises(InvalidValueError, match="no tomogram has a defocus"):
        deconv_tomograms(lst, tmp_path / "d")
    with open_map_mmap(even) as m:
        assert m.shape == (32, 48, 48)


def test_refine_data_parallel_on_two_cpu_processes(simulated: Path, tmp_path: Path) -> None:
    """``--processes 2``: two gloo ranks train one network; rank 0 alone writes."""
    from tests.helpers import run_module

    proc = run_module(
        "tomo",
        "refine",
        simulated / "tomograms.toml",
        "-o",
        tmp_path / "r",
        "--preset",
        "tiny",
        "--processes",
        "2",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Data-parallel training on 2 processes" in proc.stdout
    assert proc.stdout.count("wrote") == 3  # model, loss figure, report: once
    report = json.loads((tmp_path / "r" / "refine.json").read_text())
    assert report["training"]["steps"] > 0


def _slow_low_measured(
    diff: np.ndarray, d: int, lo: float, hi: float, psi: float, high: float | None = None
) -> np.ndarray:
    """The definition on the full complex grid, voxel by voxel: keep a component when its
    radius is below 1/D (cosine to 0 at 1.5/D) — or, with ``high``, above 1.125·high
    (cosine from 0 at ``high``) — and its plane's tilt lies in [lo, hi]."""
    nz, ny, nx = diff.shape
    f = np.fft.fftn(diff.astype(np.float64))
    out = np.zeros_like(f)
    a = np.radians(psi)
    for iz, kz in enumerate(np.fft.fftfreq(nz)):
        for iy, ky in enumerate(np.fft.fftfreq(ny)):
            for ix, kx in enumerate(np.fft.fftfreq(nx)):
                kb = -np.sin(a) * ky + np.cos(a) * kx
                r = np.sqrt(kz * kz + ky * ky + kx * kx) * d
                w = (
                    1.0
                    if r <= 1
                    else (0.0 if r >= 1.5 else 0.5 * (1 + np.cos(np.pi * (r - 1) / 0.5)))
                )
                k = r / d
                if high is not None and k > high:
                    up = (
                        1.0
                        if k >= 1.125 * high
                        else 0.5 * (1 - np.cos(np.pi * (k - high) / (0.125 * high)))
                    )
                    w = max(w, up)
                if abs(kz) < 1e-12 and abs(kb) < 1e-12:
                    measured = True
                else:
                    t = np.degrees(np.arctan(-kz / kb)) if abs(kb) > 1e-12 else 90.0
                    measured = lo - 1e-4 <= t <= hi + 1e-4 or (t == 90.0 and hi >= 90.0)
                out[iz, iy, ix] = f[iz, iy, ix] * w * measured
    return np.real(np.fft.ifftn(out))


@pytest.mark.parametrize(
    ("lo", "hi", "psi", "high"),
    [
        (-60.0, 60.0, 0.0, None),
        (-45.0, 58.0, 30.0, None),
        (-60.0, 60.0, 0.0, 0.3),
        (-50, 55, 20, 0.2),
    ],
)
def test_measured_low_frequencies_equal_their_definition(lo, hi, psi, high) -> None:
    from spisonet.tomo.network import measured_low_frequencies

    rng = np.random.default_rng(4)
    # odd sizes: on an even axis's Nyquist plane a turned tilt axis makes the band
    # asymmetric under conjugation, an edge where the full and half spectra differ
    diff = rng.normal(size=(11, 13, 9) if high else (10, 12, 9)).astype(np.float32)
    want = _slow_low_measured(diff, 4, lo, hi, psi, high)
    got = measured_low_frequencies(diff.copy(), 4, lo, hi, psi, high_from=high)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if high is not None:  # the high band adds something, and only in the measured region
        assert np.abs(got - _slow_low_measured(diff, 4, lo, hi, psi)).max() > 0.1


def test_low_waves_come_back_where_measured_only() -> None:
    """A long wave along x (measured at ±60°) is restored; one along z (in the wedge)
    is left to the network; a short wave is left too."""
    from spisonet.tomo.network import measured_low_frequencies

    z, _, x = np.indices((32, 32, 32))
    along_x = np.cos(2 * np.pi * x / 32).astype(np.float32)  # wavelength 32 > cube 16
    along_z = np.cos(2 * np.pi * z / 32).astype(np.float32)
    short = np.cos(2 * np.pi * x / 4).astype(np.float32)
    got = measured_low_frequencies(along_x + along_z + short, 16, -60, 60)
    np.testing.assert_allclose(got, along_x, atol=1e-5)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/data/TS_01_even.mrc", "TS_01"),
        ("/data/TS_02_half1.mrc", "TS_02"),
        ("/data/lamella3/even.mrc", "lamella3"),
        ("/data/tomo7.mrc", "tomo7"),
    ],
)
def test_default_names_come_from_the_file_or_its_folder(path: str, name: str) -> None:
    from spisonet.tomo.files import _default_name

    assert _default_name(Path(path)) == name


def test_a_single_tomogram_is_corrected_without_noise2noise(simulated: Path, tmp_path: Path):
    from spisonet.tomo.files import entry_from_options, predict_tomograms, prepare_list, refine
    from spisonet.tomo.network import tomo_settings

    lst = tmp_path / "one.toml"
    prepare_list(lst, entries=[entry_from_options("one", tomogram=simulated / "even.mrc")])
    s = tomo_settings("tiny")
    run = refine(lst, tmp_path / "r", s)
    assert run is not None and not run.paired and run.steps > 0
    assert any("no Noise2Noise" in n for n in run.notes)
    out = predict_tomograms(lst, run.model, tmp_path / "c", s)
    corrected = read_map(out[0], require_cubic=False).data
    assert corrected.shape == (32, 48, 48) and np.isfinite(corrected).all()


@pytest.mark.skipif(
    importlib.util.find_spec("torch_ctf") is None, reason="torch-ctf needs Python ≥ 3.11"
)
def test_ctf_handover_starts_below_the_first_zero_of_the_entrys_ctf() -> None:
    from spisonet.io.tomograms import TomogramEntry
    from spisonet.tomo.deconv import first_ctf_zero
    from spisonet.tomo.files import CTF_HANDOVER, ctf_handover

    plain = TomogramEntry(name="t", voxel_size=10.0, tomogram="t.mrc")
    assert ctf_handover(plain) is None
    e = TomogramEntry(name="t", voxel_size=8.0, tomogram="t.mrc", defocus=4.0, voltage=200.0)
    k0 = first_ctf_zero(8.0, 4.0, 200.0)
    assert 0 < CTF_HANDOVER < 1 and ctf_handover(e) == pytest.approx(CTF_HANDOVER * k0)
    far = TomogramEntry(name="t", voxel_size=20.0, tomogram="t.mrc", defocus=0.5)
    assert ctf_handover(far) is None  # no zero below Nyquist


def test_a_bad_high_band_is_refused_before_the_input_is_touched() -> None:
    from spisonet.tomo.network import measured_low_frequencies

    diff = np.random.default_rng(2).normal(size=(8, 9, 7)).astype(np.float32)
    before = diff.copy()
    with pytest.raises(InvalidValueError, match=r"high_from must be > 0 cycles/voxel; got -0\.1"):
        measured_low_frequencies(diff, 4, -60, 60, high_from=-0.1)
    np.testing.assert_array_equal(diff, before)
