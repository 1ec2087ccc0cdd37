"""``spisonet reconstruct``: the anisotropy correction, from files to files.

Its options are of two kinds. The run's inputs, outputs and launch are declared here and
listed in :data:`RUN_OPTIONS`; every other option sets a field of
:class:`spisonet.correction.CorrectionSettings` and is built from that field's declaration
(:func:`spisonet.cli._options.settings_options`), with None meaning "the preset's value".
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..correction import (
    CorrectionSettings,
    ReconstructOutputs,
    preset_settings,
    reconstruct,
    resolve_preset,
)
from ..errors import DeviceMemoryError
from . import launch
from ._app import app, make_console
from ._options import ApixOption, settings_options
from ._progress import console_progress

__all__ = [
    "RUN_OPTIONS",
    "Interrupted",
    "interrupted_message",
    "reconstruct_command",
    "resume_command_line",
    "run_reconstruct",
    "settings_from_options",
]

#: The parameters of ``reconstruct`` that are not settings of the correction: its inputs
#: and outputs, and how it is launched. Every other option is a CorrectionSettings field.
RUN_OPTIONS = (
    "half1",
    "half2",
    "aniso_file",
    "mask",
    "output_dir",
    "reference",
    "pretrained_model",
    "resume",
    "apix",
    "gpus",
    "processes",
)

_SETTINGS_PANEL = "Settings (default: the preset's value; docs/settings.md)"


@app.command("reconstruct")
@settings_options(CorrectionSettings, defaults={"preset": "auto"}, panel=_SETTINGS_PANEL)
def reconstruct_command(
    half1: Annotated[Path, typer.Argument(help="Half map 1, or the single map (MRC).")],
    half2: Annotated[
        Path | None, typer.Argument(help="Half map 2 (MRC), optional: enables Noise2Noise.")
    ] = None,
    aniso_file: Annotated[
        Path | None,
        typer.Option(
            "--aniso-file",
            "--aniso_file",
            "-a",
            help="3D FSC (FSC3D.mrc). Default: computed here from the two half maps; "
            "a single map without it is only denoised (W = 1).",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option("--mask", "-m", help="Mask (MRC): where training cubes are cut."),
    ] = None,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "--output_dir", "-o", help="Output folder.")
    ] = Path("isonet_maps"),
    reference: Annotated[
        Path | None,
        typer.Option(help="Reference map whose low frequencies replace the halves'."),
    ] = None,
    pretrained_model: Annotated[
        Path | None,
        typer.Option(
            "--pretrained-model", "--pretrained_model", help="Start from this model file."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --output-dir.")
    ] = False,
    apix: ApixOption = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Train on these GPUs of this node, one process each (e.g. 0,1,2,3); "
            "spawned with torch's elastic launcher. Under torchrun, leave it out "
            "(docs/scaling.md).",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            help="Train with this many CPU processes (gloo), spawned like --gpus.",
        ),
    ] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Correct preferred-orientation anisotropy: train the network and write corrected maps."""
    launch.check_output_dir_early(output_dir)  # before the slow imports (torch)
    world = launch.launched_world()
    if (gpus or processes) and not world.distributed:
        launch.run_ranks(gpus, processes, output_dir)  # the ranks run this command again
        return
    console = make_console(quiet=not world.is_main)
    settings = settings_from_options(console, overrides, reference)
    with (
        launch.distributed_training(world, settings, console),
        _resume_hint_on_ctrl_c(world.is_main, world.distributed),
        _out_of_gpu_memory_as_user_error(),
    ):
        run_reconstruct(
            console,
            output_dir,
            half1=half1,
            half2=half2,
            aniso_file=aniso_file,
            mask=mask,
            settings=settings,
            reference=reference,
            pretrained_model=pretrained_model,
            resume=resume,
            voxel_size=apix,
        )


def settings_from_options(
    console: Console, overrides: dict[str, Any], reference: Path | None
) -> CorrectionSettings:
    """The preset named by ``overrides["preset"]`` with the options given replaced; says
    which preset ``auto`` chose and the reference's default resolution when it applies."""
    values = dict(overrides)
    preset, why = resolve_preset(values.pop("preset"))
    if why:
        console.print(f"Preset [bold]{preset}[/bold] ({why})")
    settings = preset_settings(preset, **values)
    if reference is not None and values.get("ref_resolution") is None:
        console.print(f"Reference below {settings.ref_resolution:g} Å (default)")
    return settings


