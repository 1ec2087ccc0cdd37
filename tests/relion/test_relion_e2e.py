"""End to end: RELION 3.1 auto-refine with ``spisonet-relion`` as the external reconstructor.

Marked ``relion`` and skipped where ``relion_refine_mpi`` (or ``mpirun``) is absent. Run it
with ``python -m pytest -m relion tests/relion/test_relion_e2e.py``. The particle stack is made
here, reproducibly: RELION's ``relion_project`` (deterministic without ``--add_noise``)
projects a pseudo-atomic molecule at known, strongly preferred orientations, and the noise
is added with numpy from a seed.

:func:`make_dataset` and :func:`refine` are also used by ``benchmarks/bench_relion.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

HAVE_RELION = all(
    shutil.which(p) is not None for p in ("relion_refine_mpi", "relion_project", "mpirun")
)

#: Refinement arguments shared by the test and the benchmark (C1, no CTF, pad 2).
REFINE_ARGS = (
    "--auto_refine --split_random_halves --ini_high 30 --pad 2 --particle_diameter {diam} "
    "--flatten_solvent --zero_mask --healpix_order 1 --auto_local_healpix_order 2 "
    "--offset_range 3 --offset_step 1 --sym C1 --low_resol_join_halves 40 --norm --scale "
    "--j 1 --random_seed {seed} --dont_combine_weights_via_disc --pool 30"
)


# --------------------------------------------------------------------------------------
# The data set


def _optics_block(voxel_size: float, box: int) -> list[str]:
    return [
        "",
        "# version 30001",
        "",
        "data_optics",
        "",
        "loop_",
        "_rlnOpticsGroupName #1",
        "_rlnOpticsGroup #2",
        "_rlnImagePixelSize #3",
        "_rlnImageSize #4",
        "_rlnImageDimensionality #5",
        "_rlnVoltage #6",
        "_rlnSphericalAberration #7",
        "_rlnAmplitudeContrast #8",
        f"opticsGroup1 1 {voxel_size:.4f} {box} 2 300 2.7 0.1",
        "",
        "",
        "# version 30001",
        "",
        "data_particles",
        "",
        "loop_",
    ]


def make_dataset(
    folder: Path,
    *,
    box: int = 64,
    voxel_size: float = 2.0,
    n_particles: int = 1000,
    preferred_fraction: float = 0.9,
    cone_deg: float = 15.0,
    snr: float = 1.0,
    seed: int = 0,
    ctf: bool = False,
    defocus_um: tuple[float, float] = (1.0, 2.5),
) -> dict[str, object]:
    """Write a preferred-orientation particle stack for RELION into ``folder``.

    ``preferred_fraction`` of the views lie within ``cone_deg`` of the z axis (top views),
    the rest are uniform; psi is uniform. Noise: white Gaussian with variance
    ``var(projections) / snr``. Writes ``truth.mrc`` (the molecule), ``ref.mrc`` (the
    truth low-passed to 40 Å, RELION's initial reference), ``angles.star`` (the true
    angles), ``particles.mrcs`` and ``particles.star`` (no angles). Returns the paths and
    the true (N, 3) rot/tilt/psi in degrees. With ``ctf``, every particle gets a defocus
    (U uniform in ``defocus_um``, V within ±0.05 µm of it, astigmatism angle uniform),
    ``relion_project --ctf`` applies it, and both STAR files carry it (refine with
    ``--ctf``; RELION 3.1.3 ignores the CTF on such a stack, RELION 5.1 refines it).
    """
    from spisonet.anisotropy import direction_to_relion
    from spisonet.fourier import lowpass
    from spisonet.io import write_map
    from spisonet.simulate import draw_view_directions, make_molecule

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = make_molecule(box, voxel_size, seed=seed)
    write_map(folder / "truth.mrc", truth, voxel_size=voxel_size)
    write_map(
        folder / "ref.mrc", lowpass(truth, 40.0, voxel_size, falloff=3), voxel_size=voxel_size
    )
    n_pref = round(preferred_fraction * n_particles)
    dirs = np.concatenate(
        [
            draw_view_directions(f"tilt:{cone_deg:g}", n_pref, seed=seed),
            draw_view_directions("uniform", n_particles - n_pref, seed=seed + 1),
        ]
    )
    dirs = dirs[rng.permutation(n_particles)]
    tilt, rot = direction_to_relion(dirs)
    psi = rng.uniform(-180.0, 180.0, n_particles)
    angles = np.stack([rot, tilt, psi], axis=1)
    ctf_labels, ctf_values = [], [""] * n_particles
    if ctf:
        du = rng.uniform(1e4 * defocus_um[0], 1e4 * defocus_um[1], n_particles)
        dv = du + rng.uniform(-500.0, 500.0, n_particles)
        da = rng.uniform(0.0, 180.0, n_particles)
        ctf_labels = ["_rlnDefocusU", "_rlnDefocusV", "_rlnDefocusAngle"]
        ctf_values = [f" {u:.1f} {v:.1f} {a:.2f}" for u, v, a in zip(du, dv, da, strict=True)]
    lines = _optics_block(voxel_size, box)
    labels = ["_rlnImageName", "_rlnOpticsGroup", "_rlnAngleRot", "_rlnAngleTilt"]
    labels += ["_rlnAnglePsi", *ctf_labels]
    lines += [f"{name} #{i + 1}" for i, name in enumerate(labels)]
    lines += [
        f"{i + 1:06d}@particles.mrcs 1 {a:.4f} {b:.4f} {c:.4f}{ctf_values[i]}"
        for i, (a, b, c) in enumerate(angles)
    ]
    (folder / "angles.star").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    subprocess.run(
        ["relion_project", "--i", "truth.mrc", "--ang", "angles.star", "--o", "clean",
         "--angpix", str(voxel_size), *(["--ctf"] if ctf else [])],
        cwd=folder, check=True, capture_output=True,
    )  # fmt: skip
    clean = mrcfile.read(str(folder / "clean.mrcs")).astype(np.float32)
    sigma = float(np.sqrt(clean.var() / snr))
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    with mrcfile.new(str(folder / "particles.mrcs"), overwrite=True) as mrc:
        mrc.set_data(noisy)
        mrc.voxel_size = voxel_size
    labels = ["_rlnImageName", "_rlnOpticsGroup", *ctf_labels]
    particles = _optics_block(voxel_size, box)
    particles += [f"{name} #{i + 1}" for i, name in enumerate(labels)]
    particles += [f"{i + 1:06d}@particles.mrcs 1{ctf_values[i]}" for i in range(n_particles)]
    (folder / "particles.star").write_text("\n".join(particles) + "\n\n", encoding="utf-8")
    for p in folder.glob("clean*"):
        p.unlink()
    return {
        "folder": folder,
        "truth": folder / "truth.mrc",
        "reference": folder / "ref.mrc",
        "particles": folder / "particles.star",
        "angles": angles,
        "voxel_size": voxel_size,
        "box": box,
        "sigma": sigma,
    }


def refine(
    folder: Path,
    out_root: str,
    *,
    external: bool,
    env: dict[str, str] | None = None,
    diameter: float = 110.0,
    timeout: float = 1500.0,
    extra: str = "",
    seed: int = 0,
    relion5_root: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``mpirun -n 3 relion_refine_mpi`` in ``folder`` (RELION's ``--random_seed``
    ``seed``: the split into halves and its other random choices); returns the process and
    seconds. With ``relion5_root``, RELION 5.1 from that root runs (``relion5.py``), and an
    external reconstructor in ``env`` is wrapped to run on the host."""
    (folder / Path(out_root).parent).mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
    )
    if env:
        full_env.update(env)
    cmd = (
        "mpirun --oversubscribe -n 3 relion_refine_mpi --i particles.star --ref ref.mrc "
        f"--o {out_root} " + REFINE_ARGS.format(diam=diameter, seed=seed) + " " + extra
    )
    if external:
        cmd += " --external_reconstruct"
    start = time.perf_counter()
    if relion5_root is not None:
        from relion5 import host_executable, run_in_root

        exe = full_env.get("RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE")
        if external and exe:
            full_env["RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE"] = host_executable(relion5_root, exe)
        proc = run_in_root(relion5_root, cmd, folder, env=full_env, timeout=timeout)
        return proc, time.perf_counter() - start
    proc = subprocess.run(
        cmd, shell=True, cwd=folder, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return proc, time.perf_counter() - start


def _log_lines(folder: Path) -> list[str]:
    log = folder / "spisonet_relion.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def _final_written(folder: Path, root: str) -> bool:
    name = Path(root).name
    return (folder / Path(root).parent / f"{name}_class001.mrc").exists()


# --------------------------------------------------------------------------------------
# The tests


pytestmark = [
    pytest.mark.relion,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_RELION, reason="RELION 3.1 (relion_refine_mpi) not installed"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("relion_e2e"), n_particles=1000, seed=0)


CORRECTION_ENV = {
    "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE": "spisonet-relion",
    "SPISONET_PRESET": "tiny",
    "ISONET_EPOCHS": "2",
    "SPISONET_THREADS": "1",
}
# The gates keep their defaults (healpix order >= 3, resolution < 15 Å): in this run RELION
# reaches order 3 at about iteration 13 of ~17, so the network runs in the last 3-4
# iterations and the earlier ones log why they were skipped.


def _corrected_iterations(lines: list[str]) -> set[int]:
    its = set()
    for line in lines:
        m = re.search(r"_it(\d{3,})_half\d+_class\d{3,}: corrected map", line)
        if m:
            its.add(int(m.group(1)))
    return its


#: Test side only (the package has no test hook): a ``sitecustomize.py`` that every Python
#: started with it on PYTHONPATH imports, so the ``spisonet-relion`` processes RELION runs
#: get a correction whose n-th corrected call per half raises after its rendezvous (both
#: halves have met, so neither waits for the other). Calls are counted per half in files
#: of the test's own tmp folder.
_FAILING_CORRECTION = """
import os
from pathlib import Path

import spisonet.relion.correction

_call = spisonet.relion.correction.RelionCorrection.__call__


def _failing_call(self, job, plain, pixel_size):
    out = _call(self, job, plain, pixel_size)
    if out is None:  # RELION's map kept: not a corrected call
        return out
    half = spisonet.relion.parse_job_name(job.name).half
    counter = Path(os.environ["SPISONET_E2E_COUNTS"]) / f"half{half}"
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls == int(os.environ["SPISONET_E2E_FAIL_ON"]):
        raise RuntimeError(f"test hook: corrected call {calls} of half {half} fails")
    return out


spisonet.relion.correction.RelionCorrection.__call__ = _failing_call
"""


@pytest.fixture(scope="module")
def refinement(dataset, tmp_path_factory):
    """One refinement with the correction on, in which each half's second corrected call
    raises on purpose (one RELION run serves both tests: CI time)."""
    folder = dataset["folder"]
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(_FAILING_CORRECTION, encoding="utf-8")
    (hook / "counts").mkdir()
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = dict(
        CORRECTION_ENV,
        PYTHONPATH=pythonpath,
        SPISONET_E2E_COUNTS=str(hook / "counts"),
        SPISONET_E2E_FAIL_ON="2",
    )
    proc, seconds = refine(folder, "Corr/run", external=True, env=env)
    print(f"refinement with correction (one failing call per half): {seconds:.0f} s")
    return {"folder": folder, "proc": proc, "lines": _log_lines(folder / "Corr")}


def iterations_corrected_in_both_halves(lines: list[str]) -> list[int]:
    """Iterations whose log says "corrected map" for half 1 and for half 2."""
    return [
        it
        for it in sorted(_corrected_iterations(lines))
        if all(
            any(f"_it{it:03d}_half{h}_class001: corrected map" in ln for ln in lines)
            for h in (1, 2)
        )
    ]  # fmt: skip


def assert_failures_fell_back(lines: list[str]) -> None:
    """The test hook's failures happened, and each job got RELION's plain map instead."""
    failed = [ln for ln in lines if "correction failed" in ln and "test hook" in ln]
    assert failed, "\n".join(lines[-40:])
    for ln in failed:
        job = re.search(r"(\S+_it\d{3,}_half\d+_class\d{3,}): correction failed", ln).group(1)
        assert any(f"{job}: plain (correction failed) map" in x for x in lines), job


def test_refinement_with_correction_converges(refinement):
    folder, proc, lines = refinement["folder"], refinement["proc"], refinement["lines"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _final_written(folder, "Corr/run"), proc.stdout[-3000:]
    # the network ran (both halves) in at least two iterations
    assert len(iterations_corrected_in_both_halves(lines)) >= 2, "\n".join(lines[-40:])
    assert any("gate closed" in ln for ln in lines)  # early iterations said why they skipped
    assert any("last joined iteration" in ln for ln in lines)
    # the continued model: a later iteration started from the previous one's network
    assert any("continuing the model" in ln for ln in lines), "\n".join(lines[-40:])
    # no failure but the test's own
    failures = [ln for ln in lines if "correction failed, writing" in ln]
    assert failures and all("test hook" in ln for ln in failures), "\n".join(failures)
    # RELION's map was kept where measured (the default), with a share that says something
    shares = [
        float(m.group(1))
        for ln in lines
        if (m := re.search(r"kept where measured \(weight > 0.5 in (\d+) %", ln))
    ]
    assert len(shares) >= 4 and all(0 < x < 100 for x in shares), "\n".join(lines[-40:])


def test_refinement_survives_a_failing_correction(refinement):
    folder, lines = refinement["folder"], refinement["lines"]
    assert_failures_fell_back(lines)
    assert not list(folder.glob("Corr/*test*"))  # nothing of the test in RELION's folder
