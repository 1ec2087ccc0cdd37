"""The misalignment correction inside RELION (spisonet.relion.correction.RelionCorrection):
gates, both halves meeting (as threads here), the fallbacks, the last iteration and the
training step. No RELION needed: the jobs are written by ``helpers.make_job``."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import make_job, write_model_star, write_sampling_star

import spisonet.relion.correction
from spisonet.errors import MapShapeError, SpisonetError
from spisonet.io import parse_job_name
from spisonet.relion import (
    RelionCorrection,
    RelionCorrectionSettings,
    current_resolution,
    read_external_star,
    reconstruct,
    run_external_reconstruct,
)
from spisonet.relion.correction import _match_radial_amplitude
from spisonet.relion.runner import RELION_REFINE_MINRES_MAP
from spisonet.weights import measured_weight

# --------------------------------------------------------------------------------------
# helpers


def _pair(folder: Path, root: str = "my_run_it005", *, ori: int = 16, order: int = 3):
    """Both halves' jobs of one iteration, a sampling STAR and a model STAR (pixel 2 Å)."""
    stars = [make_job(folder, f"{root}_half{h}_class001", ori=ori, pad=2, seed=h) for h in (1, 2)]
    base = root.rsplit("_it", 1)[0]
    write_sampling_star(folder / f"{base}_it004_sampling.star", order)
    write_model_star(folder / f"{base}_it004_half1_model.star", 2.0)
    return stars


def _settings(**kw) -> RelionCorrectionSettings:
    base = {"start_healpix": 3, "start_resolution": 100.0, "wait_timeout": 20.0}
    base.update(kw)
    return RelionCorrectionSettings(**base)


def _run_both(stars, corrections, *, timeout: float = 60.0):
    """Run both halves at the same time (threads); returns the written maps and seconds."""
    errors: list[BaseException] = []

    def one(star, corr):
        try:
            run_external_reconstruct(star, correction=corr, keep_inputs=True)
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
    maps = [mrcfile.read(str(read_external_star(s).result)) for s in stars]
    return maps, time.perf_counter() - start


def _log(folder: Path) -> str:
    return (folder / "spisonet_relion.log").read_text()


class _Echo(RelionCorrection):
    """The real rendezvous, but 'training' returns the other half's unregularised map."""

    def _train(self, job, jn, own, other, plain, voxel, res, t0):
        self.seen = (own.copy(), other.copy(), voxel, res)
        self.summary = self._line("echo")
        return other


def _call_lines(text: str, job: str) -> list[str]:
    """The lines of ``text`` (stdout or the log) that are ``job``'s per-call line."""
    line = re.compile(rf"{job}: (?:plain|corrected)(?: \(correction failed\))? map \(")
    return [ln for ln in text.splitlines() if line.search(ln)]


# --------------------------------------------------------------------------------------
# gates


_SAMPLING = "(my_run_it004_sampling.star)"
_FSC = "(rlnGoldStandardFsc)"


@pytest.mark.parametrize(
    ("order", "start_res", "gates"),
    [
        (
            2,
            100.0,
            f"gate closed (healpix order below start): healpix order 2 < start 3 {_SAMPLING}, "
            f"resolution 4.57 Å < start 100 Å {_FSC}",
        ),
        (
            3,
            2.0,
            "gate closed (resolution not better than start): healpix order 3 >= start 3 "
            f"{_SAMPLING}, resolution 4.57 Å >= start 2 Å {_FSC}",  # 16 * 2 Å / 7
        ),
        (
            1,
            4.0,
            "gate closed (healpix order below start and resolution not better than start): "
            f"healpix order 1 < start 3 {_SAMPLING}, resolution 4.57 Å >= start 4 Å {_FSC}",
        ),
    ],
)
def test_closed_gate_keeps_relions_map_and_says_why_in_one_line(
    tmp_path, monkeypatch, capsys, order, start_res, gates
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, order=order)
    plains = [
        reconstruct(read_external_star(s), minres_map=RELION_REFINE_MINRES_MAP) for s in stars
    ]
    corr = [_Echo(_settings(start_resolution=start_res)) for _ in stars]
    maps, seconds = _run_both(stars, corr)
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    out, log = capsys.readouterr().out, _log(folder)
    assert len(out.splitlines()) == 2  # RELION's stdout: one line per call, nothing else
    for h in (1, 2):
        job = f"my_run_it005_half{h}_class001"
        for text in (out, log):
            (line,) = _call_lines(text, job)
            assert re.search(
                rf"{job}: plain map \({re.escape(gates)}; network not run; 0 steps, \d+\.\d s\), "
                "box 16",
                line,
            ), line
    assert not any(hasattr(c, "seen") for c in corr)
    assert seconds < 15


