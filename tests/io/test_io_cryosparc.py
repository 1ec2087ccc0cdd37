"""cryoSPARC ``.cs`` particle files: poses to RELION angles, against slow statements of
both conventions, and one test per way a file can be wrong.

The fixtures are small structured arrays with cryosparc-tools' field names, saved with
``np.save`` to a file named ``*.cs`` (an open file, so numpy adds no ``.npy``).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spisonet.fsd3d import directions_from_angles
from spisonet.io import read_cs_angles
from spisonet.io.cryosparc import (
    CsFormatError,
    read_cs_poses,
    relion_angles_from_poses,
    rotation_matrices_from_poses,
)

#: A 3D refinement's particles: a subset of the fields cryoSPARC writes, same dtypes.
REFINE_FIELDS = [
    ("uid", "<u8"),
    ("blob/path", "S40"),
    ("blob/idx", "<u4"),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"),
    ("ctf/df1_A", "<f4"),
    ("alignments3D/split", "<u4"),
    ("alignments3D/shift", "<f4", (2,)),
    ("alignments3D/pose", "<f4", (3,)),
    ("alignments3D/psize_A", "<f4"),
    ("alignments3D/error", "<f4"),
    ("alignments3D/class_posterior", "<f4"),
]


def write_cs(path: Path, array: np.ndarray, *, allow_pickle: bool = False) -> Path:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, array, allow_pickle=allow_pickle)
    return path


def refinement_cs(path: Path, poses: np.ndarray) -> Path:
    """A particles .cs of a 3D refinement holding ``poses`` (N, 3) radians."""
    n = poses.shape[0]
    a = np.zeros(n, dtype=REFINE_FIELDS)
    a["uid"] = np.arange(n) + 10**18
    a["blob/path"] = b"J3/extract/particles.mrc"
    a["blob/idx"] = np.arange(n)
    a["blob/shape"] = 64
    a["blob/psize_A"] = 1.1
    a["alignments3D/split"] = np.arange(n) % 2
    a["alignments3D/pose"] = poses
    a["alignments3D/psize_A"] = 1.1
    a["alignments3D/class_posterior"] = 1.0
    return write_cs(path, a)


# --------------------------------------------------------- slow statements of the definitions
def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix (degrees), written out entry by entry."""
    ca, cb, cg = (math.cos(math.radians(x)) for x in (rot, tilt, psi))
    sa, sb, sg = (math.sin(math.radians(x)) for x in (rot, tilt, psi))
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def relion_direction(rot: float, tilt: float) -> np.ndarray:
    """RELION's projection direction: the third row of its Euler matrix."""
    r, t = math.radians(rot), math.radians(tilt)
    return np.array([math.cos(r) * math.sin(t), math.sin(r) * math.sin(t), math.cos(t)])


