"""cryoSPARC particle files (``.cs``): the particles' 3D poses, as RELION Euler angles.

A ``.cs`` file is one numpy structured array saved with ``np.save`` (cryosparc-tools'
``Dataset``): one row per particle, one named field per column (``uid``,
``blob/psize_A``, ``alignments3D/pose``, ``alignments3D/shift``, …; strings as
fixed-length bytes, never Python objects). It is read with
``np.load(allow_pickle=False)``, memory-mapped so that only the pose column is copied
out of a large file; a file holding pickled Python objects is refused, never unpickled.

The pose convention
-------------------
``alignments3D/pose`` is a rotation vector p in radians (axis-angle): the rotation by
the angle |p| about the axis p/|p|, right-handed (counter-clockwise looking down the
axis), i.e. by Rodrigues' formula

    R(p) = I + sin θ K + (1 − cos θ) K²,   θ = |p|,   K = [p/θ]×  (cross-product matrix)

RELION's matrix of the Euler angles (rot, tilt, psi) (``Euler_angles2matrix``, ZYZ; the
rotation that brings the map into the particle's frame, where the image is the
projection along z) is its transpose:

    A(rot, tilt, psi) = R(p)ᵀ

so the particle's projection direction in map coordinates, RELION's
d = (cos rot sin tilt, sin rot sin tilt, cos tilt) = Aᵀ ẑ, is R(p) ẑ, the third column
of R(p). R(p) itself takes the particle's frame into the map's.

Sources (read, not copied): pyem (D. Asarnow, ``pyem/metadata/cryosparc2.py``) converts
a pose with ``rot2euler(expmap(pose))``, where its ``expmap`` (``pyem/geom``) returns the
*transposed* Rodrigues matrix and ``rot2euler`` decomposes RELION's matrix; cryoDRGN's
``parse_pose_csparc`` applies the standard Rodrigues matrix (``lie_tools.expmap``) and
then transposes it, to match the RELION matrix its ``parse_pose_star`` builds
(``utils.R_from_relion``). The layout and reading (``np.load(..., allow_pickle=False)``,
memory-mapped, large headers allowed) follow cryosparc-tools'
``cryosparc/dataset/numpy.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CsFormatError

__all__ = [
    "POSE_FIELD",
    "CsFormatError",
    "read_cs_angles",
    "read_cs_poses",
    "relion_angles_from_poses",
    "rotation_matrices_from_poses",
]

#: The field of a 3D refinement's particles that holds the poses (rotation vectors, rad).
POSE_FIELD = "alignments3D/pose"

#: Largest ``.npy`` header read (characters). numpy's default (10 000) is too small for
#: files with many fields; cryosparc-tools raises it too. The header is a literal dict
#: parsed with ``ast.literal_eval``, never executed.
_MAX_HEADER = 1 << 24

#: First byte of a pickle stream (protocol ≥ 2): a file of pickled Python objects.
_PICKLE_START = b"\x80"


def _npy_dtype(p: Path) -> np.dtype | None:
    """The dtype an ``.npy`` file's header announces; None for a header version (3.0+)
    this check does not parse (``np.load`` reads and checks those).

    Raises CsFormatError when the file is not an ``.npy`` file, its header is corrupt,
    or it holds Python objects (pickled data).
    """
    with open(p, "rb") as fh:
        start = fh.read(len(np.lib.format.MAGIC_PREFIX))
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
        except ValueError:
            if start.startswith(_PICKLE_START):
                raise CsFormatError(
                    f"{p}: holds pickled Python data, not a cryoSPARC .cs array; refused "
                    "(spisonet never unpickles files)"
                ) from None
            raise CsFormatError(
                f"{p}: not a cryoSPARC .cs file (it does not start with the numpy .npy "
                f"signature that cryoSPARC writes; first bytes {start!r})"
            ) from None
        try:
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
            else:
                return None
        except (ValueError, SyntaxError, TypeError, EOFError) as exc:
            raise CsFormatError(f"{p}: corrupt .cs header ({exc})") from None
    if dtype.hasobject:
        raise CsFormatError(
            f"{p}: holds Python objects (pickled data, dtype {dtype}); refused (spisonet "
            "never unpickles files). cryoSPARC writes plain numeric and byte-string fields"
        )
    return dtype


def read_cs_poses(path: str | os.PathLike) -> np.ndarray:
    """The 3D poses (``alignments3D/pose``) of a cryoSPARC particles ``.cs`` file.

    Returns
    -------
    (N, 3) float64 rotation vectors in radians (axis-angle; see the module docstring for
    how they relate to RELION's Euler angles).

    Raises
    ------
    CsFormatError when the file is missing, a directory, not a numpy structured array
    (corrupt, truncated, pickled), has no particles, no ``alignments3D/pose`` field (a
    2D classification, extraction or passthrough file) or non-finite poses.
    """
    p = Path(path)
    if not p.exists():
        raise CsFormatError(f"{p}: cryoSPARC .cs file not found")
    if p.is_dir():
        raise CsFormatError(f"{p}: is a directory, expected a cryoSPARC .cs file")
    try:
        _npy_dtype(p)
        # memory-mapped: only the pose column is read out of a large file
        data = np.load(p, mmap_mode="r", allow_pickle=False, max_header_size=_MAX_HEADER)
    except CsFormatError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise CsFormatError(f"{p}: not a readable cryoSPARC .cs file ({exc})") from None
    names = data.dtype.names
    if names is None or data.ndim != 1:
        raise CsFormatError(
            f"{p}: not a cryoSPARC .cs file: expected a 1-D array of named fields (uid, "
            f"{POSE_FIELD}, …), found a {data.dtype} array of shape {data.shape}"
        )
    if POSE_FIELD not in names:
        poses = [n for n in names if n.endswith("/pose")]
        found = ", ".join(poses) if poses else "none"
        raise CsFormatError(
            f"{p}: no {POSE_FIELD} field (pose fields found: {found}; {len(names)} fields "
            "in all); expected the particles .cs of a 3D refinement (homogeneous, "
            "non-uniform or local refinement: J…_particles.cs, not a passthrough, "
            "extraction or 2D classification file)"
        )
    field = data.dtype[POSE_FIELD]
    if field.shape != (3,) or field.base.kind != "f":
        raise CsFormatError(
            f"{p}: {POSE_FIELD} must hold 3 floats (a rotation vector in radians) per "
            f"particle, found {field}"
        )
    if data.shape[0] == 0:
        raise CsFormatError(f"{p}: has no particles")
    poses = np.array(data[POSE_FIELD], dtype=np.float64)
    del data  # release the memory map
    bad = ~np.all(np.isfinite(poses), axis=1)
    if bad.any():
        raise CsFormatError(
            f"{p}: {int(bad.sum())} of {poses.shape[0]} particles have a non-finite "
            f"{POSE_FIELD} (first at row {int(np.argmax(bad))})"
        )
    return poses


def rotation_matrices_from_poses(poses_rad: np.ndarray) -> np.ndarray:
    """cryoSPARC's rotation matrices R(p) (N, 3, 3) of rotation vectors (N, 3) in radians.

    Rodrigues' formula, right-handed: R(p) x rotates x by |p| about p/|p|; R(0) = I.
    """
    p = np.asarray(poses_rad, dtype=np.float64).reshape(-1, 3)
    theta = np.linalg.norm(p, axis=1)
    axis = p / np.where(theta > 0, theta, 1.0)[:, None]
    k = np.zeros((p.shape[0], 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k -= k.transpose(0, 2, 1)
    s = np.sin(theta)[:, None, None]
    c = (1.0 - np.cos(theta))[:, None, None]
    return np.eye(3) + s * k + c * (k @ k)


def relion_angles_from_poses(poses_rad: np.ndarray) -> np.ndarray:
    """RELION Euler angles (N, 3) rot, tilt, psi in degrees of cryoSPARC rotation vectors.

    Decomposes A = R(p)ᵀ (the module docstring says why the transpose) into RELION's ZYZ
    angles, A = Rz(−psi)·Ry(−tilt)·Rz(−rot) in right-handed rotations: tilt ∈ [0°, 180°];
    when tilt is 0° or 180° only rot ± psi is defined and rot is set to 0.
    """
    a = rotation_matrices_from_poses(poses_rad).transpose(0, 2, 1)
    # the third row of A is the projection direction (cos rot sin tilt, sin rot sin tilt,
    # cos tilt); its third column is (−cos psi sin tilt, sin psi sin tilt, cos tilt)
    sin_tilt = np.hypot(a[:, 2, 0], a[:, 2, 1])
    tilt = np.arctan2(sin_tilt, a[:, 2, 2])
    rot = np.arctan2(a[:, 2, 1], a[:, 2, 0])
    psi = np.arctan2(a[:, 1, 2], -a[:, 0, 2])
    # the view along ±z (gimbal lock): only rot + psi (tilt 0°, A = Rz(−rot − psi)) or
    # rot − psi (tilt 180°, A = Rz(rot − psi)·diag(−1, 1, −1)) is defined. Below √eps the
    # two-angle split above would lose more digits than setting rot = 0 costs.
    pole = sin_tilt < 1e-8
    up = a[:, 2, 2] > 0
    rot[pole] = 0.0
    psi[pole & up] = np.arctan2(a[pole & up, 0, 1], a[pole & up, 0, 0])
    psi[pole & ~up] = np.arctan2(a[pole & ~up, 0, 1], -a[pole & ~up, 0, 0])
    return np.rad2deg(np.stack([rot, tilt, psi], axis=1))


def read_cs_angles(path: str | os.PathLike) -> np.ndarray:
    """Euler angles (rot, tilt, psi) in degrees, RELION's convention, of every particle of
    a cryoSPARC particles ``.cs`` file: the counterpart of
    :func:`~spisonet.io.read_star_angles`. Returns an (N, 3) float64 array.

    Raises
    ------
    CsFormatError as :func:`read_cs_poses`.
    """
    return relion_angles_from_poses(read_cs_poses(path))
