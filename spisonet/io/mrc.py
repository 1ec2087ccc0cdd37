"""MRC maps: reading and writing them with their voxel size, and checks of maps read.

Maps travel as :class:`Map`: a float32 array indexed ``[z, y, x]`` plus the voxel size in
Å, the origin in Å and the header's nstart. :func:`read_map` validates the 1024-byte
header against the file size before mrcfile allocates anything and transposes maps
stored in another axis order; :func:`write_map` writes float32 in the standard order,
atomically (:func:`~spisonet.io.atomic.atomic_path`). :func:`check_half_maps` and
:func:`check_mask` compare maps once they are read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import (
    EmptyMaskError,
    InvalidValueError,
    MapFormatError,
    MapMismatchError,
    MapNotFoundError,
    MapShapeError,
    NonFiniteMapError,
    VoxelSizeError,
)
from .atomic import atomic_path

__all__ = [
    "SUPPORTED_MODES",
    "Map",
    "MappedMap",
    "check_half_maps",
    "check_mask",
    "map_slab_writer",
    "open_map_mmap",
    "read_map",
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
    nstart : index of the first voxel along (x, y, z) in the unit cell: the MRC header's
        nxstart, nystart, nzstart (e.g. -16 for a box centred on the cell origin).
    """

    data: np.ndarray
    voxel_size: float = 1.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str | None = field(default=None, compare=False)
    nstart: tuple[int, int, int] = (0, 0, 0)

    @property
    def box(self) -> int:
        """Edge length of the cubic box in voxels."""
        return int(self.data.shape[0])

    @property
    def name(self) -> str:
        """Name used in messages: the file name or '<array>'."""
        return self.path if self.path is not None else "<array>"


_HEADER_BYTES = 1024
#: bytes per voxel of the modes we read, and names of every mode for messages
_BYTES_PER_VOXEL = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}
_MODE_NAMES = {
    0: "int8",
    1: "int16",
    2: "float32",
    3: "complex int16",
    4: "complex float32",
    6: "uint16",
    12: "float16",
    101: "packed 4-bit",
}
_MRCFILE_MODES = (0, 1, 2, 4, 6, 12)  # the modes mrcfile uses to guess the byte order


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _stored_size(p: Path, opener, need: int) -> int:
    """Bytes in a compressed file once decompressed, counted in 1 MiB chunks up to
    ``need`` (so a decompression bomb costs time, never memory)."""
    total = 0
    with opener(p, "rb") as fh:
        while total < need:
            chunk = fh.read(min(2**20, need - total))
            if not chunk:
                break
            total += len(chunk)
    return total


