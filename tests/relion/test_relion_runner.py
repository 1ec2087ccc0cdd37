"""One external reconstruction as RELION runs it (spisonet.relion.runner): the map and its
pixel size, the log line, the correction applied, every failure of the correction turned
into RELION's plain map, and ``spisonet-relion``'s exit codes."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from helpers import make_job, write_model_star

import spisonet.relion.runner
from spisonet.relion import console_main, read_external_star, reconstruct, run_external_reconstruct
from spisonet.relion.runner import RELION_REFINE_MINRES_MAP


def test_run_writes_map_with_pixel_size_and_removes_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D" / "job_0_1"
    star = make_job(folder, "run_x_y_it004_half1_class001", ori=12, pad=2)
    write_model_star(folder / "run_x_y_it003_half1_model.star", 1.37)
    write_model_star(folder / "run_x_y_it002_half1_model.star", 9.9)  # older: not used
    write_model_star(folder / "other_run_it003_half1_model.star", 5.5)  # another run
    job = read_external_star(star)
    expected = reconstruct(job, minres_map=RELION_REFINE_MINRES_MAP)
    out = run_external_reconstruct(star)
    assert out == job.result
    with mrcfile.open(str(out)) as mrc:
        np.testing.assert_array_equal(mrc.data, expected)
        assert mrc.voxel_size.x == pytest.approx(1.37)
    assert not job.data_real.exists() and not job.data_imag.exists() and not job.weight.exists()
    line = capsys.readouterr().out
    assert "run_x_y_it004_half1_class001: plain map" in line and "1.37" in line
    assert "run_x_y_it003_half1_model.star" in line
    assert (folder / "spisonet_relion.log").read_text().count("plain map") == 1


def test_pixel_size_unknown_falls_back_to_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "lonely_it001_half2_class001", ori=8, pad=1)
    out = run_external_reconstruct(star, keep_inputs=True)
    with mrcfile.open(str(out)) as mrc:
        assert mrc.voxel_size.x == pytest.approx(1.0)
    text = capsys.readouterr().out
    assert "pixel size not found" in text and "writing 1.0 Å" in text
    assert read_external_star(star).weight.exists()  # kept


def test_correction_is_applied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)
    seen = {}

    def double(job, volume, pixel):
        seen["pixel"] = pixel
        return 2 * volume

    out = run_external_reconstruct(star, correction=double)
    np.testing.assert_allclose(mrcfile.read(str(out)), 2 * plain, rtol=1e-6)
    assert seen["pixel"] == 1.0


def test_correction_returning_none_keeps_the_plain_map_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)

    class Keep:
        summary = "gate closed, for a reason"

        def __call__(self, job, volume, pixel):
            return None

    out = run_external_reconstruct(star, correction=Keep())
    np.testing.assert_array_equal(mrcfile.read(str(out)), plain)
    assert "plain map (gate closed, for a reason)" in capsys.readouterr().out


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
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)
    out = run_external_reconstruct(star, correction=bad)
    np.testing.assert_array_equal(mrcfile.read(str(out)), plain)
    text = capsys.readouterr().out
    assert "correction failed, writing the plain reconstruction" in text and message in text
    assert "plain (correction failed) map" in text
    assert "Traceback" in (star.parent / "spisonet_relion.log").read_text()


def test_bad_env_never_kills_relion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ISONET_EPOCHS", "many")
    star = make_job(tmp_path / "job", "r_it002_half1_class001", ori=8, pad=1)
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)
    assert console_main(["--keep-inputs", str(star)]) == 0
    np.testing.assert_array_equal(mrcfile.read(str(read_external_star(star).result)), plain)
    out = capsys.readouterr().out
    assert "correction failed" in out and "ISONET_EPOCHS='many'" in out


# --------------------------------------------------------------------------------------
# spisonet-relion: exit codes as the spisonet command line's


def test_console_main_writes_the_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    assert console_main(["--keep-inputs", "--no-correction", str(star)]) == 0
    assert read_external_star(star).result.exists()


def test_console_main_input_error_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=1)
    read_external_star(star).weight.unlink()
    assert console_main([str(star)]) == 2
    err = capsys.readouterr().err
    assert "spisonet-relion: error:" in err and "weight.mrc: file not found" in err
    assert "FAILED: " in (star.parent / "spisonet_relion.log").read_text()


def test_console_main_unexpected_error_exits_1(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(spisonet.relion.runner, "run_external_reconstruct", broken)
    assert console_main([str(tmp_path / "x_external_reconstruct.star")]) == 1
    assert "spisonet-relion: error: OSError: disk on fire" in capsys.readouterr().err


def test_console_main_interrupted_exits_130(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spisonet.relion.runner, "run_external_reconstruct", interrupted)
    assert console_main([str(tmp_path / "x.star")]) == 130


@pytest.mark.parametrize(("argv", "code"), [([], 2), (["a.star", "--bogus"], 2), (["--help"], 0)])
def test_console_main_usage(argv, code, capsys):
    assert console_main(argv) == code


def test_console_main_on_a_missing_star_exits_2(tmp_path, capsys):
    assert console_main([str(tmp_path / "none.star")]) == 2
    assert "STAR file not found" in capsys.readouterr().err


def test_cli_relion_reconstruct(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spisonet.cli import app

    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=2)
    result = CliRunner().invoke(app, ["relion-reconstruct", str(star), "--no-correction"])
    assert result.exit_code == 0, result.output
    job = read_external_star(star)
    assert job.result.exists() and not job.weight.exists()


def test_cli_relion_reconstruct_fails_like_spisonet_relion(tmp_path, monkeypatch):
    """Both entries share one runner: same exit code, same FAILED line in the run's log."""
    from typer.testing import CliRunner

    from spisonet.cli import app

    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", ori=8, pad=2)
    read_external_star(star).data_real.unlink()  # RELION's data file is gone: bad input
    result = CliRunner().invoke(app, ["relion-reconstruct", str(star), "--no-correction"])
    assert result.exit_code == 2, result.output
    logs = list((tmp_path / "job").glob("spisonet_relion.log"))
    assert logs and "FAILED" in logs[0].read_text()