def rodrigues_rotate(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rotate x by |p| about p/|p| (right-handed), one vector at a time."""
    theta = float(np.linalg.norm(p))
    if theta == 0:
        return x.copy()
    k = p / theta
    return (
        x * math.cos(theta)
        + np.cross(k, x) * math.sin(theta)
        + k * float(k @ x) * (1 - math.cos(theta))
    )


def random_relion_angles(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.uniform(-180, 180, n),
            np.degrees(np.arccos(rng.uniform(-1, 1, n))),  # uniform on the sphere
            rng.uniform(-180, 180, n),
        ],
        axis=1,
    )


def poses_of(angles: np.ndarray) -> np.ndarray:
    """cryoSPARC poses of RELION angles under the convention A = R(p)ᵀ (scipy does the
    matrix → rotation vector step, independently of spisonet)."""
    return Rotation.from_matrix(np.stack([relion_matrix(*a).T for a in angles])).as_rotvec()


# --------------------------------------------------------------------------- convention
def test_rodrigues_matrices_match_scipy() -> None:
    p = Rotation.random(200, random_state=3).as_rotvec()
    p[0] = 0.0  # the identity
    np.testing.assert_allclose(
        rotation_matrices_from_poses(p), Rotation.from_rotvec(p).as_matrix(), atol=1e-14
    )
    x = np.array([0.3, -0.5, 0.8])
    for pi, ri in zip(p[:20], rotation_matrices_from_poses(p[:20]), strict=True):
        np.testing.assert_allclose(ri @ x, rodrigues_rotate(pi, x), atol=1e-14)


def test_cs_view_directions_equal_relion(tmp_path: Path) -> None:
    angles = random_relion_angles(400, seed=0)
    cs = refinement_cs(tmp_path / "J9_particles.cs", poses_of(angles))
    read = read_cs_angles(cs)
    assert read.shape == (400, 3) and read.dtype == np.float64
    # the projection directions through the path fsd3d uses ...
    got = directions_from_angles(read)
    want = np.stack([relion_direction(r, t) for r, t, _ in angles])
    np.testing.assert_allclose(got, want, atol=2e-6)  # poses are stored as float32
    # ... equal R(p) ẑ by Rodrigues' formula, the convention stated in the module
    stored = np.asarray(np.load(cs, allow_pickle=False)["alignments3D/pose"], np.float64)
    z = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(got, np.stack([rodrigues_rotate(p, z) for p in stored]), atol=1e-12)
    # the whole orientation, psi included, is RELION's
    for a_read, a_true in zip(read, angles, strict=True):
        np.testing.assert_allclose(relion_matrix(*a_read), relion_matrix(*a_true), atol=2e-6)
    # the test has teeth: without the transpose (d = R(p)ᵀ ẑ) the directions differ
    untransposed = np.stack([rodrigues_rotate(-p, z) for p in stored])
    assert np.median(np.linalg.norm(untransposed - want, axis=1)) > 0.5


def test_relion_angles_are_scipy_intrinsic_zyz_of_the_pose() -> None:
    """A second statement of the same convention: R(p) = Rz(rot)·Ry(tilt)·Rz(psi)."""
    p = Rotation.random(300, random_state=5).as_rotvec()
    got = relion_angles_from_poses(p)
    np.testing.assert_allclose(
        Rotation.from_euler("ZYZ", got, degrees=True).as_matrix(),
        Rotation.from_rotvec(p).as_matrix(),
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("pose", "direction"),
    [
        ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0)),  # no rotation: the top view
        ((math.pi / 2, 0.0, 0.0), (0.0, -1.0, 0.0)),  # +90° about x takes ẑ to −ŷ
        ((0.0, math.pi / 2, 0.0), (1.0, 0.0, 0.0)),  # +90° about y takes ẑ to +x̂
        ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0)),  # about z: an in-plane turn only
    ],
)
def test_simple_poses(pose, direction) -> None:
    angles = relion_angles_from_poses(np.array([pose]))
    np.testing.assert_allclose(directions_from_angles(angles)[0], direction, atol=1e-15)


@pytest.mark.parametrize(
    "angles", [(10.0, 0.0, 30.0), (-70.0, 180.0, 25.0), (40.0, 1e-10, 5.0), (0.0, 90.0, 0.0)]
)
def test_views_along_z_keep_psi(angles) -> None:
    """At tilt 0° / 180° only rot ± psi is defined; the orientation must survive."""
    got = relion_angles_from_poses(poses_of(np.array([angles])))[0]
    np.testing.assert_allclose(relion_matrix(*got), relion_matrix(*angles), atol=1e-9)


def test_many_fields_header_reads(tmp_path: Path) -> None:
    """A file with many fields has an .npy header over numpy's default 10 000 characters."""
    fields = [*REFINE_FIELDS, *[(f"alignments_class_{i}/extra_field", "<f4") for i in range(400)]]
    a = np.zeros(3, dtype=fields)
    a["alignments3D/pose"] = [[0.1, 0.2, 0.3], [0, 0, 0], [1, 0, 0]]
    cs = write_cs(tmp_path / "wide.cs", a)
    np.testing.assert_allclose(read_cs_poses(cs), a["alignments3D/pose"])


# --------------------------------------------------------------------------- errors
def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CsFormatError, match=r"nothere\.cs: cryoSPARC \.cs file not found"):
        read_cs_angles(tmp_path / "nothere.cs")
    (tmp_path / "dir.cs").mkdir()
    with pytest.raises(CsFormatError, match=r"dir\.cs: is a directory"):
        read_cs_angles(tmp_path / "dir.cs")


def test_passthrough_without_pose(tmp_path: Path) -> None:
    a = np.zeros(4, dtype=[("uid", "<u8"), ("blob/path", "S20"), ("ctf/df1_A", "<f4")])
    cs = write_cs(tmp_path / "J9_passthrough_particles.cs", a)
    with pytest.raises(
        CsFormatError,
        match=r"passthrough_particles\.cs: no alignments3D/pose field \(pose fields found: "
        r"none; 3 fields in all\); expected the particles \.cs of a 3D refinement",
    ):
        read_cs_angles(cs)


