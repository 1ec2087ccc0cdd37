"""When RELION dies, so do we (spisonet.relion.watchdog): real process trees in which a
fake RELION starts ``spisonet-relion`` through ``/bin/sh -c`` (as RELION's ``system()``
does) and is killed with SIGKILL; the half must stop within seconds, with exit code 3,
and leave no rendezvous files behind. Plus the pieces in-process: the lineage through
shells, the check, the rendezvous wait's check, and the correction's progress callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_job, write_model_star, write_sampling_star

import spisonet.relion.correction
from spisonet.relion import RelionCorrection, RelionCorrectionSettings, run_external_reconstruct
from spisonet.relion.rendezvous import publish_lock, release_lock, wait_for_partner
from spisonet.relion.watchdog import EXIT_RELION_GONE, RelionGone, RelionWatch, lineage

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs /proc and PR_SET_CHILD_SUBREAPER"
)

JOB = "my_run_it005_half1_class001"

#: Surely not our parent (ourselves): a watch of it reads as gone at once.
NOT_OUR_PARENT = os.getpid()


def _pair(folder: Path) -> list[Path]:
    """Both halves' jobs of an iteration whose gates are open (order 3, 4.57 Å, pixel 2 Å)."""
    stars = [make_job(folder, f"my_run_it005_half{h}_class001", ori=16, seed=h) for h in (1, 2)]
    write_sampling_star(folder / "my_run_it004_sampling.star", 3)
    write_model_star(folder / "my_run_it004_half1_model.star", 2.0)
    return stars


def _result(star: Path) -> Path:
    """The map RELION reads back for the job of ``star`` (named in it; see make_job)."""
    return star.with_name(star.name.replace(".star", ".mrc"))


# --------------------------------------------------------------------------------------
# real process trees

#: The test's side: becomes a subreaper (orphans are handed to it, so it can reap them and
#: read their exit codes), starts the fake RELION, waits for ``ready`` to hold the half's
#: pid, kills the fake RELION with SIGKILL and reports how long the orphaned half took to
#: exit. Under ``sh -c`` the orphan handed to us is the shell, which reaps the half and
#: exits with its code at once: then the shell's exit is what is timed.
_HARNESS = """
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
ready, via, command = sys.argv[1], sys.argv[2], sys.argv[3:]
relion = subprocess.Popen([sys.executable, "-c", FAKE_RELION, via, *command])
deadline = time.monotonic() + 60
while not os.path.exists(ready) or not open(ready).read().strip():
    if time.monotonic() > deadline or relion.poll() is not None:
        print(json.dumps({"error": "never ready", "relion": relion.poll()}))
        sys.exit(1)
    time.sleep(0.01)
half = int(open(ready).read().split()[0])  # the pid the half wrote there
holder = int(open(f"/proc/{half}/stat").read().rpartition(")")[2].split()[1])
timed = {half} if holder == relion.pid else {holder}
os.kill(relion.pid, signal.SIGKILL)
relion.wait()
killed = time.monotonic()
out = {"relion": relion.pid, "half": half, "codes": {}, "code": None, "seconds": None}
while time.monotonic() - killed < 20:
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        time.sleep(0.01)
        continue
    out["codes"][str(pid)] = os.waitstatus_to_exitcode(status)
    if pid in timed:
        out["seconds"] = time.monotonic() - killed
        out["code"] = out["codes"][str(pid)]
else:
    os.kill(half, signal.SIGKILL)  # still running: the test fails on "seconds"
print(json.dumps(out))
"""

#: RELION's side: runs the command the way RELION runs its external reconstructor
#: (``system()``: ``/bin/sh -c``, which dash does not ``exec``) or directly, and waits.
_FAKE_RELION = """
import shlex, subprocess, sys, time
via, command = sys.argv[1], sys.argv[2:]
if via == "sh":
    subprocess.Popen(["/bin/sh", "-c", " ".join(shlex.quote(c) for c in command)])
else:
    subprocess.Popen(command)
time.sleep(600)
"""


