"""Garbage in, a clear refusal out (issue 13, point 5): spisonet._checks and its callers.

Each suite breaks one input (a flat map, a mask outside [0, 1], a file that is not a 3D
FSC, a resolution limit outside the box, an absurd symmetry, directions the sampling
cannot tell apart) and checks the API error and the CLI's exit 2 with one red line.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import blobs, soft_sphere_mask

import spisonet.nn.train as train_mod
from spisonet._checks import check_limit_res
from spisonet.anisotropy import analyse_anisotropy
from spisonet.cli import main
from spisonet.cli.anisotropy import anisotropy_table as _anisotropy_table
from spisonet.correction import correct_anisotropy, preset_settings
from spisonet.errors import FlatMapError, InvalidValueError
from spisonet.fsc3d import fsc3d
from spisonet.io import Map, check_mask, write_map
from spisonet.report import _summary_text
from spisonet.symmetry import group_order, point_group

N = 24
APIX = 1.06
MASK = soft_sphere_mask(N, N / 3)


def _pair(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    s = blobs(n, seed) * 3
    return (
        (s + r.standard_normal(s.shape)).astype(np.float32),
        (s + r.standard_normal(s.shape)).astype(np.float32),
    )


@pytest.fixture
def no_training(monkeypatch):
    """Input errors must come before any training."""

    def boom(*a, **k):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(train_mod, "train_network", boom)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """Run the console entry point in-process: (exit code, non-empty stderr lines)."""
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setattr(sys, "argv", ["spisonet", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    return exc.value.code, [ln for ln in err.splitlines() if ln.strip()]


def assert_one_error_line(code: int, lines: list[str], *needles: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def files(tmp_path):
    """Good half maps and mask, plus broken variants, at 1.06 Å/voxel."""
    h1, h2 = _pair()
    paths = {}
    for name, data in {
        "half1": h1,
        "half2": h2,
        "mask": MASK,
        "zero": np.zeros((N, N, N), np.float32),
        "mask_0_to_2": 2.0 * MASK,
        "seven": np.full((N, N, N), 7.0, np.float32),
    }.items():
        paths[name] = tmp_path / f"{name}.mrc"
        write_map(paths[name], data, voxel_size=APIX)
    return paths


# --------------------------------------------------------------------------- flat maps
def test_anisotropy_refuses_an_all_zero_pair() -> None:
    z = np.zeros((N, N, N), np.float32)
    with pytest.raises(FlatMapError, match=r"half map 1: the map is constant \(0 everywhere\)"):
        analyse_anisotropy(z, z, APIX)


def test_flat_inside_the_mask_is_refused_by_anisotropy_and_fsc3d() -> None:
    # constant where the mask is, noise outside it: the whole box has contrast
    h1, h2 = _pair()
    inside = MASK > 0
    h2[inside] = 3.0
    msg = r"half map 2: the map is constant \(3\) inside the mask"
    with pytest.raises(FlatMapError, match=msg):
        analyse_anisotropy(h1, h2, APIX, mask=MASK, n_directions=20)
    with pytest.raises(FlatMapError, match=r"half map 2: .* inside the mask"):
        fsc3d(h1, h2, APIX, mask=MASK)


@pytest.mark.usefixtures("no_training")
def test_correct_anisotropy_refuses_a_constant_map() -> None:
    h1, _ = _pair()
    with pytest.raises(FlatMapError, match=r"half map 2: the map is constant \(5\)"):
        correct_anisotropy(h1, np.full_like(h1, 5.0), settings=preset_settings("tiny"))


def test_cli_anisotropy_on_zero_maps_exits_2(files, monkeypatch, capsys, tmp_path) -> None:
    code, lines = run_cli(
        monkeypatch, capsys, "anisotropy", files["zero"], files["zero"], "-o", tmp_path / "a"
    )
    assert_one_error_line(code, lines, "zero.mrc", "constant (0 everywhere)")
    assert not (tmp_path / "a_report.json").exists()


@pytest.mark.usefixtures("no_training")
def test_cli_reconstruct_names_the_flat_file(files, monkeypatch, capsys, tmp_path) -> None:
    code, lines = run_cli(
        monkeypatch, capsys, "reconstruct", files["half1"], files["zero"],
        "--preset", "tiny", "-o", tmp_path / "out",
    )  # fmt: skip
    assert_one_error_line(code, lines, "zero.mrc", "constant (0 everywhere)")


# --------------------------------------------------------------------------- masks
def test_mask_outside_0_1_is_refused_with_its_range_and_the_fix() -> None:
    h1, h2 = _pair()
    msg = r"mask values must lie in \[0, 1\]; found min 0, max 2\. Rescale .* or binarise"
    with pytest.raises(InvalidValueError, match=msg):
        analyse_anisotropy(h1, h2, APIX, mask=2.0 * MASK, n_directions=20)
    with pytest.raises(InvalidValueError, match=msg):
        fsc3d(h1, h2, APIX, mask=2.0 * MASK)
    with pytest.raises(InvalidValueError, match=r"found min -0\.5, max 1"):
        correct_anisotropy(h1, h2, mask=MASK - 0.5 * (MASK == 0), settings=preset_settings("tiny"))
    with pytest.raises(InvalidValueError, match=r"m\.mrc: mask values must lie in \[0, 1\]"):
        check_mask(Map(2.0 * MASK, APIX, path="m.mrc"), Map(h1, APIX))
    # round-off above 1 is tolerated
    check_mask(Map(MASK * (1 + 1e-4), APIX, path="m.mrc"), Map(h1, APIX))


def test_cli_anisotropy_with_mask_0_to_2_exits_2(files, monkeypatch, capsys, tmp_path) -> None:
    code, lines = run_cli(
        monkeypatch, capsys, "anisotropy", files["half1"], files["half2"],
        "--mask", files["mask_0_to_2"], "-o", tmp_path / "a",
    )  # fmt: skip
    assert_one_error_line(code, lines, "mask_0_to_2.mrc", "max 2", "Rescale")


# --------------------------------------------------------------------------- aniso file
@pytest.mark.usefixtures("no_training")
def test_a_volume_that_is_not_a_3d_fsc_is_refused() -> None:
    h1, h2 = _pair()
    s = preset_settings("tiny")
    seven = np.full((N, N, N), 7.0, np.float32)
    with pytest.raises(InvalidValueError, match=r"not a 3D FSC: values range from 7 to 7.*fsc3d"):
        correct_anisotropy(h1, h2, seven, settings=s)
    with pytest.raises(FlatMapError, match=r"not a 3D FSC: every voxel is 0\.5.*spisonet fsc3d"):
        correct_anisotropy(h1, h2, np.full_like(seven, 0.5), settings=s)


@pytest.mark.usefixtures("no_training")
def test_cli_reconstruct_with_a_non_fsc_aniso_file_exits_2(
    files, monkeypatch, capsys, tmp_path
) -> None:
    code, lines = run_cli(
        monkeypatch, capsys, "reconstruct", files["half1"], files["half2"],
        "--aniso-file", files["seven"], "--preset", "tiny", "-o", tmp_path / "out",
    )  # fmt: skip
    assert_one_error_line(code, lines, "seven.mrc", "not a 3D FSC", "spisonet fsc3d")


# --------------------------------------------------------------------------- limit_res
NYQUIST_MSG = r"limit_res 1\.2 Å is finer than Nyquist \(2 × 1\.06 = 2\.12 Å\) for this map"
BOX_MSG = r"limit_res 30\.0 Å is coarser than the box \(24 × 1\.06 = 25\.44 Å\)"


@pytest.mark.usefixtures("no_training")
def test_fsc3d_and_correct_refuse_the_same_limit_res() -> None:
    h1, h2 = _pair()
    for value, msg in ((1.2, NYQUIST_MSG), (30.0, BOX_MSG)):
        with pytest.raises(InvalidValueError, match=msg):
            fsc3d(h1, h2, APIX, limit_res=value)
        with pytest.raises(InvalidValueError, match=msg):
            correct_anisotropy(
                h1, h2, voxel_size=APIX, settings=preset_settings("tiny", limit_res=value)
            )
    # the ends of the range are valid
    assert fsc3d(h1, h2, APIX, limit_res=N * APIX).limit_r == 2
    assert fsc3d(h1, h2, APIX, limit_res=2 * APIX).limit_r == N // 2 + 1
    assert check_limit_res(2.12, np.float32(1.06), N) == 2.12  # float32 header round-off


def test_cli_fsc3d_limit_res_finer_than_nyquist_exits_2(
    files, monkeypatch, capsys, tmp_path
) -> None:
    code, lines = run_cli(
        monkeypatch, capsys, "fsc3d", files["half1"], files["half2"],
        "--limit-res", 1.2, "-o", tmp_path / "f.mrc",
    )  # fmt: skip
    assert_one_error_line(code, lines, "limit_res 1.2 Å is finer than Nyquist (2 × 1.06 = 2.12 Å)")
    assert not (tmp_path / "f.mrc").exists()


# --------------------------------------------------------------------------- symmetry
def test_symmetry_order_is_capped() -> None:
    with pytest.raises(InvalidValueError, match=r"'C100000'.*n = 100000 .* n = 100\b"):
        group_order("C100000")
    with pytest.raises(InvalidValueError, match=r"'D101'"):
        point_group("D101")
    assert group_order("C100") == 100 and group_order("D100") == 200


def test_cli_fsd3d_parses_sym_before_reading_the_star(monkeypatch, capsys, tmp_path) -> None:
    # the STAR file does not exist: the symmetry must be refused first, before any work
    code, lines = run_cli(
        monkeypatch, capsys, "fsd3d", tmp_path / "missing.star", "--box", 16, "--apix", 1.0,
        "--sym", "C100000",
    )  # fmt: skip
    assert_one_error_line(code, lines, "C100000", "n = 100")


# --------------------------------------------------------------------------- directions
def _text(renderable) -> str:
    import io

    from rich.console import Console

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_identical_halves_name_no_worst_or_best_direction() -> None:
    a, _ = _pair(16)
    rep = analyse_anisotropy(a, a.copy(), 1.0, n_directions=40)
    assert np.all(rep.resolution_0143 == 2.0)  # every direction at Nyquist
    assert rep.directions_distinguishable is False
    d = rep.to_dict()
    assert d["worst_direction"] is None and d["best_direction"] is None
    assert "cannot tell directions apart" in d["directions_note"]
    table = _text(_anisotropy_table(rep))
    assert "cannot tell directions apart" in table and "worst direction (x" not in table
    summary = _summary_text(rep)
    assert "cannot tell directions apart" in summary and "worst: tilt" not in summary


def test_worst_direction_and_its_resolution_agree_everywhere() -> None:
    # a missing cone along z: the table's worst/best figures are those of the named
    # directions, and the coarsest single cone is labelled as such, not as "worst"
    n = 32
    r = np.random.default_rng(3)
    k = np.fft.fftfreq(n, 1.0 / n)
    kz, ky, kx = np.meshgrid(k, k, np.arange(n // 2 + 1), indexing="ij")
    rad = np.sqrt(kz**2 + ky**2 + kx**2)
    cone = (np.abs(kz) > 0.8 * np.maximum(rad, 1e-9)) & (rad > 3)
    f = np.fft.rfftn(r.normal(size=(n, n, n))) * np.exp(-(rad**2) / 120.0) * 30 * ~cone
    s = np.fft.irfftn(f, s=(n, n, n), axes=(0, 1, 2))
    h1, h2 = s + r.normal(size=s.shape), s + r.normal(size=s.shape)
    rep = analyse_anisotropy(h1, h2, 1.0, n_directions=150)
    assert rep.directions_distinguishable
    w, b = rep.worst_index, rep.best_index
    table = _text(_anisotropy_table(rep))
    row = next(ln for ln in table.splitlines() if "0.143: worst / best direction" in ln)
    assert f"{rep.resolution_0143[w]:.2f} / {rep.resolution_0143[b]:.2f} Å" in row
    assert "min / max" not in table
    st = rep.stats("0.143")
    assert f"single cones {st['min']:.2f}–{st['max']:.2f}" in _summary_text(rep)
    assert rep.to_dict()["worst_direction"]["resolution_0143_A"] == rep.resolution_0143[w]


def test_check_mask_array_one_failure_each():
    from spisonet._checks import check_mask_array
    from spisonet.errors import EmptyMaskError, MapMismatchError, NonFiniteMapError

    good = np.zeros((4, 4, 4), np.float32)
    good[1:3, 1:3, 1:3] = 1.0
    assert check_mask_array(good, (4, 4, 4)) is not None
    with pytest.raises(MapMismatchError, match=r"the mask must have the half maps' shape"):
        check_mask_array(good, (5, 5, 5))
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteMapError, match="the mask contains NaN"):
        check_mask_array(bad, (4, 4, 4))
    with pytest.raises(EmptyMaskError, match="my mask is zero everywhere"):
        check_mask_array(np.zeros((4, 4, 4)), (4, 4, 4), "my mask")
    with pytest.raises(InvalidValueError):
        check_mask_array(good * 3, (4, 4, 4))
