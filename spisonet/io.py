"""Reading and writing maps (MRC) with their voxel size; atomic writes.

Only this module touches files. Maps travel as :class:`Map`: a float32 array indexed
``[z, y, x]`` plus the voxel size in Å and the origin in Å.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import (
    EmptyMaskError,
    MapFormatError,
    MapMismatchError,
    MapNotFoundError,
    MapShapeError,
    NonFiniteMapError,
)

__all__ = [
    "Map",
    "atomic_path",
    "check_half_maps",
    "check_mask",
    "read_map",
    "read_star_angles",
    "read_star_blocks",
    "write_map",
]

#: MRC modes we read: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16.
SUPPORTED_MODES = (0, 1, 2, 6, 12)


@dataclass(frozen=True)
class Map:
    """A cubic 3D map with its sampling.

    Attributes
    ----------
    data : (n, n, n) float32 array, indexed [z, y, x].
    voxel_size : voxel size in Å (isotropic).
    origin : origin of the map in Å, (x, y, z) as in the MRC header.
    path : the file it came from, if any (used in error messages).
    """

    data: np.ndarray
    voxel_size: float = 1.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str | None = field(default=None, compare=False)

    @property
    def box(self) -> int:
        """Edge length of the cubic box in voxels."""
        return int(self.data.shape[0])

    @property
    def name(self) -> str:
        """Name used in messages: the file name or '<array>'."""
        return self.path if self.path is not None else "<array>"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or interrupt while writing never leaves a half-written file under the final
    name, and an existing file is only replaced once the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_map(path: str | os.PathLike, *, require_cubic: bool = True) -> Map:
    """Read an MRC map as float32.

    Parameters
    ----------
    path : MRC file (modes 0, 1, 2, 6, 12).
    require_cubic : raise :class:`MapShapeError` unless the map is an n×n×n volume.

    Raises
    ------
    MapNotFoundError, MapFormatError, MapShapeError, NonFiniteMapError

    Warns
    -----
    UserWarning when the header's voxel size is 0 (1.0 Å is used instead).
    """
    import mrcfile

    p = Path(path)
    if not p.exists():
        raise MapNotFoundError(f"{p}: file not found")
    if p.is_dir():
        raise MapFormatError(f"{p}: is a directory, expected an MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, mode="r", permissive=True) as mrc:
                data = mrc.data
                header = mrc.header
                if data is None:
                    raise MapFormatError(
                        f"{p}: not an MRC file or truncated (no readable data block)"
                    )
                mode = int(header.mode)
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                expected_bytes = nx * ny * nz * data.dtype.itemsize
                if data.nbytes != expected_bytes or data.size == 0:
                    raise MapFormatError(
                        f"{p}: truncated MRC file: header says {nx}x{ny}x{nz} voxels, "
                        f"found {data.size}"
                    )
                voxel = float(mrc.voxel_size.x)
                origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
                array = np.array(data, dtype=np.float32, copy=True)
    except MapFormatError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise MapFormatError(f"{p}: not a readable MRC map ({exc})") from exc
    if mode not in SUPPORTED_MODES:
        raise MapFormatError(
            f"{p}: MRC mode {mode} is not supported; expected one of {SUPPORTED_MODES}"
        )
    if array.ndim == 2:
        array = array[np.newaxis]
    if require_cubic and (array.ndim != 3 or len(set(array.shape)) != 1):
        raise MapShapeError(
            f"{p}: expected a cubic 3D map (n×n×n), found shape {tuple(array.shape)} "
            "(z, y, x); pad or crop it to a cube first"
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise NonFiniteMapError(f"{p}: contains {bad} NaN or infinite values; expected finite")
    if not np.isfinite(voxel) or voxel <= 0:
        warnings.warn(
            f"{p}: voxel size in the header is {voxel}; using 1.0 Å", UserWarning, stacklevel=2
        )
        voxel = 1.0
    return Map(array, voxel, origin, str(p))


def write_map(
    path: str | os.PathLike,
    data: np.ndarray | Map,
    voxel_size: float | None = None,
    origin: tuple[float, float, float] | None = None,
) -> Path:
    """Write a float32 MRC map atomically (temporary file, then rename).

    Parameters
    ----------
    path : output file.
    data : (n, n, n) array or :class:`Map`.
    voxel_size : voxel size in Å; taken from ``data`` when it is a Map (default 1.0).
    origin : origin in Å, (x, y, z); taken from ``data`` when it is a Map.
    """
    import mrcfile

    if isinstance(data, Map):
        voxel_size = data.voxel_size if voxel_size is None else voxel_size
        origin = data.origin if origin is None else origin
        array = data.data
    else:
        array = data
    voxel_size = 1.0 if voxel_size is None else float(voxel_size)
    array = np.ascontiguousarray(array, dtype=np.float32)
    final = Path(path)
    with atomic_path(final) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            mrc.voxel_size = voxel_size
            if origin is not None:
                mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
            mrc.update_header_stats()
    return final


def check_half_maps(half1: Map, half2: Map) -> None:
    """Raise :class:`MapMismatchError` unless two half maps share shape and voxel size."""
    if half1.data.shape != half2.data.shape:
        raise MapMismatchError(
            f"{half2.name}: shape {half2.data.shape} differs from {half1.name} "
            f"{half1.data.shape}; both half maps must have the same box"
        )
    if not np.isclose(half1.voxel_size, half2.voxel_size, rtol=1e-3, atol=1e-4):
        raise MapMismatchError(
            f"{half2.name}: voxel size {half2.voxel_size:.4f} Å differs from {half1.name} "
            f"{half1.voxel_size:.4f} Å; both half maps must have the same sampling"
        )


def check_mask(mask: Map, reference: Map) -> None:
    """Raise unless ``mask`` matches ``reference``'s shape and is not all zeros."""
    if mask.data.shape != reference.data.shape:
        raise MapMismatchError(
            f"{mask.name}: mask shape {mask.data.shape} differs from the map's "
            f"{reference.data.shape} ({reference.name})"
        )
    if not np.any(mask.data > 0):
        raise EmptyMaskError(f"{mask.name}: mask is zero everywhere; expected a non-empty mask")


