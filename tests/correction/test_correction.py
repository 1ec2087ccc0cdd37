"""Tests of spisonet.correction (the correction pipeline) and the `reconstruct` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import blobs, soft_sphere_mask

import spisonet.nn.train as train_mod
from spisonet.correction import (
    PRESETS,
    CorrectionSettings,
    correct_anisotropy,
    preset_settings,
    reconstruct,
)
from spisonet.errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)
from spisonet.io import read_map, write_map
from spisonet.nn.train import ModelFileError

N = 24
APIX = 2.0


def _pair(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    s = blobs(n, seed) * 3
    return (
        (s + r.standard_normal(s.shape) + 5).astype(np.float32),
        (s + r.standard_normal(s.shape) + 5).astype(np.float32),
    )


def _fsc3d(n: int = N) -> np.ndarray:
    k = np.arange(n) - n // 2
    z = np.abs(k)[:, None, None] * np.ones((1, n, n))
    return np.clip(1.0 - z / (n // 2), 0, 1).astype(np.float32)  # poor along z


def _tiny(**kw) -> CorrectionSettings:
    return preset_settings("tiny", **kw)


MASK = soft_sphere_mask(N, N / 3)


def test_presets() -> None:
    g = PRESETS["gpu"]
    assert (g.widths, g.cube_size, g.predict_crop_size, g.n_subvolume) == (
        (64, 128, 256, 320),
        64,
        80,
        1000,
    )
    assert (g.epochs, g.batch_size, g.acc_batches, g.learning_rate) == (30, 4, 2, 3e-4)
    assert (g.alpha, g.beta, g.schedule, g.limit_res, g.ref_resolution) == (
        1.0,
        0.5,
        "constant",
        None,
        10.0,
    )
    c = PRESETS["cpu"]
    assert c.amp == "auto" and c.schedule == "onecycle"  # bf16 only where native
    assert c.epochs * -(-c.n_subvolume // c.batch_size) == 600  # steps per network
    assert c.ensemble == 3 and g.ensemble == 1 and PRESETS["tiny"].ensemble == 1
    assert preset_settings("gpu", cube_size=96).predict_crop_size == 112  # tile follows cube
    with pytest.raises(InvalidValueError, match="unknown preset 'fast'; choose one of gpu"):
        preset_settings("fast")
    with pytest.raises(InvalidValueError, match=r"unknown setting\(s\) colour"):
        preset_settings("gpu", colour=1)
    with pytest.raises(InvalidValueError, match="cube_size must be a multiple of 4"):
        preset_settings("tiny", cube_size=18)
    with pytest.raises(InvalidValueError, match="predict_crop_size must be at least"):
        preset_settings("tiny", predict_crop_size=16)
    with pytest.raises(InvalidValueError, match=r"acc_batches \(4\) cannot exceed batch_size"):
        preset_settings("tiny", acc_batches=4)
    assert preset_settings("tiny", consistency_border=7).train_settings().consistency_border == 7
    with pytest.raises(InvalidValueError, match=r"2·border < cube_size = 16; got 8"):
        preset_settings("tiny", consistency_border=8)
    for wrong in (0, -1, 1.5, True):
        with pytest.raises(InvalidValueError, match=r"ensemble must be a positive integer; got"):
            preset_settings("tiny", ensemble=wrong)
    bad = CorrectionSettings(preset="x", schedule="cosine")  # direct construction
    with pytest.raises(InvalidValueError, match="schedule must be 'constant' or 'onecycle'"):
        correct_anisotropy(np.ones((N, N, N), np.float32), settings=bad)


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if training starts: input errors must come first."""

    def boom(*a, **k):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(train_mod, "train_network", boom)


@pytest.mark.usefixtures("no_training")
def test_bad_inputs_fail_before_training(tmp_path) -> None:
    h1, h2 = _pair()
    s = _tiny()
    with pytest.raises(MapMismatchError, match=r"half map 2 has shape \(20, 20, 20\)"):
        correct_anisotropy(h1, h2[:20, :20, :20], settings=s)
    with pytest.raises(MapMismatchError, match=r"the 3D FSC \(aniso file\) has shape \(16, 16"):
        correct_anisotropy(h1, h2, _fsc3d(16), settings=s)
    with pytest.raises(EmptyMaskError, match="the mask is zero everywhere"):
        correct_anisotropy(h1, h2, mask=np.zeros_like(h1), settings=s)
    with pytest.raises(InvalidValueError, match=r"cube_size 32 is larger than the 24³ map"):
        correct_anisotropy(h1, h2, settings=_tiny(cube_size=32))
    edge_mask = np.zeros_like(h1)
    edge_mask[0, 0, 0] = 1
    with pytest.raises(EmptyMaskError, match="no mask voxel lies where a whole 16³"):
        correct_anisotropy(h1, h2, mask=edge_mask, settings=s)
    with pytest.raises(InvalidValueError, match="independent needs two half maps"):
        correct_anisotropy(h1, settings=_tiny(independent=True))
    with pytest.raises(InvalidValueError, match=r"epochs 0 \(prediction only\) needs a pretrained"):
        correct_anisotropy(h1, h2, settings=_tiny(epochs=0))
    with pytest.raises(MapShapeError, match=r"half map 1: expected a cubic 3D map"):
        correct_anisotropy(h1[:, :, :20], settings=s)
    bad = h1.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(NonFiniteMapError, match="half map 2: contains 1 NaN or infinite"):
        correct_anisotropy(h1, bad, settings=s)
    with pytest.raises(MapMismatchError, match=r"the reference has shape \(20, 20, 20\)"):
        correct_anisotropy(h1, h2, reference=h1[:20, :20, :20], settings=s)
    with pytest.raises(InvalidValueError, match=r"limit_res 100\.0 Å is coarser than the box"):
        correct_anisotropy(h1, h2, settings=_tiny(limit_res=100.0), voxel_size=APIX)
    with pytest.raises(ModelFileError, match="model file not found"):
        correct_anisotropy(h1, h2, settings=s, pretrained=tmp_path / "none.pt")


