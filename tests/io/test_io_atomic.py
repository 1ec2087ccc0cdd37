"""spisonet.io.atomic: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.io import atomic_path, write_map


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path):
    path = tmp_path / "keep.mrc"
    write_map(path, np.zeros((4, 4, 4)), voxel_size=1.0)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mrc"]  # no temp file left
