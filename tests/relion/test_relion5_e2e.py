"""End to end with RELION 5.1.0 (Debian sid, run from a chroot; see ``relion5.py``).

One auto-refine of the preferred-orientation stack of ``test_relion_e2e`` with
``spisonet-relion`` as the external reconstructor, in which the correction of one iteration
raises on purpose: the refinement must converge, the network must run in at least two
iterations and the log must say so, and the failed iteration must fall back to RELION's
plain map. The job files of one iteration, as RELION 5.1 wrote them, are kept; on them our
plain reconstruction must equal RELION 5.1's own ``relion_external_reconstruct`` to
float32 round-off.
"""

from __future__ import annotations

import os
import shutil

import mrcfile
import numpy as np
import pytest
from relion5 import relion5_root, run_in_root, skip_reason
from test_relion_e2e import (
    _FAILING_CORRECTION,
    CORRECTION_ENV,
    HAVE_RELION,
    REFINE_ARGS,
    _final_written,
    _log_lines,
    assert_failures_fell_back,
    iterations_corrected_in_both_halves,
    make_dataset,
)

ROOT = relion5_root()

pytestmark = [
    pytest.mark.relion,
    pytest.mark.slow,
    pytest.mark.skipif(ROOT is None, reason=skip_reason()),
    pytest.mark.skipif(not HAVE_RELION, reason="the stack is projected with RELION 3.1's tools"),
]

#: Keeps one iteration's job files (as RELION 5.1 wrote them), then runs spisonet-relion.
KEEP_SCRIPT = """#!/bin/sh
case "$1" in *_it002_half1_class001_external_reconstruct.star)
    d="$SPISONET_E2E_KEEP/$(dirname "$1")"; mkdir -p "$d"; cp "${1%.star}"* "$d/";;
esac
exec /usr/local/bin/spisonet-relion-host "$@"
"""


@pytest.fixture(scope="module")
def refinement(tmp_path_factory):
    """Run the refinement once; the tests read its outputs."""
    # 600 particles (the RELION 3.1 test has 1000): CI time
    data = make_dataset(tmp_path_factory.mktemp("relion5_e2e"), n_particles=600, seed=0)
    folder = data["folder"]
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(_FAILING_CORRECTION, encoding="utf-8")
    (hook / "counts").mkdir()
    keep = folder / "kept_job"
    script = ROOT / "usr" / "local" / "bin" / "spisonet-relion-keep"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(KEEP_SCRIPT, encoding="utf-8")
    script.chmod(0o755)
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = dict(
        CORRECTION_ENV,
        RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE="/usr/local/bin/spisonet-relion-keep",
        PYTHONPATH=pythonpath,
        SPISONET_E2E_COUNTS=str(hook / "counts"),
        SPISONET_E2E_FAIL_ON="2",
        SPISONET_E2E_KEEP=str(keep),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
    )
    (folder / "R5").mkdir()
    cmd = (
        "mpirun --oversubscribe -n 3 relion_refine_mpi --i particles.star --ref ref.mrc "
        "--o R5/run " + REFINE_ARGS.format(diam=110.0, seed=0) + " --external_reconstruct"
    )
    proc = run_in_root(ROOT, cmd, folder, env=env)
    return {"folder": folder, "proc": proc, "lines": _log_lines(folder / "R5"), "keep": keep}


def test_relion5_converges_with_the_network_and_survives_a_failed_correction(refinement):
    proc, lines, folder = refinement["proc"], refinement["lines"], refinement["folder"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _final_written(folder, "R5/run"), proc.stdout[-3000:]
    # RELION 5.1 wrote 5.x job files, and we read them
    assert "# version 50001" in next(folder.glob("R5/run_it*_optimiser.star")).read_text()
    assert len(iterations_corrected_in_both_halves(lines)) >= 2, "\n".join(lines[-40:])
    assert any("gate closed" in ln for ln in lines)
    assert any("last joined iteration" in ln for ln in lines)
    assert_failures_fell_back(lines)


def test_plain_map_equals_relion5_external_reconstruct(refinement, tmp_path):
    """On job files RELION 5.1 wrote, our plain map is RELION 5.1's own, to round-off."""
    from spisonet.relion import read_external_star, reconstruct

    stars = list(refinement["keep"].rglob("*_it002_half1_class001_external_reconstruct.star"))
    assert len(stars) == 1, list(refinement["keep"].rglob("*"))
    work = tmp_path / "job"
    shutil.copytree(stars[0].parent, work)
    star = work / stars[0].name
    text = star.read_text(encoding="utf-8")
    assert "# version 50001" in text
    # the job names its files relative to RELION's folder: point them at this copy
    job_dir = str(stars[0].parent.relative_to(refinement["keep"]))
    star.write_text(text.replace(job_dir + "/", ""), encoding="utf-8")
    job = read_external_star(star)
    for flags in ([], ["--skip_gridding"], ["--no_map"]):
        ref = work / "relion5.mrc"
        proc = run_in_root(
            ROOT, f"relion_external_reconstruct {star.name} --o {ref.name} {' '.join(flags)}", work
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        theirs = mrcfile.read(str(ref)).astype(np.float64)
        ours = reconstruct(
            job, wiener="--no_map" not in flags, skip_gridding="--skip_gridding" in flags
        )
        assert ours.shape == theirs.shape == (job.ori_size,) * 3
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        assert err <= 1e-6, f"{flags}: relative difference {err:.2e}"
