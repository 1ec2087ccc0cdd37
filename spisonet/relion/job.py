"""The job RELION hands its external reconstructor: its STAR, its files, its log.

``relion_refine --external_reconstruct`` writes, once per half per iteration, a STAR file
``<root>_it<NNN>[_half<h>]_class<CCC>_external_reconstruct.star`` and three MRC files with
the back-projected padded Fourier data and weights, then runs
``$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE <star>`` (``/bin/sh -c``, from RELION's working
directory) and reads back the map named in the STAR.

:func:`read_external_star` reads the STAR (through :func:`spisonet.io.read_star_blocks`)
into an :class:`ExternalReconstructJob`; :func:`reconstruct` reads the job's Fourier files
and runs the back-projector port on them; :func:`write_result_star` writes the tau2/FSC
STAR RELION may read back; :func:`log_line` appends to ``spisonet_relion.log`` beside the
STAR.

Versions (``BackProjector::externalReconstruct`` in RELION's ``src/backprojector.cpp``):
3.1 writes ``# version 30001`` and no pixel size; 4.0 still writes ``# version 30001`` but
adds ``rlnPixelSize`` and ``rlnParticleDiameter``; 5.0 writes ``# version 50001`` with the
same labels as 4.0. In every version the tau2 column is the model's ``tau2_class`` as
``updateSSNRarrays`` leaves it: the division by the mean CTF² that RELION 5 applies for
CTF-premultiplied data (``correct_tau2_by_avgctf2``) touches only a local copy used for
its data-vs-prior report (and only without split halves), never the written tau2, and
RELION's own ``reconstruct`` takes the same undivided tau2. So the Wiener term
``1 / (pad³ · fudge · tau2)`` is the same for every version and nothing is rescaled here.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidValueError, MapShapeError, StarFormatError
from ..io import atomic_path, read_map, read_star_blocks
from ..io.relion_runs import job_name_of_star, positive_number
from .backprojector import reconstruct_arrays, relion_round

__all__ = [
    "REQUIRED_LABELS",
    "ExternalReconstructJob",
    "current_resolution",
    "log_line",
    "read_external_star",
    "reconstruct",
    "resolve_input",
    "write_result_star",
]

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

#: The log beside RELION's outputs (one line per decision).
LOG_NAME = "spisonet_relion.log"


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
    pixel_size : ``rlnPixelSize`` (Å) when the STAR has it (RELION 4.0 and later), else
        None.
    particle_diameter : ``rlnParticleDiameter`` (Å) when present (RELION 4.0 and later).
    star_version : the ``# version NNNNN`` RELION wrote atop the STAR (30001 for 3.1 and
        4.0, 50001 for 5.x), None when there is none.
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
    particle_diameter: float | None = None
    star_version: int | None = None

    @property
    def relion_release(self) -> str:
        """The RELION series that writes a STAR like this one: ``3.1``, ``4.0``, ``5.x``,
        or ``unknown (...)``; the header alone cannot tell 3.1 from 4.0, the pixel size can."""
        if self.star_version == 50001:
            return "5.x"
        if self.star_version == 30001:
            return "4.0" if "rlnPixelSize" in self.labels else "3.1"
        return f"unknown (version {self.star_version})"

    @property
    def name(self) -> str:
        """Short name for logs: the STAR name without ``_external_reconstruct.star``."""
        return job_name_of_star(self.star_path.name)

    @property
    def padded_size(self) -> int:
        """Edge P of the data/weight files: ROUND(pad * ori)."""
        return relion_round(self.padding_factor * self.ori_size)


# --------------------------------------------------------------------------------------
# Reading the STAR


def _block_as_dict(block: object) -> dict[str, object]:
    """A one-row STAR block (list or one-row loop) as {label: value}."""
    if isinstance(block, dict):
        return dict(block)
    columns = getattr(block, "columns", None)
    if columns is None or len(block) == 0:  # type: ignore[arg-type]
        return {}
    row = block.iloc[0]  # type: ignore[attr-defined]
    return {str(c): row[c] for c in columns}


def resolve_input(raw: str, star_path: Path) -> Path:
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


def _number(star: Path, general: dict[str, object], label: str, kind: type) -> float | int:
    """A finite number (an integer when ``kind`` is int) from the general block."""
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


def _tau2_table(star: Path, table: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(spectral index, tau2, gold-standard FSC or None) of the tau2 block."""
    if isinstance(table, dict):
        table = {k: [v] for k, v in table.items()}
        columns = list(table)
    else:
        columns = [str(c) for c in getattr(table, "columns", [])]
    if not columns:
        return np.zeros(0, dtype=np.int64), np.zeros(0), None
    if "rlnReferenceTau2" not in columns:
        raise StarFormatError(
            f"{star}: block 'external_reconstruct_tau2' lacks rlnReferenceTau2 "
            f"(found {', '.join(columns)})"
        )
    try:
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
    except (TypeError, ValueError) as exc:
        raise StarFormatError(
            f"{star}: block 'external_reconstruct_tau2' has non-numeric values ({exc})"
        ) from exc
    return index, tau2, fsc