def read_star_blocks(path: str | os.PathLike) -> dict[str, object]:
    """Every data block of a STAR file, by name (``starfile.read(..., always_dict=True)``).

    Raises
    ------
    StarFormatError when the file is missing, a directory, unreadable or has no blocks.
    """
    import starfile

    from .errors import StarFormatError

    p = Path(path)
    if not p.exists():
        raise StarFormatError(f"{p}: STAR file not found")
    if p.is_dir():
        raise StarFormatError(f"{p}: is a directory, expected a STAR file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise StarFormatError(f"{p}: not a readable STAR file ({exc})") from exc
    if not isinstance(blocks, dict) or not blocks:
        raise StarFormatError(f"{p}: no data blocks found; expected a RELION STAR file")
    return blocks


def read_star_angles(path: str | os.PathLike) -> np.ndarray:
    """Euler angles (rot, tilt, psi) in degrees of every particle of a RELION STAR file.

    Reads RELION 3.0 files (one data block) and 3.1+ files (``data_optics`` plus
    ``data_particles``): the first block holding ``rlnAngleRot`` and ``rlnAngleTilt`` is
    used; a missing ``rlnAnglePsi`` reads as 0. Returns an (N, 3) float64 array.

    Raises
    ------
    StarFormatError when the file is missing, unreadable or has no angle columns.
    """
    from .errors import StarFormatError

    p = Path(path)
    blocks = read_star_blocks(p)
    for name, block in blocks.items():
        columns = getattr(block, "columns", None)
        if columns is None:
            continue
        if "rlnAngleRot" in columns and "rlnAngleTilt" in columns:
            rot = np.asarray(block["rlnAngleRot"], dtype=np.float64)
            tilt = np.asarray(block["rlnAngleTilt"], dtype=np.float64)
            psi = (
                np.asarray(block["rlnAnglePsi"], dtype=np.float64)
                if "rlnAnglePsi" in columns
                else np.zeros_like(rot)
            )
            angles = np.stack([rot, tilt, psi], axis=1)
            if angles.shape[0] == 0:
                raise StarFormatError(f"{p}: block '{name}' has no particles")
            if not np.all(np.isfinite(angles)):
                raise StarFormatError(f"{p}: block '{name}' has non-numeric angles")
            return angles
    found = ", ".join(f"'{k}'" for k in blocks) or "none"
    raise StarFormatError(
        f"{p}: no block with rlnAngleRot and rlnAngleTilt columns (blocks found: {found}); "
        "expected a RELION particles STAR file with assigned angles"
    )
