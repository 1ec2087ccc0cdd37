"""Tests of spisonet.report.json_file: JSON reports written atomically, numpy values
converted and NaN / inf written as null."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spisonet.anisotropy import analyse_anisotropy
from spisonet.report import write_json


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_write_json_round_trip_and_non_finite(tmp_path, noisy_pair):
    report = analyse_anisotropy(*noisy_pair(24), voxel_size=1.2, n_directions=100)
    out = tmp_path / "sub" / "report.json"
    data = report.to_dict()
    data["extra"] = {"nan": float("nan"), "inf": np.float64(np.inf), "arr": np.arange(3)}
    data["n"] = np.int64(7)
    write_json(out, data)
    back = json.loads(out.read_text())
    assert back["extra"] == {"nan": None, "inf": None, "arr": [0, 1, 2]}
    assert back["n"] == 7
    assert back["box"] == 24 and back["voxel_size_A"] == 1.2
    assert back["area_ratio"] == pytest.approx(report.area_ratio)
    assert no_temp_files(out.parent)


def test_write_json_rejects_unknown_objects_and_keeps_old_file(tmp_path):
    out = tmp_path / "x.json"
    write_json(out, {"a": 1})
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json(out, {"a": object()})
    assert json.loads(out.read_text()) == {"a": 1}
    assert no_temp_files(tmp_path)
