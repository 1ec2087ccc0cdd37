"""spisonet.io.relion_runs: RELION's run-file names (one parser), and what the run's own
files say: healpix order, pixel size, single values, RELION's command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_model_star, write_sampling_star

from spisonet.io import JobName, find_pixel_size, healpix_order_of_run, parse_job_name, write_map
from spisonet.io.relion_runs import (
    job_name_of_star,
    newest_iteration_file,
    optimiser_command_option,
    parse_run_file,
    read_star_value,
    run_has_halves,
)


def _star(folder: Path, job: str) -> Path:
    """An (empty) external-reconstruction STAR of job ``job``: only its name matters here."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}_external_reconstruct.star"
    path.write_text("data_external_reconstruct_general\n")
    return path


# --------------------------------------------------------------------------------------
# names


def test_parse_job_name():
    jn = parse_job_name("my_run_x_it012_half2_class001")
    assert (jn.root, jn.iteration, jn.half, jn.kind, jn.number) == (
        "my_run_x",
        12,
        2,
        "class",
        "001",
    )
    assert jn.name(half=1) == "my_run_x_it012_half1_class001"
    assert jn.name(iteration=3) == "my_run_x_it003_half2_class001"
    last = parse_job_name("run_it1000_class001")
    assert last.half is None and last.iteration == 1000 and last.name() == "run_it1000_class001"
    assert parse_job_name("whatever") is None
    assert parse_job_name("run_it003_sampling") is None  # a run file, not a job
    assert parse_job_name("run_it003_half1_class001.mrc") is None


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("run_it003_sampling.star", ("run", 3, None, None, None, "_sampling.star")),
        ("a_b_it012_half2_model.star", ("a_b", 12, 2, None, None, "_model.star")),
        ("r_it004_half1_body002.mrc", ("r", 4, 1, "body", "002", ".mrc")),
        (
            "split_it123_x_it005_half1_class001_spisonet.lock",  # the last _it<NNN> splits
            ("split_it123_x", 5, 1, "class", "001", "_spisonet.lock"),
        ),
        (
            "run_it1000_class001_external_reconstruct.star",
            ("run", 1000, None, "class", "001", "_external_reconstruct.star"),
        ),
    ],
)
def test_parse_run_file(name, parts):
    jn = parse_run_file(name)
    assert (jn.root, jn.iteration, jn.half, jn.kind, jn.number, jn.suffix) == parts
    assert f"{jn.root}_it{jn.iteration:0{jn.digits}d}{jn.tail}" == name


def test_not_a_run_file():
    assert parse_run_file("particles.star") is None
    assert parse_run_file("run_it03_model.star") is None  # RELION writes >= 3 digits


def test_job_name_of_star():
    assert job_name_of_star("r_it003_half1_class001_external_reconstruct.star") == (
        "r_it003_half1_class001"
    )
    assert job_name_of_star("other.star") == "other"


def test_newest_iteration_file(tmp_path):
    jn = JobName("r", 6, 3, 1, "class", "001")
    for name in ("r_it004_optimiser.star", "r_it006_optimiser.star", "r_it009_optimiser.star"):
        (tmp_path / name).write_text("x")
    (tmp_path / "rr_it005_optimiser.star").write_text("x")  # another run
    found = newest_iteration_file(tmp_path, jn, "_optimiser.star", before=False)
    assert found == tmp_path / "r_it006_optimiser.star"
    found = newest_iteration_file(tmp_path, jn, "_optimiser.star", before=True)
    assert found == tmp_path / "r_it004_optimiser.star"
    assert newest_iteration_file(tmp_path, jn, "_sampling.star", before=False) is None
    assert newest_iteration_file(tmp_path / "missing", jn, "_optimiser.star", before=True) is None


# --------------------------------------------------------------------------------------
# values


def test_read_star_value_lists_and_loops(tmp_path):
    path = tmp_path / "o.star"
    path.write_text(
        "# a comment\ndata_general\n\n_rlnParticleDiameter 180\n\ndata_optics\n\nloop_\n"
        "_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 0.85\n2 0.90\n"
    )
    assert read_star_value(path, "rlnParticleDiameter") == "180"
    assert read_star_value(path, "rlnImagePixelSize") == "0.85"  # the loop's first row
    assert read_star_value(path, "rlnOpticsGroup") == "1"
    assert read_star_value(path, "rlnNothing") is None
    assert read_star_value(tmp_path / "missing.star", "rlnParticleDiameter") is None


def test_optimiser_command_option(tmp_path):
    path = tmp_path / "r_it002_optimiser.star"
    path.write_text(
        "# RELION optimiser; version 3.1.3\n# --i p.star --ref init.mrc --ini_high 12\n"
    )
    assert optimiser_command_option(path, "--ref") == "init.mrc"
    assert optimiser_command_option(path, "--ini_high") == "12"
    assert optimiser_command_option(path, "--pad") is None
    assert optimiser_command_option(tmp_path / "missing.star", "--ref") is None


def test_healpix_order_from_newest_sampling_star(tmp_path):
    folder = tmp_path / "Refine3D" / "job_1"
    star = _star(folder, "a_b_it006_half1_class001")
    assert healpix_order_of_run(star)[0] is None
    assert "no a_b_it<NNN>_sampling.star" in healpix_order_of_run(star)[1]
    write_sampling_star(folder / "a_b_it002_sampling.star", 2)
    write_sampling_star(folder / "a_b_it005_sampling.star", 4)
    write_sampling_star(folder / "a_b_it007_sampling.star", 9)  # a later iteration: not used
    write_sampling_star(folder / "b_it005_sampling.star", 8)  # another run's root: not used
    write_sampling_star(folder / "xa_b_it006_sampling.star", 8)
    assert healpix_order_of_run(star) == (4, "a_b_it005_sampling.star")
    (folder / "a_b_it006_sampling.star").write_text("data_sampling_general\n_rlnPsiStep 3\n")
    order, why = healpix_order_of_run(star)
    assert order is None and "a_b_it006_sampling.star has no rlnHealpixOrder" in why


