"""The console side of the progress protocol (spisonet/cli/_progress.py): plain lines in
log files (per epoch and per interval), rich bars on a terminal, one stage per bar, the
"resumed from epoch" line and the last training progress kept for the Ctrl-C hint."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import spisonet.cli._progress as progress_module
from spisonet.cli._progress import console_progress, progress_interval
from spisonet.errors import InvalidValueError
from spisonet.nn.train import TrainProgress


def _step(epoch: int, step: int, loss: float, steps: int = 3, epochs: int = 2, **kw):
    done = (epoch - 1) * steps + step
    return TrainProgress(epoch, epochs, step, steps, loss, 0.5, done / 0.5, **kw)


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


@pytest.mark.parametrize("interval", [0.0, 1e9])
def test_plain_progress_lines_per_epoch_and_per_interval(monkeypatch, interval) -> None:
    monkeypatch.delenv("SPISONET_PROGRESS_INTERVAL", raising=False)
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL_S", interval)
    console, buffer = _log_console()
    with console_progress(console) as update:
        update("fsc3d", 1, 2)
        update("fsc3d", 2, 2)
        update("fsc3d", 2, 2)
        for epoch in (1, 2):
            for step, loss in ((1, 0.3), (2, 0.2), (3, 0.1)):
                info = _step(epoch, step, loss)
                update("train", info.steps_done, 6, info)
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


def test_label_names_every_stage_and_fractions_show_between(monkeypatch) -> None:
    monkeypatch.setenv("SPISONET_PROGRESS_INTERVAL", "0")
    console, buffer = _log_console()
    with console_progress(console, "3D FSC") as update:
        update("global FSC", 0, 100)
        update("conical FSC", 50, 100)
        update("conical FSC", 100, 100)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "3D FSC: started"
    assert lines[1].startswith("3D FSC: 0%") and lines[2].startswith("3D FSC: 50%")
    assert lines[3].startswith("3D FSC: done") and len(lines) == 4


def test_resumed_training_is_said_once_and_remembered(tmp_path) -> None:
    console, buffer = _log_console()
    ckpt = str(tmp_path / "model_h1.pt")
    with console_progress(console) as update:
        for step in (1, 2):
            info = _step(2, step, 0.1, resumed_from_epoch=1, checkpoint=ckpt)
            update("train", info.steps_done, 6, info)
    text = buffer.getvalue()
    assert text.count(f"train: resumed from epoch 1 (checkpoint {ckpt})") == 1
    assert update.training["train"].step == 2  # the last progress, for the Ctrl-C hint


def test_terminal_gets_one_rich_bar_per_stage() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=150)
    with console_progress(console) as update:
        update("fsc3d", 1, 1)
        info = _step(1, 3, 0.25, epochs=1)
        update("train", info.steps_done, 3, info)
        update("predict", 1, 4)
    text = buffer.getvalue()
    assert "━" in text  # a bar, not plain lines
    for stage in ("fsc3d", "train", "predict"):
        assert stage in text
    assert "epoch 1/1 step 3/3 loss 0.2500 0.50 steps/s" in text
    assert "started" not in text


def test_interval_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SPISONET_PROGRESS_INTERVAL", "5")
    assert progress_interval() == 5.0
    monkeypatch.setenv("SPISONET_PROGRESS_INTERVAL", "-1")
    assert progress_interval() == 0.0
    monkeypatch.setenv("SPISONET_PROGRESS_INTERVAL", "soon")
    with pytest.raises(InvalidValueError, match=r"SPISONET_PROGRESS_INTERVAL='soon'"):
        progress_interval()


def test_every_command_uses_the_one_progress_implementation() -> None:
    """No command builds its own rich.progress bar."""
    from pathlib import Path

    import spisonet.cli

    folder = Path(spisonet.cli.__file__).parent
    users = sorted(p.name for p in folder.glob("*.py") if "rich.progress" in p.read_text())
    assert users == ["_progress.py"]
