"""The CI subset of the evaluation matrix (benchmarks/bench_matrix.py --set ci, tiny preset).

Two small cells (box 32): a 20° preferred-view cone with a tight mask and uniform views
with a spherical mask. The tiny network trains for seconds, so the figures are small;
what must hold is that the matrix runs end to end, finds the missing cone where the
simulation put it, scores every cell, runs the trust check, and that the correction
never makes the map worse than the raw average by more than a small margin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_matrix_ci_subset_runs_and_does_no_harm(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_matrix

    rows = bench_matrix.main(["--set", "ci", "--preset", "tiny", "--out", str(tmp_path)])
    assert [r["cell"]["distribution"] for r in rows] == ["tilt:20", "uniform"]
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(files) == 2
    cone, uniform = rows
    # the worst cone of views within 20° of z lies along z (found from the truth)
    assert abs(cone["worst_direction"][2]) > 0.85
    assert cone["cone_raw"] < uniform["cone_raw"]
    for r in rows:
        assert np.isfinite(r["gain"]) and np.isfinite(r["max_global_drop"])
        assert r["gain"] > -0.03, r["name"]
        assert r["max_global_drop"] < 0.05, r["name"]
    assert cone["trust_score"] is not None
    assert cone["trust_verdict"] in ("good", "partial", "low")
    assert np.isfinite(cone["trust_phase_score"])
    # at 32³ the measured band is not read (the gate's blur is too wide): nothing vouched away
    assert cone["measured_band"]["readable"] is False
    assert cone["trust_vouched"] == cone["trust_score"]
    # a rerun skips finished cells and reads the same figures back
    again = bench_matrix.main(["--set", "ci", "--preset", "tiny", "--out", str(tmp_path)])
    assert [r["gain"] for r in again] == [r["gain"] for r in rows]
    summary = bench_matrix.summarise(rows)
    assert summary["cells"] == 2 and summary["weakest_cell"] == cone["name"]
    # each row carries its worst cone's figure noise, and the table shows it
    from spisonet.correction.evaluate import cone_figure_noise

    n = cone["cell"]["box"]
    assert cone["figure_noise"] == cone_figure_noise(n, np.array(cone["worst_direction"]))
    assert summary["weakest_figure_noise"] == cone["figure_noise"]
    assert f"± {cone['figure_noise']:.3f}" in bench_matrix.table(rows)
    assert json.loads((tmp_path / files[0]).read_text())["name"] in {r["name"] for r in rows}
    sys.modules.pop("bench_matrix", None)


@pytest.mark.slow
def test_matrix_train_seeds_are_runs_of_their_own_and_summarised_per_cell(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_matrix

    name = bench_matrix.CI[0].name
    argv = ["--cells", name, "--preset", "tiny", "--out", str(tmp_path), "--train-seeds", "0,1"]
    rows = bench_matrix.main(argv)
    assert [r["train_seed"] for r in rows] == [0, 1]
    assert [r["overrides"]["seed"] for r in rows] == [0, 1]
    saved = sorted(p.name for p in tmp_path.glob("*.json"))
    assert saved == [f"{name}__tiny__seed0.json", f"{name}__tiny__seed1.json"]
    # two seeds of one cell train two different networks
    assert rows[0]["cone_corrected"] != rows[1]["cone_corrected"]
    (cell,) = bench_matrix.over_seeds(rows)
    gains = [r["gain"] for r in rows]
    assert cell["gain"] == pytest.approx(sum(gains) / 2)
    assert (cell["gain_min"], cell["gain_max"]) == (min(gains), max(gains))
    assert cell["max_global_drop"] == max(r["max_global_drop"] for r in rows)
    assert cell["seeds"] == [0, 1]
    summary = bench_matrix.summarise([cell])
    assert summary["weakest_gain"] == pytest.approx(cell["gain"])
    assert summary["widest_seed_spread"] == pytest.approx(max(gains) - min(gains))
    # a rerun finds both seeds done and trains nothing
    again = bench_matrix.main(argv)
    assert [r["gain"] for r in again] == gains
    sys.modules.pop("bench_matrix", None)


def test_band_fsc_by_its_definition(monkeypatch):
    """``bench_matrix_replay.band_fsc`` against an explicit loop over every Fourier voxel
    (shell round(|k|), angle from the axis), on random maps and a random axis; one band
    0–90° is the global FSC."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_matrix_replay

    from spisonet.fsc_shells import fsc_curve

    n = 12
    rng = np.random.default_rng(3)
    a, t = rng.normal(size=(2, n, n, n))
    mask = rng.random((n, n, n))
    axis = (0.3, -0.5, 0.8)
    shells = [2, 3, 4]
    got = bench_matrix_replay.band_fsc(a, t, mask, axis, shells)
    u = np.array(axis) / np.linalg.norm(axis)
    fa, ft = np.fft.fftn(a * mask), np.fft.fftn(t * mask)
    sums = np.zeros((len(shells), 3, 3))  # cross, |a|², |t|² per shell and band
    for idx in np.ndindex(n, n, n):
        kz, ky, kx = ((i + n // 2) % n - n // 2 for i in idx)
        r = np.sqrt(kx * kx + ky * ky + kz * kz)
        if round(r) not in shells:
            continue
        theta = np.degrees(np.arccos(min(1.0, abs(kx * u[0] + ky * u[1] + kz * u[2]) / r)))
        band = 0 if theta < 30 else 1 if theta < 60 else 2
        i = shells.index(round(r))
        sums[i, band] += [np.real(fa[idx] * np.conj(ft[idx])), abs(fa[idx]) ** 2, abs(ft[idx]) ** 2]
    want = sums[..., 0] / np.sqrt(sums[..., 1] * sums[..., 2])
    np.testing.assert_allclose(got, want, atol=1e-10)
    whole = bench_matrix_replay.band_fsc(a, t, mask, axis, shells, ((0.0, 90.0),))
    np.testing.assert_allclose(whole[:, 0], fsc_curve(a, t, mask)[0][shells], atol=1e-5)
    sys.modules.pop("bench_matrix_replay", None)


@pytest.mark.slow
def test_replay_scores_each_seed_and_their_ensemble(tmp_path, monkeypatch):
    """``bench_matrix_replay.py --ensemble``: per seed and for the seeds' mean, each after the
    measured-data step; maps saved after the step are refused."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_matrix
    import bench_matrix_replay
    from matrix_cells import cell_inputs, cell_mask, ground_truth

    from spisonet.correction.evaluate import score_correction
    from spisonet.correction.pipeline import measured_data_step
    from spisonet.fsc3d import fsc3d, support_limit

    cell = bench_matrix.CI[0]
    maps = tmp_path / "maps"
    bench_matrix.main([
        "--cells", cell.name, "--preset", "tiny", "--out", str(tmp_path / "o"),
        "--train-seeds", "0,1", "--override", "network_only=true", "--save-maps", str(maps),
    ])  # fmt: skip
    (row,) = bench_matrix_replay.main(["--maps", str(maps), "--ensemble"])
    assert row["name"] == cell.name and row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
    assert row["per_seed"][0] != row["per_seed"][1]
    # the ensemble: both seeds' corrected halves averaged, then the step, then the score
    halves = []
    for s in (0, 1):
        with np.load(maps / f"seed{s}" / f"{cell.name}.npz") as z:
            assert bool(z["network_only"])
            halves.append(z["corrected_halves"].astype(np.float64))
    mean = [(halves[0][i] + halves[1][i]) / 2 for i in range(2)]
    truth, _ = ground_truth(cell.structure, cell.box, 0)
    mask = cell_mask(cell.mask, truth)
    h1, h2, apix = cell_inputs(cell, 0, None)
    volume = fsc3d(h1, h2, voxel_size=apix, mask=mask, cone_angle=10.0).volume
    limit = support_limit(volume, apix)
    step = measured_data_step(mean, [h1, h2], mask, volume, apix, limit)
    want = score_correction(truth, (h1 + h2) / 2, np.mean(step.maps, axis=0), mask)
    assert row["ensemble"][0] == pytest.approx(want.gain, abs=1e-5)
    assert row["ensemble"][1] == pytest.approx(want.max_global_drop, abs=1e-5)
    assert row["gain"] == row["ensemble"][0]
    # the unmeasured-region figure, from its definition: full FFTs, shells round(|k|)
    corrected = np.mean(step.maps, axis=0)
    n = truth.shape[0]
    k = np.fft.fftfreq(n) * n
    radius = np.rint(np.sqrt(sum(g**2 for g in np.meshgrid(k, k, k, indexing="ij"))))
    unmeasured = np.fft.ifftshift(volume) < 0.143
    ft = np.fft.fftn(truth * mask)

    def slow(m):
        fm = np.fft.fftn(m * mask)
        fscs = []
        for shell in range(2, n // 4 + 1):
            sel = unmeasured & (radius == shell)
            a, b = fm[sel], ft[sel]
            den = np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2))
            if den > 0:
                fscs.append(np.real(np.sum(a * np.conj(b))) / den)
        return np.mean(fscs)

    assert row["unmeasured_raw"] == pytest.approx(slow((h1 + h2) / 2), abs=1e-6)
    assert row["unmeasured_ensemble"] == pytest.approx(slow(corrected), abs=1e-6)
    assert len(row["unmeasured_per_seed"]) == 2
    # the near-worst cones: the first is the worst cone, so its gain is the ensemble's
    from spisonet.correction.evaluate import cone_gains, near_worst_cones

    near = row["near_cones_ensemble"]
    assert 1 < len(near) <= bench_matrix_replay.NEAR_CONES
    assert near[0] == pytest.approx(want.gain, abs=1e-5)
    dirs, _ = near_worst_cones((h1 + h2) / 2, truth, mask, len(near), 15.0)
    want_near = cone_gains(truth, (h1 + h2) / 2, corrected, dirs, mask)
    np.testing.assert_allclose(near, want_near, atol=1e-6)
    # --bands: the ensemble's FSC per low shell and band of directions from the view axis
    (banded,) = bench_matrix_replay.main(["--maps", str(maps), "--ensemble", "--bands"])
    table = banded["bands"]
    assert table["shells"] == list(range(2, n // 8 + 2)) and len(table["per_seed"]) == 2
    want_bands = bench_matrix_replay.band_fsc(corrected, truth, mask, (0, 0, 1), table["shells"])
    np.testing.assert_allclose(table["ensemble"], want_bands, atol=1e-6)
    # the plain replay of one seed's maps: the step, its score and the same figure
    (one,) = bench_matrix_replay.main(["--maps", str(maps / "seed0")])
    step0 = measured_data_step(list(halves[0]), [h1, h2], mask, volume, apix, limit)
    corrected0 = np.mean(step0.maps, axis=0)
    assert one["after"][0] == pytest.approx(
        score_correction(truth, (h1 + h2) / 2, corrected0, mask).gain, abs=1e-5
    )
    assert one["unmeasured"][0] == pytest.approx(slow((h1 + h2) / 2), abs=1e-6)
    assert one["unmeasured"][1] == pytest.approx(slow(corrected0), abs=1e-5)
    # maps saved after the step cannot be replayed through it again
    after = tmp_path / "after"
    bench_matrix.main([
        "--cells", cell.name, "--preset", "tiny", "--out", str(tmp_path / "p"),
        "--train-seeds", "0,1", "--save-maps", str(after),
    ])  # fmt: skip
    assert bench_matrix_replay.main(["--maps", str(after), "--ensemble"]) == []
    for name in ("bench_matrix", "bench_matrix_replay", "matrix_cells"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_bench_coarse_replays_the_packages_coarse_pass_on_saved_main_networks(
    tmp_path, monkeypatch
):
    """``bench_coarse.py`` on maps saved with ``coarse_pass=false``: with the pass its halves
    are those of the package's run with ``coarse_pass=true`` (same main network, same coarse
    network), with ``--none`` those of the saved run; the saved run keeps its raw outputs."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_coarse
    import bench_matrix

    cell = bench_matrix.CI[0]
    runs = {}
    for flag in ("true", "false"):
        bench_matrix.main([
            "--cells", cell.name, "--preset", "tiny", "--out", str(tmp_path / f"o{flag}"),
            "--train-seeds", "0", "--override", "network_only=true",
            "--override", f"coarse_pass={flag}", "--save-maps", str(tmp_path / flag),
        ])  # fmt: skip
        with np.load(tmp_path / flag / "seed0" / f"{cell.name}.npz") as z:
            runs[flag] = z["corrected_halves"], z["network_outputs"]
    # the main network is the same with and without the pass; its raw outputs are kept
    np.testing.assert_array_equal(runs["true"][1], runs["false"][1])
    assert runs["false"][1].shape == runs["false"][0].shape
    common = ["--cell", cell.name, "--preset", "tiny", "--maps", str(tmp_path / "false")]
    bench_coarse.main([*common, "--out", str(tmp_path / "with")])
    bench_coarse.main([*common, "--out", str(tmp_path / "none"), "--none"])
    with np.load(tmp_path / "with" / "seed0" / f"{cell.name}.npz") as z:
        np.testing.assert_allclose(z["corrected_halves"], runs["true"][0], atol=1e-6)
    with np.load(tmp_path / "none" / "seed0" / f"{cell.name}.npz") as z:
        np.testing.assert_allclose(z["corrected_halves"], runs["false"][0], atol=1e-6)
        assert not np.allclose(z["corrected_halves"], runs["true"][0], atol=1e-4)
    assert (tmp_path / "with" / "seed0" / f"{cell.name}.coarse.npy").exists()
    for name in ("bench_matrix", "bench_coarse", "matrix_cells"):
        sys.modules.pop(name, None)


def test_summary_ranks_what_the_trust_check_vouches_for(monkeypatch):
    """``vouched_spearman`` ranks ``trust_vouched`` (0 on thin-band cells) against the gain,
    ``trust_spearman`` the raw score, over the cone cells only."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_matrix
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    gains = rng.normal(0.2, 0.1, 8)
    scores = rng.random(8)
    vouched = np.where(np.arange(8) < 2, 0.0, scores)
    rows = [
        {
            "name": f"c{i}",
            "cell": {"distribution": "tilt:20"},
            "missing_cone": True,
            "gain": float(gains[i]),
            "max_global_drop": 0.0,
            "trust_score": float(scores[i]),
            "trust_vouched": float(vouched[i]),
            "trust_phase_score": None,
        }
        for i in range(8)
    ]
    uniform = {"name": "u", "cell": {"distribution": "uniform"}, "missing_cone": False}
    rows.append({**rows[0], **uniform, "trust_vouched": 9.0})
    summary = bench_matrix.summarise(rows)
    assert summary["trust_spearman"] == pytest.approx(spearmanr(scores, gains).statistic)
    assert summary["vouched_spearman"] == pytest.approx(spearmanr(vouched, gains).statistic)
    assert summary["trust_cells"] == 8
    sys.modules.pop("bench_matrix", None)


def test_bench_band_reads_cells_outside_the_matrix(monkeypatch, capsys):
    """``bench_band.py --spec``: a ``top`` cell reads a thin band along z, a ``tilt:30``
    cell a band near its views' spread; both lines printed."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_band

    rows = bench_band.main(
        ["--spec", "molecule,48,tight,top", "--spec", "molecule,48,tight,tilt:30"]
    )
    top, tilt = rows
    assert top["thin"] and top["spread"] == 5.0 and abs(top["axis_xyz"][2]) > 0.99
    assert not tilt["thin"] and abs(tilt["measured_band_deg"] - 30.0) < 4.0
    assert capsys.readouterr().out.count("band ±") == 2
    sys.modules.pop("bench_band", None)
    sys.modules.pop("bench_matrix", None)
