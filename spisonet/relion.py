"""RELION external reconstruction: read RELION's job, rebuild its map exactly.

``relion_refine --external_reconstruct`` writes, once per half per iteration, a STAR file
``<root>_it<NNN>[_half<h>]_class<CCC>_external_reconstruct.star`` and three MRC files with
the back-projected padded Fourier data and weights, then runs
``$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE <star>`` (``/bin/sh -c``, from RELION's working
directory) and reads back the map named in the STAR.

This module reproduces what RELION 3.1's own ``relion_external_reconstruct`` does with
those files, step for step (``BackProjector::reconstruct`` with trilinear interpolation,
C1, ``minres_map = -1``, ``normalise = 1``):

1. ``r_max = min(current_size, ori_size) // 2``, ``R = ROUND(pad * r_max)``; the Fourier
   components with ``|k|² < R²`` are copied from the files (size ``P = ROUND(pad * ori)``)
   onto an odd working grid of ``2 (R + 1) + 1`` voxels.
2. Wiener term (``--no_map`` off): the weight of a voxel in shell
   ``ires = ROUND(|k| / pad)`` gains ``1 / (pad³ · fudge · tau2[ires])`` where tau2 > 0,
   and ``1000 × weight`` where tau2 < 1e-20.
3. Gridding pre-conditioning (10 iterations, after Pipe & Menon 1999): start from 1
   inside ``R``, multiply by the weight, convolve with the Fourier transform of a
   Kaiser-Bessel blob (radius 3.8, alpha 15, order 0; via real space on the working
   grid, from a 10 000-entry table), divide by the result. ``--skip_gridding`` instead
   divides the data by max(weight, 1/1000 of the shell's mean weight).
4. The data times that weight go into an even grid of ``ROUND(pad * ori)`` (rounded up to
   even) voxels, are inverse transformed, centred, cropped to ``ori`` voxels and divided by
   ``pad³ · ori``.
5. Soft spherical mask (radius ori/2, 3-voxel cosine edge, outside set to the mean of the
   edge), then division by sinc² (trilinear gridding correction).

RELION rounds halves away from zero (``ROUND(x) = (int)(x + 0.5)`` for x > 0); numpy
rounds them to even, so this module uses ``floor(x + 0.5)`` wherever RELION uses ROUND.
RELION is built in double precision (``Precision: BASE=double``): all arithmetic here is
float64 and only the result is float32.

Only :func:`run_external_reconstruct` touches files, and only through :mod:`spisonet.io`.
"""

from __future__ import annotations

import math
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidValueError, MapShapeError, SpisonetError, StarFormatError

__all__ = [
    "ExternalReconstructJob",
    "PixelSize",
    "blob_fourier_table",
    "console_main",
    "find_pixel_size",
    "read_external_star",
    "reconstruct",
    "reconstruct_arrays",
    "resolve_correction",
    "run_external_reconstruct",
    "write_result_star",
]

#: Blob RELION's BackProjector uses: radius 1.9 * 2 (fixed since 2017), alpha 15, order 0.
BLOB_RADIUS = 3.8
BLOB_ALPHA = 15.0
BLOB_ORDER = 0
#: Entries of RELION's tabulated blob Fourier transform (sampling 0.5 / entries).
BLOB_TABLE_SIZE = 10000

#: Labels of the ``external_reconstruct_general`` block this module needs.
REQUIRED_LABELS = (
    "rlnExtReconsDataReal",
    "rlnExtReconsDataImag",
    "rlnExtReconsWeight",
    "rlnExtReconsResult",
    "rlnTau2FudgeFactor",
    "rlnPaddingFactor",
    "rlnOriginalImageSize",
    "rlnCurrentImageSize",
)

Correction = Callable[["ExternalReconstructJob", np.ndarray, float], np.ndarray]


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalReconstructJob:
    """Everything RELION's ``*_external_reconstruct.star`` says.

    Attributes
    ----------
    star_path : the STAR file itself.
    data_real, data_imag, weight : resolved paths of the padded half-complex Fourier data
        (real and imaginary parts) and weights; float32 MRC of shape (P, P, P//2+1).
    result : resolved path of the map RELION reads back (box³ float32 MRC).
    result_star : resolved path of the optional tau2/FSC STAR RELION reads back, or None.
    tau2_fudge : ``rlnTau2FudgeFactor`` (RELION's ``--tau2_fudge``).
    padding_factor : ``rlnPaddingFactor`` (``--pad``).
    ori_size : ``rlnOriginalImageSize``: the box in voxels.
    current_size : ``rlnCurrentImageSize``: twice the Fourier radius in use.
    ref_dim : ``rlnReferenceDimensionality`` (3; 2 is not supported here).
    spectral_index, tau2, fsc : the ``external_reconstruct_tau2`` table (tau2 per shell
        and the gold-standard FSC; ``fsc`` is None when the column is absent).
    pixel_size : ``rlnPixelSize`` (Å) when the STAR has it (RELION 5), else None.
    labels : every label of the general block with its raw text value.
    """

    star_path: Path
    data_real: Path
    data_imag: Path
    weight: Path
    result: Path
    result_star: Path | None
    tau2_fudge: float
    padding_factor: float
    ori_size: int
    current_size: int
    ref_dim: int
    spectral_index: np.ndarray
    tau2: np.ndarray
    fsc: np.ndarray | None
    pixel_size: float | None = None
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """Short name for logs: the STAR name without ``_external_reconstruct.star``."""
        return _star_root(self.star_path.name)

    @property
    def padded_size(self) -> int:
        """Edge P of the data/weight files: ROUND(pad * ori)."""
        return _relion_round(self.padding_factor * self.ori_size)