def test_paired_run_restores_units_and_uses_noise2noise() -> None:
    h1, h2 = _pair()
    # network_only: the measured-data step (tested below) mixes in the data, changing the std
    r = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(network_only=True))
    assert len(r.corrected) == 2 and r.filtered is None and r.measured_check is None
    for c, h in zip(r.corrected, (h1, h2), strict=True):
        assert c.shape == h.shape and c.dtype == np.float32
        assert c.mean() == pytest.approx(h.mean(), rel=1e-4)
        assert c.std() == pytest.approx(h.std(), rel=1e-4)
        assert not np.allclose(c, h)  # the network changed something
    assert len(r.histories) == 1 and "consistency2" in r.histories[0]
    assert r.train[0].paired and r.train[0].n_cubes == 4
    assert r.weight.shape == (16, 16, 16) and r.weight.min() == 0 and r.weight.max() == 1
    assert set(r.timings) >= {"prepare", "fsc3d", "train", "predict", "total"}
    np.testing.assert_allclose(r.average, (r.corrected[0] + r.corrected[1]) / 2, rtol=1e-6)


def test_measured_data_step_is_keep_measured_data_on_the_network_only_output() -> None:
    """The default run equals the network-only run followed by measured_data_step at the
    3D FSC's own limit (training is deterministic on the CPU); the step itself is tested in
    test_measured_blend.py."""
    from spisonet.correction.pipeline import measured_data_step
    from spisonet.fsc3d import support_limit

    h1, h2 = _pair()
    fsc = _fsc3d()
    alone = correct_anisotropy(h1, h2, fsc, MASK, APIX, _tiny(network_only=True))
    mixed = correct_anisotropy(h1, h2, fsc, MASK, APIX, _tiny())
    expect = measured_data_step(
        alone.corrected, [h1, h2], MASK, fsc, APIX, support_limit(fsc, APIX)
    )
    for got, want in zip(mixed.corrected, expect.maps, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(
        mixed.measured_check["network_share"], expect.network_weight, atol=1e-4
    )
    assert any("measured data" in n or "its output kept" in n for n in mixed.notes)
    assert not np.allclose(mixed.corrected[0], alone.corrected[0], atol=1e-4)
    single = correct_anisotropy(h1, None, fsc, MASK, APIX, _tiny())
    assert single.measured_check is None  # one map: no second half to judge by


def test_limit_res_keeps_the_original_above_it() -> None:
    h1, h2 = _pair()
    limit = 8.0  # shell N·APIX/8 = 6
    r = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(limit_res=limit))
    assert r.filtered is not None and len(r.filtered) == 2
    k = np.fft.fftfreq(N) * N
    rad = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    high = np.rint(rad) >= N * APIX / limit  # combine_map's sphere is 0 from shell 6 on
    fc, fo = np.fft.fftn(r.corrected[0])[high], np.fft.fftn(h1)[high]
    scale = np.vdot(fo, fc).real / np.vdot(fo, fo).real
    np.testing.assert_allclose(fc, scale * fo, atol=1e-3 * np.abs(fo).max())
    # units as the input's (exactly so without the measured-data step: test above)
    assert r.corrected[0].std() == pytest.approx(h1.std(), rel=0.05)
    # the filtered map has (almost) nothing above limit_res + the 3-shell fall-off
    ff = np.fft.fftn(r.filtered[0])
    assert np.abs(ff[rad > N * APIX / limit + 3.5]).max() < 1e-3 * np.abs(ff).max()