_VERSION_LINE = re.compile(r"^#\s*version\s+(\d+)\s*$")


def _star_version(star: Path) -> int | None:
    """The first ``# version NNNNN`` line of the STAR (RELION's ``CURRENT_MDT_VERSION``)."""
    try:
        with star.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                m = _VERSION_LINE.match(line.strip())
                if m:
                    return int(m.group(1))
                if line.startswith("data_"):  # RELION writes the version before each block
                    return None
    except OSError:
        return None
    return None


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
    fudge = float(_number(star, general, "rlnTau2FudgeFactor", float))
    pad = float(_number(star, general, "rlnPaddingFactor", float))
    ori = int(_number(star, general, "rlnOriginalImageSize", int))
    current = int(_number(star, general, "rlnCurrentImageSize", int))
    ref_dim = (
        int(_number(star, general, "rlnReferenceDimensionality", int))
        if "rlnReferenceDimensionality" in general
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
        value = float(_number(star, general, "rlnPixelSize", float))
        pixel_size = value if value > 0 else None
    # optional and unused by the reconstruction: an odd value must not cost RELION its map
    diameter = positive_number(str(general.get("rlnParticleDiameter", "")))
    if "external_reconstruct_tau2" not in blocks:
        raise StarFormatError(
            f"{star}: no 'external_reconstruct_tau2' block; expected the tau2 table "
            "(rlnSpectralIndex, rlnReferenceTau2)"
        )
    index, tau2, fsc = _tau2_table(star, blocks["external_reconstruct_tau2"])
    result_star = None
    if "rlnExtReconsResultStarfile" in general:
        result_star = _resolve_output(str(general["rlnExtReconsResultStarfile"]), star)
    return ExternalReconstructJob(
        star_path=star,
        data_real=resolve_input(str(general["rlnExtReconsDataReal"]), star),
        data_imag=resolve_input(str(general["rlnExtReconsDataImag"]), star),
        weight=resolve_input(str(general["rlnExtReconsWeight"]), star),
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
        particle_diameter=diameter,
        star_version=_star_version(star),
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


def current_resolution(job: ExternalReconstructJob, pixel_size: float) -> float:
    """The current resolution (Å) from the STAR's own ``rlnGoldStandardFsc`` column.

    Resolution of the first shell (>= 1) whose FSC falls below 0.143, i.e.
    ``box * pixel_size / shell`` (:func:`spisonet.fsc_shells.resolution_at`); Nyquist when it
    never does; ``inf`` when the column is missing or empty.
    """
    if job.fsc is None:
        return math.inf
    return fsc_table_resolution(job.spectral_index, job.fsc, job.ori_size, pixel_size)


def fsc_table_resolution(
    spectral_index: np.ndarray, fsc: np.ndarray, box: int, pixel_size: float
) -> float:
    """RELION's current resolution (Å) from an FSC table (shell index, FSC per row, as in
    the job's STAR or a ``_model.star``): the first shell >= 1 below 0.143, Nyquist when
    none is; ``inf`` for fewer than two rows. The one rule of the gates and relion-check."""
    from ..fsc_shells import resolution_at

    if fsc.size < 2:
        return math.inf
    idx = np.asarray(spectral_index, dtype=int)
    curve = np.zeros(int(idx.max()) + 1)
    curve[idx] = fsc
    return float(resolution_at(curve, 0.143, box, pixel_size, start=1))


# --------------------------------------------------------------------------------------
# The job's files


def _read_fourier(job: ExternalReconstructJob) -> tuple[np.ndarray, np.ndarray]:
    """The job's padded Fourier data (complex128) and weights (float64), checked."""
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
    minres_map: int = -1,
) -> np.ndarray:
    """Reconstruct the job's map exactly as ``relion_external_reconstruct`` does.

    ``wiener=False`` is RELION's ``--no_map``; ``skip_gridding=True`` its
    ``--skip_gridding``; ``minres_map=5`` makes the map ``relion_refine`` makes itself
    (no Wiener term below shell 5, its ``--minres_map`` default). Returns a (box, box, box)
    float32 array (:func:`spisonet.relion.backprojector.reconstruct_arrays`).

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
        minres_map=minres_map,
    )


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


def log_line(job_star: Path, message: str, *, echo: bool = True) -> None:
    """Append one line to ``spisonet_relion.log`` beside the STAR; echo it to stdout.

    Never raises: an unwritable log must not stop RELION. The write is one ``O_APPEND``
    call, so the two halves' lines do not interleave.
    """
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n"
    try:
        fd = os.open(job_star.parent / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError:
        pass
    if echo:
        print(f"spisonet-relion: {message}", flush=True)
