"""Fewer training steps once the network has settled (spisonet.relion.settle and its use
in RelionCorrection._train): the change measure against a slow statement of its
definition, the record, the rule, and the wiring with a fake network."""

from __future__ import annotations

import math
import time
import types

import numpy as np
import pytest
from helpers import make_job, write_model_star, write_sampling_star

import spisonet.relion.correction
from spisonet.io import parse_job_name
from spisonet.relion import RelionCorrectionSettings, read_external_star, reconstruct
from spisonet.relion.settle import SettleRecord, is_settled, missing_change


def _slow_missing_change(before, after, measured, max_radius):
    """The definition voxel by voxel: DFTs by their matrix, the radius from the integer
    frequency of each index, the weight read at the fftshift-ed position."""
    n = before.shape[0]
    idx = np.arange(n)
    freq = np.where(idx < (n + 1) // 2, idx, idx - n)  # numpy's fft order, integers
    x = np.arange(n)
    phase = np.exp(-2j * np.pi * np.outer(x, x) / n)  # DFT matrix

    def dft(v):  # the DFT's sum along each axis, by its matrix
        return np.einsum("ax,by,cz,xyz->abc", phase, phase, phase, v)

    fa, fb = dft(after.astype(float)), dft(before.astype(float))
    top = bottom = 0.0
    for a in range(n):
        for b in range(n):
            for c in range(n):
                k = (freq[a], freq[b], freq[c])
                if math.sqrt(sum(q * q for q in k)) > max_radius:
                    continue
                centre = tuple(q + n // 2 for q in k)  # fftshift: frequency 0 at n // 2
                w = 1.0 - min(max(float(measured[centre]), 0.0), 1.0)
                top += w * abs(fa[a, b, c] - fb[a, b, c]) ** 2
                bottom += w * abs(fa[a, b, c]) ** 2
    return math.sqrt(top / bottom) if bottom > 0 else 0.0


@pytest.mark.parametrize("n", [6, 7])
def test_missing_change_equals_its_definition(n):
    rng = np.random.default_rng(n)
    before, after = rng.standard_normal((2, n, n, n))
    measured = rng.uniform(-0.2, 1.2, (n, n, n))  # clipped to [0, 1] by the definition
    for radius in (1.5, 2.5, n):
        assert missing_change(before, after, measured, radius) == pytest.approx(
            _slow_missing_change(before, after, measured, radius), rel=1e-9
        )


def test_missing_change_on_structured_cases():
    n = 16
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n, n))
    cone = rng.uniform(0, 1, (n, n, n))
    assert missing_change(a, a, cone, n) == 0.0  # nothing changed
    assert missing_change(a, 2 * a, cone, n) == pytest.approx(0.5)  # |2a - a| / |2a|
    assert missing_change(a, 2 * a, np.ones((n, n, n)), n) == 0.0  # nothing is missing
    # a change only where Fourier space was measured does not count; elsewhere it does
    kz = np.abs(np.fft.fftshift(np.fft.fftfreq(n) * n))[:, None, None] * np.ones((1, n, n))
    measured = (kz >= 2).astype(float)  # fftshift-ed; symmetric, as a real map needs
    spec = np.fft.fftn(a)
    band = np.fft.ifftshift(kz >= 2)
    spec[band] *= 3
    changed = np.fft.ifftn(spec).real
    assert missing_change(a, changed, measured, n) == pytest.approx(0.0, abs=1e-12)
    assert missing_change(a, changed, 1 - measured, n) == pytest.approx(2 / 3)  # |3F - F| / |3F|
    with pytest.raises(ValueError, match="shapes differ"):
        missing_change(a, a[:8], cone, n)


def test_record_round_trip_scaling_and_the_rule(tmp_path):
    path = tmp_path / "r_it004_half1_class001_spisonet.json"
    rec = SettleRecord(change=0.02, steps=10, full_steps=40)
    rec.write(path)
    assert SettleRecord.read(path) == rec
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed
    assert rec.full_change == pytest.approx(0.08)  # a quarter of the steps: scaled by 4
    assert SettleRecord(0.02, 40, 40).full_change == pytest.approx(0.02)
    assert SettleRecord(0.02, 80, 40).full_change == pytest.approx(0.02)  # never scaled down
    assert SettleRecord(None, 40, 40).full_change is None
    assert SettleRecord(0.0, 0, 40).full_change == 0.0
    assert SettleRecord(0.1, 0, 40).full_change == math.inf
    assert is_settled(rec, 0.1) and not is_settled(rec, 0.08) and not is_settled(rec, 0.05)
    assert not is_settled(rec, 0.0)  # the rule off
    assert not is_settled(None, 0.1) and not is_settled(SettleRecord(None, 40, 40), 0.1)
    for text in ("", "{", '{"change": 0.1}', '{"change": "x", "steps": 1, "full_steps": 1}'):
        path.write_text(text)
        assert SettleRecord.read(path) is None  # unreadable: the next call trains in full
    assert SettleRecord.read(tmp_path / "missing.json") is None


