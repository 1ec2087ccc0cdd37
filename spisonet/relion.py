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

The misalignment correction (ALGORITHM.md §5) is :class:`RelionCorrection`, configured from
``ISONET_*`` / ``SPISONET_*`` environment variables (:func:`correction_settings_from_env`)
and returned by :func:`resolve_correction`: gates (healpix order from the run's sampling
STAR, resolution from the STAR's FSC column), a lock-file rendezvous of the two halves
(:func:`wait_for_partner`), unregularised half maps, 3D FSC, one network per half,
low-pass, RELION's own map kept where measured. Any failure there leaves RELION's own map
(docs/relion.md).

Only :func:`run_external_reconstruct` and the correction touch files (the map, the
rendezvous files, the model checkpoints, the log), maps only through :mod:`spisonet.io`.
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
    "JobName",
    "PixelSize",
    "RelionCorrection",
    "RelionCorrectionSettings",
    "RendezvousResult",
    "blob_fourier_table",
    "console_main",
    "correction_settings_from_env",
    "current_resolution",
    "find_pixel_size",
    "healpix_order_of_run",
    "parse_job_name",
    "read_external_star",
    "reconstruct",
    "reconstruct_arrays",
    "resolve_correction",
    "run_external_reconstruct",
    "wait_for_partner",
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

Correction = Callable[["ExternalReconstructJob", np.ndarray, float], "np.ndarray | None"]


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
    from .io import read_star_blocks

    blocks = read_star_blocks(star)
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

    # RELION's Fourier files carry no voxel size, and only their values are used
    real = read_map(job.data_real, require_cubic=False, voxel_size=1.0).data
    imag = read_map(job.data_imag, require_cubic=False, voxel_size=1.0).data
    weight = read_map(job.weight, require_cubic=False, voxel_size=1.0).data
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


class _KeepPlain(Exception):
    """Internal: the correction returned None (its reason is the message)."""


def resolve_correction(enabled: bool = True) -> Correction | None:
    """The misalignment correction to apply inside RELION, or None for the plain map.

    Returns a :class:`RelionCorrection` configured from the environment (see
    :func:`correction_settings_from_env`). It never raises: a bad environment variable
    gives a correction that raises when called, so the error is logged and the plain map
    is written (RELION keeps running).
    """
    if not enabled:
        return None
    try:
        return RelionCorrection(correction_settings_from_env())
    except Exception as exc:  # never kill RELION
        return _BrokenCorrection(exc)


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
    the plain map is passed to it; when it returns None the plain map is written (its
    ``summary`` attribute, when present, says why); any exception it raises (or a wrong
    shape or non-finite values) is logged and the plain map is written instead. With
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
    detail = ""
    if correction is not None:
        try:
            returned = correction(job, plain, voxel)
            if returned is None:  # the correction decided to keep RELION's map
                raise _KeepPlain(str(getattr(correction, "summary", "") or "kept"))
            corrected = np.asarray(returned)
            if corrected.shape != plain.shape:
                raise MapShapeError(
                    f"correction returned shape {corrected.shape}, expected {plain.shape}"
                )
            if not np.all(np.isfinite(corrected)):
                raise SpisonetError("correction returned NaN or infinite values")
            volume = corrected.astype(np.float32)
            how = "corrected"
            detail = str(getattr(correction, "summary", "") or "")
        except _KeepPlain as keep:
            detail = str(keep)
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
        f"{job.name}: {how} map{f' ({detail})' if detail else ''}, box {job.ori_size}, "
        f"pad {job.padding_factor:g}, "
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
    correction = None
    if not args.no_correction:
        try:
            correction = resolve_correction(True)
        except Exception as exc:  # never kill RELION: without a correction, plain map
            _log(Path(args.star), f"correction unavailable ({type(exc).__name__}: {exc})")
    try:
        run_external_reconstruct(
            args.star,
            correction=correction,
            keep_inputs=args.keep_inputs,
        )
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SpisonetError) else str(exc)
        print(f"spisonet-relion: error: {message}", file=sys.stderr, flush=True)
        _log(Path(args.star), f"{_star_root(Path(args.star).name)}: FAILED: {message}", echo=False)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# The misalignment correction (ALGORITHM.md §5)