def test_console_main_refuses_abbreviated_options(tmp_path, capsys):
    """argparse would read --keep-input as --keep-inputs; a typo must be an error."""
    assert console_main(["--keep-input", str(tmp_path / "x.star")]) == 2
    assert "unrecognized arguments: --keep-input" in capsys.readouterr().err


def test_minres_map_option_and_variable(tmp_path, monkeypatch):
    """The plain map's Wiener term from shell 5 by default (relion_refine's own map);
    ``--minres-map -1`` or ``SPISONET_MINRES_MAP=-1``: relion_external_reconstruct's map."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPISONET_MINRES_MAP", raising=False)
    star = make_job(tmp_path / "job", ori=12, pad=2, tau2_scale=0.05)
    job = read_external_star(star)
    refine_map, external_map = (
        reconstruct(job, minres_map=RELION_REFINE_MINRES_MAP),
        reconstruct(job),
    )
    assert np.abs(refine_map - external_map).max() > 1e-4 * np.abs(external_map).max()

    def written(argv):
        assert console_main(["--keep-inputs", "--no-correction", *argv, str(star)]) == 0
        return mrcfile.read(str(job.result))

    np.testing.assert_array_equal(written([]), refine_map)
    np.testing.assert_array_equal(written(["--minres-map", "-1"]), external_map)
    monkeypatch.setenv("SPISONET_MINRES_MAP", "-1")
    np.testing.assert_array_equal(written([]), external_map)
    monkeypatch.delenv("SPISONET_MINRES_MAP")
    toml = tmp_path / "relion.toml"
    toml.write_text("minres_map = -1\n")
    np.testing.assert_array_equal(written(["--config", str(toml)]), external_map)
    monkeypatch.setenv("SPISONET_MINRES_MAP", "5")  # a variable overrides the file
    np.testing.assert_array_equal(written(["--config", str(toml)]), refine_map)
    # a bad variable must not stop RELION: logged, and the default map
    monkeypatch.setenv("SPISONET_MINRES_MAP", "five")
    np.testing.assert_array_equal(written([]), refine_map)
    log = (star.parent / "spisonet_relion.log").read_text()
    assert "settings not read" in log and "SPISONET_MINRES_MAP" in log
    # an explicit bad option is a usage error: RELION stops at its first call
    assert console_main(["--keep-inputs", "--minres-map", "-3", str(star)]) == 2