def _check_header(p: Path) -> None:
    """Validate the 1024-byte MRC header against the file size before mrcfile reads it.

    mrcfile allocates what the header announces (extended header, data block) before it
    finds the file too short: a text file renamed ``.mrc`` or a crafted ``nsymbt`` would
    cost gigabytes before the refusal. Byte order follows mrcfile: the machine stamp
    (little-endian when unrecognised), flipped when only the other order gives a valid
    mode. Gzip/bzip2 files (which mrcfile opens too) are checked on their decompressed
    header and length.
    """
    import bz2
    import gzip

    with open(p, "rb") as fh:
        raw = fh.read(_HEADER_BYTES)
    opener = None
    if raw[208:212] != b"MAP " and raw[:2] in (b"\x1f\x8b", b"BZ"):
        opener = gzip.open if raw[:2] == b"\x1f\x8b" else bz2.open
        try:
            with opener(p, "rb") as fh:
                raw = fh.read(_HEADER_BYTES)
        except (OSError, EOFError, ValueError) as exc:
            raise MapFormatError(f"{p}: not a readable compressed MRC map ({exc})") from exc
    what = "decompressed file" if opener is not None else "file"
    if len(raw) < _HEADER_BYTES:
        raise MapFormatError(
            f"{p}: not an MRC map: the {what} holds {len(raw)} bytes, less than the "
            f"{_HEADER_BYTES}-byte MRC header"
        )
    stamp = raw[212:216]
    if stamp[0] == 0x44 and stamp[1] in (0x44, 0x41):
        order = "<"
    elif stamp[0] == 0x11 and stamp[1] == 0x11:
        order = ">"
    else:
        order = "<"
    words = np.frombuffer(raw, dtype=f"{order}i4", count=24)
    if int(words[3]) not in _MRCFILE_MODES:
        flipped = np.frombuffer(raw, dtype=f"{'>' if order == '<' else '<'}i4", count=24)
        if int(flipped[3]) in _MRCFILE_MODES:
            words = flipped
    nx, ny, nz, mode = (int(v) for v in words[:4])
    nsymbt = int(words[23])
    signed = raw[208:211] == b"MAP"
    if mode not in _MODE_NAMES or min(nx, ny, nz) < 1:
        sig = "" if signed else "no 'MAP ' signature, "
        raise MapFormatError(
            f"{p}: not an MRC map ({sig}header reads {nx}×{ny}×{nz} voxels of mode {mode}); "
            f"expected positive sizes and a mode in {SUPPORTED_MODES}"
        )
    if mode not in SUPPORTED_MODES:
        raise MapFormatError(
            f"{p}: MRC mode {mode} ({_MODE_NAMES[mode]}) is not supported; expected one of "
            f"{SUPPORTED_MODES}; convert it to float32 (mode 2) first"
        )
    need = _HEADER_BYTES + max(nsymbt, 0) + nx * ny * nz * _BYTES_PER_VOXEL[mode]
    size = p.stat().st_size if opener is None else _stored_size(p, opener, need)
    if nsymbt < 0 or _HEADER_BYTES + nsymbt > size:
        raise MapFormatError(
            f"{p}: not a readable MRC map: header says a {nsymbt}-byte extended header, "
            f"the {what} holds {size} bytes"
        )
    if need > size:
        raise MapFormatError(
            f"{p}: truncated MRC file: header says {nx}×{ny}×{nz} {_MODE_NAMES[mode]} voxels "
            f"after a {nsymbt}-byte extended header ({_mib(need - _HEADER_BYTES)}), the "
            f"{what} holds {size} bytes"
        )


def _axis_order(crs: tuple[int, int, int], p: Path) -> tuple[int, int, int] | None:
    """The transpose taking mrcfile's (section, row, column) array to [z, y, x], given the
    header's (mapc, mapr, maps); None when they are 1, 2, 3 (0, 0, 0 is read as 1, 2, 3)."""
    if crs in ((1, 2, 3), (0, 0, 0)):
        return None
    if sorted(crs) != [1, 2, 3]:
        raise MapFormatError(
            f"{p}: header axis order mapc/mapr/maps = {crs[0]},{crs[1]},{crs[2]}; expected "
            "a permutation of 1,2,3"
        )
    along = (crs[2], crs[1], crs[0])  # the x/y/z axis (1/2/3) of array axes 0, 1, 2
    return tuple(along.index(3 - j) for j in range(3))


def read_map(
    path: str | os.PathLike,
    *,
    require_cubic: bool = True,
    voxel_size: float | None = None,
) -> Map:
    """Read an MRC map as float32, indexed [z, y, x].

    Maps stored in another axis order (header mapc/mapr/maps other than 1, 2, 3) are
    transposed to the standard order on reading, so the array (and ``nstart``) always
    mean [z, y, x]; :func:`write_map` writes that standard order.

    Parameters
    ----------
    path : MRC file (modes 0, 1, 2, 6, 12), optionally gzip- or bzip2-compressed.
    require_cubic : raise :class:`MapShapeError` unless the map is an n×n×n volume.
    voxel_size : voxel size in Å to use instead of the header's (for maps whose header
        has none); by default the header's, which must then be positive.

    Raises
    ------
    MapNotFoundError, MapFormatError, MapShapeError, NonFiniteMapError,
    VoxelSizeError (a MapFormatError) when the header's voxel size is zero, negative or
    not finite and no ``voxel_size`` is given.
    """
    import mrcfile

    p = Path(path)
    if voxel_size is not None and not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InvalidValueError(
            f"{p}: voxel size {voxel_size} Å given; expected a positive number of Å"
        )
    if not p.exists():
        raise MapNotFoundError(f"{p}: file not found")
    if p.is_dir():
        raise MapFormatError(f"{p}: is a directory, expected an MRC file")
    try:
        _check_header(p)
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
                crs = (int(header.mapc), int(header.mapr), int(header.maps))
                starts = (int(header.nxstart), int(header.nystart), int(header.nzstart))
                array = np.array(data, dtype=np.float32, copy=True)
    except MapFormatError:
        raise
    except (ValueError, OSError, EOFError, ZeroDivisionError) as exc:
        raise MapFormatError(f"{p}: not a readable MRC map ({exc})") from exc
    if mode not in SUPPORTED_MODES:
        raise MapFormatError(
            f"{p}: MRC mode {mode} is not supported; expected one of {SUPPORTED_MODES}"
        )
    axes = _axis_order(crs, p) if array.ndim == 3 else None
    nstart = starts
    if axes is not None:  # stored in another axis order: make it [z, y, x]
        array = np.ascontiguousarray(array.transpose(axes))
        xyz = [0, 0, 0]
        for axis, start in zip(crs, starts, strict=True):
            xyz[axis - 1] = start  # nxstart/nystart/nzstart follow columns/rows/sections
        nstart = (xyz[0], xyz[1], xyz[2])
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
    if voxel_size is not None:
        voxel = float(voxel_size)
    elif not np.isfinite(voxel) or voxel <= 0:
        raise VoxelSizeError(
            f"{p}: the header's voxel size is {voxel:g} Å; expected a positive value. Pass "
            "the voxel size with --apix <Å> (voxel_size= in Python)"
        )
    return Map(array, voxel, origin, str(p), nstart)


