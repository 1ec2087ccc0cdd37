"""Cells of the evaluation matrix: ground truths, masks, two noise models, one scorer.

Used by ``bench_matrix.py`` (the whole matrix) and by ``tests/test_matrix_ci.py`` (a
tiny subset in CI). A cell is (structure, box, mask, distribution, SNR, noise model);
it simulates half maps from a ground truth, runs ``correct_anisotropy`` as
``spisonet reconstruct`` would (the 3D FSC computed from the halves, with the cell's
mask), and scores the result against the truth in the *worst cone*
(:func:`spisonet.correction.evaluate.score_correction`).

Noise models:

- ``fourier``: :func:`spisonet.simulate.simulate_half_maps` (Fourier sampling density,
  Fourier noise, Wiener-like regularisation), ``snr`` = its per-view spectral SNR;
- ``relion``: real particles. ``relion_project`` projects the truth at the cell's views
  (random psi), white Gaussian noise of variance var(projections)/``snr`` is added per
  image, and ``relion_reconstruct`` reconstructs each random half (real interpolation,
  gridding and its own weighting).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: The real maps (``../shared/data`` beside the checkout); ``SPISONET_MATRIX_DATA`` points
#: elsewhere (e.g. a copy carried to a GPU machine).
DATA = Path(
    os.environ.get("SPISONET_MATRIX_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
SOURCES = {
    "cftr": "cftr_6msm_gt_128px_1.3A.mrc",
    "c4channel": "real_c4channel_97px_3.0A.mrc",
    "emd3488": "real_emd3488_100px_1.05A.mrc",
}


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix."""

    structure: str = "molecule"  # molecule | cftr | cftr-z | c4channel | emd3488
    box: int = 64
    mask: str = "tight"  # tight (soft molecular) | sphere (soft sphere)
    distribution: str = "tilt:20"  # simulate's names; "side": within 20° of x
    snr: float = 0.01
    noise: str = "fourier"  # fourier | relion
    n_views: int = 2000

    @property
    def name(self) -> str:
        """A file-safe identifier."""
        d = self.distribution.replace(":", "").replace("+", "-")
        return f"{self.structure}_{self.box}_{self.mask}_{d}_snr{self.snr:g}_{self.noise}"

    @property
    def has_missing_cone(self) -> bool:
        """Distributions that leave a cone of ≥ 20° unmeasured (not mixtures, not uniform)."""
        return self.distribution in ("top", "side") or self.distribution.startswith("tilt:")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def _long_axis_to_z(volume: np.ndarray) -> np.ndarray:
    """Rotate a map so the longest principal axis of its density lies along z."""
    from scipy.ndimage import affine_transform

    v = np.asarray(volume, dtype=np.float64)
    n = v.shape[0]
    w = np.clip(v - 0.1 * v.max(), 0.0, None)
    idx = np.indices(v.shape).reshape(3, -1).astype(np.float64)
    total = w.sum()
    centre = (idx * w.ravel()).sum(axis=1) / total
    d = idx - centre[:, None]
    cov = (d * w.ravel()) @ d.T / total
    _, vecs = np.linalg.eigh(cov)  # ascending: the last is the longest axis (z, y, x)
    long_axis = vecs[:, -1]
    # rotation taking long_axis to z (index 0 of (z, y, x)): Rodrigues about the cross product
    target = np.array([1.0, 0.0, 0.0])
    axis = np.cross(long_axis, target)
    s, c = np.linalg.norm(axis), float(long_axis @ target)
    if s < 1e-8:
        rot = np.eye(3) if c > 0 else -np.eye(3)
    else:
        k = axis / s
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = np.eye(3) + s * kx + (1 - c) * kx @ kx
    # out(x) = v(R^T (x - mid) + centre): the density's long axis ends up along z
    mid = np.full(3, (n - 1) / 2.0)
    out = affine_transform(v, rot.T, offset=centre - rot.T @ mid, order=3, mode="constant")
    return out.astype(np.float32)