# --------------------------------------------------------------------------------------

#: Environment knobs: field -> (type, default). Each is read from ``ISONET_<NAME>`` (the
#: public tool's spelling) or ``SPISONET_<NAME>``; when both are set, SPISONET_ wins.
_ENV_FIELDS: dict[str, tuple[str, object]] = {
    "START_HEALPIX": ("int", 3),
    "START_RESOLUTION": ("float", 15.0),
    "EPOCHS": ("int", 5),
    "RETRAIN_EACH_ITER": ("bool", False),
    "WHITENING": ("bool", True),
    "WHITENING_LOW": ("float", 10.0),
    "FSC_WEIGHTING": ("bool", True),
    "KEEP_LOWRES": ("bool", False),
    "KEEP_HIGHRES": ("bool", False),
    "KEEP_MEASURED": ("bool", True),
    "ALPHA": ("float", None),
    "BETA": ("float", None),
    "ACC_BATCHES": ("int", None),
    "WAIT_TIMEOUT": ("float", 600.0),
    "PRESET": ("str", None),
    "THREADS": ("int", None),
    "TEST_RAISE_ON_CALL": ("int", None),
}

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


@dataclass(frozen=True)
class RelionCorrectionSettings:
    """Settings of the correction inside RELION (from the environment).

    Attributes
    ----------
    start_healpix : the network runs once RELION's healpix order is at least this (3).
    start_resolution : ... and the current resolution (Å) is better (smaller) than this (15).
    epochs : training epochs per iteration (5).
    retrain_each_iter : start every iteration from a fresh network instead of continuing
        the previous iteration's model (False).
    whitening, whitening_low : flatten the amplitude spectrum between ``whitening_low`` Å
        and the current resolution before training (True, 10 Å).
    fsc_weighting : weight the unregularised half map by max(FSC, 0) per shell (True).
    keep_lowres : keep the initial reference's content below ``--ini_high`` (False).
    keep_highres : instead of low-passing the result to the current resolution, keep
        RELION's own map beyond it (False; spisonet's own knob, not the public tool's).
    keep_measured : keep RELION's own map where the 3D FSC says Fourier space was
        measured, and take the network's output only where it was not (True; spisonet's
        own knob): the blend weight is the power-gated 3D FSC divided by its shell's
        95th percentile, clipped to [0, 1] (:func:`measured_weight`).
    alpha, beta, acc_batches : training knobs (None: the preset's).
    wait_timeout : seconds to wait for the other half (600); then the plain map.
    preset : ``gpu``, ``cpu`` or ``tiny`` (None: ``gpu`` with CUDA, else ``cpu``).
    threads : torch CPU threads (None: half the cores, the other half runs the other half).
    test_raise_on_call : test hook; the correction raises on this half's n-th call that
        passed the gates (None: never).
    sources : which variable set each non-default value (for the log).
    """

    start_healpix: int = 3
    start_resolution: float = 15.0
    epochs: int = 5
    retrain_each_iter: bool = False
    whitening: bool = True
    whitening_low: float = 10.0
    fsc_weighting: bool = True
    keep_lowres: bool = False
    keep_highres: bool = False
    keep_measured: bool = True
    alpha: float | None = None
    beta: float | None = None
    acc_batches: int | None = None
    wait_timeout: float = 600.0
    preset: str | None = None
    threads: int | None = None
    test_raise_on_call: int | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)


def _parse_env_value(name: str, raw: str, kind: str) -> object:
    text = raw.strip()
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InvalidValueError(f"{name}={raw!r}: expected a boolean (1/0, true/false, yes/no)")
    if kind == "int":
        try:
            value = float(text)
        except ValueError:
            raise InvalidValueError(f"{name}={raw!r}: expected an integer") from None
        if not math.isfinite(value) or value != int(value):
            raise InvalidValueError(f"{name}={raw!r}: expected an integer")
        return int(value)
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise InvalidValueError(f"{name}={raw!r}: expected a number") from None
        if not math.isfinite(value):
            raise InvalidValueError(f"{name}={raw!r}: expected a finite number")
        return value
    return text