def write_map(
    path: str | os.PathLike,
    data: np.ndarray | Map,
    voxel_size: float | None = None,
    origin: tuple[float, float, float] | None = None,
    *,
    nstart: tuple[int, int, int] | None = None,
    like: Map | None = None,
) -> Path:
    """Write a float32 MRC map atomically (temporary file, then rename).

    The map is written in the standard axis order (mapc, mapr, maps = 1, 2, 3).

    Parameters
    ----------
    path : output file.
    data : (n, n, n) array or :class:`Map`.
    voxel_size : voxel size in Å; taken from ``data`` when it is a Map, else from
        ``like`` (default 1.0).
    origin : origin in Å, (x, y, z); taken from ``data`` or ``like`` the same way.
    nstart : header nxstart, nystart, nzstart (first voxel's index along x, y, z); taken
        from ``data`` or ``like`` the same way (default 0, 0, 0).
    like : the input map an array was derived from: its voxel size, origin and nstart
        are written unless given explicitly, so the output overlays the input.
    """
    import mrcfile

    template = data if isinstance(data, Map) else like
    if template is not None:
        voxel_size = template.voxel_size if voxel_size is None else voxel_size
        origin = template.origin if origin is None else origin
        nstart = template.nstart if nstart is None else nstart
    array = data.data if isinstance(data, Map) else data
    voxel_size = 1.0 if voxel_size is None else float(voxel_size)
    array = np.ascontiguousarray(array, dtype=np.float32)
    final = Path(path)
    with atomic_path(final) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            mrc.voxel_size = voxel_size
            if origin is not None:
                mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
            if nstart is not None:
                h = mrc.header
                h.nxstart, h.nystart, h.nzstart = (int(v) for v in nstart)
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
    """Raise unless ``mask`` matches ``reference``'s shape, lies in [0, 1] and is not all zeros."""
    from .._checks import check_mask_values

    if mask.data.shape != reference.data.shape:
        raise MapMismatchError(
            f"{mask.name}: mask shape {mask.data.shape} differs from the map's "
            f"{reference.data.shape} ({reference.name})"
        )
    check_mask_values(mask.data, mask.name)
    if not np.any(mask.data > 0):
        raise EmptyMaskError(f"{mask.name}: mask is zero everywhere; expected a non-empty mask")


