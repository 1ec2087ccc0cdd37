"""``spisonet reconstruct``: long runs under a scheduler (plain progress in log files,
Ctrl-C says how to resume), what it says about presets and a GPU out of memory, and the
messages users notice (issue 13, points 8 and 10).

Its options and the settings they set: tests/cli/test_cli_settings.py."""

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
from helpers import write_noisy_pair
from rich.console import Console
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


def _default_sigint() -> None:
    # A suite started in the background by a script (`cmd &`) hands its children SIGINT
    # ignored, and Python then keeps it ignored: the Ctrl-C under test would never arrive.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_tells_how_to_resume_and_the_resume_says_so(maps, tmp_path) -> None:
    env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}
    env["SPISONET_PROGRESS_INTERVAL"] = "0"
    out = tmp_path / "run"
    args = [sys.executable, "-m", "spisonet", "reconstruct", str(maps["h1"]), str(maps["h2"]),
            "--aniso-file", str(maps["fsc"]), "--mask", str(maps["mask"]), "--preset", "tiny",
            "--epochs", "20000", "-o", str(out)]  # fmt: skip
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        first = subprocess.Popen(
            args, stdout=f, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
            preexec_fn=_default_sigint,
        )  # fmt: skip
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
    assert "\x1b" not in text and "train: epoch 1/20000 done, mean loss" in text
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


# --------------------------------------------------------------------------- messages
def test_preset_auto_says_which_and_why(monkeypatch) -> None:
    import torch

    from spisonet.cli.reconstruct import settings_from_options

    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = settings_from_options(console, {"preset": "auto", "epochs": 3}, Path("ref.mrc"))
    assert (settings.preset, settings.epochs) == ("cpu", 3)
    text = buffer.getvalue()
    assert "Preset cpu (no CUDA GPU found)" in text
    assert f"Reference below {settings.ref_resolution:g} Å (default)" in text
    buffer.truncate(0)
    settings = settings_from_options(console, {"preset": "tiny", "ref_resolution": 8.0}, None)
    assert settings.preset == "tiny" and buffer.getvalue() == ""  # nothing to explain


def test_gpu_out_of_memory_is_one_line_naming_the_settings(maps, tmp_path, monkeypatch) -> None:
    import torch

    import spisonet.cli.reconstruct as command
    from spisonet.errors import DeviceMemoryError

    def out_of_memory(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore")

    monkeypatch.setattr(command, "reconstruct", out_of_memory)
    out = tmp_path / "o"
    result = runner.invoke(
        cli.app, ["reconstruct", str(maps["h1"]), "--preset", "tiny", "-o", str(out)]
    )
    assert isinstance(result.exception, DeviceMemoryError), result.output
    msg = str(result.exception)
    assert "Tried to allocate 2 GiB" in msg and "more" not in msg
    assert "--batch-size" in msg and "--acc-batches" in msg
    assert not (out / ".spisonet.lock").exists()


def test_interrupted_message_names_the_checkpoint_and_the_command(tmp_path, monkeypatch):
    from spisonet.cli.reconstruct import interrupted_message

    ckpt = tmp_path / "model_h1.pt"
    ckpt.write_bytes(b"")
    step = TrainProgress(3, 30, 2, 5, 0.1, 1.0, 12.0, checkpoint=str(ckpt))
    monkeypatch.setattr(sys, "argv", ["spisonet", "reconstruct", "a b.mrc", "--epochs", "30"])
    msg = interrupted_message({"train": step}, distributed=False)
    assert msg.startswith("interrupted during epoch 3 of 30; the last checkpoint")
    assert f"(written after every epoch) is {ckpt}\n" in msg
    assert msg.splitlines()[-1].strip() == "spisonet reconstruct 'a b.mrc' --epochs 30 --resume"
    assert "add --resume to the same launch command" in interrupted_message({"train": step}, True)
    assert "nothing to resume" in interrupted_message({}, False)
    fresh = TrainProgress(1, 30, 2, 5, 0.1, 1.0, 2.0, checkpoint=str(tmp_path / "none.pt"))
    assert "before the first checkpoint" in interrupted_message({"train": fresh}, False)


def test_summary_names_each_network_of_several() -> None:
    """One training line per network; with several (independent halves, an ensemble) each
    says which it is, so the lines can be told apart."""
    from types import SimpleNamespace

    from spisonet.cli.reconstruct import _print_summary
    from spisonet.correction.pipeline import TrainSummary

    def said(train: list[TrainSummary]) -> str:
        buf = io.StringIO()
        result = SimpleNamespace(notes=[], train=train, trust=None)
        outputs = SimpleNamespace(
            result=result, trust_figure=None, measured_figure=None, fsc3d=None, corrected=[],
            filtered=[], models=[], losses=[], report="reconstruct.json",
        )  # fmt: skip
        _print_summary(Console(file=buf, width=200), outputs)
        return buf.getvalue()

    one = TrainSummary(steps=12, seconds=3.0, device="cpu", steps_per_second=4.0)
    text = said([one])
    assert "  trained 12 steps in 3.0 s (4.00 steps/s, cpu, float32)" in text
    assert "network 1" not in text
    done = TrainSummary(steps=0, seconds=0.0, device="cpu", resumed_from_epoch=3)
    text = said([one, one, done])
    assert "network 1 of 3: trained 12 steps" in text
    assert "network 2 of 3: trained 12 steps" in text
    assert "network 3 of 3: resumed from epoch 3" in text
