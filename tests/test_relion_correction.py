"""The misalignment correction inside RELION (spisonet.relion.RelionCorrection): gates,
settings from the environment, the rendezvous of the two halves, the fallbacks and the last
iteration. No RELION needed: the jobs are written here (``make_job`` writes RELION's
format, see test_relion_reconstruct.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from test_relion_reconstruct import make_job

from spisonet import relion
from spisonet.errors import InvalidValueError

# --------------------------------------------------------------------------------------
# helpers


def _sampling_star(path: Path, order: int) -> None:
    path.write_text(
        "\n# version 30001\n\ndata_sampling_general\n\n_rlnIs3DSampling 1\n"
        f"_rlnHealpixOrder {order}\n_rlnPsiStep 7.5\n_rlnHealpixOrderOriginal 1\n\n"
    )


def _model_star(path: Path, pixel: float) -> None:
    path.write_text(f"\ndata_model_general\n\n_rlnPixelSize {pixel:.6f}\n\n")


def _pair(folder: Path, root: str = "my_run_it005", *, ori: int = 16, order: int = 3):
    """Both halves' jobs of one iteration, a sampling STAR and a model STAR (pixel 2 Å)."""
    stars = [make_job(folder, f"{root}_half{h}_class001", ori=ori, pad=2, seed=h) for h in (1, 2)]
    base = root.rsplit("_it", 1)[0]
    _sampling_star(folder / f"{base}_it004_sampling.star", order)
    _model_star(folder / f"{base}_it004_half1_model.star", 2.0)
    return stars


def _settings(**kw) -> relion.RelionCorrectionSettings:
    base = {"start_healpix": 3, "start_resolution": 100.0, "wait_timeout": 20.0}
    base.update(kw)
    return relion.RelionCorrectionSettings(**base)


def _run_both(stars, corrections, *, timeout: float = 60.0):
    """Run both halves at the same time (threads); returns the written maps and seconds."""
    errors: list[BaseException] = []

    def one(star, corr):
        try:
            relion.run_external_reconstruct(star, correction=corr, keep_inputs=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(s, c)) for s, c in zip(stars, corrections, strict=True)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "deadlock: a half never returned"
    assert not errors, errors
    maps = [mrcfile.read(str(relion.read_external_star(s).result)) for s in stars]
    return maps, time.perf_counter() - start


def _log(folder: Path) -> str:
    return (folder / "spisonet_relion.log").read_text()


class _Echo(relion.RelionCorrection):
    """The real rendezvous, but 'training' returns the other half's unregularised map."""

    def _train(self, job, jn, own, other, plain, voxel, res, t0):
        self.seen = (own.copy(), other.copy(), voxel, res)
        self.summary = "echo"
        return other


# --------------------------------------------------------------------------------------
# settings from the environment


def test_env_defaults():
    s = relion.correction_settings_from_env({})
    assert (s.start_healpix, s.start_resolution, s.epochs) == (3, 15.0, 5)
    assert (s.whitening, s.whitening_low, s.fsc_weighting) == (True, 10.0, True)
    assert not s.retrain_each_iter and not s.keep_lowres and not s.keep_highres
    assert s.alpha is None and s.beta is None and s.acc_batches is None
    assert s.preset is None and s.test_raise_on_call is None and s.wait_timeout == 600.0