def correction_settings_from_env(
    environ: dict[str, str] | None = None,
) -> RelionCorrectionSettings:
    """Read :class:`RelionCorrectionSettings` from ``ISONET_*`` / ``SPISONET_*`` variables.

    Each field ``NAME`` (e.g. ``START_HEALPIX``) is read from ``SPISONET_NAME`` when set,
    else from ``ISONET_NAME``; unset or empty variables keep the default.

    Raises
    ------
    InvalidValueError when a value does not parse or is out of range (the variable's name
    and value are in the message).
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key, (kind, _default) in _ENV_FIELDS.items():
        for prefix in ("SPISONET_", "ISONET_"):
            name = prefix + key
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                values[key.lower()] = _parse_env_value(name, raw, kind)
                sources[key.lower()] = name
                break
    s = RelionCorrectionSettings(**values, sources=sources)  # type: ignore[arg-type]

    def bad(attr: str, expected: str) -> InvalidValueError:
        return InvalidValueError(
            f"{sources.get(attr, attr)}={getattr(s, attr)!r}: expected {expected}"
        )

    if s.epochs < 0:
        raise bad("epochs", "an integer >= 0")
    if s.start_resolution <= 0:
        raise bad("start_resolution", "a resolution > 0 Å")
    if s.whitening_low <= 0:
        raise bad("whitening_low", "a resolution > 0 Å")
    if s.wait_timeout < 0:
        raise bad("wait_timeout", "seconds >= 0")
    if s.acc_batches is not None and s.acc_batches < 1:
        raise bad("acc_batches", "an integer >= 1")
    if s.threads is not None and s.threads < 1:
        raise bad("threads", "an integer >= 1")
    if s.preset is not None and s.preset not in ("gpu", "cpu", "tiny"):
        raise bad("preset", "one of gpu, cpu, tiny")
    return s


# ---- what the run's own files say


_JOB_RE = re.compile(
    r"^(?P<root>.+)_it(?P<it>\d{3,})(?:_half(?P<half>\d+))?_(?P<kind>class|body)(?P<cls>\d{3,})$"
)


@dataclass(frozen=True)
class JobName:
    """The parts of RELION's iteration name ``<root>_it<NNN>[_half<h>]_class<CCC>``."""

    root: str
    iteration: int
    digits: int
    half: int | None
    kind: str
    number: str

    def name(self, half: int | None = None, iteration: int | None = None) -> str:
        """The same name for another half and/or iteration."""
        h = self.half if half is None else half
        it = self.iteration if iteration is None else iteration
        mid = f"_half{h}" if h is not None else ""
        return f"{self.root}_it{it:0{self.digits}d}{mid}_{self.kind}{self.number}"


def parse_job_name(name: str) -> JobName | None:
    """Split a job name (the STAR name without ``_external_reconstruct.star``); None if it
    does not follow RELION's iteration naming. Roots with underscores are fine."""
    m = _JOB_RE.match(name)
    if m is None:
        return None
    return JobName(
        root=m.group("root"),
        iteration=int(m.group("it")),
        digits=len(m.group("it")),
        half=int(m.group("half")) if m.group("half") is not None else None,
        kind=m.group("kind"),
        number=m.group("cls"),
    )


