"""The rendezvous of the two halves (spisonet.relion.rendezvous): a second process that
writes its map or dies holding its lock, stale files of an earlier run, a partner that
hangs, and the clean-up of earlier iterations' files."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest

from spisonet.io import parse_job_name
from spisonet.relion import wait_for_partner
from spisonet.relion.rendezvous import half_files, publish_lock, release_lock, remove_earlier_files

_HOLDER = """
import os, sys, time
from pathlib import Path
from spisonet.relion.rendezvous import publish_lock, release_lock
from spisonet.io import write_map
import numpy as np
lock, result, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
fd = publish_lock(lock)
print("locked", flush=True)
time.sleep(0.4)
if mode == "die":
    os._exit(3)  # dies holding the lock: the kernel releases it
write_map(result, np.full((8, 8, 8), 7.0, np.float32), voxel_size=1.0)
release_lock(fd)
"""


@pytest.mark.parametrize("mode", ["write", "die"])
def test_rendezvous_with_another_process(tmp_path, mode):
    lock, result = tmp_path / "h2.lock", tmp_path / "h2_unreg.mrc"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(result), mode],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        got = wait_for_partner(lock, result, not_before=time.time() - 30, timeout=20)
        waited = time.perf_counter() - start
        proc.wait(10)
    assert waited < 5  # woken by the release, not by the 20 s timeout
    if mode == "write":
        assert got.reason == "ok" and np.all(got.volume == 7.0)
        assert waited >= 0.2  # it really waited for the lock holder
    else:
        assert got.volume is None and "without an unregularised map" in got.reason


def test_stale_files_of_an_earlier_run_are_ignored(tmp_path):
    lock, result = tmp_path / "h2.lock", tmp_path / "h2_unreg.mrc"
    lock.write_text("1\n")
    mrcfile.new(str(result), data=np.ones((4, 4, 4), np.float32)).close()
    old = time.time() - 3600
    for p in (lock, result):
        os.utime(p, (old, old))
    got = wait_for_partner(lock, result, not_before=time.time() - 60, timeout=0.3)
    assert got.volume is None and "never started" in got.reason


def test_lock_timeout_when_the_other_half_hangs(tmp_path):
    lock = tmp_path / "h2.lock"
    fd = publish_lock(lock)
    try:
        start = time.perf_counter()
        got = wait_for_partner(
            lock, tmp_path / "none.mrc", not_before=time.time() - 60, timeout=0.4
        )
        assert got.volume is None and "timed out after 0.4 s" in got.reason
        assert 0.3 < time.perf_counter() - start < 3
    finally:
        release_lock(fd)


@pytest.mark.parametrize(
    ("job", "removed"),
    [
        ("r_x_it005_half1_class001", {"r_x_it003_half1_class001", "r_x_it004_half1_class001"}),
        (
            "r_x_it005_class001",  # the joined iteration: both halves' leftovers
            {f"r_x_it00{i}_half{h}_class001" for i in (3, 4) for h in (1, 2)},
        ),
    ],
)
def test_earlier_iterations_files_are_removed(tmp_path, job, removed):
    names = [
        f"{root}_it00{i}_half{h}_class001"
        for root in ("r_x", "x")
        for i in (3, 4, 5)
        for h in (1, 2)
    ]
    for name in names:
        files = half_files(tmp_path, name)
        files.lock.write_text("1\n")
        files.unreg.write_text("map")
    (tmp_path / "r_x_it003_half1_class001_spisonet.pt").write_text("model")  # kept
    remove_earlier_files(tmp_path, parse_job_name(job))
    left = {p.name for p in tmp_path.iterdir()}
    for name in names:
        files = half_files(tmp_path, name)
        assert (files.lock.name in left) == (name not in removed), name
        assert (files.unreg.name in left) == (name not in removed), name
    assert "r_x_it003_half1_class001_spisonet.pt" in left