def test_beyond_the_3d_fsc_limit_the_original_is_kept_unless_asked() -> None:
    """Without limit_res, the frequencies beyond the 3D FSC's support (W = 0 there) come
    from the original map; --correct-beyond-limit leaves the network's output there."""
    h1, h2 = _pair()
    k = np.fft.fftfreq(N) * N
    rad = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    centred = np.fft.fftshift(rad)
    fsc = _fsc3d() * (centred <= 7.4)  # support out to radius 7.4: limit N·APIX/7
    beyond = np.rint(rad) >= 7
    fo = np.fft.fftn(h1)[beyond]
    kept = correct_anisotropy(h1, h2, fsc, MASK, APIX, _tiny())
    assert kept.filtered is None
    assert any("the 3D FSC's resolution limit" in n and "6.86 Å" in n for n in kept.notes)
    fc = np.fft.fftn(kept.corrected[0])[beyond]
    scale = np.vdot(fo, fc).real / np.vdot(fo, fo).real
    np.testing.assert_allclose(fc, scale * fo, atol=1e-3 * np.abs(fo).max())
    # units as the input's (exactly so without the measured-data step: test above)
    assert kept.corrected[0].std() == pytest.approx(h1.std(), rel=0.05)
    free = correct_anisotropy(h1, h2, fsc, MASK, APIX, _tiny(correct_beyond_limit=True))
    assert not any("resolution limit" in n for n in free.notes)
    fc = np.fft.fftn(free.corrected[0])[beyond]
    scale = np.vdot(fo, fc).real / np.vdot(fo, fo).real
    # the tiny network is close to the identity: its output differs, but not by much
    assert np.abs(fc - scale * fo).max() > 2e-3 * np.abs(fo).max()


def test_single_map_without_fsc3d_is_denoised_with_w_one() -> None:
    h1, _ = _pair()
    r = correct_anisotropy(h1, None, None, MASK, APIX, _tiny())
    assert np.all(r.weight == 1) and r.fsc3d_volume is None
    assert any("W = 1 (denoising only)" in note for note in r.notes)
    assert len(r.corrected) == 1 and "consistency2" not in r.histories[0]


def test_fsc3d_is_computed_from_the_halves_when_missing() -> None:
    from spisonet.fsc3d import fsc3d

    h1, h2 = _pair()
    r = correct_anisotropy(h1, h2, None, MASK, APIX, _tiny())
    expected = fsc3d(h1, h2, voxel_size=APIX, mask=MASK).volume
    np.testing.assert_array_equal(r.fsc3d_volume, expected)
    assert any("computed from the two half maps" in note for note in r.notes)


def _record_first_argument(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a spy that records its first argument, then calls it."""
    seen: list = []
    real = getattr(module, name)

    def spy(first, *args, **kwargs):
        seen.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_independent_half2_network_never_sees_half1(monkeypatch) -> None:
    seen = _record_first_argument(monkeypatch, train_mod, "train_network")
    h1, h2 = _pair(0)
    other1, _ = _pair(7)
    s = _tiny(independent=True)
    a = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, s)
    b = correct_anisotropy(other1, h2, _fsc3d(), MASK, APIX, s)
    # black box: changing half 1 changes nothing in the corrected half 2
    np.testing.assert_array_equal(a.corrected[1], b.corrected[1])
    assert not np.allclose(a.corrected[0], b.corrected[0])
    # white box: two single-map trainings, the second on half 2's cubes only
    from spisonet.maps import zscore
    from spisonet.nn.data import extract_cubes, sample_cube_centres

    assert len(seen) == 4 and not any(p.paired for p in seen)
    centres = sample_cube_centres(MASK, s.n_subvolume, s.cube_size, rng=s.seed)
    cubes2 = extract_cubes(zscore(h2), centres, s.cube_size)
    cubes1 = extract_cubes(zscore(h1), centres, s.cube_size)
    for batch in seen[1].batches(0, 4):
        for i, x in zip(batch.indices, batch.x1[:, 0].numpy(), strict=True):
            np.testing.assert_array_equal(x, cubes2[i])
            assert not np.allclose(x, cubes1[i])
    assert len(a.histories) == 2 and all("consistency2" not in h for h in a.histories)


def _trained(s: CorrectionSettings, halves: tuple[np.ndarray, np.ndarray]):
    """The prepared maps and the networks of a run, through the pipeline's own steps."""
    from spisonet.correction.pipeline import (
        check_inputs,
        prepare_maps,
        sampling_weight,
        train_networks,
    )

    inputs = check_inputs(halves[0], halves[1], _fsc3d(), MASK, None, APIX, s)
    maps = prepare_maps(inputs, APIX, s, [])
    weight = sampling_weight(inputs, APIX, s, [], None)
    return maps, train_networks(maps, inputs.mask, weight, s, [])


def test_an_ensemble_is_the_single_runs_of_its_seeds_averaged() -> None:
    """Member k of ``ensemble`` is exactly the one-network run with seed ``seed + k``, and
    the prediction is the plain mean of the members' predictions."""
    import torch

    from spisonet.correction.pipeline import network_on_map, predict_maps

    halves = _pair()
    maps, ens = _trained(_tiny(ensemble=2, seed=3, epochs=2), halves)
    assert len(ens.models) == len(ens.histories) == len(ens.summaries) == 2
    for k in range(2):
        _, single = _trained(_tiny(seed=3 + k, epochs=2), halves)
        got, want = ens.models[k].state_dict(), single.models[0].state_dict()
        assert all(torch.equal(got[name], want[name]) for name in want)
        assert ens.histories[k] == single.histories[0]
    first = [ens.models[k].state_dict() for k in range(2)]
    assert not all(torch.equal(first[0][name], first[1][name]) for name in first[0])
    outs = predict_maps(maps, ens)
    for z, out in zip(maps.network_input, outs, strict=True):
        mean = sum(network_on_map(m, ens.settings)(z).astype(np.float64) for m in ens.models) / 2
        np.testing.assert_allclose(out, mean, atol=1e-6 * np.abs(mean).max())
        one = network_on_map(ens.models[0], ens.settings)(z)
        assert not np.allclose(out, one, atol=1e-4 * np.abs(one).max())


def test_an_independent_ensemble_keeps_the_halves_apart(tmp_path) -> None:
    """Independent networks in an ensemble: half 2's members see only half 2; file names,
    loss figures, and a resumed run that equals the uninterrupted one."""
    p = _write_inputs(tmp_path)
    kw = dict(aniso_file=p["fsc"], mask=p["mask"])
    s = _tiny(independent=True, ensemble=2, epochs=2)
    full = reconstruct(p["h1"], p["h2"], output_dir=tmp_path / "a", settings=s, **kw)
    names = sorted(x.name for x in (tmp_path / "a").iterdir())
    assert [n for n in names if n.startswith(("model_", "loss_"))] == [
        "loss_h1.png",
        "loss_h2.png",
        "model_h1.pt",
        "model_h1_seed1.pt",
        "model_h2.pt",
        "model_h2_seed1.pt",
    ]
    assert len(full.result.train) == 4 and not any(t.paired for t in full.result.train)
    report = json.loads(full.report.read_text())
    assert report["settings"]["ensemble"] == 2 and len(report["loss_history"]) == 4
    assert any("ensemble: 2 networks" in n for n in full.result.notes)
    h1, h2 = _pair()
    other1, _ = _pair(7)
    a = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, s)
    b = correct_anisotropy(other1, h2, _fsc3d(), MASK, APIX, s)
    np.testing.assert_array_equal(a.corrected[1], b.corrected[1])
    # interrupted after epoch 1, resumed to 2: every member continues from its own file
    one = _tiny(independent=True, ensemble=2, epochs=1)
    reconstruct(p["h1"], p["h2"], output_dir=tmp_path / "b", settings=one, **kw)
    res = reconstruct(p["h1"], p["h2"], output_dir=tmp_path / "b", settings=s, resume=True, **kw)
    assert [t.resumed_from_epoch for t in res.result.train] == [1, 1, 1, 1]
    for got, want in zip(res.result.corrected, full.result.corrected, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidValueError, match="ensemble 2 needs training"):
        correct_anisotropy(
            h1, h2, _fsc3d(), MASK, APIX, _tiny(ensemble=2, epochs=0), pretrained=full.models[0]
        )