def run_reconstruct(console: Console, output_dir: Path, **inputs: Any) -> ReconstructOutputs:
    """:func:`spisonet.correction.reconstruct` into ``output_dir`` (``inputs``: its other
    keyword arguments) with progress on ``console`` and the folder locked; then print the
    notes, the training speed, the trust check and the files written.

    Raises
    ------
    Interrupted
        Ctrl-C; it carries each training stage's last progress (where the checkpoint is).
    """
    with launch.output_dir_lock(output_dir), console_progress(console) as progress:
        try:
            outputs = reconstruct(output_dir=output_dir, progress=progress, **inputs)
        except KeyboardInterrupt as exc:
            raise Interrupted(progress.training) from exc
    _print_summary(console, outputs)
    return outputs


def _print_summary(console: Console, outputs: ReconstructOutputs) -> None:
    res = outputs.result
    for note in res.notes:
        console.print(f"  • {note}")
    several = len(res.train) > 1
    for i, t in enumerate(res.train):
        who = f"network {i + 1} of {len(res.train)}: " if several else ""
        if t.steps:
            console.print(
                f"  {who}trained {t.steps} steps in {t.seconds:.1f} s "
                f"({t.steps_per_second:.2f} steps/s, {t.device}, {t.dtype})"
            )
        elif t.resumed_from_epoch:
            console.print(
                f"  {who}resumed from epoch {t.resumed_from_epoch}: every epoch was already "
                "done, nothing left to train"
            )
    if res.trust is not None:
        colours = {"good": "green", "partial": "yellow", "low": "red", "thin band": "red"}
        colour = colours.get(res.trust.verdict, "")
        score = "n/a" if res.trust.score is None else f"{round(100 * res.trust.score)} %"
        line = f"trust check: {score} ({res.trust.verdict})"
        console.print(f"  [bold {colour}]{line}[/] — {res.trust.message}" if colour else line)
    figures = (outputs.trust_figure, outputs.measured_figure, outputs.fsc3d)
    extra = [p for p in figures if p is not None]
    for p in [*outputs.corrected, *outputs.filtered, *outputs.models, *outputs.losses, *extra]:
        console.print(f"  wrote {p}")
    console.print(f"  wrote {outputs.report} (settings, decisions and timings)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a correction, with the last training progress of each stage."""

    def __init__(self, training: dict[str, Any]) -> None:
        super().__init__()
        self.training = training


@contextmanager
def _resume_hint_on_ctrl_c(is_main: bool, distributed: bool) -> Iterator[None]:
    """Ctrl-C: say where the last checkpoint is and how to resume; exit code 130."""
    try:
        yield
    except Interrupted as stop:
        if is_main:
            print(interrupted_message(stop.training, distributed), file=sys.stderr, flush=True)
        raise typer.Exit(130) from None


@contextmanager
def _out_of_gpu_memory_as_user_error() -> Iterator[None]:
    """A GPU out of memory becomes one line that says which setting to lower."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise DeviceMemoryError(
            f"the GPU ran out of memory ({str(exc).splitlines()[0]}); lower --batch-size "
            "or raise --acc-batches (same result, less memory), or use a smaller "
            "--cube-size / --predict-crop-size; nothing was written"
        ) from exc


def interrupted_message(training: dict[str, Any], distributed: bool) -> str:
    """Where the last checkpoint is and how to resume, after Ctrl-C (``training``: each
    stage's last :class:`spisonet.nn.train.TrainProgress`)."""
    if not training:
        return "interrupted before the training started; nothing to resume, rerun the command"
    last = list(training.values())[-1]
    saved = [
        d.checkpoint for d in training.values() if d.checkpoint and Path(d.checkpoint).exists()
    ]
    where = f"interrupted during epoch {last.epoch} of {last.epochs}"
    if not saved:
        return f"{where}, before the first checkpoint; nothing to resume, rerun the command"
    how = (
        "add --resume to the same launch command"
        if distributed
        else f"run, from {os.getcwd()}:\n  {resume_command_line()}"
    )
    return (
        f"{where}; the last checkpoint (written after every epoch) is "
        f"{' and '.join(saved)}\nTo continue from it, {how}"
    )


def resume_command_line() -> str:
    """This command line again, with ``--resume``."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else "spisonet"
    if prog == "__main__.py":
        head = [Path(sys.executable).name, "-m", "spisonet"]
    elif prog in ("spisonet", "spisonet.py"):
        head = [prog]
    else:
        head = [argv[0]]
    args = argv[1:]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join([*head, *args])