def test_2d_classification_file(tmp_path: Path) -> None:
    a = np.zeros(4, dtype=[("uid", "<u8"), ("alignments2D/pose", "<f4")])
    cs = write_cs(tmp_path / "J5_particles.cs", a)
    with pytest.raises(CsFormatError, match=r"pose fields found: alignments2D/pose;"):
        read_cs_angles(cs)


def test_pose_field_of_wrong_shape(tmp_path: Path) -> None:
    a = np.zeros(4, dtype=[("uid", "<u8"), ("alignments3D/pose", "<f4", (4,))])
    with pytest.raises(CsFormatError, match=r"alignments3D/pose must hold 3 floats"):
        read_cs_angles(write_cs(tmp_path / "q.cs", a))


def test_plain_array_is_not_a_cs_file(tmp_path: Path) -> None:
    cs = write_cs(tmp_path / "plain.cs", np.zeros((5, 3), np.float32))
    with pytest.raises(
        CsFormatError, match=r"expected a 1-D array of named fields.*shape \(5, 3\)"
    ):
        read_cs_angles(cs)


def test_no_particles(tmp_path: Path) -> None:
    cs = write_cs(tmp_path / "empty.cs", np.zeros(0, dtype=REFINE_FIELDS))
    with pytest.raises(CsFormatError, match=r"empty\.cs: has no particles"):
        read_cs_angles(cs)


def test_non_finite_pose(tmp_path: Path) -> None:
    poses = np.zeros((5, 3))
    poses[3, 1] = np.nan
    cs = refinement_cs(tmp_path / "nan.cs", poses)
    with pytest.raises(CsFormatError, match=r"1 of 5 particles have a non-finite .*row 3"):
        read_cs_angles(cs)


def test_corrupt_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.cs"
    junk.write_bytes(b"data_particles\nloop_\n")  # a STAR file with the wrong name
    with pytest.raises(CsFormatError, match=r"junk\.cs: not a cryoSPARC \.cs file .*\.npy"):
        read_cs_angles(junk)
    empty = tmp_path / "zero.cs"
    empty.write_bytes(b"")
    with pytest.raises(CsFormatError, match=r"zero\.cs: not a cryoSPARC \.cs file"):
        read_cs_angles(empty)
    good = refinement_cs(tmp_path / "good.cs", np.zeros((50, 3))).read_bytes()
    cut = tmp_path / "truncated.cs"
    cut.write_bytes(good[: len(good) - 100])
    with pytest.raises(CsFormatError, match=r"truncated\.cs: not a readable cryoSPARC \.cs file"):
        read_cs_angles(cut)
    header = tmp_path / "header.cs"
    header.write_bytes(good[:10] + b"{'descr': <<garbage>>" + good[31:])
    with pytest.raises(CsFormatError, match=r"header\.cs: corrupt \.cs header"):
        read_cs_angles(header)
    npz = tmp_path / "archive.cs"
    with open(npz, "wb") as fh:
        np.savez(fh, poses=np.zeros((3, 3)))
    with pytest.raises(CsFormatError, match=r"archive\.cs: not a cryoSPARC \.cs file"):
        read_cs_angles(npz)


class _Trap:
    """Unpickling this creates ``marker``: proof of whether a reader unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_files_are_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(2, dtype=object)
    objects[:] = [_Trap(marker), _Trap(marker)]
    cs = write_cs(tmp_path / "objects.cs", objects, allow_pickle=True)
    with pytest.raises(
        CsFormatError, match=r"objects\.cs: holds Python objects .*pickled.*refused"
    ):
        read_cs_angles(cs)
    field = np.zeros(2, dtype=[("uid", "<u8"), ("alignments3D/pose", "<f4", (3,)), ("x", "O")])
    field["x"] = [_Trap(marker), _Trap(marker)]
    cs = write_cs(tmp_path / "field.cs", field, allow_pickle=True)
    with pytest.raises(CsFormatError, match=r"field\.cs: holds Python objects"):
        read_cs_angles(cs)
    raw = tmp_path / "raw.cs"
    raw.write_bytes(pickle.dumps(_Trap(marker), protocol=4))
    with pytest.raises(CsFormatError, match=r"raw\.cs: holds pickled Python data.*refused"):
        read_cs_angles(raw)
    assert not marker.exists()
    # the trap works: unpickling does create the marker
    pickle.loads(raw.read_bytes()).close()
    assert marker.exists()