def ground_truth(structure: str, box: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(truth (box³ float32), voxel size Å) of a structure, Fourier-binned to ``box``."""
    from spisonet.io import read_map
    from spisonet.simulate import fourier_crop, make_molecule

    if structure == "molecule":
        return make_molecule(box, 2.0, seed=seed), 2.0
    base = structure.removesuffix("-z")
    if base not in SOURCES:
        raise ValueError(f"unknown structure {structure!r}")
    m = read_map(DATA / SOURCES[base])
    gt, apix = m.data, m.voxel_size
    if structure.endswith("-z"):
        gt = _long_axis_to_z(gt)
    if box > gt.shape[0]:
        raise ValueError(f"{structure}: source box {gt.shape[0]} is smaller than {box}")
    if box != gt.shape[0]:
        apix = apix * gt.shape[0] / box
        gt = fourier_crop(gt, box)
    return gt.astype(np.float32), float(apix)


def cell_mask(kind: str, truth: np.ndarray) -> np.ndarray:
    """The user's mask: a soft molecular mask of the truth, or a soft sphere."""
    from spisonet.masks import soft_mask, spherical_mask

    n = truth.shape[0]
    if kind == "tight":
        return soft_mask(truth).astype(np.float32)
    if kind == "sphere":
        return spherical_mask(n, 0.4 * n, soft_edge_voxels=5.0).astype(np.float32)
    raise ValueError(f"unknown mask {kind!r}")


def relion_half_maps(
    truth: np.ndarray, apix: float, directions: np.ndarray, snr: float, seed: int, folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Two half maps from real projections (``relion_project``) and ``relion_reconstruct``."""
    import mrcfile

    from spisonet.anisotropy import direction_to_relion
    from spisonet.io import read_map, write_map

    folder.mkdir(parents=True, exist_ok=True)
    n = truth.shape[0]
    rng = np.random.default_rng(seed)
    write_map(folder / "truth.mrc", truth, voxel_size=apix)
    tilt, rot = direction_to_relion(directions)
    psi = rng.uniform(-180.0, 180.0, len(tilt))
    subset = np.where(rng.permutation(len(tilt)) % 2 == 0, 1, 2)
    head = [
        "# version 30001", "", "data_optics", "", "loop_", "_rlnOpticsGroupName #1",
        "_rlnOpticsGroup #2", "_rlnImagePixelSize #3", "_rlnImageSize #4",
        "_rlnImageDimensionality #5", "_rlnVoltage #6", "_rlnSphericalAberration #7",
        "_rlnAmplitudeContrast #8", f"opticsGroup1 1 {apix:.6f} {n} 2 300 2.7 0.1", "",
        "# version 30001", "", "data_particles", "", "loop_", "_rlnImageName #1",
        "_rlnOpticsGroup #2", "_rlnAngleRot #3", "_rlnAngleTilt #4", "_rlnAnglePsi #5",
        "_rlnRandomSubset #6",
    ]  # fmt: skip
    rows = [
        f"{i + 1:06d}@particles.mrcs 1 {a:.4f} {b:.4f} {c:.4f} {s}"
        for i, (a, b, c, s) in enumerate(zip(rot, tilt, psi, subset, strict=True))
    ]
    (folder / "particles.star").write_text("\n".join(head + rows) + "\n\n", encoding="utf-8")
    subprocess.run(
        ["relion_project", "--i", "truth.mrc", "--ang", "particles.star", "--o", "clean",
         "--angpix", str(apix)],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    clean = mrcfile.read(str(folder / "clean.mrcs")).astype(np.float32)
    sigma = float(np.sqrt(clean.var() / snr))
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    with mrcfile.new(str(folder / "particles.mrcs"), overwrite=True) as mrc:
        mrc.set_data(noisy)
        mrc.voxel_size = apix
    halves = []
    for h in (1, 2):
        subprocess.run(
            ["relion_reconstruct", "--i", "particles.star", "--o", f"half{h}.mrc",
             "--subset", str(h), "--angpix", str(apix)],
            cwd=folder, check=True, capture_output=True,
        )  # fmt: skip
        halves.append(read_map(folder / f"half{h}.mrc").data)
    return halves[0], halves[1]


def simulate_cell(cell: Cell, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(half1, half2, voxel size Å) of a cell: its views, its noise model."""
    from spisonet.simulate import draw_view_directions, simulate_half_maps

    truth, apix = ground_truth(cell.structure, cell.box, seed)
    dist = cell.distribution
    if dist == "side":
        # views within 20° of the x axis (one side view): the missing cone lies along x
        dirs = draw_view_directions("tilt:20", cell.n_views, seed=seed)[:, [2, 1, 0]]
    else:
        dirs = draw_view_directions(dist, cell.n_views, seed=seed)
    if cell.noise == "fourier":
        sim = simulate_half_maps(truth, apix, "star", snr=cell.snr, seed=seed, angles=_angles(dirs))
        h1, h2 = sim.half1, sim.half2
    elif cell.noise == "relion":
        if shutil.which("relion_project") is None:
            raise RuntimeError("the relion noise model needs relion_project and relion_reconstruct")
        with tempfile.TemporaryDirectory(prefix="matrix_relion_") as tmp:
            h1, h2 = relion_half_maps(truth, apix, dirs, cell.snr, seed, Path(tmp))
    else:
        raise ValueError(f"unknown noise model {cell.noise!r}")
    return h1.astype(np.float32), h2.astype(np.float32), apix


def cell_inputs(
    cell: Cell, seed: int = 0, inputs: Path | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`simulate_cell`, read from / written to ``inputs/<cell>__seed<seed>.npz`` when
    a folder is given (so the RELION cells can be simulated on a machine with RELION and
    corrected on one without)."""
    if inputs is None:
        return simulate_cell(cell, seed)
    path = Path(inputs) / f"{cell.name}__seed{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["half1"], z["half2"], float(z["voxel_size"])
    h1, h2, apix = simulate_cell(cell, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per process: two jobs of one cell (several training seeds) may
    # simulate the same inputs at once, and each renames its own file into place
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part.npz")
    np.savez_compressed(tmp, half1=h1, half2=h2, voxel_size=apix)
    tmp.replace(path)
    return h1, h2, apix


@contextlib.contextmanager
def _first_network_outputs(active: bool) -> Iterator[list[np.ndarray]]:
    """While active, the list filled with what the first ``predict_maps`` call of the
    correction returns (the main networks' outputs; a coarse pass predicts later)."""
    from spisonet.correction import pipeline

    kept: list[np.ndarray] = []
    if not active:
        yield kept
        return
    original = pipeline.predict_maps

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        if not kept:
            kept.extend(out)
        return out

    pipeline.predict_maps = recording
    try:
        yield kept
    finally:
        pipeline.predict_maps = original


def run_cell(
    cell: Cell,
    preset: str = "cpu",
    data_seed: int = 0,
    inputs: Path | None = None,
    save_maps: Path | None = None,
    fill_arms: tuple[float, ...] = (),
    **overrides,
) -> dict[str, object]:
    """Simulate (or read from ``inputs``), correct and score one cell; a JSON-ready dict.

    ``data_seed`` draws the noise (and the RELION cells' particles) and, unless
    ``overrides`` holds a ``seed``, the network's initialisation and cubes.

    ``save_maps``: a folder where ``<cell>.npz`` keeps the corrected average and each
    corrected half (float32) and the trust check's per-shell curves, to study
    post-processing without retraining.

    ``fill_arms``: floors ``a`` for :func:`spisonet.correction.fill.raise_fill`, each scored
    on the same run's corrected halves (paired figures, ``row["fill_arms"]["<a>"]``), with
    the gate the pipeline computes."""
    from spisonet.correction import correct_anisotropy, preset_settings
    from spisonet.correction.evaluate import score_correction

    t0 = time.perf_counter()
    truth, _ = ground_truth(cell.structure, cell.box, data_seed)
    mask = cell_mask(cell.mask, truth)
    h1, h2, apix = cell_inputs(cell, data_seed, inputs)
    t_sim = time.perf_counter() - t0
    settings = preset_settings(preset, **{"seed": data_seed, **overrides})
    t0 = time.perf_counter()
    last = [time.perf_counter()]

    def progress(stage: str, done: float, total: float, detail: object = None) -> None:
        now = time.perf_counter()
        if detail is not None and now - last[0] > 120:  # a line every 2 minutes of training
            last[0] = now
            print(f"    {cell.name}: {stage} {100 * done / max(total, 1):.0f} %", flush=True)

    with _first_network_outputs(save_maps is not None) as raw_outputs:
        result = correct_anisotropy(h1, h2, None, mask, apix, settings, progress=progress)
    t_corr = time.perf_counter() - t0
    raw = 0.5 * (h1 + h2)
    score = score_correction(truth, raw, result.average, mask)
    trust = result.trust
    arms = {}
    if fill_arms:
        from spisonet.correction.fill import raise_fill
        from spisonet.weights import power_presence

        gate = power_presence(h1, h2, mask, settings.presence_threshold, also_unmasked=True)
        for a in fill_arms:
            raised = raise_fill(result.corrected, [h1, h2], gate, a)
            arm = score_correction(truth, raw, 0.5 * (raised.maps[0] + raised.maps[1]), mask)
            arms[f"{a:g}"] = {
                "gain": arm.gain,
                "max_global_drop": arm.max_global_drop,
                "worst_drop_shell": arm.worst_drop_shell,
                "fill_gain": [float(g) for g in raised.gain],
            }
    if save_maps is not None:
        Path(save_maps).mkdir(parents=True, exist_ok=True)
        extra = {}
        if trust is not None:
            extra = {"trust_recovery": trust.recovery, "trust_shells": trust.shells_scored}
            if trust.phase_recovery is not None:
                extra["trust_phase_recovery"] = trust.phase_recovery
            if trust.data_fsc is not None:
                extra["trust_data_fsc"] = trust.data_fsc
        np.savez_compressed(
            Path(save_maps) / f"{cell.name}.npz",
            # replays apply the measured-data step themselves: they need network-only maps
            network_only=np.bool_(settings.network_only),
            corrected=result.average.astype(np.float32),
            corrected_halves=np.stack(result.corrected).astype(np.float32),
            # the main networks' outputs (z-score units, before the coarse pass and the
            # return to the input's units): bench_coarse.py blends coarse passes into them
            network_outputs=np.stack(raw_outputs).astype(np.float32),
            **extra,
        )
    return {
        "cell": cell.to_dict(),
        "name": cell.name,
        "missing_cone": cell.has_missing_cone,
        "voxel_size": apix,
        "preset": preset,
        "overrides": {k: v for k, v in overrides.items()},
        "gain": score.gain,
        "cone_raw": score.cone_raw,
        "cone_corrected": score.cone_corrected,
        "worst_direction": [float(x) for x in score.direction],
        "max_global_drop": score.max_global_drop,
        "global_raw": [float(x) for x in score.global_raw],
        "global_corrected": [float(x) for x in score.global_corrected],
        "worst_drop_shell": score.worst_drop_shell,
        "figure_noise": score.figure_noise,
        "trust_score": None if trust is None else trust.score,
        "trust_verdict": None if trust is None else trust.verdict,
        "trust_phase_score": None if trust is None else trust.phase_score,
        "trust_vouched": None if trust is None else trust.vouched,
        "fill_arms": arms,
        "measured_band": None if trust is None or trust.band is None else trust.band.to_dict(),
        "seconds": {"simulate": t_sim, "correct": t_corr, **result.timings},
        "notes": result.notes,
        "final_loss": {k: v[-1] for k, v in (result.histories or [{}])[0].items()},
    }


def _angles(directions: np.ndarray) -> np.ndarray:
    """RELION (rot, tilt, psi) degrees of view directions (x, y, z), psi 0."""
    from spisonet.anisotropy import direction_to_relion

    tilt, rot = direction_to_relion(directions)
    return np.stack([rot, tilt, np.zeros_like(rot)], axis=1)