def _kill_relion_while(
    ready: Path, via: str, command: list[str], cwd: Path, env: dict | None = None
) -> dict:
    """Run ``command`` under a fake RELION, kill that when ``ready`` holds a pid; the
    harness's report (pids, exit codes, seconds from the kill to the half's exit)."""
    harness = f"FAKE_RELION = {_FAKE_RELION!r}\n{_HARNESS}"
    proc = subprocess.run(
        [sys.executable, "-c", harness, str(ready), via, *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@linux_only
@pytest.mark.parametrize("via", ["sh", "direct"])
def test_a_half_waiting_for_its_partner_stops_when_relion_is_killed(tmp_path, monkeypatch, via):
    """The real ``spisonet-relion``: half 1 waits for a half 2 that never comes."""
    folder = tmp_path / "job"
    stars = _pair(folder)
    lock = folder / f"{JOB}_spisonet.lock"
    entry = "from _spisonet_launcher import relion_main; relion_main()"
    env = {"SPISONET_START_RESOLUTION": "100", "SPISONET_WAIT_TIMEOUT": "120"}
    command = [sys.executable, "-c", entry, str(stars[0])]
    report = _kill_relion_while(lock, via, command, tmp_path, env)

    assert report["seconds"] is not None and report["seconds"] < 5, report
    assert report["code"] == EXIT_RELION_GONE, report  # (under sh: passed on by the shell)
    log = (folder / "spisonet_relion.log").read_text()
    assert f"{JOB}: RELION (pid {report['relion']}) is gone: stopping" in log
    assert log.count("is gone: stopping") == 1
    left = sorted(p.name for p in folder.iterdir())
    assert not [n for n in left if "_spisonet" in n or n.endswith(".tmp")], left
    assert not _result(stars[0]).exists()  # no map for nobody

    # a rerun is not misled by leftovers: half 2 alone finds that half 1 never started
    half2 = RelionCorrection(
        RelionCorrectionSettings(start_resolution=100.0, wait_timeout=0.5),
        watch=RelionWatch(poll=60),
    )
    monkeypatch.chdir(tmp_path)
    run_external_reconstruct(stars[1], correction=half2, keep_inputs=True)
    assert "network not run: the other half never started" in half2.summary


#: A guarded stretch of work in a child: publish this half's lock inside the watch, write
#: the pid to ``ready``, then either "train" (a long loop that calls the progress callback
#: after every step, as train_network does) or "compute" (a long call with no check in
#: it); ``unwound`` is written only when the stop came through the normal unwinding.
_GUARDED = """
import sys, time
from pathlib import Path
from spisonet.relion.rendezvous import publish_lock
from spisonet.relion.watchdog import RelionWatch
star, mode = Path(sys.argv[1]), sys.argv[2]
folder = star.parent
lock = folder / "my_run_it005_half1_class001_spisonet.lock"
model = folder / "my_run_it005_half1_class001_spisonet.pt"
watch = RelionWatch(poll=0.25, grace=1.5)
try:
    with watch.watching(star, "my_run_it005_half1_class001", [lock, model]):
        fd = publish_lock(lock)
        model.write_text("partial")
        (folder / f".{model.name}.abc123.tmp").write_text("half-written checkpoint")
        (folder / "ready").write_text(str(__import__("os").getpid()))
        if mode == "train":
            for step in range(100000):
                time.sleep(0.02)  # one optimiser step
                watch.progress("train", step + 1, 100000)
        else:
            time.sleep(60)  # a long reconstruction: no check until it returns
finally:
    (folder / "unwound").write_text("yes")
"""


@linux_only
@pytest.mark.parametrize(
    ("mode", "unwound", "limit"),
    [
        ("train", True, 4.0),  # stopped at the next step: a clean unwinding
        ("compute", False, 6.0),  # the monitor ends it after its grace (1.5 s)
    ],
)
def test_guarded_work_stops_when_relion_is_killed(tmp_path, mode, unwound, limit):
    folder = tmp_path / "job"
    folder.mkdir()
    star = folder / f"{JOB}_external_reconstruct.star"
    star.write_text("")
    command = [sys.executable, "-c", _GUARDED, str(star), mode]
    report = _kill_relion_while(folder / "ready", "sh", command, tmp_path)

    assert report["seconds"] is not None and report["seconds"] < limit, report
    assert report["code"] == EXIT_RELION_GONE, report
    if not unwound:
        assert report["seconds"] > 1.0, report  # it did wait for a check first
    assert (folder / "unwound").exists() == unwound
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["ready", "spisonet_relion.log", star.name] + ["unwound"] * unwound)
    log = (folder / "spisonet_relion.log").read_text()
    assert f"{JOB}: RELION (pid {report['relion']}) is gone: stopping" in log


# --------------------------------------------------------------------------------------
# the pieces


@linux_only
def test_lineage_walks_up_through_shells_to_relion(tmp_path):
    """Under ``sh -c`` (dash does not exec) the parent is the shell; RELION is above it."""
    code = (
        "import os; from spisonet.relion.watchdog import RelionWatch; "
        "w = RelionWatch(); print(os.getppid(), *w.lineage, int(w.gone()))"
    )
    out = subprocess.run(
        ["/bin/sh", "-c", f"{sys.executable} -c '{code}'; true"],  # '; true': no exec
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    sh, *chain, gone = (int(x) for x in out)
    assert chain == [sh, os.getpid()]  # the shell, then this process (not a shell)
    assert gone == 0
    assert lineage(os.getpid()) == (os.getpid(),)  # python is not a shell


def test_a_live_parent_is_not_gone_and_a_foreign_one_is():
    assert not RelionWatch().gone()
    assert RelionWatch(NOT_OUR_PARENT).gone()


def test_check_removes_the_files_logs_once_and_raises(tmp_path):
    star = tmp_path / f"{JOB}_external_reconstruct.star"
    lock, unreg = tmp_path / f"{JOB}_spisonet.lock", tmp_path / f"{JOB}_spisonet_unreg.mrc"
    fd = publish_lock(lock)
    unreg.write_text("map")
    (tmp_path / f".{unreg.name}.x1y2.tmp").write_text("half-written")  # atomic_path's
    (tmp_path / f"{lock.name}.99.1.tmp").write_text("")  # publish_lock's
    (tmp_path / "my_run_it004_half1_class001_spisonet.pt").write_text("kept")
    watch = RelionWatch(NOT_OUR_PARENT, poll=60)
    try:
        with pytest.raises(RelionGone) as err, watch.watching(star, JOB, [lock, unreg]):
            watch.check()
        assert err.value.code == EXIT_RELION_GONE
        with pytest.raises(RelionGone):
            watch.progress("train", 1, 10)
    finally:
        release_lock(fd)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["my_run_it004_half1_class001_spisonet.pt", "spisonet_relion.log"]
    log = (tmp_path / "spisonet_relion.log").read_text()
    assert log.count(f"{JOB}: RELION (pid {NOT_OUR_PARENT}) is gone: stopping") == 1


@pytest.mark.parametrize("ending", ["normal", "error"])
def test_leaving_the_watch_after_relion_died_stops_too(tmp_path, ending):
    """No fallback map for nobody: an ordinary end or error becomes the stop."""
    star = tmp_path / f"{JOB}_external_reconstruct.star"
    lock = tmp_path / f"{JOB}_spisonet.lock"
    lock.write_text("1\n")
    watch = RelionWatch(NOT_OUR_PARENT, poll=60)
    with pytest.raises(RelionGone), watch.watching(star, JOB, [lock]):
        if ending == "error":
            raise RuntimeError("the correction failed meanwhile")
    assert not lock.exists()


def test_the_watch_lets_a_normal_call_through(tmp_path):
    star = tmp_path / f"{JOB}_external_reconstruct.star"
    lock = tmp_path / f"{JOB}_spisonet.lock"
    lock.write_text("1\n")
    watch = RelionWatch(poll=0.01)
    with pytest.raises(ValueError, match="an ordinary error"), watch.watching(star, JOB, [lock]):
        time.sleep(0.1)  # the monitor looks a few times
        raise ValueError("an ordinary error")
    with watch.watching(star, JOB, [lock]):
        watch.progress("train", 1, 1)
    assert lock.exists() and not (tmp_path / "spisonet_relion.log").exists()


@pytest.mark.parametrize("partner", ["never starts", "holds its lock"])
def test_the_rendezvous_wait_runs_the_check(tmp_path, partner):
    lock, result = tmp_path / "h2.lock", tmp_path / "h2_unreg.mrc"
    fd = publish_lock(lock) if partner == "holds its lock" else None
    calls = []

    def check() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            raise RelionGone(EXIT_RELION_GONE)

    start = time.monotonic()
    try:
        with pytest.raises(RelionGone):
            wait_for_partner(lock, result, not_before=time.time() - 60, timeout=30, check=check)
    finally:
        release_lock(fd)
    assert time.monotonic() - start < 3  # not the 30 s timeout
    assert len(calls) == 3


def test_the_correction_checks_between_training_steps(tmp_path, monkeypatch):
    """The progress callback the correction hands to correct_anisotropy (and fsc3d)
    checks the watch: a RELION gone mid-training ends the training at the next step."""
    import types

    from spisonet.io import parse_job_name
    from spisonet.relion import read_external_star, reconstruct

    class Switch(RelionWatch):
        dead = False

        def gone(self) -> bool:
            return self.dead

    watch = Switch(poll=60)
    seen: dict = {}

    def fake(x, *a, progress=None, **kw):
        seen["progress"] = progress
        for step in range(1, 4):
            progress("train", step, 3)
            seen["last step"] = step
            watch.dead = seen.get("die after") == step
        return types.SimpleNamespace(
            filtered=[x],
            corrected=[x],
            histories=[{}],
            train=[types.SimpleNamespace(steps=3, device="cpu")],
        )

    monkeypatch.setattr(spisonet.relion.correction, "correct_anisotropy", fake)
    monkeypatch.chdir(tmp_path)
    stars = _pair(tmp_path / "job")
    job = read_external_star(stars[0])
    own = reconstruct(job, wiener=False)
    other = reconstruct(read_external_star(stars[1]), wiener=False)
    settings = RelionCorrectionSettings(start_resolution=100.0, preset="tiny", threads=1)
    corr = RelionCorrection(settings, watch=watch)
    args = (job, parse_job_name(job.name), own, other, own, 2.0, 4.57, time.perf_counter())

    assert corr._train(*args) is not None  # RELION alive: all 3 steps
    assert seen["progress"] == corr._progress and seen["last step"] == 3
    assert "; 3 steps, " in corr.summary

    seen["die after"] = 1
    with pytest.raises(RelionGone):
        corr._train(*args)
    assert seen["last step"] == 1 and corr._steps == 1  # step 2's callback stopped it