def _relion_round(x: float) -> int:
    """RELION's ROUND: halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _star_root(name: str) -> str:
    suffix = "_external_reconstruct.star"
    return name[: -len(suffix)] if name.endswith(suffix) else Path(name).stem


def _parse_star_blocks(path: Path) -> dict[str, object]:
    import starfile

    if not path.exists():
        raise StarFormatError(f"{path}: STAR file not found")
    if path.is_dir():
        raise StarFormatError(f"{path}: is a directory, expected a STAR file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise StarFormatError(f"{path}: not a readable STAR file ({exc})") from exc
    if not isinstance(blocks, dict) or not blocks:
        raise StarFormatError(f"{path}: no data blocks found; expected a RELION STAR file")
    return blocks


def _block_as_dict(block: object) -> dict[str, object]:
    """A one-row STAR block (list or one-row loop) as {label: value}."""
    if isinstance(block, dict):
        return dict(block)
    columns = getattr(block, "columns", None)
    if columns is None or len(block) == 0:  # type: ignore[arg-type]
        return {}
    row = block.iloc[0]  # type: ignore[attr-defined]
    return {str(c): row[c] for c in columns}


def _resolve_input(raw: str, star_path: Path) -> Path:
    """A path from RELION's STAR: relative to the cwd (RELION's project), else the STAR's."""
    p = Path(raw)
    if p.is_absolute():
        return p
    for candidate in (Path.cwd() / p, star_path.parent / p, star_path.parent / p.name):
        if candidate.exists():
            return candidate
    return Path.cwd() / p


def _resolve_output(raw: str, star_path: Path) -> Path:
    """Where to write a result named in the STAR (its folder must exist)."""
    p = Path(raw)
    if p.is_absolute():
        return p
    for candidate in (Path.cwd() / p, star_path.parent / p, star_path.parent / p.name):
        if candidate.parent.is_dir():
            return candidate
    return Path.cwd() / p


def read_external_star(path: str | os.PathLike) -> ExternalReconstructJob:
    """Read RELION's ``*_external_reconstruct.star``.

    Paths inside are relative to RELION's working directory (this process's cwd when
    RELION runs us); when a file is not found there, the STAR's own folder is tried.

    Raises
    ------
    StarFormatError when the file is missing or unreadable, a block or a label is missing,
    or a value is not a number where one is expected.
    InvalidValueError when a number is out of range (padding < 1, sizes < 2, fudge <= 0).
    """
    star = Path(path)
    blocks = _parse_star_blocks(star)
    if "external_reconstruct_general" not in blocks:
        found = ", ".join(f"'{k}'" for k in blocks)
        raise StarFormatError(
            f"{star}: no 'external_reconstruct_general' block (found {found}); expected "
            "the STAR that relion_refine --external_reconstruct writes"
        )
    general = _block_as_dict(blocks["external_reconstruct_general"])
    missing = [lab for lab in REQUIRED_LABELS if lab not in general]
    if missing:
        raise StarFormatError(
            f"{star}: block 'external_reconstruct_general' lacks {', '.join(missing)}"
        )

    def number(label: str, kind: type) -> float | int:
        raw = general[label]
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise StarFormatError(f"{star}: {label} is '{raw}', expected a number") from None
        if not math.isfinite(value):
            raise StarFormatError(f"{star}: {label} is '{raw}', expected a finite number")
        if kind is int:
            if value != int(value):
                raise StarFormatError(f"{star}: {label} is '{raw}', expected an integer")
            return int(value)
        return value

    fudge = float(number("rlnTau2FudgeFactor", float))
    pad = float(number("rlnPaddingFactor", float))
    ori = int(number("rlnOriginalImageSize", int))
    current = int(number("rlnCurrentImageSize", int))
    ref_dim = (
        int(number("rlnReferenceDimensionality", int))
        if ("rlnReferenceDimensionality" in general)
        else 3
    )
    if pad < 1:
        raise InvalidValueError(f"{star}: rlnPaddingFactor is {pad}, expected >= 1")
    if ori < 2:
        raise InvalidValueError(f"{star}: rlnOriginalImageSize is {ori}, expected >= 2")
    if current < 2:
        raise InvalidValueError(f"{star}: rlnCurrentImageSize is {current}, expected >= 2")
    if fudge <= 0:
        raise InvalidValueError(f"{star}: rlnTau2FudgeFactor is {fudge}, expected > 0")
    if ref_dim != 3:
        raise InvalidValueError(
            f"{star}: rlnReferenceDimensionality is {ref_dim}; only 3D references are supported"
        )
    pixel_size = None
    if "rlnPixelSize" in general:
        value = float(number("rlnPixelSize", float))
        pixel_size = value if value > 0 else None

    if "external_reconstruct_tau2" not in blocks:
        raise StarFormatError(
            f"{star}: no 'external_reconstruct_tau2' block; expected the tau2 table "
            "(rlnSpectralIndex, rlnReferenceTau2)"
        )
    table = blocks["external_reconstruct_tau2"]
    if isinstance(table, dict):
        table = {k: [v] for k, v in table.items()}
        columns = list(table)
    else:
        columns = [str(c) for c in getattr(table, "columns", [])]
    if columns and "rlnReferenceTau2" not in columns:
        raise StarFormatError(
            f"{star}: block 'external_reconstruct_tau2' lacks rlnReferenceTau2 "
            f"(found {', '.join(columns)})"
        )
    try:
        if columns:
            tau2 = np.asarray(table["rlnReferenceTau2"], dtype=np.float64)  # type: ignore[index]
            index = (
                np.asarray(table["rlnSpectralIndex"], dtype=np.int64)  # type: ignore[index]
                if "rlnSpectralIndex" in columns
                else np.arange(tau2.size)
            )
            fsc = (
                np.asarray(table["rlnGoldStandardFsc"], dtype=np.float64)  # type: ignore[index]
                if "rlnGoldStandardFsc" in columns
                else None
            )
        else:
            tau2 = np.zeros(0)
            index = np.zeros(0, dtype=np.int64)
            fsc = None
    except (TypeError, ValueError) as exc:
        raise StarFormatError(
            f"{star}: block 'external_reconstruct_tau2' has non-numeric values ({exc})"
        ) from exc

    result_star = None
    if "rlnExtReconsResultStarfile" in general:
        result_star = _resolve_output(str(general["rlnExtReconsResultStarfile"]), star)
    return ExternalReconstructJob(
        star_path=star,
        data_real=_resolve_input(str(general["rlnExtReconsDataReal"]), star),
        data_imag=_resolve_input(str(general["rlnExtReconsDataImag"]), star),
        weight=_resolve_input(str(general["rlnExtReconsWeight"]), star),
        result=_resolve_output(str(general["rlnExtReconsResult"]), star),
        result_star=result_star,
        tau2_fudge=fudge,
        padding_factor=pad,
        ori_size=ori,
        current_size=current,
        ref_dim=ref_dim,
        spectral_index=index,
        tau2=tau2,
        fsc=fsc,
        pixel_size=pixel_size,
        labels={str(k): str(v) for k, v in general.items()},
    )