def test_resolution_gate_stays_open_once_the_network_has_run(tmp_path, monkeypatch):
    """RELION's resolution wavers: after a corrected iteration a resolution back above the
    start must not hand RELION the uncorrected map (seen on the CTF stack, RELION 5.1)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, order=3)
    # the same job as the closed case above (4.57 Å against a start of 2 Å) ...
    corr = [_Echo(_settings(start_resolution=2.0)) for _ in stars]
    # ... but an earlier iteration of this run left a trained model
    (folder / "my_run_it003_half2_class001_spisonet.pt").write_bytes(b"model")
    (folder / "my_run_it003_half1_class001_spisonet.pt").write_bytes(b"model")
    # a model of another run in the folder does not count
    (folder / "other_it004_half1_class001_spisonet.pt").write_bytes(b"model")
    jobs = [read_external_star(s) for s in stars]
    unreg = [reconstruct(j, wiener=False) for j in jobs]
    maps, _ = _run_both(stars, corr)
    np.testing.assert_allclose(maps[0], unreg[1], rtol=1e-6, atol=1e-7)
    log = _log(folder)
    assert (
        log.count(
            f"corrected map (gates open: healpix order 3 >= start 3 {_SAMPLING}, resolution "
            f"4.57 Å >= start 2 Å {_FSC}, held open (the network ran in iteration 3)"
        )
        == 2
    ), log


def test_a_model_of_another_run_does_not_hold_the_gate_open(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, order=3)
    (folder / "other_it004_half1_class001_spisonet.pt").write_bytes(b"model")
    corr = [_Echo(_settings(start_resolution=2.0)) for _ in stars]
    _run_both(stars, corr)
    assert _log(folder).count("gate closed (resolution not better than start)") == 2
    assert not any(hasattr(c, "seen") for c in corr)


# --------------------------------------------------------------------------------------
# the two halves meet


def test_both_halves_meet_and_exchange_unregularised_maps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    jobs = [read_external_star(s) for s in stars]
    unreg = [reconstruct(j, wiener=False) for j in jobs]
    plain = [reconstruct(j) for j in jobs]
    assert not np.allclose(unreg[0], plain[0])  # the Wiener term matters here
    corr = [_Echo(_settings()) for _ in stars]
    maps, seconds = _run_both(stars, corr)
    # each half received exactly the other's unregularised reconstruction
    np.testing.assert_allclose(maps[0], unreg[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(maps[1], unreg[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(corr[0].seen[0], unreg[0])
    assert corr[0].seen[2] == 2.0 and corr[0].seen[3] == pytest.approx(16 * 2.0 / 7)
    log = _log(folder)
    assert log.count("corrected map (gates open: healpix order 3 >= start 3") == 2
    assert log.count("; echo; 0 steps, ") == 2
    assert "waited" in log and ": ok" in log
    assert seconds < 15
    # the rendezvous files were consumed by the other half
    assert not list(folder.glob("*_spisonet_unreg.mrc"))
    assert not list(folder.glob("*_spisonet.lock"))


def test_one_half_alone_times_out_to_the_plain_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plain = reconstruct(read_external_star(stars[0]), minres_map=RELION_REFINE_MINRES_MAP)
    start = time.perf_counter()
    run_external_reconstruct(
        stars[0], correction=_Echo(_settings(wait_timeout=0.5)), keep_inputs=True
    )
    seconds = time.perf_counter() - start
    np.testing.assert_array_equal(mrcfile.read(str(read_external_star(stars[0]).result)), plain)
    (line,) = _call_lines(_log(folder), "my_run_it005_half1_class001")
    assert re.search(
        r"plain map \(gates open: .*; network not run: the other half never started \(no "
        r"my_run_it005_half2_class001_spisonet.lock after 0.5 s\); 0 steps, \d\.\d s\)",
        line,
    ), line
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


# --------------------------------------------------------------------------------------
# fallbacks and the last iteration


def test_correction_raising_after_the_rendezvous_writes_plain_maps(tmp_path, monkeypatch):
    """Both halves met, then the step fails (here: the 3D FSC of the two halves)."""

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure after the rendezvous")

    monkeypatch.setattr(spisonet.relion.correction, "fsc3d", fail)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plains = [
        reconstruct(read_external_star(s), minres_map=RELION_REFINE_MINRES_MAP) for s in stars
    ]
    maps, _ = _run_both(stars, [RelionCorrection(_settings()) for _ in stars])
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    log = _log(folder)
    assert log.count(": ok") == 2  # they did meet
    assert log.count("correction failed, writing the plain reconstruction") == 2
    assert "RuntimeError: injected failure after the rendezvous" in log


def test_training_error_is_logged_and_plain_written(tmp_path, monkeypatch, capsys):
    class Broken(RelionCorrection):
        def _train(self, *a):
            raise MemoryError("CUDA out of memory (simulated)")

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder)
    plains = [
        reconstruct(read_external_star(s), minres_map=RELION_REFINE_MINRES_MAP) for s in stars
    ]
    maps, _ = _run_both(stars, [Broken(_settings()) for _ in stars])
    for m, p in zip(maps, plains, strict=True):
        np.testing.assert_array_equal(m, p)
    log = _log(folder)
    assert log.count("reconstruction: MemoryError: CUDA out of memory (simulated)") == 2
    # the call's line still says how far it got (the runner logs the correction's summary)
    for h in (1, 2):
        (line,) = _call_lines(log, f"my_run_it005_half{h}_class001")
        assert re.search(
            r"plain \(correction failed\) map \(gates open: healpix order 3 >= start 3 .*; "
            r"correction failed \(MemoryError\); 0 steps, \d+\.\d s\)",
            line,
        ), line


_NEVER_RAN = "my_run_it009_class001: the network never ran in this refinement: "


@pytest.mark.parametrize(
    ("order", "models", "line", "never"),
    [
        (  # the network ran: the line says in which iterations, nothing more
            3,
            (
                "my_run_it005_half1",
                "my_run_it005_half2",
                "my_run_it006_half1",
                "my_run_it008_half2",
            ),
            "the network was trained in 3 iterations of this refinement (5-6, 8)",
            None,
        ),
        (  # the gates never opened: a closing line says so, with the values and the fix
            2,
            (),
            "the network never ran in this refinement",
            "gates never opened (healpix order 2 < start 3 (my_run_it004_sampling.star), "
            "resolution 4.57 Å < start 100 Å (rlnGoldStandardFsc)); lower start_resolution / "
            "start_healpix (docs/relion.md)",
        ),
        (  # open at the end, yet never trained (the other half, failures): points up
            3,
            (),
            "the network never ran in this refinement",
            "the gates were open at the end (healpix order 3 >= start 3",
        ),
    ],
)
def test_last_joined_iteration_keeps_relions_map_and_says_whether_the_network_ran(
    tmp_path, monkeypatch, capsys, order, models, line, never
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    _pair(folder, order=order)
    for prefix in models:
        (folder / f"{prefix}_class001_spisonet.pt").write_text("model")
    (folder / "other_it006_half1_class001_spisonet.pt").write_text("model")  # another run
    (folder / "my_run_it006_half1_class002_spisonet.pt").write_text("model")  # another class
    star = make_job(folder, "my_run_it009_class001", ori=16, pad=2)
    (folder / "my_run_it008_half1_class001_spisonet.lock").write_text("1\n")  # stale
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)
    start = time.perf_counter()
    run_external_reconstruct(star, correction=_Echo(_settings()), keep_inputs=True)
    assert time.perf_counter() - start < 10  # no waiting for a partner
    np.testing.assert_array_equal(mrcfile.read(str(read_external_star(star).result)), plain)
    out, log = capsys.readouterr().out, _log(folder)
    (call,) = _call_lines(out, "my_run_it009_class001")
    assert re.search(
        r"plain map \(gate[s ].*\(my_run_it004_sampling.star\).*; last joined iteration keeps "
        rf"RELION's map; {re.escape(line)}; 0 steps, \d+\.\d s\)",
        call,
    ), call
    if never is None:
        assert "never ran" not in out + log
    else:  # on RELION's stdout and in the log, before the call's own line
        for text in (out, log):
            (closing,) = [ln for ln in text.splitlines() if _NEVER_RAN in ln]
            assert never in closing
            assert text.index(_NEVER_RAN) < text.index(call.split("spisonet-relion: ")[-1])
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
    got = _match_radial_amplitude(v, r, 4.5)
    np.testing.assert_allclose(got, _slow_match(v, r, 4.5), atol=1e-5)
    # structured: a scaled copy is scaled back exactly
    np.testing.assert_allclose(_match_radial_amplitude(3 * r, r, n), r, atol=1e-5)


@pytest.mark.slow
def test_tiny_training_in_two_iterations_continues_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    settings = _settings(preset="tiny", epochs=1, threads=1)
    for it in (5, 6):
        stars = _pair(folder, f"my_run_it{it:03d}", ori=32)
        plains = [
            reconstruct(read_external_star(s), minres_map=RELION_REFINE_MINRES_MAP) for s in stars
        ]
        maps, _ = _run_both(stars, [RelionCorrection(settings) for _ in stars], timeout=120)
        for m, p in zip(maps, plains, strict=True):
            assert m.shape == p.shape and np.all(np.isfinite(m)) and not np.allclose(m, p)
    log = _log(folder)
    assert log.count("training a new model") == 2
    assert "continuing the model my_run_it005_half1_class001_spisonet.pt" in log
    assert "continuing the model my_run_it005_half2_class001_spisonet.pt" in log
    assert (folder / "my_run_it006_half2_class001_spisonet.pt").exists()
    assert log.count("network trained: 1 epochs in ") == 4
    assert log.count("; 2 steps, ") == 4  # tiny: 4 cubes in batches of 2, one epoch
    assert "correction failed" not in log


def test_keep_lowres_takes_the_initial_reference_below_ini_high(tmp_path, monkeypatch):
    from spisonet.io import write_map
    from spisonet.maps import combine_map

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "Refine3D"
    stars = _pair(folder, "r_it003", ori=16)
    job = read_external_star(stars[0])
    jn = parse_job_name(job.name)
    corr = RelionCorrection(_settings(keep_lowres=True))
    rng = np.random.default_rng(5)
    volume, ref = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    with pytest.raises(SpisonetError, match=r"no _optimiser\.star beside the job"):
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
    with pytest.raises(MapShapeError, match=r"init.mrc has shape \(8, 8, 8\)"):
        corr._keep_lowres(job, jn, volume, 2.0)
    (folder / "r_it002_optimiser.star").write_text("# --i p.star --o x\n")
    with pytest.raises(SpisonetError, match="--ref or --ini_high not found"):
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

    from spisonet.fourier import lowpass
    from spisonet.fsc_shells import fsc_curve
    from spisonet.maps import fsc_weight

    seen = {}

    def fake(x, half2=None, fsc3d_volume=None, mask=None, voxel_size=1.0, settings=None, **kw):
        seen.update(x=x, half2=half2, f3d=fsc3d_volume, mask=mask, settings=settings, **kw)
        return types.SimpleNamespace(
            filtered=[x * 2.0],
            corrected=[x],
            histories=[{"loss": [0.5]}],
            train=[types.SimpleNamespace(steps=1, device="cpu")],
        )

    monkeypatch.setattr(spisonet.relion.correction, "correct_anisotropy", fake)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "job"
    stars = _pair(folder, "r_it004", ori=16)
    (folder / "r_it003_optimiser.star").write_text("data_o\n_rlnParticleDiameter 20\n")
    (folder / "r_it003_half1_class001_spisonet.pt").write_text("model")
    jobs = [read_external_star(s) for s in stars]
    own, other = (reconstruct(j, wiener=False) for j in jobs)
    plain = reconstruct(jobs[0], minres_map=RELION_REFINE_MINRES_MAP)
    s = _settings(
        preset="tiny",
        epochs=3,
        whitening=False,
        keep_highres=keep_highres,
        keep_measured=keep_measured,
        threads=1,
    )
    corr = RelionCorrection(s)
    res = current_resolution(jobs[0], 2.0)  # 16·2/7 Å
    jn = parse_job_name(jobs[0].name)
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
    expected = _match_radial_amplitude(
        lowpass(seen["x"] * 2.0, res, 2.0, falloff=3), plain, 16 * 2.0 / res
    )
    if keep_measured:  # RELION's map where measured, by the 3D FSC of the two halves
        from spisonet.fourier import fourier_blend

        weight = measured_weight(seen["f3d"], own, other, seen["mask"])
        expected = fourier_blend(expected, lowpass(plain, res, 2.0, falloff=3), weight)
    if keep_highres:
        expected = expected + (plain - lowpass(plain, res, 2.0, falloff=3))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert re.fullmatch(
        r"network trained: 3 epochs in \d+\.\d s on cpu, continuing "
        r"r_it003_half1_class001_spisonet\.pt; output "
        + ("with RELION's map beyond" if keep_highres else "low-passed to")
        + r" 4\.6 Å; 1 steps, \d+\.\d s",
        corr.summary,
    ), corr.summary
    assert "continuing the model r_it003_half1_class001_spisonet.pt" in _log(folder)
    assert ("RELION's map kept where measured (weight > 0.5 in" in _log(folder)) == keep_measured


def test_inside_relion_one_network_per_half_whatever_the_preset():
    """The cpu preset averages three networks; inside RELION each half continues one model
    file from iteration to iteration, so the training settings keep one."""
    from spisonet.correction import PRESETS

    assert PRESETS["cpu"].ensemble == 3
    preset, cfg = RelionCorrection(_settings(preset="cpu", threads=1))._training_settings(
        64, 2.0, 8.0
    )
    assert preset == "cpu" and cfg.ensemble == 1 and cfg.widths == PRESETS["cpu"].widths