def _read_star_scalar(path: Path, label: str) -> str | None:
    """The value of ``_<label>`` in a STAR list block (first occurrence), else None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                parts = raw.split()
                if len(parts) >= 2 and parts[0] == f"_{label}":
                    return parts[1]
    except OSError:
        return None
    return None


def _newest_iteration_file(folder: Path, jn: JobName, suffix: str, *, before: bool) -> Path | None:
    """Newest ``<root>_it<MMM><suffix>`` beside the job with MMM <= NNN (< NNN if before)."""
    pattern = re.compile(re.escape(jn.root) + r"_it(\d{3,})" + re.escape(suffix) + "$")
    best: tuple[int, str] | None = None
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    for name in names:
        m = pattern.match(name)
        if m is None:
            continue
        it = int(m.group(1))
        if it > jn.iteration or (before and it == jn.iteration):
            continue
        if best is None or it > best[0]:
            best = (it, name)
    return None if best is None else folder / best[1]


def healpix_order_of_run(job: ExternalReconstructJob) -> tuple[int | None, str]:
    """RELION's current healpix order, from the run's newest ``<root>_it<MMM>_sampling.star``
    (MMM <= the job's iteration) beside the job. Returns (order or None, source or reason).
    """
    jn = parse_job_name(job.name)
    if jn is None:
        return None, f"{job.name} does not follow RELION's iteration naming"
    path = _newest_iteration_file(job.star_path.parent, jn, "_sampling.star", before=False)
    if path is None:
        return None, f"no {jn.root}_it<NNN>_sampling.star beside the job"
    raw = _read_star_scalar(path, "rlnHealpixOrder")
    if raw is None:
        return None, f"{path.name} has no rlnHealpixOrder"
    try:
        return int(float(raw)), path.name
    except ValueError:
        return None, f"{path.name}: rlnHealpixOrder is {raw!r}"


def current_resolution(job: ExternalReconstructJob, pixel_size: float) -> float:
    """The current resolution (Å) from the STAR's own ``rlnGoldStandardFsc`` column.

    Resolution of the first shell (>= 1) whose FSC falls below 0.143, i.e.
    ``box * pixel_size / shell`` (:func:`spisonet.fsc.resolution_at`); Nyquist when it
    never does; ``inf`` when the column is missing or empty.
    """
    from .fsc import resolution_at

    if job.fsc is None or job.fsc.size < 2:
        return math.inf
    idx = job.spectral_index
    curve = np.zeros(int(idx.max()) + 1)
    curve[idx] = job.fsc
    return float(resolution_at(curve, 0.143, job.ori_size, pixel_size, start=1))


def _optimiser_command_option(path: Path, option: str) -> str | None:
    """The value of ``option`` in the command line RELION writes atop ``_optimiser.star``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _ in range(5):
                line = fh.readline()
                if line.startswith("# --") or line.startswith("#--"):
                    parts = line[1:].split()
                    if option in parts:
                        i = parts.index(option)
                        if i + 1 < len(parts):
                            return parts[i + 1]
    except OSError:
        return None
    return None


# ---- the rendezvous of the two halves


def _publish_lock(path: Path) -> int:
    """Create ``path`` already holding an exclusive flock (lock a temporary, then rename),
    so whoever sees the file sees it locked until we release it."""
    import fcntl
    import threading

    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with _suppress_oserror():
            tmp.unlink()
        raise
    return fd


def _release_lock(fd: int | None) -> None:
    import fcntl

    if fd is None:
        return
    with _suppress_oserror():
        fcntl.flock(fd, fcntl.LOCK_UN)
    with _suppress_oserror():
        os.close(fd)


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _flock_shared(fd: int, timeout: float) -> bool:
    """Block until a shared flock on ``fd`` is granted (the owner released its exclusive
    lock, or died), at most ``timeout`` seconds. No polling: a helper thread blocks in the
    kernel; on timeout it is left behind (daemon) and the fd is not closed."""
    import fcntl
    import threading

    granted = threading.Event()

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            return
        granted.set()

    try:  # fast path
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        pass
    worker = threading.Thread(target=take, name="spisonet-rendezvous", daemon=True)
    worker.start()
    return granted.wait(max(0.0, timeout))


@dataclass(frozen=True)
class RendezvousResult:
    """What the other half left: its unregularised map (None if none) and why."""

    volume: np.ndarray | None
    reason: str
    waited: float


def wait_for_partner(
    lock: Path,
    result: Path,
    *,
    not_before: float,
    timeout: float,
) -> RendezvousResult:
    """Wait for the other half's unregularised map, without polling delays.

    Protocol: each half publishes ``lock`` already locked (:func:`_publish_lock`) before
    anything else, writes its map to ``result`` atomically, then releases the lock (also
    when its gates are closed or it fails, in which case it writes no map). This side
    waits for ``lock`` to appear (short sleeps, 5 ms doubling to 100 ms: only while the
    other process has not started), then blocks on a shared flock until released, then
    reads ``result``. Files older than ``not_before`` (epoch seconds) are stale (an earlier
    run) and ignored. Gives up after ``timeout`` seconds in all.
    """
    from .io import read_map

    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while True:
        try:
            fresh = os.stat(lock).st_mtime >= not_before
        except OSError:
            fresh = False
        if fresh:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return RendezvousResult(
                None, f"the other half never started (no {lock.name} after {timeout:g} s)",
                time.monotonic() - start,
            )  # fmt: skip
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 0.1)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError as exc:
        return RendezvousResult(None, f"cannot open {lock.name}: {exc}", time.monotonic() - start)
    granted = _flock_shared(fd, deadline - time.monotonic())
    waited = time.monotonic() - start
    if not granted:
        return RendezvousResult(
            None, f"timed out after {timeout:g} s waiting for the other half", waited
        )
    _release_lock(fd)
    try:
        fresh_result = os.stat(result).st_mtime >= not_before
    except OSError:
        fresh_result = False
    if not fresh_result:
        return RendezvousResult(
            None,
            "the other half finished without an unregularised map (its gate was closed or "
            "it failed: see its log lines)",
            waited,
        )
    volume = read_map(result, voxel_size=1.0).data  # only the values are used
    return RendezvousResult(np.asarray(volume, dtype=np.float32), "ok", waited)