def _tau2_by_shell(job: ExternalReconstructJob) -> np.ndarray:
    """tau2 indexed by shell (RELION reads the table in row order; rows are 0, 1, ...)."""
    idx = job.spectral_index
    if idx.size and np.array_equal(idx, np.arange(idx.size)):
        return job.tau2
    out = np.zeros(int(idx.max()) + 1 if idx.size else 0)
    if idx.size and idx.min() < 0:
        raise StarFormatError(f"{job.star_path}: negative rlnSpectralIndex in the tau2 table")
    out[idx] = job.tau2
    return out


# --------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------


def _bessi0(x: float) -> float:
    """Modified Bessel I0 (numerical-recipes polynomial, as RELION; cancels in ratios)."""
    ax = abs(x)
    if ax < 3.75:
        y = (x / 3.75) ** 2
        return 1.0 + y * (
            3.5156229
            + y
            * (3.0899424 + y * (1.2067492 + y * (0.2659732 + y * (0.360768e-1 + y * 0.45813e-2))))
        )
    y = 3.75 / ax
    return (math.exp(ax) / math.sqrt(ax)) * (
        0.39894228
        + y
        * (
            0.1328592e-1
            + y
            * (
                0.225319e-2
                + y
                * (
                    -0.157565e-2
                    + y
                    * (
                        0.916281e-2
                        + y
                        * (
                            -0.2057706e-1
                            + y * (0.2635537e-1 + y * (-0.1647633e-1 + y * 0.392377e-2))
                        )
                    )
                )
            )
        )
    )


def _kaiser_fourier_value(w: np.ndarray, a: float, alpha: float) -> np.ndarray:
    """3D Fourier transform of an order-0 Kaiser-Bessel blob at frequencies w (1/voxel).

    Valid where 2πaw <= alpha (RELION's table never reaches beyond: w <= 0.5).
    """
    two_pi = 2.0 * math.pi
    sigma = np.sqrt(np.abs(alpha * alpha - (two_pi * a * w) * (two_pi * a * w)))
    i15 = np.sqrt(2.0 / (math.pi * sigma)) * (np.cosh(sigma) - np.sinh(sigma) / sigma)
    return two_pi**1.5 * a**3 * i15 / (_bessi0(alpha) * sigma**1.5)


def blob_fourier_table(size: int = BLOB_TABLE_SIZE) -> np.ndarray:
    """RELION's tabulated blob Fourier transform, normalised to 1 at frequency 0.

    Entry i holds the value at ``i * 0.5 / size`` (1/voxel); RELION looks values up by
    truncation (``int(|w| / sampling)``) and returns 0 beyond the table.
    """
    if size < 2:
        raise InvalidValueError(f"blob table size is {size}, expected >= 2")
    sampling = 0.5 / float(size)
    w = np.arange(size, dtype=np.float64) * sampling
    table = _kaiser_fourier_value(w, BLOB_RADIUS, BLOB_ALPHA)
    return table / table[0]


