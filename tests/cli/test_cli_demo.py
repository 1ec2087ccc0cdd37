"""``spisonet demo``: simulated data with a real missing cone, the diagnostics, and (with
a preset) the correction compared with the ground truth; options checked before any work."""

from __future__ import annotations

import time

import pytest
from helpers import invoke
from typer.testing import CliRunner

from spisonet.cli import app
from spisonet.correction import ground_truth_metrics
from spisonet.io import read_map


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
    assert (out / "before_after.png").exists()
    assert "FSC with the ground truth" in output and "trained" in output


def test_demo_data_has_a_real_missing_cone(tmp_path) -> None:
    """The demo must show the method where it matters: the raw data's cone around the
    view axis is empty (not merely thinner), while the best direction is well measured."""
    out = tmp_path / "demo"
    invoke("demo", "--out", out, "--no-correct")
    gt, h1, h2, mask = (read_map(out / f"{k}.mrc") for k in ("gt", "half1", "half2", "mask"))
    raw = {"raw": 0.5 * (h1.data + h2.data)}
    m = ground_truth_metrics(gt.data, raw, gt.voxel_size, mask.data, n_directions=50)["raw"]
    assert m["cone_mean"] < 0.2, m["cone_mean"]  # mean FSC with the truth in the 20° cone
    assert m["res05_best"] < 8.0 < m["res05_worst"], (m["res05_best"], m["res05_worst"])


@pytest.mark.parametrize(
    "bad",
    [
        ["--preset", "fast"],
        ["--epochs", "-1"],
        ["--seed", "-3"],
        ["--ensemble", "0"],
        ["--out", "a_file.txt"],
    ],
)
def test_demo_checks_its_options_before_simulating(tmp_path, monkeypatch, bad) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("not a folder")
    args = ["--out", "demo_out", *bad] if bad[0] != "--out" else bad
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["demo", *args])
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 2, (result.output, result.exception)
    assert bad[0] in result.output  # the message names the option
    assert elapsed < 3.0, elapsed  # well under a second when quiet; simulating takes > 10 s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt"]  # nothing written


def test_demo_does_not_call_another_command() -> None:
    """Shared work is plain functions (run_fsc3d, run_reconstruct, simulate_to), not
    other commands' entry points (which parse options and check outputs again)."""
    import ast
    import inspect

    import spisonet.cli.demo as demo

    called = {
        n.func.id
        for n in ast.walk(ast.parse(inspect.getsource(demo)))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not {c for c in called if c.endswith("_command")}, called


@pytest.mark.slow
def test_demo_trains_one_network_unless_asked(tmp_path, monkeypatch) -> None:
    """The cpu preset averages three networks; the demo trains one (the first command a user
    runs must end in minutes) and says so, and --ensemble gives the preset's three."""
    import spisonet.cli.demo as demo
    from spisonet.correction import PRESETS

    seen = []
    monkeypatch.setattr(demo, "_correction", lambda console, out, paths, s: seen.append(s))
    invoke("demo", "--out", tmp_path / "a", "--preset", "cpu")
    invoke("demo", "--out", tmp_path / "b", "--preset", "cpu", "--ensemble", "3")
    assert PRESETS["cpu"].ensemble == 3
    assert [s.ensemble for s in seen] == [demo.DEMO_ENSEMBLE, 3] == [1, 3]
    assert all(s.preset == "cpu" and s.epochs == PRESETS["cpu"].epochs for s in seen)