# ---- the correction itself


def _match_radial_amplitude(
    volume: np.ndarray, reference: np.ndarray, max_shell: float
) -> np.ndarray:
    """Scale each Fourier shell s <= max_shell of ``volume`` so its mean |F| equals the
    reference's; shells beyond are left as they are (float32)."""
    from .fourier import rfft_shells
    from .maps import _apply_radial, _shell_mean_amplitude

    n = volume.shape[0]
    shells, weights = rfft_shells(n)
    fv = np.fft.rfftn(volume.astype(np.float64))
    av = _shell_mean_amplitude(fv, shells, weights)
    ar = _shell_mean_amplitude(np.fft.rfftn(reference.astype(np.float64)), shells, weights)
    scale = np.ones(av.size)
    ok = (np.arange(av.size) <= max_shell) & (av > 1e-12 * max(float(av.max()), 1e-300))
    scale[ok] = ar[ok] / av[ok]
    return _apply_radial(fv, scale, shells, n).astype(np.float32)


def measured_weight(
    fsc3d_volume: np.ndarray,
    half1: np.ndarray,
    half2: np.ndarray,
    mask: np.ndarray | None,
    percentile: float = 95.0,
) -> np.ndarray:
    """Where Fourier space was measured, relative to the best directions of each shell.

    ``clip(g / P95_shell(g), 0, 1)`` with ``g = clip(3D FSC, 0, 1) ·`` the measured-power
    gate of :func:`spisonet.correct.power_presence`: 1 along the shell's well-measured
    directions, falling towards 0 in the missing cone. (n, n, n) float32, fftshift-ed.
    """
    from .correct import power_presence, shell_percentile

    g = np.clip(np.asarray(fsc3d_volume, dtype=np.float64), 0.0, 1.0)
    g = g * power_presence(half1, half2, mask, 0.1)
    return np.clip(g / shell_percentile(g, percentile), 0.0, 1.0).astype(np.float32)


def _remove_earlier_files(folder: Path, jn: JobName) -> None:
    """Remove rendezvous files (locks, unregularised maps) of earlier iterations of this
    run (this half's, or both halves' for the joined iteration): nobody needs them now."""
    half = r"\d+" if jn.half is None else str(jn.half)
    pattern = re.compile(
        re.escape(jn.root)
        + r"_it(\d{3,})_half"
        + half
        + "_"
        + re.escape(jn.kind + jn.number)
        + r"_spisonet(?:\.lock|_unreg\.mrc)$"
    )
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) < jn.iteration:
            with _suppress_oserror():
                (folder / name).unlink()


class _BrokenCorrection:
    """A correction whose settings could not be read: raises the error when called."""

    summary = ""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, job: ExternalReconstructJob, volume: np.ndarray, pixel: float) -> None:
        raise self.error


