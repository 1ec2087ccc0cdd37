"""The plain map as the run's ``relion_refine`` makes it (spisonet.relion.plain_map).

The rule, as RELION's sources state it (``ml_optimiser.cpp`` of each tag): ``--minres_map``
defaults to 5 in every release; the gridding correction is done by 3.x unless
``--skip_gridding`` and skipped by 4.0 and later unless ``--dont_skip_gridding``. The run's
release and command line are the two lines RELION writes atop ``_optimiser.star``.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from helpers import make_job

from spisonet.io.relion_runs import read_refine_command
from spisonet.relion import console_main, read_external_star, reconstruct
from spisonet.relion.plain_map import plain_map_options


def _optimiser(folder, name: str, release: str | None, arguments: str | None) -> None:
    """An ``_optimiser.star`` with RELION's two header lines (either may be left out)."""
    lines = []
    if release is not None:
        lines.append(f"# RELION optimiser; version {release}")
    if arguments is not None:
        lines.append(f"# {arguments} ")
    lines += ["", "# version 30001", "", "data_optimiser_general", "", "_rlnOutputRootName run"]
    (folder / name).write_text("\n".join(lines) + "\n")


BASE = "--i particles.star --o Refine3D/run --auto_refine --split_random_halves --pad 2"


@pytest.mark.parametrize(
    ("release", "extra", "skip", "minres"),
    [
        ("3.1.3", "", False, 5),
        ("3.1.3", "--skip_gridding", True, 5),
        ("4.0.1", "", True, 5),
        ("5.1.0", "", True, 5),
        ("5.1.0", "--dont_skip_gridding", False, 5),
        ("5.1.0", "--minres_map 3", True, 3),
        ("3.1.3", "--minres_map 0 --skip_gridding", True, 0),
    ],
)
def test_options_follow_the_release_and_command_line(
    tmp_path, monkeypatch, release, extra, skip, minres
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D"
    star = make_job(folder, "run_it004_half1_class001")
    _optimiser(folder, "run_it003_optimiser.star", release, f"{BASE} {extra}".strip())
    command = read_refine_command(star)
    assert command is not None and command.release == release
    assert command.source == "run_it003_optimiser.star"
    options = plain_map_options(read_external_star(star))
    assert (options.skip_gridding, options.minres_map) == (skip, minres)
    assert release in options.source


def test_the_newest_earlier_optimiser_of_the_same_run_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D"
    star = make_job(folder, "run_it004_half1_class001")
    _optimiser(folder, "run_it002_optimiser.star", "3.1.3", BASE)
    _optimiser(folder, "run_it003_optimiser.star", "5.1.0", BASE)
    _optimiser(folder, "run_it005_optimiser.star", "3.1.3", BASE)  # later: not read
    _optimiser(folder, "other_it003_optimiser.star", "3.1.3", BASE)  # another run
    assert read_refine_command(star).source == "run_it003_optimiser.star"
    # the joined last iteration has no halves; RELION wrote it000 before iteration 1
    last = make_job(folder, "run_it001_class001")
    _optimiser(folder, "run_it000_optimiser.star", "4.0.0", BASE)
    assert read_refine_command(last).source == "run_it000_optimiser.star"


def test_without_an_optimiser_the_star_tells_the_release(tmp_path, monkeypatch):
    """3.1's STAR has no rlnPixelSize (gridding done), 4.0's and 5.x's have it (skipped)."""
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "run_it004_half1_class001")
    assert read_refine_command(star) is None
    job = read_external_star(star)
    assert plain_map_options(job).skip_gridding is False
    text = star.read_text().replace(
        "_rlnCurrentImageSize", "_rlnPixelSize 1.5\n_rlnCurrentImageSize"
    )
    star.write_text(text)
    options = plain_map_options(read_external_star(star))
    assert options.skip_gridding is True and options.minres_map == 5
    # a header without a release line: the command line's flags still count
    _optimiser(tmp_path / "job", "run_it003_optimiser.star", None, f"{BASE} --dont_skip_gridding")
    assert plain_map_options(read_external_star(star)).skip_gridding is False


def test_asked_values_win_and_an_odd_file_is_no_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D"
    star = make_job(folder, "run_it004_half1_class001")
    _optimiser(folder, "run_it003_optimiser.star", "5.1.0", f"{BASE} --minres_map five")
    job = read_external_star(star)
    assert plain_map_options(job).minres_map == 5  # unparsable: RELION's default
    asked = plain_map_options(job, minres_map=-1, skip_gridding=False)
    assert (asked.minres_map, asked.skip_gridding) == (-1, False)
    (folder / "run_it003_optimiser.star").write_bytes(b"\xff\xfe not a star")
    assert plain_map_options(job).skip_gridding is False  # 3.1-style STAR, no release


def _run_job(tmp_path, monkeypatch, release: str):
    """(run folder, STAR, job) of a box-12 job whose run says ``release`` atop its
    optimiser file; in ``tmp_path``, with no minres variable set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPISONET_MINRES_MAP", raising=False)
    folder = tmp_path / "Refine3D"
    star = make_job(folder, "run_it004_half1_class001", ori=12, pad=2, tau2_scale=0.05)
    _optimiser(folder, "run_it003_optimiser.star", release, BASE)
    return folder, star, read_external_star(star)


def test_spisonet_relion_writes_the_map_of_the_runs_release(tmp_path, monkeypatch):
    """RELION 5.1's relion_refine skips the gridding correction: so does the plain map;
    ``--dont-skip-gridding --minres-map -1`` is relion_external_reconstruct's map."""
    folder, star, job = _run_job(tmp_path, monkeypatch, "5.1.0")
    refine5 = reconstruct(job, minres_map=5, skip_gridding=True)
    external = reconstruct(job)
    assert np.abs(refine5 - reconstruct(job, minres_map=5)).max() > 1e-4 * np.abs(refine5).max()

    def written(argv):
        assert console_main(["--keep-inputs", "--no-correction", *argv, str(star)]) == 0
        return mrcfile.read(str(job.result))

    np.testing.assert_array_equal(written([]), refine5)
    np.testing.assert_array_equal(written(["--minres-map", "-1", "--dont-skip-gridding"]), external)
    log = (folder / "spisonet_relion.log").read_text()
    assert "no gridding correction (relion_refine 5.1.0: run_it003_optimiser.star)" in log
    assert console_main(["--skip-gridding", "--dont-skip-gridding", str(star)]) == 2


def test_relion_reconstruct_command_takes_the_same_options(tmp_path, monkeypatch):
    """``spisonet relion-reconstruct`` passes --skip-gridding/--dont-skip-gridding on."""
    from typer.testing import CliRunner

    from spisonet.cli import app

    _, star, job = _run_job(tmp_path, monkeypatch, "3.1.3")
    args = ["relion-reconstruct", "--no-correction", "--keep-inputs", str(star)]
    for flag, skip in (("--skip-gridding", True), ("--dont-skip-gridding", False), (None, False)):
        result = CliRunner().invoke(app, args[:-1] + ([flag] if flag else []) + args[-1:])
        assert result.exit_code == 0, result.output
        expected = reconstruct(job, minres_map=5, skip_gridding=skip)
        np.testing.assert_array_equal(mrcfile.read(str(job.result)), expected)
