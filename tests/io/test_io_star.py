"""spisonet.io.star: particle angles from RELION 3.0 and 3.1+ STAR files, one test per
input error (the STAR-to-FSD path is tested in test_fsd3d.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spisonet.errors import StarFormatError
from spisonet.io import read_star_angles, read_star_blocks

STAR_30 = """
data_

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnAngleRot #3
_rlnAngleTilt #4
_rlnAnglePsi #5
000001@Particles/a.mrcs 10000.0 10.0 90.0 5.0
000002@Particles/a.mrcs 12000.0 20.0 80.0 6.0
"""

STAR_NO_ANGLES = """
data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
000001@Particles/a.mrcs 10000.0
"""


def test_read_star_relion30(tmp_path: Path) -> None:
    p = tmp_path / "old.star"
    p.write_text(STAR_30)
    np.testing.assert_allclose(read_star_angles(p), [[10, 90, 5], [20, 80, 6]])


def test_star_without_angles(tmp_path: Path) -> None:
    p = tmp_path / "noangles.star"
    p.write_text(STAR_NO_ANGLES)
    with pytest.raises(StarFormatError, match=r"no block with rlnAngleRot and rlnAngleTilt"):
        read_star_angles(p)


def test_star_blocks_by_name(tmp_path: Path) -> None:
    p = tmp_path / "old.star"
    p.write_text(STAR_30)
    blocks = read_star_blocks(p)
    assert list(blocks) == [""]  # RELION 3.0: one unnamed block
    assert list(blocks[""]["rlnAngleTilt"]) == [90.0, 80.0]


def test_star_file_missing(tmp_path: Path) -> None:
    with pytest.raises(StarFormatError, match=r"nothere\.star: STAR file not found"):
        read_star_angles(tmp_path / "nothere.star")


def test_star_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StarFormatError, match=r"is a directory, expected a STAR file"):
        read_star_blocks(tmp_path)


def test_star_file_without_blocks(tmp_path: Path) -> None:
    p = tmp_path / "text.star"
    p.write_text("hello world\n")
    with pytest.raises(StarFormatError, match=r"text\.star: no data blocks found"):
        read_star_blocks(p)