def test_reference_sets_w_to_one_inside_its_resolution() -> None:
    h1, h2 = _pair()
    s = _tiny(ref_resolution=12.0)
    r = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, s, reference=blobs(N, 0))
    k = np.arange(16) - 8
    rad = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    inside = rad <= 16 * APIX / 12.0
    assert np.all(r.weight[inside] == 1) and r.weight[~inside].min() < 0.5
    assert any("replaced by the reference" in note for note in r.notes)


def _write_inputs(tmp_path):
    h1, h2 = _pair()
    paths = {name: tmp_path / f"{name}.mrc" for name in ("h1", "h2", "mask", "fsc")}
    for name, arr in zip(paths, (h1, h2, MASK, _fsc3d()), strict=True):
        write_map(paths[name], arr, voxel_size=APIX)
    return paths


def test_reconstruct_files_resume_and_pretrained(tmp_path) -> None:
    p = _write_inputs(tmp_path)
    kw = dict(aniso_file=p["fsc"], mask=p["mask"])
    full = reconstruct(p["h1"], p["h2"], output_dir=tmp_path / "a", settings=_tiny(epochs=2), **kw)
    names = sorted(x.name for x in (tmp_path / "a").iterdir())
    assert names == [
        "corrected_h1.mrc",
        "corrected_h2.mrc",
        "loss_h1.png",
        "measured_check.png",
        "model_h1.pt",
        "reconstruct.json",
        "trust.png",
    ]
    assert full.trust_figure == tmp_path / "a" / "trust.png"
    assert full.measured_figure == tmp_path / "a" / "measured_check.png"
    m = read_map(full.corrected[0])
    assert m.voxel_size == pytest.approx(APIX)
    report = json.loads(full.report.read_text())
    assert report["settings"]["preset"] == "tiny" and report["settings"]["epochs"] == 2
    assert report["inputs"]["box"] == N and report["timings_s"]["train"] > 0
    assert len(report["loss_history"][0]["total"]) == 2
    check = report["measured_check"]
    assert set(check) == {"network_share", "rho_network", "rho_raw", "margin"}
    # the halves are noisy blobs over the whole of Fourier space: nothing is missing, so
    # the step mixes without its margin
    assert check.pop("margin") == 0.0
    assert all(len(v) == N // 2 + 1 for v in check.values())
    assert all(0 <= a <= 1 for a in check["network_share"])
    assert report["outputs"]["measured_check_figure"].endswith("measured_check.png")
    trust = report["trust_check"]
    assert trust["verdict"] in ("good", "partial", "low", "not applicable")
    assert len(trust["recovery"]) == N // 2 + 1 and report["outputs"]["trust_figure"]
    # interrupted after epoch 1, resumed to 2: same maps as the uninterrupted run
    reconstruct(p["h1"], p["h2"], output_dir=tmp_path / "b", settings=_tiny(epochs=1), **kw)
    res = reconstruct(
        p["h1"], p["h2"], output_dir=tmp_path / "b", settings=_tiny(epochs=2), resume=True, **kw
    )
    assert res.result.train[0].resumed_from_epoch == 1
    np.testing.assert_array_equal(res.result.corrected[0], full.result.corrected[0])
    # the saved model with epochs 0 only predicts: the same maps again
    pred = reconstruct(
        p["h1"],
        p["h2"],
        output_dir=tmp_path / "c",
        settings=_tiny(epochs=0),
        pretrained_model=full.models[0],
        **kw,
    )
    np.testing.assert_array_equal(pred.result.corrected[1], full.result.corrected[1])
    assert pred.models == [] and pred.losses == []


def test_reconstruct_independent_and_limit_res_names(tmp_path) -> None:
    p = _write_inputs(tmp_path)
    out = reconstruct(
        p["h1"],
        p["h2"],
        mask=p["mask"],
        output_dir=tmp_path / "o",
        settings=_tiny(independent=True, limit_res=8.0),
    )
    names = sorted(x.name for x in (tmp_path / "o").iterdir())
    assert names == [
        "FSC3D.mrc",  # computed here, kept
        "corrected_h1.mrc",
        "corrected_h1_filtered.mrc",
        "corrected_h2.mrc",
        "corrected_h2_filtered.mrc",
        "loss_h1.png",
        "loss_h2.png",
        "model_h1.pt",
        "model_h2.pt",
        "reconstruct.json",
        "trust.png",
    ]
    assert len(out.models) == 2


def test_cli_reconstruct_both_spellings(tmp_path) -> None:
    from typer.testing import CliRunner

    from spisonet.cli import app

    p = _write_inputs(tmp_path)
    args = [
        "reconstruct",
        str(p["h1"]),
        str(p["h2"]),
        "--aniso_file",
        str(p["fsc"]),
        "--mask",
        str(p["mask"]),
        "--preset",
        "tiny",
        "--output_dir",
        str(tmp_path / "o"),
        "--limit_res",
        "8",
        "--n-subvolume",
        "6",
        "--batch_size",
        "3",
        "--learning-rate",
        "0.002",
        "--seed",
        "5",
        "--presence_threshold",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "reconstruct.json").read_text())
    s = report["settings"]
    assert (s["limit_res"], s["n_subvolume"], s["batch_size"]) == (8.0, 6, 3)
    assert (s["learning_rate"], s["seed"], s["preset"]) == (0.002, 5, "tiny")
    assert s["presence_threshold"] == 0  # the public tool's W; every preset's default is 0.1
    assert all(p.presence_threshold == 0.1 for p in PRESETS.values())
    assert (tmp_path / "o" / "corrected_h1_filtered.mrc").exists()
    assert "trained 2 steps" in result.output