class RelionCorrection:
    """The misalignment correction, called by :func:`run_external_reconstruct` for each
    half of each iteration (one process per half, both at the same time).

    Per call: the last joined iteration and closed gates keep RELION's map (the reason is
    logged). Otherwise each half reconstructs its data without the Wiener term
    (unregularised), shares it with the other half through :func:`wait_for_partner`,
    computes the 3D FSC of the two, whitens and FSC-weights its own map (optional), trains
    its own network on its own half (independent networks: the halves stay independent,
    as RELION's gold standard needs), continuing the previous iteration's model, and
    returns the network output low-passed to the current resolution, with RELION's own
    map's radial amplitudes, and (``keep_measured``) RELION's own Fourier coefficients
    wherever the data were measured (:func:`measured_weight`), so that the network only
    fills the missing cone. Returns None to keep RELION's map; ``summary`` says why or
    what was done; every step goes to ``spisonet_relion.log``.
    """

    def __init__(self, settings: RelionCorrectionSettings | None = None) -> None:
        self.settings = settings if settings is not None else RelionCorrectionSettings()
        self.summary = ""

    # -- logging
    def _log(self, job: ExternalReconstructJob, message: str) -> None:
        _log(job.star_path, f"{job.name}: {message}", echo=False)

    def __call__(
        self, job: ExternalReconstructJob, plain: np.ndarray, pixel_size: float
    ) -> np.ndarray | None:
        s = self.settings
        self.summary = ""
        jn = parse_job_name(job.name)
        if jn is None:
            return self._keep(job, f"{job.name} does not follow RELION's iteration naming")
        _remove_earlier_files(job.star_path.parent, jn)
        if jn.half is None:
            return self._keep(job, "last joined iteration keeps RELION's map")
        if jn.half not in (1, 2):
            return self._keep(job, f"half {jn.half}: only halves 1 and 2 are paired")
        folder = job.star_path.parent
        own_lock = folder / f"{job.name}_spisonet.lock"
        own_unreg = folder / f"{job.name}_spisonet_unreg.mrc"
        other = jn.name(half=3 - jn.half)
        other_lock = folder / f"{other}_spisonet.lock"
        other_unreg = folder / f"{other}_spisonet_unreg.mrc"
        with _suppress_oserror():
            own_unreg.unlink()  # stale, from an interrupted earlier run
        fd = _publish_lock(own_lock)
        t0 = time.perf_counter()
        try:
            order, order_src = healpix_order_of_run(job)
            res = current_resolution(job, pixel_size)
            res_text = f"{res:.2f} Å" if math.isfinite(res) else "unknown"
            gates = (
                f"healpix order {order if order is not None else '?'} ({order_src}; start "
                f"{s.start_healpix}), resolution {res_text} (rlnGoldStandardFsc; start "
                f"{s.start_resolution:g} Å)"
            )
            closed = []
            if order is None or order < s.start_healpix:
                closed.append("healpix order below start")
            if not res < s.start_resolution:
                closed.append("resolution not better than start")
            if closed:
                _release_lock(fd)
                fd = None
                return self._keep(job, f"gate closed, {' and '.join(closed)}: {gates}")
            self._log(job, f"gates open: {gates}")
            unreg = reconstruct(job, wiener=False)
            from .io import write_map

            write_map(own_unreg, unreg, voxel_size=pixel_size)
            t_unreg = time.perf_counter() - t0
        finally:
            _release_lock(fd)
        not_before = job.star_path.stat().st_mtime - 60.0
        meet = wait_for_partner(
            other_lock, other_unreg, not_before=not_before, timeout=s.wait_timeout
        )
        for p in (other_lock, other_unreg):  # only this half reads the other's files
            with _suppress_oserror():
                if meet.volume is not None or p == other_lock:
                    p.unlink()
        self._log(
            job,
            f"unregularised reconstruction {t_unreg:.1f} s; waited {meet.waited:.2f} s for "
            f"half {3 - jn.half}: {meet.reason}",
        )
        if meet.volume is None:
            return self._keep(job, f"no correction: {meet.reason}")
        if meet.volume.shape != unreg.shape:
            raise MapShapeError(
                f"the other half's map has shape {meet.volume.shape}, this one {unreg.shape}"
            )
        self._test_hook(job, jn)
        return self._train(job, jn, unreg, meet.volume, plain, pixel_size, res, t0)

    def _keep(self, job: ExternalReconstructJob, reason: str) -> None:
        """Keep RELION's map; the reason goes to ``summary`` (the runner logs it)."""
        self.summary = reason
        return None

    def _test_hook(self, job: ExternalReconstructJob, jn: JobName) -> None:
        """SPISONET_TEST_RAISE_ON_CALL=n: raise on this half's n-th call past the gates."""
        n = self.settings.test_raise_on_call
        if n is None:
            return
        counter = job.star_path.parent / f"{jn.root}_half{jn.half}_spisonet_test_calls"
        try:
            calls = int(counter.read_text().strip() or 0) + 1
        except (OSError, ValueError):
            calls = 1
        counter.write_text(f"{calls}\n")
        if calls == n:
            raise RuntimeError(f"test hook: SPISONET_TEST_RAISE_ON_CALL={n} (call {calls})")

    def _train(
        self,
        job: ExternalReconstructJob,
        jn: JobName,
        own: np.ndarray,
        other: np.ndarray,
        plain: np.ndarray,
        voxel: float,
        res: float,
        t0: float,
    ) -> np.ndarray:
        from .correct import correct_anisotropy, preset_settings
        from .fourier import frequency_radius, lowpass
        from .fsc import fsc_curve
        from .fsc3d import fsc3d
        from .maps import fsc_weight, whiten
        from .masks import spherical_mask

        s = self.settings
        n = own.shape[0]
        folder = job.star_path.parent
        half1, half2 = (own, other) if jn.half == 1 else (other, own)
        # mask: RELION's particle diameter (optimiser STAR), else none
        mask = None
        optimiser = _newest_iteration_file(folder, jn, "_optimiser.star", before=True)
        diameter = _read_star_scalar(optimiser, "rlnParticleDiameter") if optimiser else None
        if diameter is not None and _positive(diameter) is not None:
            radius = min(0.5 * float(diameter) / voxel, n / 2 - 1)
            mask = spherical_mask(n, radius, soft_edge_voxels=min(5.0, n / 8))
        t = time.perf_counter()
        limit = max(res, 2.0 * voxel)
        f3d = fsc3d(half1, half2, voxel_size=voxel, mask=mask, limit_res=limit).volume
        curve, _ = fsc_curve(half1, half2, mask)
        t_fsc = time.perf_counter() - t
        x = own
        steps = []
        if s.whitening and s.whitening_low > limit:
            x = whiten(x, voxel, mask, low_res=s.whitening_low, high_res=limit)
            steps.append(f"whitened {s.whitening_low:g}-{limit:.1f} Å")
        if s.fsc_weighting:
            x = fsc_weight(x, curve, "relion")
            steps.append("FSC-weighted")
        import torch

        preset = s.preset or ("gpu" if torch.cuda.is_available() else "cpu")
        threads = s.threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)
        overrides: dict[str, object] = {
            "epochs": s.epochs,
            "alpha": s.alpha,
            "beta": s.beta,
            "acc_batches": s.acc_batches,
            "limit_res": limit if n * voxel / limit >= 1 else None,
        }
        cfg = preset_settings(preset, **overrides)
        if cfg.cube_size > n:  # a small box: the largest cube the network's depth allows
            mult = 2 ** (len(cfg.widths) - 1)
            cfg = preset_settings(preset, **overrides, cube_size=(n // mult) * mult)
        model = folder / f"{job.name}_spisonet.pt"
        previous = None
        if not s.retrain_each_iter:
            previous = _newest_iteration_file(
                folder, jn, f"_half{jn.half}_{jn.kind}{jn.number}_spisonet.pt", before=True
            )
        if previous is not None:
            self._log(job, f"continuing the model {previous.name}")
        elif cfg.epochs == 0:
            return self._keep(job, "epochs 0 and no previous model: nothing to predict with")
        else:
            self._log(job, "training a new model" + (" (retrain each iteration)" if
                      s.retrain_each_iter else ""))  # fmt: skip
        self._log(
            job,
            f"training: preset {preset}, {cfg.epochs} epochs, cube {cfg.cube_size}, "
            f"{cfg.n_subvolume} cubes, limit {limit:.2f} Å, {threads} threads, "
            f"{', '.join(steps) or 'no whitening/weighting'}; independent network for half "
            f"{jn.half}" + (" (beta unused: no Noise2Noise pair)" if s.beta is not None else ""),
        )
        t = time.perf_counter()
        result = correct_anisotropy(
            x,
            None,
            fsc3d_volume=f3d,
            mask=mask,
            voxel_size=voxel,
            settings=cfg,
            pretrained=previous,
            checkpoints=(model,),
            trust=False,  # one more prediction per iteration; RELION's log has the gates
        )
        t_train = time.perf_counter() - t
        net = result.filtered[0] if result.filtered is not None else result.corrected[0]
        out = lowpass(net, limit, voxel, falloff=3)
        out = _match_radial_amplitude(out, plain, n * voxel / limit)
        plain_low = lowpass(plain, limit, voxel, falloff=3)
        kept = ""
        if s.keep_measured:
            from .fourier import fourier_blend

            measured = measured_weight(f3d, half1, half2, mask)
            out = fourier_blend(out, plain_low, measured)
            inside = frequency_radius(n) <= n * voxel / limit
            share = 100 * float(np.mean(measured[inside] > 0.5))
            kept = (
                f", RELION's map kept where measured (weight > 0.5 in {share:.0f} % of the "
                f"sphere up to {limit:.1f} Å)"
            )
        if s.keep_highres:  # RELION's map beyond the current resolution, the same soft edge
            out = out + (plain - plain_low)
        if s.keep_lowres:
            out = self._keep_lowres(job, jn, out, voxel)
        loss = result.histories[0].get("loss") if result.histories else None
        loss_text = f", loss {loss[-1]:.4g}" if loss else ""
        self._log(
            job,
            f"3D FSC {t_fsc:.1f} s, training {t_train:.1f} s ({result.train[0].get('steps', 0)} "
            f"steps on {result.train[0].get('device', '?')}{loss_text}); output low-passed "
            f"to {limit:.2f} Å, radial amplitudes of RELION's map"
            + kept
            + (", RELION's map beyond" if s.keep_highres else "")
            + f"; model -> {model.name}",
        )
        self.summary = (
            f"network {cfg.epochs} epochs, {t_train:.0f} s, "
            + ("RELION's map beyond " if s.keep_highres else "low-passed to ")
            + f"{limit:.1f} Å, "
            f"step {time.perf_counter() - t0:.0f} s"
        )
        return out

    def _keep_lowres(
        self, job: ExternalReconstructJob, jn: JobName, volume: np.ndarray, voxel: float
    ) -> np.ndarray:
        """Take the content below ``--ini_high`` from the initial reference (``--ref``)."""
        from .io import read_map
        from .maps import combine_map

        folder = job.star_path.parent
        optimiser = _newest_iteration_file(folder, jn, "_optimiser.star", before=True)
        if optimiser is None:
            raise SpisonetError("ISONET_KEEP_LOWRES: no _optimiser.star beside the job")
        ref = _optimiser_command_option(optimiser, "--ref")
        ini_high = _optimiser_command_option(optimiser, "--ini_high")
        if ref is None or ini_high is None or _positive(ini_high) is None:
            raise SpisonetError(
                f"ISONET_KEEP_LOWRES: --ref or --ini_high not found in {optimiser.name}'s "
                "command line"
            )
        path = _resolve_input(ref, job.star_path)
        reference = read_map(path, voxel_size=voxel).data  # sampled like the map
        if reference.shape != volume.shape:
            raise MapShapeError(
                f"ISONET_KEEP_LOWRES: {path} has shape {reference.shape}, the map {volume.shape}"
            )
        self._log(job, f"kept the content below {float(ini_high):g} Å from {path.name}")
        return combine_map(reference, volume, float(ini_high), voxel)
