"""Long runs under a scheduler (plain progress in log files, Ctrl-C says how to resume) and
the small things users notice in --help and in reconstruct's messages (issue 13, points 8
and 10)."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_noisy_pair
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

import spisonet.cli as cli
from spisonet.errors import ModelFileError
from spisonet.io import write_map
from spisonet.nn.train import TrainProgress, load_checkpoint

N, APIX = 24, 2.0
runner = CliRunner()


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("maps")
    paths = write_noisy_pair(folder, N, APIX)
    k = np.abs(np.arange(N) - N // 2)
    fsc = np.clip(1.0 - k[:, None, None] / (N // 2) * np.ones((1, N, N)), 0, 1)
    paths["fsc"] = folder / "FSC3D.mrc"
    write_map(paths["fsc"], fsc.astype(np.float32), APIX)
    return paths


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- point 10
def _commands() -> list[str]:
    group = get_command(cli.app)
    return [name for name, cmd in group.commands.items() if not cmd.hidden]


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_shows_no_typer_oddities(command) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(cli.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
    assert "{" not in usage and "[[" not in usage, usage
    assert "<bool>" not in text
    assert not re.search(r"--o(?![\w-])", text)  # --o works, but --output is enough


def test_usage_lines_read_like_a_unix_tool() -> None:
    def usage(*args) -> str:
        out = runner.invoke(cli.app, [*args, "--help"], env={"COLUMNS": "200"}).output
        return " ".join(next(ln for ln in out.splitlines() if "Usage:" in ln).split())

    assert usage("fsc3d").endswith("fsc3d [OPTIONS] HALF1 HALF2 [MASK]")
    assert usage("reconstruct").endswith("reconstruct [OPTIONS] HALF1 [HALF2]")


def test_text_or_map_as_pretrained_model_is_named_truthfully(maps, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("epochs: 30\n")
    for path, found in ((notes, "a text file"), (maps["h1"], "an MRC map")):
        with pytest.raises(ModelFileError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert str(path) in msg and "not a PyTorch model file" in msg and found in msg
        assert "run code" not in msg
    result = runner.invoke(
        cli.app,
        ["reconstruct", str(maps["h1"]), str(maps["h2"]), "--preset", "tiny",
         "--pretrained-model", str(notes), "-o", str(tmp_path / "o")],
    )  # fmt: skip
    assert isinstance(result.exception, ModelFileError), result.output
    assert str(notes) in str(result.exception) and "run code" not in str(result.exception)


# --------------------------------------------------------------------------- point 8
def _step(epoch: int, step: int, loss: float, steps: int = 3, epochs: int = 2) -> TrainProgress:
    done = (epoch - 1) * steps + step
    return TrainProgress(epoch, epochs, step, steps, loss, 0.5, done / 0.5)


@pytest.mark.parametrize("interval", [0.0, 1e9])
def test_plain_progress_lines_per_epoch_and_per_interval(monkeypatch, interval) -> None:
    monkeypatch.delenv("SPISONET_PROGRESS_INTERVAL", raising=False)
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", interval)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    with cli._training_progress(console) as update:
        update("fsc3d", 0.5, None)
        update("fsc3d", 1.0, None)
        update("fsc3d", 1.0, None)
        for epoch in (1, 2):
            for step, loss in ((1, 0.3), (2, 0.2), (3, 0.1)):
                update("train", ((epoch - 1) * 3 + step) / 6, _step(epoch, step, loss))
    lines = buffer.getvalue().splitlines()
    assert "\x1b" not in buffer.getvalue()
    assert lines.count("fsc3d: done, elapsed 0:00:00") == 1
    # at every epoch end: the epoch's mean loss, the elapsed time and the time left
    speed = "0.50 steps/s"
    end1 = f"train: epoch 1/2 done, mean loss 0.2000, {speed}, elapsed 0:00:06, ETA 0:00:06"
    end2 = f"train: epoch 2/2 done, mean loss 0.2000, {speed}, elapsed 0:00:12, ETA 0:00:00"
    assert end1 in lines and end2 in lines
    step_line = f"train: epoch 2/2, step 1/3, loss 0.3000, {speed}, elapsed 0:00:08, ETA 0:00:04"
    assert (step_line in lines) == (interval == 0.0)  # between epoch ends: every interval
    if interval:
        assert [ln for ln in lines if ln.startswith("train:")] == [
            "train: started",
            lines[-2],
            lines[-1],
        ]


def test_log_output_has_plain_progress_and_lists_fsc3d(
    maps, tmp_path, monkeypatch, one_torch_thread
) -> None:
    # CliRunner's output is not a terminal: what nohup and SLURM log files get
    monkeypatch.setenv("SPISONET_PROGRESS_INTERVAL", "1000")
    out = tmp_path / "o"
    result = runner.invoke(
        cli.app,
        ["reconstruct", str(maps["h1"]), str(maps["h2"]), "--mask", str(maps["mask"]),
         "--preset", "tiny", "--epochs", "1", "--n-subvolume", "2", "-o", str(out)],
        env={"COLUMNS": "1000"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.output
    assert "\x1b" not in text
    assert re.search(r"train: epoch 1/1 done, mean loss \d+\.\d+, .*ETA 0:00:00", text)
    assert "predict: done" in text
    # the 3D FSC computed here is among the listed outputs
    assert (out / "FSC3D.mrc").exists() and f"wrote {out / 'FSC3D.mrc'}" in text


@pytest.mark.slow
def test_ctrl_c_tells_how_to_resume_and_the_resume_says_so(maps, tmp_path) -> None:
    env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}
    env["SPISONET_PROGRESS_INTERVAL"] = "0"
    out = tmp_path / "run"
    args = [sys.executable, "-m", "spisonet", "reconstruct", str(maps["h1"]), str(maps["h2"]),
            "--aniso-file", str(maps["fsc"]), "--mask", str(maps["mask"]), "--preset", "tiny",
            "--epochs", "500", "-o", str(out)]  # fmt: skip
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        first = subprocess.Popen(
            args, stdout=f, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env
        )
        try:
            ckpt = out / "model_h1.pt"
            deadline = time.monotonic() + 240
            while not ckpt.exists() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ckpt.exists(), log.read_text()
            # a second run into the same folder is refused while the first one runs
            second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)
            assert second.returncode == 2, second.stderr
            assert f"another spisonet reconstruct is writing to {out} (pid {first.pid})" in (
                second.stderr
            )
            first.send_signal(signal.SIGINT)
            _, err = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert f"the last checkpoint (written after every epoch) is {ckpt}" in err
    command = err.strip().splitlines()[-1].strip()
    assert command.endswith("--resume") and "reconstruct" in command
    text = log.read_text()
    assert "\x1b" not in text and "train: epoch 1/500 done, mean loss" in text
    # the printed command resumes (one more epoch, to keep the test short)
    done = int(load_checkpoint(ckpt)["epoch"])
    again = shlex.split(command)
    again = [sys.executable, "-m", "spisonet", *again[again.index("reconstruct") :]]
    again[again.index("--epochs") + 1] = str(done + 1)
    proc = subprocess.run(again, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"train: resumed from epoch {done} (checkpoint {ckpt})" in proc.stdout
    assert f"train: epoch {done + 1}/{done + 1} done" in proc.stdout
    assert not (out / ".spisonet.lock").exists()