def test_env_aliases_and_precedence():
    env = {
        "ISONET_START_HEALPIX": "4",
        "ISONET_START_RESOLUTION": "8.5",
        "SPISONET_START_RESOLUTION": "12",  # SPISONET_ wins
        "ISONET_EPOCHS": "7",
        "ISONET_RETRAIN_EACH_ITER": "True",
        "SPISONET_WHITENING": "off",
        "ISONET_WHITENING_LOW": "9",
        "ISONET_FSC_WEIGHTING": "0",
        "ISONET_KEEP_LOWRES": "yes",
        "ISONET_ALPHA": "2",
        "ISONET_BETA": "0.25",
        "ISONET_ACC_BATCHES": "4",
        "SPISONET_PRESET": "tiny",
        "SPISONET_WAIT_TIMEOUT": "3",
        "ISONET_EPOCHS_UNRELATED": "x",
        "SPISONET_THREADS": " ",  # blank = unset
    }
    s = relion.correction_settings_from_env(env)
    assert s.start_healpix == 4 and s.start_resolution == 12.0 and s.epochs == 7
    assert s.retrain_each_iter and not s.whitening and s.whitening_low == 9.0
    assert not s.fsc_weighting and s.keep_lowres
    assert (s.alpha, s.beta, s.acc_batches) == (2.0, 0.25, 4)
    assert s.preset == "tiny" and s.wait_timeout == 3.0 and s.threads is None
    assert s.sources["start_resolution"] == "SPISONET_START_RESOLUTION"
    assert s.sources["start_healpix"] == "ISONET_START_HEALPIX"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ISONET_START_HEALPIX": "2.5"}, r"ISONET_START_HEALPIX='2.5': expected an integer"),
        ({"ISONET_START_RESOLUTION": "abc"}, r"ISONET_START_RESOLUTION='abc': expected a number"),
        ({"ISONET_START_RESOLUTION": "nan"}, r"expected a finite number"),
        ({"ISONET_WHITENING": "maybe"}, r"ISONET_WHITENING='maybe': expected a boolean"),
        ({"SPISONET_EPOCHS": "-1"}, r"SPISONET_EPOCHS=-1: expected an integer >= 0"),
        ({"ISONET_START_RESOLUTION": "0"}, r"ISONET_START_RESOLUTION=0.0: expected a resolution"),
        ({"ISONET_WHITENING_LOW": "-3"}, r"ISONET_WHITENING_LOW=-3.0: expected a resolution"),
        ({"SPISONET_WAIT_TIMEOUT": "-1"}, r"SPISONET_WAIT_TIMEOUT=-1.0: expected seconds"),
        ({"ISONET_ACC_BATCHES": "0"}, r"ISONET_ACC_BATCHES=0: expected an integer >= 1"),
        ({"SPISONET_THREADS": "0"}, r"SPISONET_THREADS=0: expected an integer >= 1"),
        ({"SPISONET_PRESET": "huge"}, r"SPISONET_PRESET='huge': expected one of gpu, cpu"),
    ],
)
def test_env_errors(env, message):
    with pytest.raises(InvalidValueError, match=message):
        relion.correction_settings_from_env(env)