# --------------------------------------------------------------------------------------
# in RelionCorrection._train, with a fake network


def _job_pair(folder):
    stars = [make_job(folder, f"r_it004_half{h}_class001", ori=16, pad=2, seed=h) for h in (1, 2)]
    write_sampling_star(folder / "r_it003_sampling.star", 3)
    write_model_star(folder / "r_it003_half1_model.star", 2.0)
    (folder / "r_it003_optimiser.star").write_text("data_o\n_rlnParticleDiameter 20\n")
    return [read_external_star(s) for s in stars]


def _fake(calls):
    """A correct_anisotropy that predicts x with epochs 0 and 2x after training."""

    def fake(x, half2=None, fsc3d_volume=None, mask=None, voxel_size=1.0, settings=None, **kw):
        calls.append(settings)
        out = x if settings.epochs == 0 else 2.0 * x
        steps = settings.epochs * -(-settings.n_subvolume // settings.batch_size)
        return types.SimpleNamespace(
            filtered=[out],
            corrected=[out],
            histories=[{}],
            train=[types.SimpleNamespace(steps=steps, device="cpu")],
        )

    return fake


@pytest.mark.parametrize(
    ("previous_change", "settle_change", "settled"),
    [(None, 0.1, False), (0.5, 0.1, False), (0.05, 0.1, True), (0.05, 0.0, False)],
)
def test_train_uses_the_previous_record_and_leaves_its_own(
    tmp_path, monkeypatch, previous_change, settle_change, settled
):
    calls = []
    monkeypatch.setattr(spisonet.relion.correction, "correct_anisotropy", _fake(calls))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    jobs = _job_pair(folder)
    (folder / "r_it003_half1_class001_spisonet.pt").write_text("model")
    if previous_change is not None:
        SettleRecord(previous_change, 6, 6).write(folder / "r_it003_half1_class001_spisonet.json")
    own, other = (reconstruct(j, wiener=False) for j in jobs)
    s = RelionCorrectionSettings(
        preset="tiny", epochs=3, whitening=False, threads=1, settle_change=settle_change,
        start_resolution=100.0,
    )  # fmt: skip
    corr = spisonet.relion.correction.RelionCorrection(s)
    jn = parse_job_name(jobs[0].name)
    corr._train(jobs[0], jn, own, other, reconstruct(jobs[0]), 2.0, 4.57, time.perf_counter())
    record_path = folder / "r_it004_half1_class001_spisonet.json"
    log = (folder / "spisonet_relion.log").read_text()
    if settle_change == 0:  # the rule off: no prediction before training, no record
        assert [c.epochs for c in calls] == [3] and calls[0].n_subvolume == 4
        assert not record_path.exists() and "settled" not in log
        return
    # the previous model's prediction first (epochs 0), then the training
    assert [c.epochs for c in calls] == [0, 3]
    # tiny: 4 cubes in batches of 2; settled: a quarter of the cubes, at least one batch
    assert calls[1].n_subvolume == (2 if settled else 4)
    record = SettleRecord.read(record_path)
    # x before, 2x after: |2x - x| / |2x| = 0.5 in the missing cone, whatever it is
    assert record == SettleRecord(pytest.approx(0.5), 3 if settled else 6, 6)
    assert "training changed the missing cone by 0.500" in log
    assert "previous model's prediction " in log  # its seconds, apart from the training's
    assert ("settled: the last training changed the missing cone by 0.050" in log) == settled
    assert ("(settled: 3 of 6 steps)" in corr.summary) == settled


def test_a_new_model_leaves_a_record_without_a_change(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(spisonet.relion.correction, "correct_anisotropy", _fake(calls))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    jobs = _job_pair(folder)
    own, other = (reconstruct(j, wiener=False) for j in jobs)
    s = RelionCorrectionSettings(preset="tiny", epochs=2, whitening=False, threads=1)
    corr = spisonet.relion.correction.RelionCorrection(s)
    jn = parse_job_name(jobs[0].name)
    corr._train(jobs[0], jn, own, other, reconstruct(jobs[0]), 2.0, 4.57, time.perf_counter())
    assert [c.epochs for c in calls] == [2]  # nothing to compare with: no prediction before
    rec = SettleRecord.read(folder / "r_it004_half1_class001_spisonet.json")
    assert rec == SettleRecord(None, 4, 4) and not is_settled(rec, 0.1)