@dataclass(frozen=True)
class MappedMap:
    """A map left on disk: ``data`` is a read-only, memory-mapped (Z, Y, X) array in the
    file's own dtype (slices of it are read on demand), plus the header's geometry."""

    data: np.ndarray
    voxel_size: float
    origin: tuple[float, float, float]
    path: str
    nstart: tuple[int, int, int] = (0, 0, 0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) in voxels."""
        return tuple(int(v) for v in self.data.shape)  # type: ignore[return-value]


@contextmanager
def open_map_mmap(
    path: str | os.PathLike, *, voxel_size: float | None = None
) -> Iterator[MappedMap]:
    """Open a (large) uncompressed MRC map memory-mapped, for streaming through it.

    The header is checked as in :func:`read_map`; maps stored in another axis order are
    transposed as views. Finite values are not checked here (a NaN would cost a full
    read): streaming consumers check each slab they read.

    Raises
    ------
    MapNotFoundError, MapFormatError (also for compressed files: decompress them first),
    MapShapeError (not 3D), VoxelSizeError.
    """
    import mrcfile

    p = Path(path)
    if not p.exists():
        raise MapNotFoundError(f"{p}: file not found")
    if p.is_dir():
        raise MapFormatError(f"{p}: is a directory, expected an MRC file")
    _check_header(p)
    with open(p, "rb") as fh:
        if fh.read(2) in (b"\x1f\x8b", b"BZ"):
            raise MapFormatError(f"{p}: compressed MRC files cannot be streamed; decompress it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(p, mode="r", permissive=True)
    except (ValueError, OSError, EOFError) as exc:
        raise MapFormatError(f"{p}: not a readable MRC map ({exc})") from exc
    try:
        data, header = mrc.data, mrc.header
        if data is None or data.ndim != 3:
            raise MapShapeError(
                f"{p}: expected a 3D map; found shape {getattr(data, 'shape', None)}"
            )
        crs = (int(header.mapc), int(header.mapr), int(header.maps))
        axes = _axis_order(crs, p)
        if axes is not None:
            data = data.transpose(axes)
        voxel = float(mrc.voxel_size.x) if voxel_size is None else float(voxel_size)
        if not (np.isfinite(voxel) and voxel > 0):
            raise VoxelSizeError(
                f"{p}: the header's voxel size is {voxel:g} Å; expected a positive value. "
                "Pass the voxel size (--apix / voxel_size in the tomogram list)"
            )
        origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
        nstart = (int(header.nxstart), int(header.nystart), int(header.nzstart))
        yield MappedMap(data, voxel, origin, str(p), nstart)
    finally:
        mrc.close()


@contextmanager
def map_slab_writer(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    *,
    voxel_size: float,
    origin: tuple[float, float, float] | None = None,
    nstart: tuple[int, int, int] | None = None,
) -> Iterator[Callable[[int, int, np.ndarray], None]]:
    """Write a large float32 (Z, Y, X) map slab by slab along y, atomically.

    Yields ``write(y0, y1, slab)`` taking the float32 (Z, y1 − y0, X) rows ``y0 … y1 − 1``.
    Each call maps the file, writes and unmaps it, so written rows do not stay in memory;
    the header's statistics are kept from the slabs. The file appears under ``path`` only
    when the block finishes without error.
    """
    import mrcfile

    shape = tuple(int(v) for v in shape)
    final = Path(path)
    stats = {"min": np.inf, "max": -np.inf, "sum": 0.0, "sum2": 0.0, "n": 0}
    with atomic_path(final) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.new_mmap(tmp, shape=shape, mrc_mode=2, overwrite=True) as mrc:
                mrc.voxel_size = float(voxel_size)
                if origin is not None:
                    mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
                if nstart is not None:
                    mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = nstart

        def write(y0: int, y1: int, slab: np.ndarray) -> None:
            a = np.asarray(slab, dtype=np.float32)
            if a.shape != (shape[0], y1 - y0, shape[2]):
                raise MapShapeError(
                    f"slab of shape {a.shape} for rows {y0}…{y1 - 1} of a {shape} map"
                )
            with mrcfile.mmap(tmp, mode="r+") as m:
                m.data[:, y0:y1] = a
            stats["min"] = min(stats["min"], float(a.min()))
            stats["max"] = max(stats["max"], float(a.max()))
            stats["sum"] += float(a.sum(dtype=np.float64))
            stats["sum2"] += float(np.square(a, dtype=np.float64).sum())
            stats["n"] += a.size

        yield write
        with mrcfile.mmap(tmp, mode="r+") as m:
            n = max(stats["n"], 1)
            mean = stats["sum"] / n
            m.header.dmin, m.header.dmax, m.header.dmean = stats["min"], stats["max"], mean
            m.header.rms = float(np.sqrt(max(stats["sum2"] / n - mean * mean, 0.0)))