def test_healpix_order_of_a_job_without_iteration_name(tmp_path):
    order, why = healpix_order_of_run(_star(tmp_path, "something"))
    assert order is None and "does not follow RELION's iteration naming" in why


# --------------------------------------------------------------------------------------
# the pixel size


def test_pixel_size_in_the_star_wins(tmp_path):
    star = _star(tmp_path, "r_it002_half1_class001")
    write_model_star(tmp_path / "r_it001_half1_model.star", 3.0)
    got = find_pixel_size(star, 1.1)
    assert got.value == 1.1 and got.source == f"rlnPixelSize in {star.name}"


def test_pixel_size_from_data_star_optics(tmp_path):
    star = _star(tmp_path, "run_it002_class001")
    (tmp_path / "run_it001_data.star").write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 0.85\n\n"
        "data_particles\n\nloop_\n_rlnImageName #1\n1@a.mrcs\n"
    )
    got = find_pixel_size(star)
    assert got.value == pytest.approx(0.85) and got.source == "run_it001_data.star"


def test_pixel_size_order_newest_iteration_model_first_own_half_first(tmp_path):
    star = _star(tmp_path, "r_x_it005_half2_class001")
    write_model_star(tmp_path / "r_x_it003_half2_model.star", 9.0)  # older
    write_model_star(tmp_path / "r_x_it004_half1_model.star", 1.5)  # the other half
    write_model_star(tmp_path / "r_x_it004_half2_model.star", 1.4)
    write_model_star(tmp_path / "r_x_it006_half2_model.star", 7.0)  # later: not used
    (tmp_path / "r_x_it004_data.star").write_text("data_\n_rlnImagePixelSize 8.0\n")
    assert find_pixel_size(star).value == pytest.approx(1.4)
    (tmp_path / "r_x_it004_half2_model.star").unlink()
    assert find_pixel_size(star).value == pytest.approx(1.5)


def test_pixel_size_through_the_optimiser_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    star = _star(tmp_path / "R", "r_it003_half1_class001")
    write_model_star(tmp_path / "elsewhere_model.star", 2.25)
    (tmp_path / "R" / "r_it002_optimiser.star").write_text(
        "data_optimiser_general\n_rlnModelStarFile elsewhere_model.star\n"
    )
    got = find_pixel_size(star)
    assert got.value == pytest.approx(2.25)
    assert got.source == "elsewhere_model.star (via r_it002_optimiser.star)"


def test_pixel_size_from_a_map_header(tmp_path):
    star = _star(tmp_path, "r_it003_half1_class001")
    write_map(tmp_path / "r_it002_half1_class001.mrc", np.zeros((4, 4, 4), np.float32), 3.3)
    (tmp_path / "r_it002_half1_model.star").write_text("data_model_general\n_rlnPixelSize 0\n")
    got = find_pixel_size(star)
    assert got.value == pytest.approx(3.3) and got.source == "r_it002_half1_class001.mrc"


def test_pixel_size_not_found(tmp_path):
    (tmp_path / "r_it002_half1_class001.mrc").write_text("not a map")
    for job in ("r_it003_half1_class001", "no_iteration_name"):
        got = find_pixel_size(_star(tmp_path, job))
        assert got.value is None and "no pixel size" in got.source


# --------------------------------------------------------------------------------------
# the layouts RELION names (MlOptimiser(Mpi)::maximization: _it, [_half], _body | _class)


@pytest.mark.parametrize(
    ("name", "layout", "half", "kind", "number"),
    [
        ("run_it012_half1_class001", "half", 1, "class", "001"),
        ("run_it012_half2_class001", "half", 2, "class", "001"),
        ("run_it017_class001", "joined", None, "class", "001"),  # last, joined iteration
        ("run_it008_half1_body002", "body", 1, "body", "002"),  # multi-body, halves apart
        ("run_it011_body002", "body", None, "body", "002"),  # multi-body, joined
        ("run_it025_class002", "class", None, "class", "002"),  # 3D classification
        ("run_it025_class003", "class", None, "class", "003"),
        ("my_run_ct3_it025_class010", "class", None, "class", "010"),
    ],
)
def test_job_layouts_as_relion_names_them(name, layout, half, kind, number):
    jn = parse_job_name(name)
    assert jn is not None
    assert (jn.layout, jn.half, jn.kind, jn.number) == (layout, half, kind, number)
    assert jn.name() == name  # the parts give the name back


@pytest.mark.parametrize(
    "name",
    [
        "run_class001",  # relion_refine with iter -1: no _it part
        "run_it012_half1",  # no class or body part
        "run_it012_half1_class001_extra",  # a suffix is not a job name
        "reconstruct",  # relion_reconstruct --external_reconstruct: its own --o
    ],
)
def test_names_outside_relions_iteration_naming_do_not_parse(name):
    assert parse_job_name(name) is None


def test_run_has_halves_tells_an_auto_refine_from_a_classification(tmp_path):
    _star(tmp_path, "refine_it003_half1_class001")
    _star(tmp_path, "refine_it004_class001")
    _star(tmp_path, "class3d_it025_class001")
    (tmp_path / "class3d_it025_model.star").write_text("")
    (tmp_path / "other_it001_half2_class001.mrc").write_text("")  # another run's half
    assert run_has_halves(tmp_path, "refine")
    assert not run_has_halves(tmp_path, "class3d")
    assert not run_has_halves(tmp_path / "missing", "refine")
