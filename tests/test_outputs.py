"""Output paths are checked before any work (one red line, exit 2, nothing computed), and
two runs cannot write into the same output folder (issue 13, points 3 and 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_noisy_pair

from spisonet._outputs import (
    LOCK_NAME,
    check_output_dir,
    check_output_file,
    check_output_lock,
    output_lock,
)
from spisonet.errors import OutputLockedError, OutputPathError

N, APIX = 24, 2.0


def _spisonet(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "spisonet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("maps")
    paths = write_noisy_pair(folder, N, APIX)
    return paths


# --------------------------------------------------------------------------- the checks
def test_output_checks_name_the_path_and_what_is_wrong(tmp_path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("a file")
    with pytest.raises(OutputPathError, match=r"-o .*: expected an output file name, found an"):
        check_output_file(tmp_path, "-o")
    # a regular file where a folder must be created: fails for root too
    with pytest.raises(OutputPathError, match=r"notes\.txt is a file, not a folder"):
        check_output_file(afile / "sub" / "out.mrc", "-o")
    with pytest.raises(OutputPathError, match=r"--out .*notes\.txt: expected an output folder"):
        check_output_dir(afile, "--out")
    # /proc takes no new files, not even from root
    with pytest.raises(OutputPathError, match=r"cannot write in /proc"):
        check_output_file("/proc/spisonet-test/out.mrc", "-o")
    # good paths pass and nothing is created
    before = sorted(tmp_path.iterdir())
    assert check_output_file(tmp_path / "new" / "deeper" / "out.mrc") == (
        tmp_path / "new" / "deeper" / "out.mrc"
    )
    check_output_dir(tmp_path / "new_folder")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fsc3d", "{h1}", "{h2}", "{mask}", "-o", "{dir}"], "found an existing folder"),
        (["fsc3d", "{h1}", "{h2}", "-o", "{file}/FSC3D.mrc"], "is a file, not a folder"),
        (["anisotropy", "{h1}", "{h2}", "-o", "{file}/run1"], "is a file, not a folder"),
        (["fsd3d", "p.star", "--box", "16", "--apix", "1", "-o", "/proc/x/F.mrc"], "/proc"),
        (["whitening", "{h1}", "-o", "{dir}"], "found an existing folder"),
        (["combine-map", "{h1}", "{h2}", "{dir}", "8"], "OUT_MAP"),
        (["simulate", "--box", "16", "--out", "{file}"], "expected an output folder"),
    ],
)
def test_commands_refuse_unwritable_outputs_before_the_work(maps, tmp_path, args, needle):
    afile = tmp_path / "notes.txt"
    afile.write_text("a file")
    folder = tmp_path / "existing"
    folder.mkdir()
    fill = {"h1": maps["h1"], "h2": maps["h2"], "mask": maps["mask"], "dir": folder}
    fill["file"] = afile
    proc = _spisonet(*[a.format(**fill) for a in args], cwd=tmp_path)
    _one_error_line(proc, "error:", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "notes.txt"]
    assert list(folder.iterdir()) == []


def test_reconstruct_refuses_an_unwritable_output_dir_before_training(maps, tmp_path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("a file")
    t0 = time.perf_counter()
    proc = _spisonet(
        "reconstruct", maps["h1"], maps["h2"], "--mask", maps["mask"], "--preset", "tiny",
        "--epochs", "50", "-o", afile / "out", cwd=tmp_path,
    )  # fmt: skip
    _one_error_line(proc, "--output-dir", "notes.txt is a file, not a folder")
    assert "train" not in proc.stdout  # no stage started
    assert time.perf_counter() - t0 < 60  # 50 epochs take minutes
    proc = _spisonet("reconstruct", maps["h1"], "--preset", "tiny", "-o", afile, cwd=tmp_path)
    _one_error_line(proc, "--output-dir", "expected an output folder, found an existing file")


# --------------------------------------------------------------------------- the lock
def test_output_lock_refuses_a_second_holder_and_cleans_up(tmp_path) -> None:
    out = tmp_path / "run"
    with output_lock(out) as folder:
        assert folder == out and (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        msg = rf"another spisonet reconstruct is writing to .*run \(pid {os.getpid()}\)"
        with pytest.raises(OutputLockedError, match=msg + r"; wait for it or choose another"):
            check_output_lock(out)
        with pytest.raises(OutputLockedError, match=msg):
            with output_lock(out):
                pass
        (out / "result.mrc").write_text("x")
    # released: the lock file is gone, the results stay, a rerun may take the folder
    assert sorted(p.name for p in out.iterdir()) == ["result.mrc"]
    check_output_lock(out)
    with output_lock(out):
        pass
    # a run that wrote nothing leaves no folder behind
    with output_lock(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()


def test_lock_of_a_running_process_refuses_reconstruct_and_dies_with_it(maps, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom spisonet._outputs import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(300)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _spisonet(
            "reconstruct", maps["h1"], maps["h2"], "--preset", "tiny", "-o", out, cwd=tmp_path
        )
        _one_error_line(
            proc,
            f"another spisonet reconstruct is writing to {out} (pid {holder.pid})",
            "choose another --output-dir",
        )
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the OS drops the lock
        holder.wait(timeout=30)
        holder.stdout.close()
    assert (out / LOCK_NAME).exists()  # stale file left behind ...
    with output_lock(out):  # ... but it blocks nobody
        pass
