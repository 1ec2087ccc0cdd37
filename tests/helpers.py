"""Helpers shared by the tests: small structured maps and files made on the fly.

Test modules import from here (``from helpers import blobs``), never from each other.
"""

from __future__ import annotations

import numpy as np


def blobs(n: int, seed: int = 0, n_blobs: int = 40, width: float = 1.5) -> np.ndarray:
    """A structured test map: Gaussian blobs inside a sphere of radius n/3 (float32)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    out = np.zeros((n, n, n), dtype=np.float64)
    centres = rng.uniform(-n / 3.5, n / 3.5, size=(n_blobs, 3))
    for cz, cy, cx in centres:
        out += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return out.astype(np.float32)


def soft_sphere_mask(n: int, radius: float, edge: float = 3.0) -> np.ndarray:
    k = np.arange(n) - n // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.clip((radius + edge - r) / edge, 0.0, 1.0).astype(np.float32)


def write_noisy_pair(folder, n: int, voxel_size: float) -> dict:
    """Write h1.mrc, h2.mrc (blobs × 3 plus unit noise, offset 5) and mask.mrc (a soft
    sphere of radius n/3) into ``folder``; returns {name: path}."""
    from spisonet.io import write_map

    r = np.random.default_rng(0)
    s = blobs(n, 0) * 3
    paths = {}
    for name in ("h1", "h2"):
        paths[name] = folder / f"{name}.mrc"
        write_map(paths[name], (s + r.standard_normal(s.shape) + 5).astype(np.float32), voxel_size)
    paths["mask"] = folder / "mask.mrc"
    write_map(paths["mask"], soft_sphere_mask(n, n / 3), voxel_size)
    return paths


# --------------------------------------------------------------------------------------
# RELION jobs written in RELION's own format (what BackProjector::externalReconstruct
# writes), and the run files beside them


def _hermitian(a: np.ndarray) -> np.ndarray:
    """Make the x = 0 (and even-size Nyquist) planes Hermitian, as RELION's data are."""
    p = a.shape[0]
    idx = (-np.arange(p)) % p
    for x in [0] + ([p // 2] if p % 2 == 0 else []):
        plane = a[:, :, x]
        a[:, :, x] = 0.5 * (plane + np.conj(plane[idx][:, idx]))
    return a


def _write_raw_mrc(path, array: np.ndarray) -> None:
    """An MRC without a voxel size, as RELION writes its Fourier files."""
    import mrcfile

    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(array, dtype=np.float32))


def make_job(
    folder,
    root: str = "run_ab_it003_half1_class001",
    *,
    ori: int = 16,
    pad: float = 2,
    current: int | None = None,
    seed: int = 0,
    fudge: float = 1.0,
    tau2_scale: float = 1.0,
    tau2_zero_from: int | None = None,
    weight_floor: float = 0.5,
    labels_drop: tuple[str, ...] = (),
    padded_size: int | None = None,
):
    """Write RELION's external-reconstruction job ``<root>`` into ``folder``: random
    Hermitian data and weights (rfftn of real maps), a tau2 table and an FSC column
    ``linspace(1, 0, ori // 2 + 1)``. The STAR's paths are relative to ``folder``'s
    parent (run the job from there). Returns the STAR's path."""
    import math

    rng = np.random.default_rng(seed)
    current = ori if current is None else current
    p = int(math.floor(pad * ori + 0.5)) if padded_size is None else padded_size
    folder.mkdir(parents=True, exist_ok=True)
    data = _hermitian(np.fft.rfftn(rng.standard_normal((p, p, p))))
    weight = _hermitian(
        (weight_floor + np.abs(np.fft.rfftn(rng.standard_normal((p, p, p)))) ** 2 / p**3).astype(
            complex
        )
    ).real
    prefix = f"{root}_external_reconstruct"
    _write_raw_mrc(folder / f"{prefix}_data_real.mrc", data.real)
    _write_raw_mrc(folder / f"{prefix}_data_imag.mrc", data.imag)
    _write_raw_mrc(folder / f"{prefix}_weight.mrc", weight)
    shells = ori // 2 + 1
    tau2 = tau2_scale * np.exp(-np.arange(shells) / 4.0) * (1 + 0.2 * rng.random(shells))
    if tau2_zero_from is not None:
        tau2[tau2_zero_from:] = 0.0
    fsc = np.linspace(1.0, 0.0, shells)
    rel = folder.name
    general = {
        "rlnExtReconsDataReal": f"{rel}/{prefix}_data_real.mrc",
        "rlnExtReconsDataImag": f"{rel}/{prefix}_data_imag.mrc",
        "rlnExtReconsWeight": f"{rel}/{prefix}_weight.mrc",
        "rlnExtReconsResult": f"{rel}/{prefix}.mrc",
        "rlnExtReconsResultStarfile": f"{rel}/{prefix}_out.star",
        "rlnTau2FudgeFactor": f"{fudge:.6f}",
        "rlnPaddingFactor": f"{pad:.6f}",
        "rlnReferenceDimensionality": "3",
        "rlnOriginalImageSize": str(ori),
        "rlnCurrentImageSize": str(current),
    }
    lines = ["", "# version 30001", "", "data_external_reconstruct_general", ""]
    lines += [f"_{k}  {v}" for k, v in general.items() if k not in labels_drop]
    lines += ["", "", "# version 30001", "", "data_external_reconstruct_tau2", "", "loop_"]
    lines += ["_rlnSpectralIndex #1", "_rlnReferenceTau2 #2", "_rlnGoldStandardFsc #3"]
    lines += [f"{i:6d} {t:.12e} {f:.6f}" for i, (t, f) in enumerate(zip(tau2, fsc, strict=True))]
    star = folder / f"{prefix}.star"
    star.write_text("\n".join(lines) + "\n\n")
    return star


def write_sampling_star(path, order: int) -> None:
    """A RELION ``_sampling.star`` with healpix order ``order``."""
    path.write_text(
        "\n# version 30001\n\ndata_sampling_general\n\n_rlnIs3DSampling 1\n"
        f"_rlnHealpixOrder {order}\n_rlnPsiStep 7.5\n_rlnHealpixOrderOriginal 1\n\n"
    )


def write_model_star(path, pixel: float) -> None:
    """A RELION ``_model.star`` stating the pixel size ``pixel`` (Å)."""
    path.write_text(
        "\n# version 30001\n\ndata_model_general\n\n_rlnReferenceDimensionality 3\n"
        f"_rlnOriginalImageSize 16\n_rlnPixelSize {pixel:.6f}\n\n"
    )


# --------------------------------------------------------------------------- the CLI
#: the voxel size of :func:`simulated_maps` (not 1 or 2: a swapped default would show)
CLI_APIX = 1.7


def simulated_maps(folder, n: int = 32, voxel_size: float = CLI_APIX) -> dict:
    """Write half1/half2/mask/gt.mrc simulated from 1000 views mostly within 20° of z,
    and small.mrc (a 24³ map of ones), into ``folder``; returns {name: path}."""
    from spisonet.io import write_map
    from spisonet.simulate import make_molecule, simulate_half_maps

    d = simulate_half_maps(
        make_molecule(n, voxel_size, seed=0), voxel_size, "tilt:20+uniform:0.1", 1000
    )
    paths = {}
    for name in ("half1", "half2", "mask", "gt"):
        paths[name] = folder / f"{name}.mrc"
        write_map(paths[name], getattr(d, name), voxel_size=voxel_size)
    paths["small"] = folder / "small.mrc"
    write_map(paths["small"], np.ones((24, 24, 24), np.float32), voxel_size=voxel_size)
    return paths


def invoke(*args) -> str:
    """Run ``spisonet ARGS`` in-process (typer's runner); assert exit code 0; the output."""
    from typer.testing import CliRunner

    from spisonet.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def run_module(*args, cwd, env: dict | None = None, timeout: float = 120):
    """Run ``python -m spisonet ARGS`` in a subprocess (what a user's shell sees).

    COLUMNS=1000: rich wraps the red error line at the console width (80 when not a
    terminal); a wide one keeps the message on the one line main() prints.
    """
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "spisonet", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "1000", **(env or {})},
    )


def one_error_line(proc, name: str) -> None:
    """``proc`` failed as a user error should: exit code 2, one line on stderr that says
    error and names ``name``, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and name in lines[0]
    assert "Traceback" not in proc.stderr