def test_cli_error_is_one_line_with_exit_code_2(tmp_path) -> None:
    p = _write_inputs(tmp_path)
    small = tmp_path / "small.mrc"
    write_map(small, np.zeros((16, 16, 16), np.float32), voxel_size=APIX)
    proc = subprocess.run(
        [sys.executable, "-m", "spisonet", "reconstruct", str(p["h1"]), str(p["h2"]),
         "--aniso-file", str(small), "--preset", "tiny", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "3D FSC shape (16, 16, 16)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written before the check


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny networks run fastest on one thread; on a loaded 2-core machine, two threads
    spin-waiting on each other made these tests 10× slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_before_after_figure_compares_like_with_like(tmp_path) -> None:
    from spisonet.correction import ground_truth_metrics
    from spisonet.report import FSC_THRESHOLD_LABELS, before_after_figure

    n, cutoff = 32, 8.0  # 8 Å at 2 Å/voxel: shell 8; the soft edge ends before shell 11
    gt = blobs(n, seed=3)
    r = np.random.default_rng(0)
    raw = gt + 0.5 * r.standard_normal(gt.shape).astype(np.float32)
    corrected = gt + 0.1 * r.standard_normal(gt.shape).astype(np.float32)
    mask = soft_sphere_mask(n, n / 3)
    maps = {"raw": raw, "corrected": corrected}
    metrics = ground_truth_metrics(gt, maps, APIX, mask, n_directions=20)
    fig = before_after_figure(
        gt, raw, corrected, metrics, APIX, tmp_path / "ba.png", mask=mask, lowpass_resolution=cutoff
    )
    assert (tmp_path / "ba.png").read_bytes()[:4] == b"\x89PNG"
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 6  # truth, before, after: two slices each
    k = np.fft.fftshift(np.fft.fftfreq(n, 1.0 / n))
    beyond = np.hypot(k[:, None], k[None, :]) >= 11.5
    for im in images:  # every map shown through the same low-pass filter (and grey scale)
        power = np.abs(np.fft.fftshift(np.fft.fft2(np.asarray(im.get_array())))) ** 2
        assert power[beyond].sum() < 1e-6 * power.sum()
        assert im.get_clim() == images[0].get_clim()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    labels = [t.get_text() for legend in legends for t in legend.get_texts()]
    for level in (0.143, 0.5):  # the thresholds are named in the legend
        assert FSC_THRESHOLD_LABELS[level] in labels and str(level) in FSC_THRESHOLD_LABELS[level]
    assert "before (raw average)" in labels and "after (corrected)" in labels


def test_equivariance_rotations_are_drawn_by_what_they_teach(monkeypatch) -> None:
    """The default run hands the training cubes the rotation scores of its own W (cube
    size), says in the notes how many rotations teach nothing; ``uniform`` hands none."""
    import spisonet.nn.data as data_mod
    from spisonet.nn import cube_rotations, rotation_information

    handed: list[np.ndarray | None] = []

    class Spy(data_mod.CubePairs):
        def __init__(self, *args, rotation_weights=None, **kwargs):
            handed.append(rotation_weights)
            super().__init__(*args, rotation_weights=rotation_weights, **kwargs)

    monkeypatch.setattr(data_mod, "CubePairs", Spy)
    h1, h2 = _pair()
    r = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(network_only=True))
    scores = rotation_information(r.weight)
    np.testing.assert_allclose(handed[-1], scores)
    keeps_z = np.array([abs(m[0, 0]) == 1 for m in cube_rotations()])  # W is poor along z
    assert scores[keeps_z].max() < scores[~keeps_z].min()
    idle = int(np.sum(scores <= 1e-3 * scores.max()))
    noted = [n for n in r.notes if "cube rotations" in n]
    assert noted == ([] if idle == 0 else [noted[0]])
    assert idle == 0 or f"{idle} of the 24 cube rotations" in noted[0]
    u = correct_anisotropy(
        h1, h2, _fsc3d(), MASK, APIX, _tiny(network_only=True, equivariance_rotations="uniform")
    )
    assert handed[-1] is None and not any("cube rotations" in n for n in u.notes)


def test_presence_unmasked_keeps_only_what_both_gates_call_measured() -> None:
    """With ``presence_unmasked`` the gate is the smaller of the masked and the unmasked
    halves' gates (the slow statement: two ``power_presence`` calls). On a simulated
    ``tilt:20`` pair under a sphere, the masked gate reads part of the missing cone's low
    shells as measured (the mask's leak) and the combined gate less of it, while the
    measured equator stays 1; without a mask the setting changes nothing."""
    from spisonet.correction.pipeline import check_inputs, sampling_weight
    from spisonet.fourier import frequency_axis, frequency_radius
    from spisonet.simulate import simulate_half_maps
    from spisonet.weights import power_presence

    n = 32
    sim = simulate_half_maps(blobs(n, 3) * 3, APIX, "tilt:20", snr=1.0, seed=1)
    h1, h2 = np.asarray(sim.half1), np.asarray(sim.half2)
    mask = soft_sphere_mask(n, n / 3)
    t = _tiny().presence_threshold

    notes: dict[tuple[bool, bool], str] = {}

    def gate(unmasked: bool, m: np.ndarray | None) -> np.ndarray:
        s = _tiny(presence_unmasked=unmasked)
        inputs = check_inputs(h1, h2, _fsc3d(n), m, None, APIX, s)
        said: list[str] = []
        out = sampling_weight(inputs, APIX, s, said, None).presence
        notes[(unmasked, m is not None)] = next(x for x in said if x.startswith("W gated"))
        return out

    both, masked = gate(True, mask), gate(False, mask)
    want = np.minimum(power_presence(h1, h2, mask, t), power_presence(h1, h2, None, t))
    np.testing.assert_array_equal(both, want)
    np.testing.assert_array_equal(masked, power_presence(h1, h2, mask, t))
    kz = np.abs(frequency_axis(n))[:, None, None] * np.ones((1, n, n))
    r = frequency_radius(n)
    band = (r >= 2) & (r <= n // 4)
    cone = band & (kz >= np.cos(np.radians(30)) * r)
    equator = band & (kz <= np.cos(np.radians(70)) * r)
    assert np.mean(masked[cone] > 0.5) > 0.08  # the leak the setting is for
    assert np.mean(both[cone] > 0.5) < 0.5 * np.mean(masked[cone] > 0.5)
    np.testing.assert_array_equal(both[equator], masked[equator])
    assert masked[equator].min() == 1.0
    np.testing.assert_array_equal(gate(True, None), gate(False, None))
    assert "masked and unmasked halves" in notes[(True, True)]  # the summary says which gate
    assert "unmasked" not in notes[(False, True)] and "unmasked" not in notes[(True, False)]


def _filtered_by_definition(half: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """Slow statement of ``filter_input``: the full complex FFT times the (un-shifted)
    gate, back to real space, then mean 0 and standard deviation 1 over the box."""
    f = np.fft.fftn(half.astype(np.float64)) * np.fft.ifftshift(gate.astype(np.float64))
    v = np.fft.ifftn(f)
    assert np.abs(v.imag).max() < 1e-6 * np.abs(v.real).max()  # the gate is centrosymmetric
    v = v.real
    return (v - v.mean()) / v.std()


@pytest.mark.parametrize("structured", [False, True])
def test_filter_network_input_is_each_half_times_the_gate(structured: bool) -> None:
    """On random data (with a gate ramping from 1 to 0 along z) and on a simulated
    missing-cone pair (its measured-power gate, 0 in the cone), each half's network input
    is its Fourier transform times the gate, z-scored; without a gate nothing changes."""
    from spisonet.correction.pipeline import (
        PreparedMaps,
        SamplingWeight,
        filter_network_input,
    )
    from spisonet.maps import zscore
    from spisonet.simulate import simulate_half_maps
    from spisonet.weights import power_presence

    if structured:
        sim = simulate_half_maps(blobs(N, 3) * 3, APIX, "tilt:20", snr=1.0, seed=1)
        halves = [np.asarray(sim.half1), np.asarray(sim.half2)]
        gate = power_presence(halves[0], halves[1], MASK, 0.1)
    else:
        halves = list(_pair(4))
        gate = np.clip(2 * _fsc3d() - 0.5, 0, 1).astype(np.float32)
    assert gate.min() < 0.05 and gate.max() == 1.0  # both ends of the gate are exercised
    maps = PreparedMaps(halves, halves, [zscore(h) for h in halves])
    weight = SamplingWeight(np.ones((8,) * 3, np.float32), gate, gate, gate)
    out = filter_network_input(maps, weight)
    for h, got in zip(halves, out.network_input, strict=True):
        np.testing.assert_allclose(got, _filtered_by_definition(h, gate), atol=2e-5)
        if not structured:  # exactly nothing left where the gate is 0
            spectrum = np.abs(np.fft.fftshift(np.fft.fftn(got)))
            assert spectrum[gate == 0].max() < 1e-4 * spectrum.max()
    assert out.originals is maps.originals and out.lowpassed is maps.lowpassed
    assert filter_network_input(maps, SamplingWeight(weight.cube, gate, gate, None)) is maps


def test_filter_input_trains_and_predicts_on_the_filtered_halves(monkeypatch) -> None:
    """With ``filter_input`` the networks see the gate-filtered halves (training and
    prediction), the notes say so and the output is back in the halves' units; off (the
    default), they see the z-scored halves."""
    import spisonet.correction.pipeline as pipeline
    from spisonet.maps import zscore

    seen = _record_first_argument(monkeypatch, pipeline, "train_networks")
    h1, h2 = _pair(5)
    on = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(filter_input=True))
    t = _tiny().presence_threshold  # the default gate: masked and unmasked halves agree
    gate = np.minimum(
        pipeline.power_presence(h1, h2, MASK, t), pipeline.power_presence(h1, h2, None, t)
    )
    for h, got in zip((h1, h2), seen[-1].network_input, strict=True):
        np.testing.assert_allclose(got, _filtered_by_definition(h, gate), atol=2e-5)
    assert any("filtered by the measured-power gate" in n for n in on.notes)
    for h, c in zip((h1, h2), on.corrected, strict=True):
        assert abs(float(c.mean()) - float(h.mean())) < 0.05 * float(h.std())
    off = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(filter_input=False))
    for h, got in zip((h1, h2), seen[-1].network_input, strict=True):
        np.testing.assert_allclose(got, zscore(h), atol=1e-6)
    assert not any("filtered by the measured-power gate" in n for n in off.notes)
    assert on.settings.filter_input is True and off.settings.filter_input is False


def _cone_pair(shared: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A simulated ``tilt:20`` pair (nothing in its missing cone) and its measured-power
    gate; ``shared`` times the truth's own cone content at shells 2 … n/4 is added to both
    halves, as a reconstruction's interpolation leaves the same content in both."""
    from spisonet.fourier import frequency_axis, frequency_radius
    from spisonet.simulate import simulate_half_maps
    from spisonet.weights import power_presence

    truth = blobs(N, 3) * 3
    sim = simulate_half_maps(truth, APIX, "tilt:20", snr=1.0, seed=1)
    h1, h2 = np.asarray(sim.half1), np.asarray(sim.half2)
    gate = power_presence(h1, h2, MASK, 0.1, also_unmasked=True)
    r = frequency_radius(N)
    kz = np.abs(frequency_axis(N))[:, None, None] * np.ones((1, N, N))
    cone = (r >= 1.5) & (r <= N // 4 + 0.5) & (kz >= np.cos(np.radians(20)) * r)
    spectrum = np.fft.fftshift(np.fft.fftn(truth)) * cone
    extra = np.fft.ifftn(np.fft.ifftshift(spectrum)).real.astype(np.float32)
    return h1 + shared * extra, h2 + shared * extra, gate


def test_filter_input_by_default_follows_what_the_halves_agree_on_where_nothing_was_measured():
    """Default (None): off for a simulated pair whose missing cone is empty, on when both
    halves hold the same content there, the share in the note and the decision in the
    settings; given on or off it is kept; one map: off."""
    from spisonet.correction.pipeline import (
        AUTO_FILTER_SHARE,
        CheckedInputs,
        SamplingWeight,
        decide_filter_input,
    )
    from spisonet.weights import unmeasured_agreement

    def decide(h1, h2, gate, **kw):
        inputs = CheckedInputs([h1] if h2 is None else [h1, h2], MASK, None, _fsc3d())
        weight = SamplingWeight(np.ones((8,) * 3, np.float32), _fsc3d(), _fsc3d(), gate)
        notes: list[str] = []
        return decide_filter_input(inputs, weight, _tiny(**kw), notes), notes

    empty1, empty2, gate = _cone_pair(0.0)
    full1, full2, _ = _cone_pair(0.5)
    assert unmeasured_agreement(empty1, empty2, gate) < 0.2 * AUTO_FILTER_SHARE
    assert unmeasured_agreement(full1, full2, gate) > 2 * AUTO_FILTER_SHARE
    s, notes = decide(empty1, empty2, gate)
    assert s.filter_input is False and "not filtered" in notes[-1]
    s, notes = decide(full1, full2, gate)
    assert s.filter_input is True and "filtered by the measured-power gate" in notes[-1]
    share = unmeasured_agreement(full1, full2, gate)
    assert f"{100 * share:.2f} %" in notes[-1]
    assert decide(full1, full2, gate, filter_input=False)[0].filter_input is False
    assert decide(empty1, empty2, gate, filter_input=True)[0].filter_input is True
    assert decide(full1, None, gate)[0].filter_input is False
    assert decide(full1, full2, None, filter_input=True)[0].filter_input is False


def test_filter_input_by_default_runs_end_to_end(monkeypatch) -> None:
    """``correct_anisotropy`` with the default setting on a pair holding shared content in
    its missing cone trains on the gate-filtered halves and records the decision."""
    import spisonet.correction.pipeline as pipeline

    seen = _record_first_argument(monkeypatch, pipeline, "train_networks")
    h1, h2, _ = _cone_pair(0.5)
    out = correct_anisotropy(h1, h2, None, MASK, APIX, _tiny())
    gate = pipeline.sampling_weight(
        pipeline.check_inputs(h1, h2, None, MASK, None, APIX, _tiny()), APIX, _tiny(), [], None
    ).presence
    assert out.settings.filter_input is True
    for h, got in zip((h1, h2), seen[-1].network_input, strict=True):
        np.testing.assert_allclose(got, _filtered_by_definition(h, gate), atol=2e-5)


def _slow_turn(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """out[R c] = x[c] for centred voxel coordinates c = idx − (D − 1)/2, voxel by voxel."""
    d = x.shape[0]
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        c2 = 2 * np.array(idx) - (d - 1)  # twice the centred coordinate: integers
        dst = (matrix @ c2 + (d - 1)) // 2
        out[tuple(dst)] = x[idx]
    return out


def test_prediction_over_rotations_is_the_mean_of_the_turned_back_predictions() -> None:
    """``predict_rotations``: each rotation's prediction of the turned map, turned back,
    averaged (a slow statement with its own rotation); the rotations chosen keep the axis
    along which W is poor, and ``off`` predicts once."""
    from spisonet.correction.pipeline import (
        check_inputs,
        ensemble_on_map,
        network_on_map,
        prediction_rotations,
        sampling_weight,
    )
    from spisonet.nn import cube_rotations

    halves = _pair()
    maps, nets = _trained(_tiny(epochs=1), halves)
    z = maps.network_input[0]
    one = network_on_map(nets.models[0], nets.settings)
    np.testing.assert_array_equal(ensemble_on_map(nets.models, nets.settings)(z), one(z))
    chosen = (0, 5, 17)
    got = ensemble_on_map(nets.models, nets.settings, rotations=chosen)(z)
    mats = cube_rotations()
    want = sum(
        _slow_turn(one(_slow_turn(z, mats[r])).astype(np.float64), mats[r].T) for r in chosen
    ) / len(chosen)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    assert not np.allclose(got, one(z), atol=1e-3 * np.abs(want).max())

    s = _tiny(predict_rotations="auto")
    inputs = check_inputs(halves[0], halves[1], _fsc3d(), MASK, None, APIX, s)
    weight = sampling_weight(inputs, APIX, s, [], None)
    keeps_z = tuple(i for i, m in enumerate(mats) if abs(m[0, 0]) == 1)
    assert prediction_rotations(weight, s) == keeps_z
    assert prediction_rotations(weight, _tiny()) == (0,)


def test_reconstruct_notes_the_prediction_rotations(tmp_path) -> None:
    from spisonet.correction import correct_anisotropy

    h1, h2 = _pair()
    s = _tiny(epochs=1, predict_rotations="auto")
    result = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, s)
    notes = [n for n in result.notes if "cube rotations" in n]
    assert len(notes) == 1 and "8 cube rotations" in notes[0]
    assert result.settings.predict_rotations == "auto"
    plain = correct_anisotropy(h1, h2, _fsc3d(), MASK, APIX, _tiny(epochs=1))
    assert not any("cube rotations" in n for n in plain.notes)
    assert not np.allclose(result.average, plain.average)
