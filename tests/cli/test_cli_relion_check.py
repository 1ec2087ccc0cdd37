"""``spisonet relion-check`` (spisonet/cli/relion_check.py over spisonet.relion.check): a
good set-up passes (exit 0) and says from which iteration the network starts; each way a
set-up would fail gives exit code 2 and the reason."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import make_job, write_sampling_star
from typer.testing import CliRunner

import spisonet.relion.check
from spisonet.cli import app
from spisonet.errors import InvalidValueError
from spisonet.relion import check_relion_setup
from spisonet.relion.check import DeviceInfo

VARIABLE = "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE"
CPU = DeviceInfo("cpu", "CPU, 2 cores (test)")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A RELION project folder (the cwd) with a fake ``spisonet-relion`` on the PATH, no
    settings variables and a stub device (torch is probed in one test only)."""
    for name in list(os.environ):
        if name.startswith(("SPISONET_", "ISONET_")) or name == VARIABLE:
            monkeypatch.delenv(name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "spisonet-relion"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spisonet.relion.check, "probe_device", lambda: CPU)
    return tmp_path


def write_run(folder, orders, resolutions, *, finished=False, pixel=2.0, ref="ref.mrc"):
    """RELION's files of iterations 0.. of run ``folder/run``: healpix order and current
    resolution per iteration, the optimiser's command line and particle diameter (as
    RELION, no ``_sampling.star`` for iteration 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    for it, (order, res) in enumerate(zip(orders, resolutions, strict=True)):
        if it > 0:
            write_sampling_star(folder / f"run_it{it:03d}_sampling.star", order)
        (folder / f"run_it{it:03d}_half1_model.star").write_text(
            "\n# version 30001\n\ndata_model_general\n\n_rlnReferenceDimensionality 3\n"
            f"_rlnOriginalImageSize 16\n_rlnCurrentResolution {res:.6f}\n"
            f"_rlnPixelSize {pixel:.6f}\n\n"
        )
        (folder / f"run_it{it:03d}_optimiser.star").write_text(
            f"# --o {folder}/run --ref {ref} --ini_high 30 --particle_diameter 180 --auto_refine\n"
            "\n# version 30001\n\ndata_optimiser_general\n\n_rlnParticleDiameter 180.000000\n\n"
        )
    if finished:
        (folder / "run_model.star").write_text("data_model_general\n")


def relion_check(*args, env: dict | None = None):
    return CliRunner().invoke(
        app, ["relion-check", *map(str, args)], env={"COLUMNS": "1000", **(env or {})}
    )


# --------------------------------------------------------------------------- good set-ups


def test_a_good_set_up_passes_and_says_when_the_network_starts(project, monkeypatch):
    (project / "relion.toml").write_text('start_healpix = 2\npreset = "tiny"\n')
    monkeypatch.setenv(VARIABLE, f"spisonet-relion --config {project / 'relion.toml'}")
    monkeypatch.setenv("SPISONET_EPOCHS", "3")
    run = project / "Refine3D" / "job012"
    write_run(run, orders=[1, 1, 2, 2, 2], resolutions=[30, 25, 20, 12, 9])
    result = relion_check("--run-dir", run)
    assert result.exit_code == 0, result.output
    out = result.output
    # the config came from the variable RELION will run; the sources are shown
    assert f"settings file {project / 'relion.toml'} (from {VARIABLE})" in out
    assert f"{project / 'relion.toml'}:start_healpix" in out and "SPISONET_EPOCHS" in out
    assert f"{VARIABLE}='spisonet-relion --config" in out and str(project / "bin") in out
    assert "preset: tiny" in out
    # iteration M+1 sees M's files: order 2 from it002, resolution 12 Å from it003
    assert "the network would start at iteration 4: healpix order 2 (run_it003_sampling.star)" in (
        out
    )
    assert "12.00 Å (rlnCurrentResolution in run_it003_half1_model.star)" in out
    assert "soft sphere of 180 Å (rlnParticleDiameter in run_it004_optimiser.star)" in out
    assert out.rstrip().endswith("ready")


def test_the_history_reads_the_resolution_as_the_correction_does(project):
    """RELION's rlnCurrentResolution can be 2x coarser than the 0.143 crossing of the
    model's rlnGoldStandardFsc, the rule the correction applies to the job's STAR (seen in
    a real run: 21.3 Å against 8.5 Å; relion-check then said the gates never opened in a
    run whose network ran in 8 iterations). The FSC column wins when present."""
    run = project / "Refine3D" / "job013"
    write_run(run, orders=[1, 2, 3, 3], resolutions=[40, 30, 30, 30], finished=True)
    # the slow statement: box 16 at 2 Å, the FSC falls below 0.143 first at shell 4
    fsc = [1.0, 0.99, 0.9, 0.5, 0.1, 0.3, 0.05, 0.0, 0.0]
    first_below = next(i for i in range(1, len(fsc)) if fsc[i] < 0.143)
    expected = 16 * 2.0 / first_below
    rows = "".join(f"{i} {v:.4f}\n" for i, v in enumerate(fsc))
    model = run / "run_it002_half1_model.star"
    model.write_text(
        model.read_text()
        + "\n# version 30001\n\ndata_model_class_1\n\nloop_\n_rlnSpectralIndex #1\n"
        + "_rlnGoldStandardFsc #2\n"
        + rows
        + "\n"
    )
    result = relion_check("--run-dir", run, env={"SPISONET_START_HEALPIX": "2"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "the network would start at iteration 3: healpix order 3" in out
    assert f"{expected:.2f} Å (rlnGoldStandardFsc in run_it002_half1_model.star)" in out
    # where the column is absent, RELION's own estimate (30 Å: closed) is what there is
    assert "│ 2         │ 2             │ 30.00          │ closed: resolution" in out
    assert "gridding correction (RELION's release unknown: 3.x assumed)" in out


def test_the_history_holds_the_resolution_gate_open_once_opened(project):
    """As the correction: after the first open iteration a resolution back above the start
    (RELION's wavers by a shell) does not close the gates again."""
    run = project / "Refine3D" / "job014"
    write_run(run, orders=[2, 2, 2, 2, 2], resolutions=[30, 30, 10, 20, 20], finished=True)
    report = check_relion_setup(run_dir=run, environ={"SPISONET_START_HEALPIX": "2"})
    by_iteration = {row.iteration: row for row in report.gates}
    assert by_iteration[2].closed  # 30 Å (iteration 1's) against a start of 15 Å
    assert not by_iteration[3].closed  # 10 Å: open
    assert by_iteration[4].resolution == 20 and not by_iteration[4].closed  # held open
    assert not by_iteration[5].closed


def test_a_star_is_gated_as_the_correction_would(project):
    """The job's own gates: the STAR's FSC and the sampling file before the job's."""
    run = project / "Refine3D" / "job012"
    write_run(run, orders=[1, 1, 3, 3, 3], resolutions=[30, 25, 20, 18, 16])
    # FSC linspace(1, 0, 9) falls below 0.143 at shell 7: 16 * 2 Å / 7 = 4.57 Å
    star = make_job(run, "run_it005_half1_class001", ori=16, pad=1)
    report = check_relion_setup(star=star.relative_to(project), environ={})
    assert report.ok and report.start_iteration == 5
    last = report.gates[-1]
    assert (last.iteration, last.healpix_order, last.order_source) == (
        5,
        3,
        "run_it004_sampling.star",
    )
    assert last.resolution == pytest.approx(32 / 7)
    assert last.resolution_source == f"rlnGoldStandardFsc in {star.name}"
    assert [r.iteration for r in report.gates] == [2, 3, 4, 5]
    assert not any(r.open for r in report.gates[:-1])  # resolution 16 Å and worse before
    result = relion_check("--star", star.relative_to(project))
    assert result.exit_code == 0, result.output
    assert "the network would start at iteration 5" in result.output


def test_gates_that_never_opened_in_a_finished_run_are_said_but_not_fatal(project):
    run = project / "run"
    write_run(run, orders=[1, 2, 2], resolutions=[30, 20, 8], finished=True)
    result = relion_check("--run-dir", run, env={"SPISONET_START_HEALPIX": "4"})
    assert result.exit_code == 0, result.output
    assert "the gates never opened in this run (up to iteration 3: highest healpix order 2" in (
        result.output
    )
    assert "lower start_healpix or raise start_resolution" in result.output


def test_no_variable_set_is_a_note_and_the_alias_works(project):
    result = CliRunner().invoke(app, ["relion_check"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    assert f"spisonet-relion: {project / 'bin' / 'spisonet-relion'}" in result.output
    assert f"{VARIABLE} is not set" in result.output
    assert "no settings file; 0 from the environment" in result.output
    assert "auto -> cpu (no CUDA GPU found)" in result.output  # the stub's CPU


def test_the_real_device_probe(project, monkeypatch):
    monkeypatch.undo()  # the real probe, PATH and environment again
    monkeypatch.chdir(project)
    report = check_relion_setup(environ={}, which=lambda name: "/bin/" + name)
    device = next(f for f in report.findings if f.topic == "device")
    assert device.level == "ok" and device.text.startswith(("CPU, ", "CUDA: "))
    preset = next(f for f in report.findings if f.topic == "preset")
    assert preset.text in ("auto -> cpu (no CUDA GPU found)", "auto -> gpu (a CUDA GPU is present)")


# --------------------------------------------------------------------------- bad set-ups


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (
            lambda p, env: (p / "relion.toml").write_text("epoch = 3\n"),
            "relion.toml: unknown setting 'epoch'; did you mean 'epochs'?",
        ),
        (
            lambda p, env: env.update({"ISONET_EPOCHS": "-1"}),
            "ISONET_EPOCHS=-1: expected an integer >= 0 (inside RELION, every iteration would",
        ),
        (
            lambda p, env: env.update({"PATH": str(p)}),  # no spisonet-relion there
            "spisonet-relion is not on the PATH",
        ),
        (
            lambda p, env: env.update({VARIABLE: "/opt/nowhere/spisonet-relion"}),
            "'/opt/nowhere/spisonet-relion' is not an executable on the PATH; RELION would stop",
        ),
        (
            lambda p, env: env.update({VARIABLE: "spisonet-relion --verbose"}),
            "spisonet-relion refuses its options (spisonet-relion: error: unrecognized "
            "arguments: --verbose); RELION would stop",
        ),
        (
            lambda p, env: env.update({VARIABLE: "spisonet-relion --config gone.toml"}),
            "gone.toml: settings file not found",
        ),
    ],
)
def test_a_set_up_that_would_fail_exits_2_with_the_reason(project, setup, reason):
    (project / "relion.toml").write_text("epochs = 2\n")
    env: dict[str, str] = {}
    setup(project, env)
    config = [] if VARIABLE in env else ["--config", "relion.toml"]
    result = relion_check(*config, env=env)
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "1 problem(s)" in result.output


def test_torch_that_cannot_start_exits_2(project, monkeypatch):
    broken = DeviceInfo(None, "OSError: no /dev/urandom")
    monkeypatch.setattr(spisonet.relion.check, "probe_device", lambda: broken)
    result = relion_check()
    assert result.exit_code == 2
    assert "torch cannot start (OSError: no /dev/urandom)" in result.output


def test_a_folder_without_a_run_exits_2(project):
    (project / "empty").mkdir()
    result = relion_check("--run-dir", "empty")
    assert result.exit_code == 2
    assert "empty: no RELION run files (<root>_it<NNN>_sampling.star)" in result.output


def test_keep_lowres_without_its_reference_exits_2(project):
    write_run(project / "run", orders=[1], resolutions=[30], ref="InitialModel/ref.mrc")
    result = relion_check("--run-dir", "run", env={"ISONET_KEEP_LOWRES": "1"})
    assert result.exit_code == 2
    assert "keep_lowres: InitialModel/ref.mrc not found" in result.output


def test_a_star_that_is_not_relion_s_exits_2(project):
    (project / "x_external_reconstruct.star").write_text("data_other\n\n_rlnSomething 1\n")
    result = relion_check("--star", "x_external_reconstruct.star")
    assert result.exit_code == 2
    assert "no 'external_reconstruct_general' block" in result.output


def test_star_and_run_dir_together_are_a_usage_error(project):
    result = relion_check("--star", "a.star", "--run-dir", ".")
    assert result.exit_code == 2
    assert "--star or --run-dir, not both" in result.output
    with pytest.raises(InvalidValueError, match="not both"):
        check_relion_setup(star="a.star", run_dir=".")


def test_a_config_other_than_relion_s_is_pointed_out(project, monkeypatch):
    (project / "relion.toml").write_text("epochs = 2\n")
    (project / "old.toml").write_text("epochs = 9\n")
    monkeypatch.setenv(VARIABLE, "spisonet-relion --config old.toml")
    result = relion_check("--config", "relion.toml")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"RELION will read old.toml ({VARIABLE}), not relion.toml" in out
    assert "--config old.toml is relative: RELION reads it from the folder" in out
    assert "1 from relion.toml, 0 from the environment" in out  # the one asked for is read
