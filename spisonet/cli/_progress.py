"""Progress on the console: the one implementation of :class:`spisonet.progress.Progress`
that every command uses.

On a terminal, a rich bar per stage (a training stage also shows epoch, step, loss and
speed). When the output is not a terminal (a log file under nohup or SLURM), plain lines
instead: one when a stage starts and ends, one per training epoch, and one every
``SPISONET_PROGRESS_INTERVAL`` seconds (default :data:`PROGRESS_INTERVAL_S`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import InvalidValueError
from ..progress import fraction

__all__ = ["PROGRESS_INTERVAL_S", "ConsoleProgress", "console_progress", "progress_interval"]

#: Seconds between two plain progress lines when the output is not a terminal; the
#: environment variable SPISONET_PROGRESS_INTERVAL (seconds) overrides it.
PROGRESS_INTERVAL_S = 30.0

#: What a display does with one call: (stage, fraction done in [0, 1], TrainProgress or None)
_Show = Callable[[str, float, Any], None]


def progress_interval() -> float:
    """Seconds between plain progress lines: SPISONET_PROGRESS_INTERVAL, else the default."""
    value = os.environ.get("SPISONET_PROGRESS_INTERVAL", "").strip()
    if not value:
        return PROGRESS_INTERVAL_S
    try:
        return max(float(value), 0.0)
    except ValueError:
        raise InvalidValueError(
            f"SPISONET_PROGRESS_INTERVAL={value!r}: expected a number of seconds"
        ) from None


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _PlainProgress:
    """Progress for log files: a line when a stage starts and ends, one per training epoch
    and one every ``interval`` seconds (stage, epoch, step/total, loss, speed, elapsed, ETA)."""

    def __init__(self, console: Console, interval: float) -> None:
        self.console = console
        self.interval = interval
        self.stage: str | None = None
        self.stage_start = self.last = time.monotonic()
        self.stage_done = False
        self.loss_sum, self.loss_n = 0.0, 0

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, stage: str, done: float, info: Any) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start, self.last, self.stage_done = stage, now, now, False
            self._line(f"{stage}: started")
        if info is None:
            self._fraction(stage, done, now)
        else:
            self._training(stage, info, now)

    def _fraction(self, stage: str, done: float, now: float) -> None:
        finished = done >= 1.0
        if finished and self.stage_done:
            return
        if not (finished or now - self.last >= self.interval):
            return
        self.last, self.stage_done = now, finished
        elapsed = now - self.stage_start
        if finished:
            self._line(f"{stage}: done, elapsed {_hms(elapsed)}")
            return
        eta = f", ETA {_hms(elapsed * (1 - done) / done)}" if done > 0 else ""
        self._line(f"{stage}: {100 * done:.0f}%, elapsed {_hms(elapsed)}{eta}")

    def _training(self, stage: str, info: Any, now: float) -> None:
        if info.step == 1:
            self.loss_sum, self.loss_n = 0.0, 0
        self.loss_sum += info.loss
        self.loss_n += 1
        end_of_epoch = info.step == info.steps_per_epoch
        if not (end_of_epoch or now - self.last >= self.interval):
            return
        self.last = now
        left = info.epochs * info.steps_per_epoch - info.steps_done
        speed = info.steps_per_second
        eta = _hms(left / speed) if speed > 0 else "?"
        where = f"epoch {info.epoch}/{info.epochs}"
        if end_of_epoch:
            what = f"{where} done, mean loss {self.loss_sum / max(self.loss_n, 1):.4f}"
        else:
            what = f"{where}, step {info.step}/{info.steps_per_epoch}, loss {info.loss:.4f}"
        self._line(f"{stage}: {what}, {speed:.2f} steps/s, elapsed {_hms(info.elapsed)}, ETA {eta}")


class _RichBars:
    """One rich bar per stage; the bars of earlier stages are completed when a new one
    starts (a stage that ends early, e.g. a resumed training, shows as done)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: float, info: Any) -> None:
        if stage not in self.tasks:
            self.finish()
            self.tasks[stage] = self.bar.add_task(stage, total=1.0, info="")
        text = ""
        if info is not None:
            text = (
                f"epoch {info.epoch}/{info.epochs} step {info.step}/{info.steps_per_epoch} "
                f"loss {info.loss:.4f} {info.steps_per_second:.2f} steps/s"
            )
        self.bar.update(self.tasks[stage], completed=done, info=text)

    def finish(self) -> None:
        for task in self.tasks.values():
            self.bar.update(task, completed=1.0)


class ConsoleProgress:
    """A :class:`spisonet.progress.Progress` that shows on a console.

    It also says when a training stage resumed from a checkpoint, and keeps each training
    stage's last :class:`spisonet.nn.train.TrainProgress` in :attr:`training` (where the
    resume hint after Ctrl-C finds the checkpoint).
    """

    def __init__(self, console: Console, show: _Show, label: str | None = None) -> None:
        self.console = console
        self.label = label
        self.training: dict[str, Any] = {}
        self._show = show

    def __call__(self, stage: str, done: float, total: float, info: Any = None) -> None:
        stage = self.label or stage
        self._show(stage, fraction(done, total), info)
        if info is None:
            return
        if stage not in self.training and info.resumed_from_epoch:
            self.console.print(
                f"{stage}: resumed from epoch {info.resumed_from_epoch} "
                f"(checkpoint {info.checkpoint})",
                markup=False,
            )
        self.training[stage] = info


@contextmanager
def console_progress(console: Console, label: str | None = None) -> Iterator[ConsoleProgress]:
    """Progress shown on ``console`` while the block runs: rich bars on a terminal, plain
    lines otherwise. ``label`` replaces every stage name (one bar for a whole command)."""
    if not console.is_terminal:
        yield ConsoleProgress(console, _PlainProgress(console, progress_interval()), label)
        return
    columns = (
        TextColumn("[bold]{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        bars = _RichBars(bar)
        yield ConsoleProgress(console, bars, label)
        bars.finish()