def test_bad_env_never_kills_relion(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ISONET_EPOCHS", "many")
    star = make_job(tmp_path / "job", "r_it002_half1_class001", ori=8, pad=1)
    plain = relion.reconstruct(relion.read_external_star(star))
    assert relion.console_main(["--keep-inputs", str(star)]) == 0
    np.testing.assert_array_equal(mrcfile.read(str(relion.read_external_star(star).result)), plain)
    out = capsys.readouterr().out
    assert "correction failed" in out and "ISONET_EPOCHS='many'" in out


# --------------------------------------------------------------------------------------
# names and gates


def test_parse_job_name():
    jn = relion.parse_job_name("my_run_x_it012_half2_class001")
    assert (jn.root, jn.iteration, jn.half, jn.kind, jn.number) == (
        "my_run_x",
        12,
        2,
        "class",
        "001",
    )
    assert jn.name(half=1) == "my_run_x_it012_half1_class001"
    assert jn.name(iteration=3) == "my_run_x_it003_half2_class001"
    last = relion.parse_job_name("run_it1000_class001")
    assert last.half is None and last.iteration == 1000 and last.name() == "run_it1000_class001"
    assert relion.parse_job_name("whatever") is None


def test_healpix_order_from_newest_sampling_star(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D" / "job_1"
    star = make_job(folder, "a_b_it006_half1_class001", ori=8, pad=1)
    job = relion.read_external_star(star)
    assert relion.healpix_order_of_run(job)[0] is None
    assert "no a_b_it<NNN>_sampling.star" in relion.healpix_order_of_run(job)[1]
    _sampling_star(folder / "a_b_it002_sampling.star", 2)
    _sampling_star(folder / "a_b_it005_sampling.star", 4)
    _sampling_star(folder / "a_b_it007_sampling.star", 9)  # a later iteration: not used
    _sampling_star(folder / "b_it005_sampling.star", 8)  # another run's root: not used
    _sampling_star(folder / "xa_b_it006_sampling.star", 8)
    assert relion.healpix_order_of_run(job) == (4, "a_b_it005_sampling.star")
    (folder / "a_b_it006_sampling.star").write_text("data_sampling_general\n_rlnPsiStep 3\n")
    order, why = relion.healpix_order_of_run(job)
    assert order is None and "a_b_it006_sampling.star has no rlnHealpixOrder" in why


def _slow_resolution(fsc: np.ndarray, box: int, pixel: float) -> float:
    for s in range(1, len(fsc)):
        if fsc[s] < 0.143:
            return box * pixel / s
    return 2 * pixel


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_current_resolution_from_fsc_column(tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", f"r_it00{seed + 1}_half1_class001", ori=24, pad=1)
    rng = np.random.default_rng(seed)
    fsc = np.clip(np.cos(np.linspace(0, 2.5, 13)) + 0.1 * rng.standard_normal(13), -0.2, 1)
    fsc[0] = 1.0
    text = star.read_text().splitlines()
    head = text[: text.index("_rlnGoldStandardFsc #3") + 1]
    rows = [f"{i:6d} 1.0e-3 {f:.6f}" for i, f in enumerate(fsc)]
    star.write_text("\n".join(head + rows) + "\n\n")
    job = relion.read_external_star(star)
    assert relion.current_resolution(job, 1.3) == pytest.approx(_slow_resolution(fsc, 24, 1.3))


def test_current_resolution_structured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = relion.read_external_star(make_job(tmp_path / "j", ori=16, pad=1))
    # make_job's FSC is linspace(1, 0, 9): 0.125 at shell 7 is the first below 0.143
    assert relion.current_resolution(job, 2.0) == pytest.approx(16 * 2.0 / 7)
    never = relion.ExternalReconstructJob(**{**job.__dict__, "fsc": np.ones(9)})
    assert relion.current_resolution(never, 2.0) == pytest.approx(4.0)  # Nyquist
    none = relion.ExternalReconstructJob(**{**job.__dict__, "fsc": None})
    assert math.isinf(relion.current_resolution(none, 2.0))


@pytest.mark.parametrize(
    ("order", "start_res", "closed"),
    [
        (2, 100.0, "healpix order below start"),
        (3, 2.0, "resolution not better than start"),
    ],
)
def test_closed_gate_keeps_relions_map_and_says_why(
    tmp_path, monkeypatch, order, start_res, closed
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, order=order)
    plains = [relion.reconstruct(relion.read_external_star(s)) for s in stars]
    corr = [_Echo(_settings(start_resolution=start_res)) for _ in stars]
    maps, seconds = _run_both(stars, corr)
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    log = _log(folder)
    assert log.count(f"plain map (gate closed, {closed}: healpix") == 2
    assert f"healpix order {order} (my_run_it004_sampling.star; start 3)" in log
    assert "resolution 4.57 Å (rlnGoldStandardFsc" in log  # 16 * 2 Å / 7
    assert not any(hasattr(c, "seen") for c in corr)
    assert seconds < 15


# --------------------------------------------------------------------------------------
# the rendezvous


def test_both_halves_meet_and_exchange_unregularised_maps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    jobs = [relion.read_external_star(s) for s in stars]
    unreg = [relion.reconstruct(j, wiener=False) for j in jobs]
    plain = [relion.reconstruct(j) for j in jobs]
    assert not np.allclose(unreg[0], plain[0])  # the Wiener term matters here
    corr = [_Echo(_settings()) for _ in stars]
    maps, seconds = _run_both(stars, corr)
    # each half received exactly the other's unregularised reconstruction
    np.testing.assert_allclose(maps[0], unreg[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(maps[1], unreg[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(corr[0].seen[0], unreg[0])
    assert corr[0].seen[2] == 2.0 and corr[0].seen[3] == pytest.approx(16 * 2.0 / 7)
    log = _log(folder)
    assert log.count("gates open") == 2 and log.count("corrected map (echo)") == 2
    assert "waited" in log and ": ok" in log
    assert seconds < 15
    # the rendezvous files were consumed by the other half
    assert not list(folder.glob("*_spisonet_unreg.mrc"))
    assert not list(folder.glob("*_spisonet.lock"))


def test_one_half_alone_times_out_to_the_plain_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plain = relion.reconstruct(relion.read_external_star(stars[0]))
    start = time.perf_counter()
    relion.run_external_reconstruct(
        stars[0], correction=_Echo(_settings(wait_timeout=0.5)), keep_inputs=True
    )
    seconds = time.perf_counter() - start
    np.testing.assert_array_equal(
        mrcfile.read(str(relion.read_external_star(stars[0]).result)), plain
    )
    assert "the other half never started" in _log(folder)
    assert seconds < 10


def test_a_half_with_a_closed_gate_releases_the_other_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    corr = [_Echo(_settings(wait_timeout=30)), _Echo(_settings(start_resolution=1.0))]
    _, seconds = _run_both(stars, corr)
    assert seconds < 15  # far below the 30 s timeout
    log = _log(folder)
    assert "finished without an unregularised map" in log
    assert log.count("plain map") == 2


_HOLDER = """
import os, sys, time
from pathlib import Path
from spisonet import relion
from spisonet.io import write_map
import numpy as np
lock, result, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
fd = relion._publish_lock(lock)
print("locked", flush=True)
time.sleep(0.4)
if mode == "die":
    os._exit(3)  # dies holding the lock: the kernel releases it
write_map(result, np.full((8, 8, 8), 7.0, np.float32), voxel_size=1.0)
relion._release_lock(fd)
"""


@pytest.mark.parametrize("mode", ["write", "die"])
def test_rendezvous_with_another_process(tmp_path, mode):
    lock, result = tmp_path / "h2.lock", tmp_path / "h2_unreg.mrc"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(result), mode],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        got = relion.wait_for_partner(lock, result, not_before=time.time() - 30, timeout=20)
        waited = time.perf_counter() - start
        proc.wait(10)
    assert waited < 5  # woken by the release, not by the 20 s timeout
    if mode == "write":
        assert got.reason == "ok" and np.all(got.volume == 7.0)
        assert waited >= 0.2  # it really waited for the lock holder
    else:
        assert got.volume is None and "without an unregularised map" in got.reason


def test_stale_files_of_an_earlier_run_are_ignored(tmp_path):
    lock, result = tmp_path / "h2.lock", tmp_path / "h2_unreg.mrc"
    lock.write_text("1\n")
    mrcfile.new(str(result), data=np.ones((4, 4, 4), np.float32)).close()
    old = time.time() - 3600
    for p in (lock, result):
        os.utime(p, (old, old))
    got = relion.wait_for_partner(lock, result, not_before=time.time() - 60, timeout=0.3)
    assert got.volume is None and "never started" in got.reason


def test_lock_timeout_when_the_other_half_hangs(tmp_path):
    lock = tmp_path / "h2.lock"
    fd = relion._publish_lock(lock)
    try:
        start = time.perf_counter()
        got = relion.wait_for_partner(
            lock, tmp_path / "none.mrc", not_before=time.time() - 60, timeout=0.4
        )
        assert got.volume is None and "timed out after 0.4 s" in got.reason
        assert 0.3 < time.perf_counter() - start < 3
    finally:
        relion._release_lock(fd)


# --------------------------------------------------------------------------------------
# fallbacks and the last iteration


def test_correction_raising_after_the_rendezvous_writes_plain_maps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plains = [relion.reconstruct(relion.read_external_star(s)) for s in stars]
    corr = [_Echo(_settings(test_raise_on_call=1)) for _ in stars]
    maps, _ = _run_both(stars, corr)
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    log = _log(folder)
    assert log.count("correction failed, writing the plain reconstruction") == 2
    assert "test hook: SPISONET_TEST_RAISE_ON_CALL=1 (call 1)" in log


def test_test_hook_counts_calls_per_half(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    for it in (5, 6, 7):
        stars = _pair(folder, f"my_run_it{it:03d}")
        _run_both(stars, [_Echo(_settings(test_raise_on_call=2)) for _ in stars])
    log = _log(folder)
    assert log.count("failed, writing the plain reconstruction: RuntimeError: test hook") == 2
    assert "my_run_it006_half1_class001: plain (correction failed) map" in log
    assert "my_run_it007_half1_class001: corrected map (echo)" in log
    assert "my_run_it005_half2_class001: corrected map (echo)" in log


def test_training_error_is_logged_and_plain_written(tmp_path, monkeypatch, capsys):
    class Broken(relion.RelionCorrection):
        def _train(self, *a):
            raise MemoryError("CUDA out of memory (simulated)")

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plains = [relion.reconstruct(relion.read_external_star(s)) for s in stars]
    maps, _ = _run_both(stars, [Broken(_settings()) for _ in stars])
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    assert _log(folder).count("reconstruction: MemoryError: CUDA out of memory (simulated)") == 2


def test_last_joined_iteration_keeps_relions_map(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    _pair(folder)  # sampling STAR with order 3: the gates would be open
    star = make_job(folder, "my_run_it009_class001", ori=16, pad=2)
    (folder / "my_run_it008_half1_class001_spisonet.lock").write_text("1\n")  # stale
    plain = relion.reconstruct(relion.read_external_star(star))
    start = time.perf_counter()
    relion.run_external_reconstruct(star, correction=_Echo(_settings()), keep_inputs=True)
    assert time.perf_counter() - start < 10  # no waiting for a partner
    np.testing.assert_array_equal(mrcfile.read(str(relion.read_external_star(star).result)), plain)
    assert "plain map (last joined iteration keeps RELION's map)" in capsys.readouterr().out
    assert not (folder / "my_run_it008_half1_class001_spisonet.lock").exists()


# --------------------------------------------------------------------------------------
# the real training step (tiny preset)


def _slow_match(volume, reference, max_shell):
    n = volume.shape[0]
    fv, fr = np.fft.fftn(volume), np.fft.fftn(reference)
    k = np.fft.fftfreq(n) * n
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shells = np.floor(r + 0.5).astype(int)
    out = fv.copy()
    for s in range(shells.max() + 1):
        sel = shells == s
        a, b = np.abs(fv[sel]).mean(), np.abs(fr[sel]).mean()
        if s <= max_shell and a > 1e-12 * np.abs(fv).max():
            out[sel] *= b / a
    return np.fft.ifftn(out).real


@pytest.mark.parametrize("n", [12, 15])
def test_match_radial_amplitude_equals_definition(n):
    rng = np.random.default_rng(n)
    v, r = rng.standard_normal((2, n, n, n))
    got = relion._match_radial_amplitude(v, r, 4.5)
    np.testing.assert_allclose(got, _slow_match(v, r, 4.5), atol=1e-5)
    # structured: a scaled copy is scaled back exactly
    np.testing.assert_allclose(relion._match_radial_amplitude(3 * r, r, n), r, atol=1e-5)


@pytest.mark.slow
def test_tiny_training_in_two_iterations_continues_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    settings = _settings(preset="tiny", epochs=1, threads=1)
    for it in (5, 6):
        stars = _pair(folder, f"my_run_it{it:03d}", ori=32)
        plains = [relion.reconstruct(relion.read_external_star(s)) for s in stars]
        maps, _ = _run_both(stars, [relion.RelionCorrection(settings) for _ in stars], timeout=120)
        for m, p in zip(maps, plains, strict=True):
            assert m.shape == p.shape and np.all(np.isfinite(m)) and not np.allclose(m, p)
    log = _log(folder)
    assert log.count("training a new model") == 2
    assert "continuing the model my_run_it005_half1_class001_spisonet.pt" in log
    assert "continuing the model my_run_it005_half2_class001_spisonet.pt" in log
    assert (folder / "my_run_it006_half2_class001_spisonet.pt").exists()
    assert log.count("corrected map (network 1 epochs") == 4
    assert "correction failed" not in log


def test_keep_lowres_takes_the_initial_reference_below_ini_high(tmp_path, monkeypatch):
    from spisonet.io import write_map
    from spisonet.maps import combine_map

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D"
    stars = _pair(folder, "r_it003", ori=16)
    job = relion.read_external_star(stars[0])
    jn = relion.parse_job_name(job.name)
    corr = relion.RelionCorrection(_settings(keep_lowres=True))
    rng = np.random.default_rng(5)
    volume, ref = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    with pytest.raises(relion.SpisonetError, match=r"no _optimiser\.star beside the job"):
        corr._keep_lowres(job, jn, volume, 2.0)
    (folder / "r_it002_optimiser.star").write_text(
        "# RELION optimiser; version 3.1.3\n# --i p.star --ref init.mrc --o Refine3D/r "
        "--ini_high 12 --pad 2\n\ndata_optimiser_general\n\n_rlnParticleDiameter 20\n"
    )
    write_map(tmp_path / "init.mrc", ref, voxel_size=2.0)
    got = corr._keep_lowres(job, jn, volume, 2.0)
    np.testing.assert_allclose(got, combine_map(ref, volume, 12.0, 2.0), atol=1e-6)
    assert "kept the content below 12 Å from init.mrc" in _log(folder)
    write_map(tmp_path / "init.mrc", ref[:8, :8, :8], voxel_size=2.0)
    with pytest.raises(relion.MapShapeError, match=r"init.mrc has shape \(8, 8, 8\)"):
        corr._keep_lowres(job, jn, volume, 2.0)
    (folder / "r_it002_optimiser.star").write_text("# --i p.star --o x\n")
    with pytest.raises(relion.SpisonetError, match="--ref or --ini_high not found"):
        corr._keep_lowres(job, jn, volume, 2.0)


@pytest.mark.parametrize(
    ("keep_highres", "keep_measured"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_training_step_wiring_with_a_fake_network(
    tmp_path, monkeypatch, keep_highres, keep_measured
):
    """_train's inputs to correct_anisotropy and its output, with the network replaced by
    a fake that returns its input (so the expected result can be stated exactly)."""
    import types

    import spisonet.correct
    from spisonet.fourier import lowpass
    from spisonet.fsc import fsc_curve
    from spisonet.maps import fsc_weight

    seen = {}

    def fake(x, half2=None, fsc3d_volume=None, mask=None, voxel_size=1.0, settings=None, **kw):
        seen.update(x=x, half2=half2, f3d=fsc3d_volume, mask=mask, settings=settings, **kw)
        return types.SimpleNamespace(
            filtered=[x * 2.0], corrected=[x], histories=[{"loss": [0.5]}], train=[{}]
        )

    monkeypatch.setattr(spisonet.correct, "correct_anisotropy", fake)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, "r_it004", ori=16)
    (folder / "r_it003_optimiser.star").write_text("data_o\n_rlnParticleDiameter 20\n")
    (folder / "r_it003_half1_class001_spisonet.pt").write_text("model")
    jobs = [relion.read_external_star(s) for s in stars]
    own, other = (relion.reconstruct(j, wiener=False) for j in jobs)
    plain = relion.reconstruct(jobs[0])
    s = _settings(
        preset="tiny",
        epochs=3,
        whitening=False,
        keep_highres=keep_highres,
        keep_measured=keep_measured,
        threads=1,
    )
    corr = relion.RelionCorrection(s)
    res = relion.current_resolution(jobs[0], 2.0)  # 16·2/7 Å
    jn = relion.parse_job_name(jobs[0].name)
    out = corr._train(jobs[0], jn, own, other, plain, 2.0, res, time.perf_counter())
    # the input: own unregularised half, FSC-weighted by the two halves' FSC in the mask
    curve, _ = fsc_curve(own, other, seen["mask"])
    np.testing.assert_allclose(seen["x"], fsc_weight(own, curve, "relion"), atol=1e-6)
    assert seen["half2"] is None  # one network per half, no Noise2Noise pair
    assert seen["f3d"].shape == (16, 16, 16)
    assert seen["mask"] is not None and seen["mask"][8, 8, 8] == 1 and seen["mask"][0, 0, 0] == 0
    cfg = seen["settings"]
    assert cfg.epochs == 3 and cfg.limit_res == pytest.approx(res) and cfg.preset == "tiny"
    assert seen["pretrained"].name == "r_it003_half1_class001_spisonet.pt"
    assert seen["checkpoints"][0].name == "r_it004_half1_class001_spisonet.pt"
    expected = relion._match_radial_amplitude(
        lowpass(seen["x"] * 2.0, res, 2.0, falloff=3), plain, 16 * 2.0 / res
    )
    if keep_measured:  # RELION's map where measured, by the 3D FSC of the two halves
        from spisonet.fourier import fourier_blend

        weight = relion.measured_weight(seen["f3d"], own, other, seen["mask"])
        expected = fourier_blend(expected, lowpass(plain, res, 2.0, falloff=3), weight)
    if keep_highres:
        expected = expected + (plain - lowpass(plain, res, 2.0, falloff=3))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert "network 3 epochs" in corr.summary
    assert "continuing the model r_it003_half1_class001_spisonet.pt" in _log(folder)
    assert ("RELION's map kept where measured (weight > 0.5 in" in _log(folder)) == keep_measured


def test_measured_weight_follows_the_sampling():
    """On a tilt:20 simulation (no views beyond 20° of z: kz is the missing direction)
    the weight is high across z and low along it; on uniform data it is high everywhere."""
    from spisonet.fourier import frequency_axis
    from spisonet.fsc3d import fsc3d
    from spisonet.simulate import make_molecule, simulate_half_maps

    n = 48
    gt = make_molecule(n, 2.0, seed=0)
    k = frequency_axis(n).astype(float)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    band = (r >= 3) & (r <= n / 4)
    cos_z = np.abs(kz) / np.maximum(r, 1e-9)
    along_z = band & (cos_z > np.cos(np.deg2rad(20)))
    across = band & (cos_z < np.sin(np.deg2rad(20)))
    means = {}
    for dist in ("tilt:20", "uniform"):
        sim = simulate_half_maps(gt, 2.0, dist, 1500, 0.05, seed=1)
        f3d = fsc3d(sim.half1, sim.half2, 2.0, sim.mask).volume
        w = relion.measured_weight(f3d, sim.half1, sim.half2, sim.mask)
        assert w.shape == (n, n, n) and w.min() >= 0 and w.max() <= 1
        means[dist] = (float(w[along_z].mean()), float(w[across].mean()))
    z_tilt, x_tilt = means["tilt:20"]
    z_uni, x_uni = means["uniform"]
    assert x_tilt > 0.7 and z_tilt < 0.3, means
    assert z_uni > 0.7 and x_uni > 0.7, means
