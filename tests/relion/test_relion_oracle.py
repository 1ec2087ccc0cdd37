"""The oracle reference of benchmarks/bench_relion.py (benchmarks/oracle_reconstruct.py)
against a slow statement of its definition: the truth's phases, RELION's mean amplitude
per shell, nothing beyond the current resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from oracle_reconstruct import oracle_map


def _slow_oracle(truth: np.ndarray, plain: np.ndarray, current_size: int) -> np.ndarray:
    n = truth.shape[0]
    ft, fp = np.fft.fftn(truth), np.fft.fftn(plain)
    k = np.fft.fftfreq(n) * n
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    out = np.zeros_like(ft)
    for s in np.unique(shell):
        sel = shell == s
        if s > current_size // 2:
            continue
        a_t, a_p = np.abs(ft[sel]).mean(), np.abs(fp[sel]).mean()
        if a_t > 0:
            out[sel] = ft[sel] * (a_p / a_t)
    return np.fft.ifftn(out).real


def test_oracle_follows_its_definition_on_random_and_structured_maps() -> None:
    from helpers import blobs

    rng = np.random.default_rng(1)
    for n, truth in ((16, rng.standard_normal((16, 16, 16))), (20, blobs(20, 2))):
        plain = 0.3 * truth + rng.standard_normal(truth.shape)
        for current in (n, n // 2 + 2):
            got = oracle_map(truth, plain, current)
            want = _slow_oracle(truth, plain, current)
            # float32 output; an unweighted half-grid mean was off by 4e-3 of the maximum
            assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # without noise in the amplitudes (plain = a multiple of the truth) the oracle is it
    got = oracle_map(truth, 2.5 * truth, 4 * n)
    np.testing.assert_allclose(got, 2.5 * truth, atol=1e-4 * np.abs(truth).max() * 2.5)


def test_perfect_network_is_spisonets_correction_with_the_truth_as_output(
    tmp_path, monkeypatch
) -> None:
    """``SPISONET_ORACLE_MODE=network``: the same maps as RelionCorrection whose network
    returns the truth (both halves, run together as RELION runs them)."""
    import shutil
    import threading
    import types

    import mrcfile
    from helpers import blobs, make_job, write_model_star, write_sampling_star
    from oracle_reconstruct import perfect_network_correction

    import spisonet.relion.correction
    from spisonet.relion import read_external_star, run_external_reconstruct
    from spisonet.relion.correction import RelionCorrection
    from spisonet.relion.settings import correction_settings

    for name in ("SPISONET_START_RESOLUTION", "SPISONET_START_HEALPIX"):
        monkeypatch.setenv(name, {"SPISONET_START_RESOLUTION": "100"}.get(name, "3"))
    truth = blobs(16, 3).astype(np.float32)
    folder = tmp_path / "a"
    stars = [make_job(folder, f"r_it004_half{h}_class001", ori=16, pad=2, seed=h) for h in (1, 2)]
    write_sampling_star(folder / "r_it003_sampling.star", 3)
    write_model_star(folder / "r_it003_half1_model.star", 2.0)
    (folder / "r_it003_optimiser.star").write_text("data_o\n_rlnParticleDiameter 24\n")
    shutil.copytree(folder, tmp_path / "b")

    def both(folder, make):
        threads = [
            threading.Thread(
                target=run_external_reconstruct,
                args=(folder / s.name,),
                kwargs={"correction": make(), "keep_inputs": True},
            )
            for s in stars
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return [mrcfile.read(str(read_external_star(folder / s.name).result)) for s in stars]

    got = both(tmp_path / "a", lambda: perfect_network_correction(truth))

    def fake(x, *args, **kw):
        return types.SimpleNamespace(
            filtered=[truth], corrected=[truth], histories=[{}],
            train=[types.SimpleNamespace(steps=1, device="cpu")],
        )  # fmt: skip

    monkeypatch.setattr(spisonet.relion.correction, "correct_anisotropy", fake)
    want = both(tmp_path / "b", lambda: RelionCorrection(correction_settings()))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)
    for log in ((tmp_path / f"{x}/spisonet_relion.log").read_text() for x in "ab"):
        assert log.count("corrected map") == 2, log  # both halves, neither fell back
    assert "the truth as the network's output" in (tmp_path / "a/spisonet_relion.log").read_text()


def _gaussians(n: int, centres: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """Sum of isotropic Gaussians at ``centres`` (k, 3; voxels z, y, x), evaluated exactly."""
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1).astype(float)
    out = np.zeros((n, n, n))
    for c in centres:
        out += np.exp(-((grid - c) ** 2).sum(-1) / (2 * sigma**2))
    return out


def test_map_alignment_recovers_a_known_rigid_motion() -> None:
    """benchmarks/map_align.py against maps built directly at turned and shifted positions."""
    from map_align import align_to_truth, rotate_map
    from scipy.spatial.transform import Rotation

    n, c = 32, 16.0
    rng = np.random.default_rng(3)
    atoms = rng.uniform(-7, 7, (40, 3))
    truth = _gaussians(n, atoms + c)
    turn = Rotation.from_rotvec(np.radians(12.0) * np.array([0.6, -0.48, 0.64]))
    move = np.array([1.3, -0.7, 2.0])
    moved = _gaussians(n, turn.apply(atoms) + c + move)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    # the rotation helper alone: the same as placing the atoms at their turned positions
    assert corr(rotate_map(truth, turn), _gaussians(n, turn.apply(atoms) + c)) > 0.995
    assert corr(moved, truth) < 0.7  # the motion matters
    # from the identity and from a wrong candidate (the motion's own sense): the inverse
    for candidates in ([], [turn]):
        aligned, found = align_to_truth(moved, truth, candidates=candidates)
        assert corr(aligned, truth) > 0.99
        assert np.degrees((found.rotation * turn).magnitude()) < 1.0
