"""RELION STAR files: every data block, and the particles' Euler angles.

:func:`read_star_blocks` reads a STAR file through ``starfile`` and turns its many
failure modes into one :class:`~spisonet.errors.StarFormatError` that names the file;
:func:`read_star_angles` finds the particles block (RELION 3.0 or 3.1+ layout) and
returns its (rot, tilt, psi) angles in degrees.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["read_star_angles", "read_star_blocks"]


def read_star_blocks(path: str | os.PathLike) -> dict[str, object]:
    """Every data block of a STAR file, by name (``starfile.read(..., always_dict=True)``).

    Raises
    ------
    StarFormatError when the file is missing, a directory, unreadable or has no blocks.
    """
    import starfile

    from ..errors import StarFormatError

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
    from ..errors import StarFormatError

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