def _relion_fft_index(n: int, axis_half: int) -> np.ndarray:
    """Logical frequency of each index of an FFTW axis as RELION's loops compute it.

    ``FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM``: index k maps to k if k < XSIZE (= n//2 + 1)
    else k - n; so an even axis's Nyquist index is +n/2 (numpy says -n/2).
    """
    k = np.arange(n)
    return np.where(k < axis_half, k, k - n)


def _radius2(n: int) -> np.ndarray:
    """|k|² on RELION's (n, n, n//2+1) half-complex grid (int64)."""
    half = n // 2 + 1
    k = _relion_fft_index(n, half)
    j = np.arange(half)
    return k[:, None, None] ** 2 + k[None, :, None] ** 2 + j[None, None, :] ** 2


def _shell_of(r2: np.ndarray, pad: float, *, floor: bool = False) -> np.ndarray:
    """RELION's ROUND(sqrt(r2) / pad) (or FLOOR), int64."""
    x = np.sqrt(r2.astype(np.float64)) / float(pad)
    return (np.floor(x) if floor else np.floor(x + 0.5)).astype(np.int64)


def _check_inputs(data: np.ndarray, weight: np.ndarray) -> int:
    if data.ndim != 3 or weight.ndim != 3:
        raise MapShapeError(
            f"Fourier data and weight must be 3D, found {data.shape} and {weight.shape}"
        )
    if data.shape != weight.shape:
        raise MapShapeError(
            f"Fourier data shape {data.shape} differs from weight shape {weight.shape}"
        )
    p = data.shape[0]
    if data.shape != (p, p, p // 2 + 1):
        raise MapShapeError(
            f"Fourier data has shape {data.shape}; expected half-complex (P, P, P//2+1)"
        )
    return p


def _convolve_blob(values: np.ndarray, n: int, multiplier: np.ndarray, workers: int) -> np.ndarray:
    """RELION's convoluteBlobRealSpace: inverse FFT, multiply by the blob's FT, forward FFT.

    RELION's inverse is unnormalised and its forward divides by n³, so the net scaling
    equals numpy's normalised irfftn / unnormalised rfftn pair.
    """
    import scipy.fft

    real = scipy.fft.irfftn(values, s=(n, n, n), workers=workers)
    real *= multiplier
    return scipy.fft.rfftn(real, workers=workers)


def _blob_multiplier(n: int, ori_size: int, pad: float) -> np.ndarray:
    """Real-space blob FT factors on the n³ working grid, with RELION's index convention.

    RELION maps index k to k if k < n//2 else k - n (so for odd n the index n//2 counts
    as -(n//2) - 1), takes r = sqrt(kx²+ky²+kz²) / (ori * pad) and looks the table up.
    """
    table = blob_fourier_table()
    sampling = 0.5 / float(BLOB_TABLE_SIZE)
    k = np.arange(n)
    k = np.where(k < n // 2, k, k - n)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    rval = np.sqrt(r2.astype(np.float64)) / float(ori_size * pad)
    idx = (np.abs(rval) / sampling).astype(np.int64)
    out = np.zeros(idx.shape, dtype=np.float64)
    inside = idx < table.size
    out[inside] = table[idx[inside]]
    return out


def _soft_mask_outside(vol: np.ndarray) -> np.ndarray:
    """RELION's softMaskOutsideMap(vol) with defaults: radius n/2, 3-voxel cosine edge.

    Voxels beyond the edge become the (edge-weighted) mean of everything outside the
    radius; voxels in the edge blend towards it.
    """
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(
        (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).astype(float)
    )
    radius = n / 2.0
    width = 3.0
    radius_p = radius + width
    outside = r >= radius
    beyond = r > radius_p
    raised = 0.5 + 0.5 * np.cos(math.pi * (radius_p - r) / width)
    w = np.where(beyond, 1.0, np.where(outside, raised, 0.0))
    total = float(w.sum())
    mean_bg = float((w * vol).sum()) / total if total > 0 else 0.0
    out = vol.copy()
    band = outside & ~beyond
    out[beyond] = mean_bg
    out[band] = (1.0 - raised[band]) * vol[band] + raised[band] * mean_bg
    return out


def _gridding_correct(vol: np.ndarray, ori_size: int, pad: float) -> np.ndarray:
    """Divide by sinc²(r / (ori * pad)) (trilinear interpolation's transform), r > 0."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(
        (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).astype(float)
    )
    rval = r / float(ori_size * pad)
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = np.sin(math.pi * rval) / (math.pi * rval)
    sinc[r == 0] = 1.0
    return vol / (sinc * sinc)


def reconstruct_arrays(
    data: np.ndarray,
    weight: np.ndarray,
    *,
    ori_size: int,
    current_size: int,
    padding_factor: float,
    tau2: np.ndarray | None,
    tau2_fudge: float = 1.0,
    wiener: bool = True,
    skip_gridding: bool = False,
    iterations: int = 10,
    workers: int | None = None,
) -> np.ndarray:
    """RELION's reconstruction of a map from padded half-complex Fourier data and weights.

    Parameters
    ----------
    data : (P, P, P//2+1) complex array, un-centred (numpy ``rfftn`` layout), P = ROUND(
        padding_factor * ori_size); the back-projected sum RELION writes.
    weight : (P, P, P//2+1) real array: the back-projected weights.
    ori_size : box of the output map in voxels.
    current_size : RELION's current image size (2 × the Fourier radius in use).
    padding_factor : RELION's ``--pad``.
    tau2 : tau2 per shell (index = shell); None or empty to skip the Wiener term.
    tau2_fudge : RELION's tau2 fudge factor (T).
    wiener : add the Wiener (MAP) term to the weights (RELION: unless ``--no_map``).
    skip_gridding : RELION's ``--skip_gridding``.
    iterations : gridding pre-conditioning iterations (RELION: 10); <= 0 behaves like
        ``skip_gridding``, as in RELION.
    workers : FFT threads (default: all cores).

    Returns
    -------
    (ori_size, ori_size, ori_size) float32 map, [z, y, x], centre at ori_size // 2.
    """
    p = _check_inputs(data, weight)
    if padding_factor < 1:
        raise InvalidValueError(f"padding_factor is {padding_factor}, expected >= 1")
    if ori_size < 2 or current_size < 2:
        raise InvalidValueError(f"ori_size {ori_size} and current_size {current_size} must be >= 2")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    pad = float(padding_factor)
    r_max = min(current_size // 2, ori_size // 2)
    big_r = _relion_round(r_max * pad)
    max_r2 = big_r * big_r
    n = 2 * (big_r + 1) + 1  # RELION's pad_size: odd working grid

    # 1. copy |k|² < R² from the file grid (RELION index convention) onto the working grid
    kfile = _relion_fft_index(p, p // 2 + 1)
    jfile = np.arange(p // 2 + 1)
    r2_file = kfile[:, None, None] ** 2 + kfile[None, :, None] ** 2 + jfile[None, None, :] ** 2
    sel = np.nonzero(r2_file < max_r2)
    kz = kfile[sel[0]] % n
    ky = kfile[sel[1]] % n
    kx = jfile[sel[2]]
    fdata = np.zeros((n, n, n // 2 + 1), dtype=np.complex128)
    fweight = np.zeros((n, n, n // 2 + 1), dtype=np.float64)
    fdata[kz, ky, kx] = np.asarray(data, dtype=np.complex128)[sel]
    fweight[kz, ky, kx] = np.asarray(weight, dtype=np.float64)[sel]

    r2 = _radius2(n)
    inside = r2 < max_r2

    # 2. Wiener term
    if wiener and tau2 is not None and len(tau2) > 0:
        tau2 = np.asarray(tau2, dtype=np.float64)
        ires = _shell_of(r2[inside], pad)
        known = ires < tau2.size
        t = np.zeros(ires.shape)
        t[known] = tau2[ires[known]]
        w = fweight[inside]
        oversampling = pad * pad * pad
        inv = np.zeros_like(w)
        positive = t > 0
        inv[positive] = 1.0 / (oversampling * tau2_fudge * t[positive])
        tiny = (~positive) & (t < 1e-20) & (w > 1e-20) & known
        inv[tiny] = 1.0 / (0.001 * w[tiny])
        fweight[inside] = w + inv

    if skip_gridding or iterations <= 0:
        # 3b. divide by max(weight, 1/1000 of the shell's mean weight)
        fconv = fdata
        round_max_r2 = _relion_round(r_max * pad * r_max * pad)
        ires_floor = _shell_of(r2, pad, floor=True)
        counted = r2 < round_max_r2
        radavg = np.bincount(ires_floor[counted], weights=fweight[counted], minlength=r_max)
        counter = np.bincount(ires_floor[counted], minlength=r_max).astype(np.float64)
        radavg = radavg[:r_max] / (1000.0 * counter[:r_max])
        floor_w = radavg[np.minimum(ires_floor, r_max - 1)]
        divisor = np.maximum(fweight, floor_w)
        nonzero = divisor != 0
        fconv[nonzero] /= divisor[nonzero]
    else:
        # 3a. iterative gridding pre-conditioning (Pipe & Menon 1999)
        newweight = inside.astype(np.float64)
        multiplier = _blob_multiplier(n, ori_size, pad)
        for _ in range(iterations):
            conv = _convolve_blob(newweight * fweight, n, multiplier, workers)
            w = np.maximum(1e-6, np.abs(conv[inside]))
            newweight[inside] /= w
        fconv = fdata * newweight

    # 4. window to the even padded size, centre, inverse FFT, crop, normalise
    import scipy.fft

    big_n = _relion_round(pad * ori_size)
    big_n += big_n % 2
    half_in = n // 2 + 1
    half_out = big_n // 2 + 1
    out = np.zeros((big_n, big_n, half_out), dtype=np.complex128)
    if half_out > half_in:
        kin = _relion_fft_index(n, half_in)
        r2_in = _radius2(n)
        keep = np.nonzero(r2_in <= (half_in - 1) ** 2)
        out[kin[keep[0]] % big_n, kin[keep[1]] % big_n, keep[2]] = fconv[keep]
    else:
        kout = _relion_fft_index(big_n, half_out)
        zz = kout % n
        out[:, :, :] = fconv[
            zz[:, None, None], zz[None, :, None], np.arange(half_out)[None, None, :]
        ]
    parity = np.arange(big_n)
    sign = (-1.0) ** ((parity[:, None, None] + parity[None, :, None] + np.arange(half_out)) % 2)
    out *= sign
    real = scipy.fft.irfftn(out, s=(big_n, big_n, big_n), workers=workers)
    real *= float(big_n) ** 3  # RELION's inverse FFT is unnormalised
    start = big_n // 2 - ori_size // 2
    vol = real[start : start + ori_size, start : start + ori_size, start : start + ori_size]
    vol = vol / float(pad * pad * pad * ori_size)

    # 5. soft spherical mask, gridding correction
    vol = _soft_mask_outside(vol)
    vol = _gridding_correct(vol, ori_size, pad)
    result = vol.astype(np.float32)
    if result.shape != (ori_size,) * 3:  # never hand RELION a wrong size
        raise MapShapeError(f"internal error: reconstruction has shape {result.shape}")
    return result


def _read_fourier(job: ExternalReconstructJob) -> tuple[np.ndarray, np.ndarray]:
    from .io import read_map

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RELION's Fourier files carry no voxel size
        real = read_map(job.data_real, require_cubic=False).data
        imag = read_map(job.data_imag, require_cubic=False).data
        weight = read_map(job.weight, require_cubic=False).data
    if real.shape != imag.shape or real.shape != weight.shape:
        raise MapShapeError(
            f"{job.star_path}: data_real {real.shape}, data_imag {imag.shape} and weight "
            f"{weight.shape} must have the same shape"
        )
    p = real.shape[0]
    if real.shape != (p, p, p // 2 + 1):
        raise MapShapeError(
            f"{job.data_real}: shape {real.shape} (z, y, x); expected half-complex (P, P, P//2+1)"
        )
    if p != job.padded_size:
        raise MapShapeError(
            f"{job.data_real}: padded size {p}, expected ROUND(pad * box) = "
            f"{job.padded_size} (pad {job.padding_factor}, box {job.ori_size})"
        )
    return real.astype(np.float64) + 1j * imag.astype(np.float64), weight.astype(np.float64)


def reconstruct(
    job: ExternalReconstructJob,
    *,
    wiener: bool = True,
    skip_gridding: bool = False,
    iterations: int = 10,
) -> np.ndarray:
    """Reconstruct the job's map exactly as ``relion_external_reconstruct`` does.

    ``wiener=False`` is RELION's ``--no_map``; ``skip_gridding=True`` its
    ``--skip_gridding``. Returns a (box, box, box) float32 array.

    Raises
    ------
    MapNotFoundError, MapFormatError, MapShapeError for missing or malformed data files.
    """
    data, weight = _read_fourier(job)
    return reconstruct_arrays(
        data,
        weight,
        ori_size=job.ori_size,
        current_size=job.current_size,
        padding_factor=job.padding_factor,
        tau2=_tau2_by_shell(job),
        tau2_fudge=job.tau2_fudge,
        wiener=wiener,
        skip_gridding=skip_gridding,
        iterations=iterations,
    )


# --------------------------------------------------------------------------------------
# Pixel size from the run's own files
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelSize:
    """A pixel size in Å and where it came from (None when nothing was found)."""

    value: float | None
    source: str


_PIXEL_LABELS = ("rlnPixelSize", "rlnImagePixelSize", "rlnMicrographPixelSize")
_ITER_RE = re.compile(r"^(?P<root>.+)_it(?P<it>\d{3,})(?:_half\d+)?_(?:class|body)\d{3,}$")


def _scan_star_pixel(path: Path) -> float | None:
    """First positive pixel-size value in a STAR file, reading only as far as needed."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            loop_labels: list[str] = []
            in_loop_header = False
            for raw in fh:
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("data_"):
                    loop_labels, in_loop_header = [], False
                    continue
                if line.startswith("loop_"):
                    loop_labels, in_loop_header = [], True
                    continue
                if line.startswith("_"):
                    parts = line.split()
                    label = parts[0][1:]
                    if in_loop_header:
                        loop_labels.append(label)
                    elif label in _PIXEL_LABELS and len(parts) > 1:
                        value = _positive(parts[1])
                        if value is not None:
                            return value
                    continue
                if in_loop_header:
                    in_loop_header = False
                    wanted = [i for i, lab in enumerate(loop_labels) if lab in _PIXEL_LABELS]
                    if wanted:
                        parts = line.split()
                        for i in wanted:
                            if i < len(parts):
                                value = _positive(parts[i])
                                if value is not None:
                                    return value
                    # first row seen; skip the rest of this loop unless it has the label
                    loop_labels = []
    except OSError:
        return None
    return None


def _positive(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _mrc_pixel(path: Path) -> float | None:
    try:
        import mrcfile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                value = float(mrc.voxel_size.x)
    except Exception:
        return None
    return value if math.isfinite(value) and value > 0 else None


def find_pixel_size(job: ExternalReconstructJob) -> PixelSize:
    """The pixel size (Å) of the run that wrote ``job``, from the run's own files.

    Order: ``rlnPixelSize`` in the STAR itself (RELION 5); then, when the STAR has
    RELION's iteration name (``<root>_it<NNN>[_half<h>]_class<CCC>`` followed by
    ``_external_reconstruct.star``; any root, underscores included), the same run's
    files beside it, newest
    iteration <= NNN first: ``<root>_it<MMM>[_half<h>]_model.star`` (``rlnPixelSize``),
    ``_data.star`` (optics ``rlnImagePixelSize``), ``_optimiser.star`` (and the model,
    data and reference files it names), then ``<root>_it<MMM>..._class<CCC>.mrc`` headers.
    Returns ``PixelSize(None, reason)`` when nothing is found.
    """
    if job.pixel_size is not None:
        return PixelSize(job.pixel_size, f"rlnPixelSize in {job.star_path.name}")
    folder = job.star_path.parent
    stem = job.name
    candidates: list[Path] = []
    match = _ITER_RE.match(stem)
    if match:
        root = match.group("root")
        it = int(match.group("it"))
        try:
            listing = sorted(os.listdir(folder or "."))
        except OSError:
            listing = []
        iter_re = re.compile(
            re.escape(root) + r"_it(\d{3,})(?:_half(\d+))?_(model|data|optimiser)\.star$"
        )
        half = re.search(r"_half(\d+)_(?:class|body)\d{3,}$", stem)
        my_half = half.group(1) if half else None
        found: list[tuple[int, int, int, str]] = []
        order = {"model": 0, "data": 1, "optimiser": 2}
        for name in listing:
            m = iter_re.match(name)
            if m and int(m.group(1)) <= it:
                other_half = int(m.group(2) is not None and m.group(2) != my_half)
                found.append((-int(m.group(1)), order[m.group(3)], other_half, name))
        candidates += [folder / name for *_, name in sorted(found)]
        mrc_re = re.compile(
            re.escape(root) + r"_it(\d{3,})(?:_half\d+)?_(?:class|body)\d{3,}\.mrc$"
        )
        mrcs = sorted(
            ((-int(m.group(1)), name) for name in listing if (m := mrc_re.match(name))),
        )
        candidates += [folder / name for _, name in mrcs]
    for path in candidates:
        value = _scan_star_pixel(path) if path.suffix == ".star" else _mrc_pixel(path)
        if value is not None:
            return PixelSize(value, path.name)
        if path.name.endswith("_optimiser.star"):
            for ref in _optimiser_references(path):
                value = _scan_star_pixel(ref) if ref.suffix == ".star" else _mrc_pixel(ref)
                if value is not None:
                    return PixelSize(value, f"{ref.name} (via {path.name})")
    return PixelSize(None, "no pixel size in the STAR or the run's model/data/optimiser files")


def _optimiser_references(path: Path) -> list[Path]:
    """Files an ``_optimiser.star`` names (model, data, reference), resolved like RELION."""
    refs: list[Path] = []
    labels = ("rlnModelStarFile", "rlnExperimentalDataStarFile", "rlnReferenceImage")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                parts = raw.split()
                if len(parts) >= 2 and parts[0][1:] in labels:
                    p = Path(parts[1])
                    for c in (p, Path.cwd() / p, path.parent / p.name):
                        if c.exists():
                            refs.append(c)
                            break
    except OSError:
        return []
    return refs


# --------------------------------------------------------------------------------------
# Running a job: files, correction hook, logging
# --------------------------------------------------------------------------------------


def resolve_correction(enabled: bool = True) -> Correction | None:
    """The network correction to apply inside RELION, or None for the plain map.

    This is the hook for the misalignment correction (ALGORITHM.md §5: gates, waiting for
    the other half, 3D FSC, training, low-pass). It is not implemented yet: it returns
    None, so ``spisonet-relion`` currently writes RELION's own reconstruction. A
    correction is any callable ``(job, volume, pixel_size) -> volume`` returning a
    (box, box, box) array.
    """
    return None


def write_result_star(
    path: str | os.PathLike,
    spectral_index: np.ndarray,
    *,
    tau2: np.ndarray | None = None,
    fsc: np.ndarray | None = None,
) -> Path:
    """Write the STAR RELION reads back (``rlnExtReconsResultStarfile``), atomically.

    RELION updates its tau2 spectrum from ``rlnReferenceTau2`` when present, else from
    ``rlnFourierShellCorrelation`` (its FSC-to-tau2 conversion). Exactly one is required.
    """
    from .io import atomic_path

    if (tau2 is None) == (fsc is None):
        raise InvalidValueError("write_result_star: give exactly one of tau2 or fsc")
    values = np.asarray(tau2 if tau2 is not None else fsc, dtype=np.float64)
    index = np.asarray(spectral_index, dtype=np.int64)
    if values.shape != index.shape:
        raise InvalidValueError(
            f"write_result_star: {values.size} values for {index.size} spectral indices"
        )
    label = "rlnReferenceTau2" if tau2 is not None else "rlnFourierShellCorrelation"
    lines = [
        "",
        "# version 30001",
        "",
        "data_external_reconstruct_tau2",
        "",
        "loop_",
        "_rlnSpectralIndex #1",
        f"_{label} #2",
    ]
    lines += [f"{int(i):6d} {float(v):.10e}" for i, v in zip(index, values, strict=True)]
    final = Path(path)
    with atomic_path(final) as tmp:
        tmp.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return final


def _log(job_star: Path, message: str, *, echo: bool = True) -> None:
    """Append one line to ``spisonet_relion.log`` beside the STAR; echo it to stdout."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n"
    try:
        fd = os.open(
            job_star.parent / "spisonet_relion.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError:
        pass
    if echo:
        print(f"spisonet-relion: {message}", flush=True)


def run_external_reconstruct(
    star_path: str | os.PathLike,
    *,
    correction: Correction | None = None,
    keep_inputs: bool = False,
    write_tau2_star: bool = False,
    wiener: bool = True,
    skip_gridding: bool = False,
) -> Path:
    """Do one RELION external reconstruction: read, reconstruct, (correct), write.

    Writes the job's ``rlnExtReconsResult`` map (box³ float32, atomically, with the run's
    pixel size when found, else 1.0 Å and a log line saying so). With ``correction``,
    the plain map is passed to it; any exception it raises (or a wrong shape or
    non-finite values) is logged and the plain map is written instead. With
    ``write_tau2_star`` the job's tau2 table is written back to
    ``rlnExtReconsResultStarfile`` (unchanged values). The data and weight files are
    deleted after the map is written unless ``keep_inputs``. One line goes to stdout and
    to ``spisonet_relion.log`` beside the STAR.

    Raises
    ------
    SpisonetError (and OSError) when even the plain reconstruction cannot be made; the
    caller should then exit non-zero (RELION stops, which is right: there is no map).
    """
    from .io import write_map

    start = time.perf_counter()
    star = Path(star_path)
    job = read_external_star(star)
    plain = reconstruct(job, wiener=wiener, skip_gridding=skip_gridding)
    t_plain = time.perf_counter() - start
    pixel = find_pixel_size(job)
    voxel = pixel.value if pixel.value is not None else 1.0
    notes = []
    if pixel.value is None:
        notes.append(f"pixel size not found ({pixel.source}); writing 1.0 Å")
    volume = plain
    how = "plain"
    if correction is not None:
        try:
            corrected = np.asarray(correction(job, plain, voxel))
            if corrected.shape != plain.shape:
                raise MapShapeError(
                    f"correction returned shape {corrected.shape}, expected {plain.shape}"
                )
            if not np.all(np.isfinite(corrected)):
                raise SpisonetError("correction returned NaN or infinite values")
            volume = corrected.astype(np.float32)
            how = "corrected"
        except Exception as exc:  # never kill RELION: fall back to the plain map
            _log(
                star,
                f"{job.name}: correction failed, writing the plain reconstruction: "
                f"{type(exc).__name__}: {exc}",
            )
            for tb_line in traceback.format_exc().rstrip().splitlines():
                _log(star, f"{job.name}:   {tb_line}", echo=False)
            how = "plain (correction failed)"
    write_map(job.result, volume, voxel_size=voxel)
    if write_tau2_star and job.result_star is not None and job.tau2.size:
        write_result_star(job.result_star, job.spectral_index, tau2=job.tau2)
    removed = 0
    if not keep_inputs:
        for p in (job.data_real, job.data_imag, job.weight):
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    elapsed = time.perf_counter() - start
    pix_text = f"{voxel:.4g} Å ({pixel.source})" if pixel.value is not None else "1.0 Å (unknown)"
    msg = (
        f"{job.name}: {how} map, box {job.ori_size}, pad {job.padding_factor:g}, "
        f"current size {job.current_size}, {'no Wiener term, ' if not wiener else ''}"
        f"{'skip gridding, ' if skip_gridding else ''}pixel {pix_text}, "
        f"reconstruction {t_plain:.1f} s, total {elapsed:.1f} s -> {job.result}"
        + (f"; removed {removed} input files" if removed else "")
    )
    for note in notes:
        _log(star, f"{job.name}: {note}")
    _log(star, msg)
    return job.result


def console_main(argv: list[str] | None = None) -> int:
    """``spisonet-relion [--no-correction] [--keep-inputs] STAR``: RELION's executable.

    RELION runs ``/bin/sh -c "$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE <star>"``, so
    options may be put in the variable before the STAR. Returns the exit code: 0 when a
    map was written (plain or corrected), 1 when even the plain reconstruction failed,
    2 for a usage error.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="spisonet-relion",
        description="RELION external reconstruction (RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE).",
    )
    parser.add_argument("star", help="RELION's *_external_reconstruct.star")
    parser.add_argument("--no-correction", "--no_correction", action="store_true")
    parser.add_argument("--keep-inputs", "--keep_inputs", action="store_true")
    args = parser.parse_args(argv)
    try:
        run_external_reconstruct(
            args.star,
            correction=None if args.no_correction else resolve_correction(True),
            keep_inputs=args.keep_inputs,
        )
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SpisonetError) else str(exc)
        print(f"spisonet-relion: error: {message}", file=sys.stderr, flush=True)
        _log(Path(args.star), f"{_star_root(Path(args.star).name)}: FAILED: {message}", echo=False)
        return 1
    return 0
