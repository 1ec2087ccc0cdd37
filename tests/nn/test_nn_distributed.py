"""Data-parallel training (torch.distributed, gloo on CPU) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spisonet.errors import InvalidValueError
from spisonet.nn.distributed import World, check_batch_layout, world_slice

#: BatchNorm statistics are per rank on CPU (no SyncBatchNorm there), so the 2-rank loss
#: differs slightly from one process with the same global batch; measured ~0.2 %.
LOSS_RTOL = 0.02


def test_batch_layout_is_validated_with_a_clear_message():
    assert check_batch_layout(8, 2, 2) == 4
    assert check_batch_layout(4, 1, 1) == 4
    with pytest.raises(InvalidValueError, match=r"batch_size 6 cannot be split over 4 process"):
        check_batch_layout(6, 1, 4)
    with pytest.raises(
        InvalidValueError, match=r"must be a multiple of 4 \(e\.g\. --batch-size 4\)"
    ):
        check_batch_layout(3, 2, 2)


@pytest.mark.parametrize(("n", "size"), [(4, 2), (5, 2), (8, 3), (2, 4)])
def test_world_slices_partition_the_batch(n, size):
    parts = [world_slice(n, World(r, size)) for r in range(size)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from spisonet.fsc3d import fsc3d
    from spisonet.io import write_map
    from spisonet.simulate import make_molecule, simulate_half_maps

    d = tmp_path_factory.mktemp("ddp")
    sim = simulate_half_maps(
        make_molecule(32, 2.0, seed=0), 2.0, "tilt:30+uniform:0.1", 500, seed=0
    )
    for name in ("half1", "half2", "mask"):
        write_map(d / f"{name}.mrc", getattr(sim, name), voxel_size=2.0)
    write_map(d / "FSC3D.mrc", fsc3d(sim.half1, sim.half2, 2.0, sim.mask).volume, voxel_size=2.0)
    return d


def _reconstruct(data: Path, out: Path, launcher: list[str], *extra: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [
        *launcher,
        "reconstruct",
        str(data / "half1.mrc"),
        str(data / "half2.mrc"),
        "--aniso-file",
        str(data / "FSC3D.mrc"),
        "--mask",
        str(data / "mask.mrc"),
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--n-subvolume",
        "16",
        "--output-dir",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _losses(out: Path) -> list[float]:
    return json.loads((out / "reconstruct.json").read_text())["loss_history"][0]["total"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_ranks_match_one_process_and_resume_on_one(tiny_data, tmp_path):
    one = _reconstruct(
        tiny_data, tmp_path / "one", [sys.executable, "-m", "spisonet"], "--epochs", "3"
    )
    assert one.returncode == 0, one.stderr
    two = _reconstruct(
        tiny_data,
        tmp_path / "two",
        ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "spisonet"],
        "--epochs",
        "3",
    )
    assert two.returncode == 0, two.stdout + two.stderr
    assert "Data-parallel training on 2 processes" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=LOSS_RTOL)
    assert a[-1] < a[0]  # it trains
    # --processes 2 starts the ranks itself (the --gpus path on CPU): the same run
    spawned = _reconstruct(
        tiny_data,
        tmp_path / "spawned",
        [sys.executable, "-m", "spisonet"],
        "--epochs",
        "3",
        "--processes",
        "2",
    )
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    assert _losses(tmp_path / "spawned") == pytest.approx(b, rel=1e-9)
    # only rank 0 wrote: one set of outputs, no stray temporary files
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    # the checkpoint written by 2 ranks resumes in one process
    resumed = _reconstruct(
        tiny_data, tmp_path / "two", [sys.executable, "-m", "spisonet"], "--epochs", "4", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr
    c = _losses(tmp_path / "two")
    assert len(c) == 4 and c[:3] == pytest.approx(b, rel=1e-12)


def test_invalid_layout_stops_before_any_work(tiny_data, tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "COLUMNS": "200"}
    out = tmp_path / "bad"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "spisonet",
            "reconstruct",
            str(tiny_data / "half1.mrc"),
            str(tiny_data / "half2.mrc"),
            "--preset",
            "tiny",
            "--batch-size",
            "3",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "batch_size 3 cannot be split over 2 process" in lines[0]
    assert not out.exists()
