"""A cryo-ET tomogram simulator with ground truth: even/odd tomograms of a crowded slab.

The truth is a (Z, Y, X) slab of randomly placed, randomly oriented copies of a molecule
(:func:`spisonet.simulate.make_molecule`, or a map you give) plus, optionally, one
vesicle: a spherical shell with two Gaussian leaflets 40 Å apart. The slab is embedded
at the centre of a cube of edge N = max(Y, X) (rounded up to even), projected at each
tilt with teamtomo's torch-fourier-slice, given independent Gaussian noise for the even
and the odd half of the dose (optionally after a CTF from torch-ctf), back-projected per
half with torch-fourier-slice and cropped back to the slab.

Geometry is that of :mod:`spisonet.tomo.wedge`: (z, y, x) voxel order, z the beam at zero
tilt, y the tilt axis, and a tilt by θ turns the beam from z towards x,
d(θ) = cos θ·z + sin θ·x, so the tomograms' measured Fourier region is where
``wedge_weight(n, tilt_min, tilt_max) == 1`` (the tests check this on an asymmetric range).
torch, torch-fourier-slice and torch-ctf are imported only when a simulation runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .._checks import check_box, check_cubic_map, check_nonnegative, check_positive
from ..errors import InvalidValueError, MapShapeError
from ..progress import Progress, report
from ..simulate.molecules import make_molecule
from .wedge import _check_range

__all__ = ["SimulatedTomograms", "simulate_tomograms"]

#: Distance between the two leaflets' centres of the membrane, Å.
LEAFLET_DISTANCE = 40.0
#: Gaussian σ of one leaflet's density profile, Å (at least one voxel is used).
LEAFLET_SIGMA = 8.0
#: Peak density of one leaflet (molecules from make_molecule peak at 1).
LEAFLET_DENSITY = 1.0
#: Default crowding: molecules' bounding spheres fill this fraction of the slab.
CROWDING = 0.1
#: Distinct molecules made by make_molecule (seeds seed … seed + N_TEMPLATES − 1).
N_TEMPLATES = 3
#: Fourier padding of the projection (torch-fourier-slice's default; cheap).
PROJECTION_PAD = 2.0
#: Fourier padding of the back-projection: 1.5 halves its time against 2.0 (the
#: simulation's cost) for ~3 % instead of ~2 % of the truth's power leaking into the wedge.
RECONSTRUCTION_PAD = 1.5

_INSTALL_HINT = "pip install torch-fourier-slice torch-ctf (needs Python ≥ 3.11)"


@dataclass(frozen=True, eq=False)
class SimulatedTomograms:
    """Even/odd tomograms of a simulated slab and the noiseless truth on the same grid.

    Attributes
    ----------
    truth : (Z, Y, X) float32 noiseless density.
    even, odd : (Z, Y, X) float32 tomograms from the even / odd half of the dose
        (independent noise; their mean has the full-dose noise).
    tilt_angles : (n_tilts,) float64 tilts in degrees (positive turns the beam z → x).
    voxel_size : Å per voxel.
    positions : (n_molecules, 3) float64 molecule centres, voxels, (z, y, x).
    rotations : (n_molecules, 3, 3) float64 rotations acting on (z, y, x) column vectors:
        copy i is ``template(Rᵢᵀ (r − positionᵢ))``.
    molecule_index : (n_molecules,) int64, which template each copy is (0 when one map).
    membrane_center : (3,) float64 vesicle centre, voxels, (z, y, x); None without one.
    membrane_radius : vesicle radius (mid-bilayer), voxels; None without one.
    noise_sigma : σ of the full-dose noise per tilt image (projection units); each half
        got noise of standard deviation √2·σ.
    snr : var(signal) / σ² of a full-dose tilt image.
    defocus : µm underfocus of the CTF; None when no CTF was applied.
    """

    truth: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    tilt_angles: np.ndarray
    voxel_size: float
    positions: np.ndarray
    rotations: np.ndarray
    molecule_index: np.ndarray
    membrane_center: np.ndarray | None
    membrane_radius: float | None
    noise_sigma: float
    snr: float
    defocus: float | None


def _check_shape(shape: object) -> tuple[int, int, int]:
    """``shape`` as three positive ints (Z, Y, X) with Z ≤ max(Y, X)."""
    try:
        dims = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        dims = ()
    ok = len(dims) == 3 and all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 1 for d in dims
    )
    if not ok:
        raise InvalidValueError(f"shape must be three positive integers (Z, Y, X); got {shape!r}")
    z, y, x = (int(d) for d in dims)
    if z > max(y, x):
        raise InvalidValueError(
            f"shape: the slab thickness Z = {z} must be ≤ max(Y, X) = {max(y, x)}; "
            "lower Z or enlarge Y or X"
        )
    return z, y, x


def _tilt_series(tilt_min: float, tilt_max: float, tilt_step: float) -> np.ndarray:
    """The tilts tilt_min, tilt_min + step, … ≤ tilt_max in degrees, float64 (n_tilts,)."""
    lo, hi = _check_range(tilt_min, tilt_max)
    step = check_positive(tilt_step, "tilt_step", "degrees")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return lo + step * np.arange(n, dtype=np.float64)


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) uniformly random rotation matrices (from unit quaternions), float64."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, a, b, c = q.T
    return np.stack(
        [
            [1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)],
            [2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)],
            [2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)],
        ]
    ).transpose(2, 0, 1)


def _radius(template: np.ndarray) -> float:
    """Distance (voxels) from the box centre to the farthest voxel above 10 % of the peak."""
    n = template.shape[0]
    peak = float(np.abs(template).max())
    idx = np.argwhere(np.abs(template) > 0.1 * peak) if peak > 0 else np.zeros((1, 3))
    return max(float(np.sqrt(((idx - n // 2) ** 2).sum(axis=1)).max()), 1.0)


def _membrane(
    shape: tuple[int, int, int], voxel_size: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """A spherical bilayer crossing the slab: (density (Z, Y, X) float32, centre, radius)."""
    z, y, x = shape
    radius = rng.uniform(0.3, 0.45) * min(y, x)
    centre = np.array(
        [
            z / 2 + rng.uniform(-0.25, 0.25) * z,
            y / 2 + rng.uniform(-0.25, 0.25) * y,
            x / 2 + rng.uniform(-0.25, 0.25) * x,
        ]
    )
    gz, gy, gx = (
        np.arange(s, dtype=np.float32) - np.float32(c) for s, c in zip(shape, centre, strict=True)
    )
    r = np.sqrt(gz[:, None, None] ** 2 + gy[None, :, None] ** 2 + gx[None, None, :] ** 2)
    half = np.float32(0.5 * LEAFLET_DISTANCE / voxel_size)
    sigma = np.float32(max(LEAFLET_SIGMA, voxel_size) / voxel_size)
    d = r - np.float32(radius)
    profile = np.exp(-0.5 * ((d - half) / sigma) ** 2) + np.exp(-0.5 * ((d + half) / sigma) ** 2)
    return (LEAFLET_DENSITY * profile).astype(np.float32), centre, float(radius)


def _place(
    shape: tuple[int, int, int],
    box: int,
    spacing: float,
    n_wanted: int,
    strict: bool,
    rng: np.random.Generator,
    avoid: tuple[np.ndarray, float, float] | None,
) -> np.ndarray:
    """Molecule centres (n, 3) float64 (z, y, x), boxes inside the slab, ≥ ``spacing`` apart.

    ``avoid``: (centre, radius, clearance) of a membrane shell to keep clear of.
    """
    lo = np.array([box // 2] * 3, dtype=np.float64)
    hi = np.array([s - box + box // 2 for s in shape], dtype=np.float64)
    accepted = np.zeros((0, 3))
    # random sequential addition, 256 candidates at a time; stop after 50 barren batches
    barren = 0
    while accepted.shape[0] < n_wanted and barren < 50:
        cand = lo + rng.uniform(0.0, 1.0, (256, 3)) * (hi - lo)
        if avoid is not None:
            shell = np.abs(np.linalg.norm(cand - avoid[0], axis=1) - avoid[1])
            cand = cand[shell >= avoid[2]]
        if accepted.shape[0]:
            gap = np.linalg.norm(cand[:, None, :] - accepted[None, :, :], axis=2).min(axis=1)
            cand = cand[gap >= spacing]
        before = accepted.shape[0]
        for p in cand:  # the survivors against each other, in order
            if accepted.shape[0] >= n_wanted:
                break
            if not accepted.shape[0] or np.linalg.norm(accepted - p, axis=1).min() >= spacing:
                accepted = np.vstack([accepted, p])
        barren = barren + 1 if accepted.shape[0] == before else 0
    if strict and len(accepted) < n_wanted:
        raise InvalidValueError(
            f"n_molecules: only {accepted.shape[0]} of {n_wanted} molecules fit in the slab "
            f"{shape} without overlapping; lower n_molecules or molecule_box"
        )
    return accepted


def _build_truth(
    shape: tuple[int, int, int],
    voxel_size: float,
    templates: list[np.ndarray],
    n_molecules: int | None,
    membrane: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, float | None]:
    """Truth (Z, Y, X) float32, positions, rotations, template index, membrane centre/radius."""
    box = templates[0].shape[0]
    radius = max(_radius(t) for t in templates)
    spacing = 1.6 * radius  # bounding spheres may overlap a little, the molecules hardly
    truth = np.zeros(shape, dtype=np.float32)
    centre = None
    vesicle_radius = None
    avoid = None
    if membrane:
        density, centre, vesicle_radius = _membrane(shape, voxel_size, rng)
        truth += density
        clearance = radius + 0.5 * LEAFLET_DISTANCE / voxel_size + 1.0
        avoid = (centre, vesicle_radius, clearance)
    if n_molecules is None:
        n_wanted = max(1, int(CROWDING * np.prod(shape) / (4.0 / 3.0 * np.pi * radius**3)))
    else:
        n_wanted = n_molecules
    positions = _place(shape, box, spacing, n_wanted, n_molecules is not None, rng, avoid)
    n = positions.shape[0]
    rotations = _random_rotations(n, rng)
    index = rng.integers(0, len(templates), n)
    c = np.full(3, box // 2, dtype=np.float64)
    for p, rot, k in zip(positions, rotations, index, strict=True):
        start = np.floor(p).astype(int) - box // 2
        frac = p - np.floor(p)
        # output voxel o holds template(Rᵀ (o − c − frac) + c)
        offset = c - rot.T @ (c + frac)
        copy = ndimage.affine_transform(templates[k], rot.T, offset=offset, order=1)
        z0, y0, x0 = start
        truth[z0 : z0 + box, y0 : y0 + box, x0 : x0 + box] += copy
    return truth, positions, rotations, index.astype(np.int64), centre, vesicle_radius


def _tilt_matrices(tilt_angles: np.ndarray) -> Any:
    """Rotations about y by θ, ẑ ↦ (sin θ, 0, cos θ): (n_tilts, 3, 3) float32 torch, xyz.

    torch-fourier-slice samples the central slice R·(k_x, k_y, 0), whose normal R·ẑ is
    then the beam d(θ) = cos θ·z + sin θ·x of :mod:`spisonet.tomo.wedge`.
    """
    import torch

    t = np.radians(tilt_angles)
    c, s = np.cos(t), np.sin(t)
    zero, one = np.zeros_like(t), np.ones_like(t)
    m = np.stack([[c, zero, s], [zero, one, zero], [-s, zero, c]]).transpose(2, 0, 1)
    return torch.from_numpy(m.astype(np.float32))


def _require_teamtomo(ctf: bool) -> None:
    """Import torch-fourier-slice (and torch-ctf); InvalidValueError saying how to install."""
    import importlib

    try:
        importlib.import_module("torch_fourier_slice")
        if ctf:
            importlib.import_module("torch_ctf")
    except ImportError as exc:
        raise InvalidValueError(
            f"simulating tomograms needs teamtomo's projector and CTF: {_INSTALL_HINT} ({exc})"
        ) from exc


def _image_and_reconstruct(
    truth: np.ndarray,
    tilts: np.ndarray,
    voxel_size: float,
    snr: float,
    ctf: tuple[float, float, float, float] | None,
    rng: np.random.Generator,
    progress: Progress | None,
) -> tuple[list[np.ndarray], float]:
    """Tilt images of ``truth``, noise per half, back-projection: ([even, odd], σ²).

    The (Z, Y, X) slab sits at the centre of an even cube of edge max(Y, X) (slab voxel
    s//2 at cube voxel n//2); ``ctf`` is (defocus µm, kV, Cs mm, amplitude contrast).
    """
    import torch
    from torch_fourier_slice import backproject_2d_to_3d, project_3d_to_2d

    dims = truth.shape
    n = max(dims[1:]) + max(dims[1:]) % 2
    crop = tuple(slice(n // 2 - s // 2, n // 2 - s // 2 + s) for s in dims)
    cube = torch.zeros((n, n, n), dtype=torch.float32)
    cube[crop] = torch.from_numpy(truth)
    rot = _tilt_matrices(tilts)
    # without this the back-projection's scatter-add sums in a thread-dependent order
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            # (n_tilts, n, n) tilt images, [y, x]
            images = project_3d_to_2d(cube, rot, pad_factor=PROJECTION_PAD)
            if ctf is not None:
                from torch_ctf import calculate_ctf_2d

                transfer = calculate_ctf_2d(
                    defocus=ctf[0],
                    astigmatism=0.0,
                    astigmatism_angle=0.0,
                    voltage=ctf[1],
                    spherical_aberration=ctf[2],
                    amplitude_contrast=ctf[3],
                    phase_shift=0.0,
                    pixel_size=voxel_size,
                    image_shape=(n, n),
                    rfft=True,
                    fftshift=False,
                )
                spectrum = torch.fft.rfft2(images) * transfer.reshape(-1, n, n // 2 + 1)[0]
                images = torch.fft.irfft2(spectrum, s=(n, n))
            report(progress, "simulate", 2, 4)

            # σ² from the signal inside the slab's footprint, over all tilts
            sigma2 = float(images[:, crop[1], crop[2]].double().var()) / snr
            if not sigma2 > 0:
                raise InvalidValueError(
                    "the simulated tilt images are flat: nothing to add noise to"
                )
            halves = []
            for k in range(2):  # half the dose each: twice the full dose's noise variance
                noise = rng.normal(0.0, np.sqrt(2.0 * sigma2), size=tuple(images.shape))
                noisy = images + torch.from_numpy(noise.astype(np.float32))
                volume = backproject_2d_to_3d(noisy, rot, pad_factor=RECONSTRUCTION_PAD)
                halves.append(np.ascontiguousarray(volume[crop].numpy(), dtype=np.float32))
                report(progress, "simulate", 3 + k, 4)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return halves, sigma2


def simulate_tomograms(
    shape: tuple[int, int, int] = (64, 128, 128),
    voxel_size: float = 10.0,
    tilt_min: float = -60.0,
    tilt_max: float = 60.0,
    tilt_step: float = 3.0,
    n_molecules: int | None = None,
    molecule_box: int = 24,
    molecule: np.ndarray | None = None,
    membrane: bool = True,
    snr: float = 0.5,
    defocus: float | None = None,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    seed: int = 0,
    progress: Progress | None = None,
) -> SimulatedTomograms:
    """Simulate even/odd cryo-ET tomograms of a crowded slab, with the noiseless truth.

    Parameters
    ----------
    shape : (Z, Y, X) voxels of the slab and the tomograms; Z ≤ max(Y, X).
    voxel_size : Å per voxel.
    tilt_min, tilt_max, tilt_step : the tilt series in degrees, tilt_min, tilt_min + step,
        … ≤ tilt_max; −90 ≤ tilt_min < tilt_max ≤ 90. Tilt axis y; positive θ turns the
        beam from z towards x, as in :func:`spisonet.tomo.wedge_weight`.
    n_molecules : copies to place; None fills about 10 % of the slab with their bounding
        spheres (as many as fit). An explicit number that does not fit is an error.
    molecule_box : edge (voxels) of the maps made by :func:`make_molecule` (3 of them).
    molecule : a cubic (m, m, m) map to copy instead, m ≤ min(shape).
    membrane : add one vesicle (spherical bilayer, leaflets 40 Å apart) crossing the slab.
    snr : var(signal) / var(noise) of one full-dose tilt image; each half gets noise of
        variance 2σ², σ² = var(projection)/snr (over the slab's footprint, all tilts).
    defocus : µm underfocus of a CTF (torch-ctf's, +amplitude_contrast at zero frequency:
        density keeps its sign at low resolution) put on every tilt image before the
        noise; None: no CTF. The same defocus at every tilt, no envelope.
    voltage, spherical_aberration, amplitude_contrast : kV, mm, fraction in [0, 1).
    seed : every random choice (molecules, positions, orientations, membrane, noise).
    progress : called as ``progress("simulate", done, 4)`` after each of the four steps.

    Returns
    -------
    :class:`SimulatedTomograms`; arrays float32 (Z, Y, X).

    Raises
    ------
    InvalidValueError
        A bad shape, tilt range, step, snr, count or CTF value, or torch-fourier-slice /
        torch-ctf not installed.
    MapShapeError
        ``molecule`` is not a cubic 3D map or does not fit in the slab.
    """
    dims = _check_shape(shape)
    size = check_positive(voxel_size, "voxel_size", "Å")
    tilts = _tilt_series(tilt_min, tilt_max, tilt_step)
    snr_value = check_positive(snr, "snr")
    if n_molecules is not None and (
        isinstance(n_molecules, bool)
        or not isinstance(n_molecules, int | np.integer)
        or n_molecules < 0
    ):
        raise InvalidValueError(f"n_molecules must be an integer ≥ 0 or None; got {n_molecules!r}")
    if molecule is None:
        box = check_box(molecule_box, "molecule_box", minimum=4)
        if box > min(dims):
            raise InvalidValueError(
                f"molecule_box = {box} voxels does not fit in the slab {dims}; "
                f"use molecule_box ≤ {min(dims)}"
            )
    else:
        mol = check_cubic_map(molecule, "molecule")
        if mol.shape[0] > min(dims):
            raise MapShapeError(
                f"molecule: its box {mol.shape[0]} is larger than the slab {dims}; "
                f"expected an edge ≤ {min(dims)}"
            )
    ctf = None
    if defocus is not None:
        ctf = (
            check_positive(defocus, "defocus", "µm underfocus"),
            check_positive(voltage, "voltage", "kV"),
            check_nonnegative(spherical_aberration, "spherical_aberration", "mm"),
            check_nonnegative(amplitude_contrast, "amplitude_contrast"),
        )
        if ctf[3] >= 1.0:
            raise InvalidValueError(
                f"amplitude_contrast must be a fraction in [0, 1); got {amplitude_contrast!r}"
            )
    if n_molecules == 0 and not membrane:
        raise InvalidValueError(
            "the slab would be empty (n_molecules = 0 and membrane=False): nothing to image"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InvalidValueError(f"seed must be an integer; got {seed!r}")
    _require_teamtomo(ctf is not None)

    rng = np.random.default_rng(int(seed))
    if molecule is None:
        templates = [make_molecule(box, size, int(seed) + k) for k in range(N_TEMPLATES)]
    else:
        templates = [mol]
    truth, positions, rotations, index, centre, radius = _build_truth(
        dims, size, templates, n_molecules, membrane, rng
    )
    report(progress, "simulate", 1, 4)

    halves, sigma2 = _image_and_reconstruct(truth, tilts, size, snr_value, ctf, rng, progress)
    return SimulatedTomograms(
        truth=truth,
        even=halves[0],
        odd=halves[1],
        tilt_angles=tilts,
        voxel_size=size,
        positions=positions,
        rotations=rotations,
        molecule_index=index,
        membrane_center=centre,
        membrane_radius=radius,
        noise_sigma=float(np.sqrt(sigma2)),
        snr=snr_value,
        defocus=None if ctf is None else ctf[0],
    )
