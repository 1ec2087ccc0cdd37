"""Command-line interface (typer). Thin: parse, call one API function, write, report.

Heavy imports (numba kernels, torch, matplotlib) happen inside the commands so that
``spisonet --help`` answers instantly. Options use kebab-case and also accept the public
spIsoNet tool's underscore spellings (``--limit_res``) so existing scripts keep working.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: Option names still accepted (the public tool's ``--o``) but left out of ``--help``.
_HIDDEN_ALIASES = frozenset({"--o"})


def _tidy_help(command) -> None:
    """What ``--help`` shows: flags without a value type (typer prints ``<bool>``),
    arguments as ``NAME`` / ``[NAME]`` (typer prints ``{name}``), no hidden aliases."""
    for p in command.params:
        if isinstance(p, TyperOption):
            if p.is_flag:
                p.metavar = ""
            hidden = [o for o in p.opts if o in _HIDDEN_ALIASES]
            if hidden and len(hidden) < len(p.opts) and not p.is_flag:
                p.opts = [o for o in p.opts if o not in hidden]
                p._hidden_opts = hidden  # parsed by _Command.make_parser
        elif isinstance(p, TyperArgument):
            p.metavar = (p.metavar or p.name or "").strip("[]").upper()


def _quiet_help_option(option):
    if option is not None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    """A typer command whose help and usage read like a Unix tool's."""

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        for p in self.get_params(ctx):
            hidden = getattr(p, "_hidden_opts", None)
            if hidden:
                parser.add_option(obj=p, opts=hidden, dest=p.name, action="store", nargs=p.nargs)
        return parser

    def get_help_option(self, ctx):
        return _quiet_help_option(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = p.metavar or (p.name or "").upper()
                pieces.append(name if p.required else f"[{name}]")
        return pieces


class _Group(TyperGroup):
    """The ``spisonet`` group: every command becomes a :class:`_Command`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)
        for command in self.commands.values():
            if type(command) is TyperCommand:
                command.__class__ = _Command
            _tidy_help(command)

    def get_help_option(self, ctx):
        return _quiet_help_option(super().get_help_option(ctx))


app = typer.Typer(
    name="spisonet",
    help="Correct preferred-orientation anisotropy in cryo-EM maps (self-supervised).",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console():
    from rich.console import Console

    return Console(highlight=False)


@contextmanager
def _progress(description: str):
    """A rich progress bar; yields a callback taking the fraction done (0–1)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=1.0)

        def update(fraction: float) -> None:
            bar.update(task, completed=min(max(fraction, 0.0), 1.0))

        yield update
        bar.update(task, completed=1.0)


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"spisonet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """spisonet: measure and correct preferred-orientation anisotropy in cryo-EM maps."""


# --------------------------------------------------------------------------------------
# fsc3d


#: --apix of the commands that read maps: replaces the headers' voxel size when given
ApixOption = Annotated[
    float | None,
    typer.Option(
        "--apix",
        help="Voxel size (Å/voxel) to use when the map header has none; given, it "
        "replaces the voxel size of every input map's header.",
    ),
]


def _load_pair(half1: Path, half2: Path, mask: Path | None, apix: float | None = None):
    from .io import check_half_maps, check_mask, read_map

    h1 = read_map(half1, voxel_size=apix)
    h2 = read_map(half2, voxel_size=apix)
    check_half_maps(h1, h2)
    m = None
    if mask is not None:
        m = read_map(mask, voxel_size=apix)
        check_mask(m, h1)
    from ._checks import check_contrast

    for h in (h1, h2):  # before any work: a flat map gives confident, meaningless numbers
        check_contrast(h.data, h.name, None if m is None else m.data)
    return h1, h2, m


@app.command("fsc3d")
def fsc3d_command(
    half1: Annotated[Path, typer.Argument(help="Half map 1 (MRC).")],
    half2: Annotated[Path, typer.Argument(help="Half map 2 (MRC).")],
    mask_arg: Annotated[
        Path | None, typer.Argument(metavar="[MASK]", help="Soft mask (MRC), optional.")
    ] = None,
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Soft mask (MRC).")] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", "--o", help="Output 3D FSC map.")
    ] = Path("FSC3D.mrc"),
    limit_res: Annotated[
        float | None,
        typer.Option(
            "--limit-res",
            "--limit_res",
            help="Resolution limit in Å (default: where the shell-averaged phase agreement "
            "falls below 0.143).",
        ),
    ] = None,
    cone_sampling_angle: Annotated[
        float,
        typer.Option(
            "--cone-sampling-angle",
            "--cone_sampling_angle",
            help="Angle θ (degrees) of the same-shell neighbourhood (chord s·2·sin(θ/2)).",
        ),
    ] = 10.0,
    keep_highres: Annotated[
        bool,
        typer.Option(
            "--keep-highres",
            "--keep_highres",
            help="Set the region beyond the limit to 1 (keeps high frequencies in training).",
        ),
    ] = False,
    ncpus: Annotated[
        int | None,
        typer.Option("--ncpus", "-j", help="CPU threads (default: all)."),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also run the anisotropy diagnostics (conical FSC, 500 cones of 20°) and "
            "write <name>_report.png and <name>_report.json next to the output.",
        ),
    ] = False,
    apix: ApixOption = None,
) -> None:
    """Compute the spIsoNet-flavour 3D FSC (FSC3D.mrc) of two half maps."""
    if mask_arg is not None and mask is not None and mask_arg != mask:
        from .errors import InvalidValueError

        raise InvalidValueError(f"two different masks given: {mask_arg} and {mask}; give one")
    mask = mask if mask is not None else mask_arg
    from ._outputs import check_output_file

    check_output_file(output, "-o")  # before the work: an unwritable output fails now
    console = _console()
    if ncpus:
        import numba

        numba.set_num_threads(max(1, min(ncpus, numba.config.NUMBA_NUM_THREADS)))
    from .fsc import fsc
    from .fsc3d import fsc3d
    from .io import write_map

    h1, h2, m = _load_pair(half1, half2, mask, apix)
    if m is None:
        console.print("[yellow]No mask given: using the whole box. A soft mask is recommended.")
    g = fsc(h1.data, h2.data, h1.voxel_size, None if m is None else m.data)
    console.print(
        f"Box {h1.box}³ at {h1.voxel_size:.3f} Å/voxel. Global FSC (masked: {m is not None}): "
        f"{g.resolution_0143:.2f} Å at 0.143, {g.resolution_05:.2f} Å at 0.5"
    )
    t0 = time.perf_counter()
    with _progress("3D FSC") as update:
        result = fsc3d(
            h1.data,
            h2.data,
            voxel_size=h1.voxel_size,
            mask=None if m is None else m.data,
            limit_res=limit_res,
            cone_sampling_angle=cone_sampling_angle,
            keep_highres=keep_highres,
            progress=update,
        )
    elapsed = time.perf_counter() - t0
    how = (
        "0.143 rule on the shell-averaged phase agreement"
        if result.limit_res_is_default
        else "given"
    )
    console.print(
        f"Resolution limit {result.limit_res:.2f} Å ({how}); shells 1–{result.limit_r - 1} "
        f"computed with θ = {cone_sampling_angle:g}° in {elapsed:.1f} s"
    )
    write_map(output, result.volume, voxel_size=h1.voxel_size)
    console.print(f"Wrote [bold]{output}[/bold]")
    if report:
        _anisotropy_outputs(h1, h2, m, output.with_suffix(""), 500, 20.0, console)


# --------------------------------------------------------------------------------------
# simulate


@app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("simulated"),
    box: Annotated[int, typer.Option(help="Box size in voxels (ignored with --from-map).")] = 64,
    voxel_size: Annotated[
        float, typer.Option("--voxel-size", "--apix", help="Å per voxel (built-in molecule).")
    ] = 2.0,
    distribution: Annotated[
        str,
        typer.Option(
            "--distribution",
            "-d",
            help="uniform | top | side | tilt:<deg> | a RELION particles STAR file.",
        ),
    ] = "top",
    n_views: Annotated[
        int, typer.Option("--n-views", "--views", help="Number of particles/views.")
    ] = 2000,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio per view.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    from_map: Annotated[
        Path | None, typer.Option("--from-map", "--from_map", help="Ground-truth map (MRC).")
    ] = None,
    bin_to: Annotated[
        int | None,
        typer.Option("--bin-to", help="Fourier-crop the ground truth to this box first."),
    ] = None,
) -> None:
    """Simulate preferred-orientation half maps with a known ground truth."""
    from ._outputs import check_output_dir

    check_output_dir(out, "--out")
    console = _console()
    paths = _simulate_to(out, box, voxel_size, distribution, n_views, snr, seed, from_map, bin_to)
    console.print(f"Wrote {', '.join(str(p) for p in paths.values())}")


def _simulate_to(
    out: Path,
    box: int,
    voxel_size: float,
    distribution: str,
    n_views: int,
    snr: float,
    seed: int,
    from_map: Path | None,
    bin_to: int | None,
) -> dict[str, Path]:
    from .io import read_map, read_star_angles, write_map
    from .simulate import fourier_crop, make_molecule, simulate_half_maps

    angles = None
    if Path(distribution).suffix.lower() == ".star":
        angles = read_star_angles(distribution)
        distribution = "star"
        n_views = len(angles)
    if from_map is not None:
        gt_map = read_map(from_map)
        gt, apix = gt_map.data, gt_map.voxel_size
        if bin_to is not None and bin_to != gt.shape[0]:
            apix = apix * gt.shape[0] / bin_to
            gt = fourier_crop(gt, bin_to)
    else:
        gt, apix = make_molecule(box, voxel_size, seed=seed), voxel_size
    data = simulate_half_maps(
        gt, apix, distribution=distribution, n_views=n_views, snr=snr, seed=seed, angles=angles
    )
    paths = {name: out / f"{name}.mrc" for name in ("gt", "half1", "half2", "mask")}
    for name, path in paths.items():
        write_map(path, getattr(data, name), voxel_size=apix)
    return paths


# --------------------------------------------------------------------------------------
# demo


#: The demo's orientation distribution: every view within 20° of the z axis, so no view
#: samples the Fourier directions within ~60–70° of z: a real missing cone.
DEMO_DISTRIBUTION = "tilt:20"


def _demo_check_out(out: Path) -> None:
    """The demo's output folder: a folder (or nothing yet) in a place we may write."""
    import os

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a folder", param_hint="'--out'")
    parent = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write in {parent}", param_hint="'--out'")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "spisonet_demo"
    ),
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="Correction preset: cpu (default; ~9 min on a quiet 2-core CPU with native "
            "bf16, ~40 min on an AVX2-only one), gpu (the published settings, for a GPU) or tiny "
            "(a smoke run, ~1 min).",
        ),
    ] = "cpu",
    epochs: Annotated[
        int | None, typer.Option(min=0, help="Override the preset's number of epochs.")
    ] = None,
    correct: Annotated[
        bool,
        typer.Option("--correct/--no-correct", help="Run the correction (else stop at 3D FSC)."),
    ] = True,
) -> None:
    """Run the pipeline on built-in example data: simulated half maps with a missing cone."""
    from .correct import PRESETS

    if preset not in PRESETS:
        raise typer.BadParameter(
            f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}",
            param_hint="'--preset'",
        )
    _demo_check_out(out)
    settings = None
    if correct:
        from .correct import preset_settings

        settings = preset_settings(preset, epochs=epochs, seed=seed)
    console = _console()
    t0 = time.perf_counter()
    console.rule("spisonet demo")
    console.print(
        "Simulating a 64³ test molecule at 2 Å/voxel from 2000 particles, all viewed within "
        f"20° of the z axis ({DEMO_DISTRIBUTION}): each view measures the Fourier plane "
        "perpendicular to it, so the directions within 70° of z are never measured (a "
        "missing cone around z)..."
    )
    paths = _simulate_to(out, 64, 2.0, DEMO_DISTRIBUTION, 2000, 0.01, seed, None, None)
    console.print(f"  wrote {', '.join(p.name for p in paths.values())} in {out}/")
    fsc3d_command(
        paths["half1"],
        paths["half2"],
        None,
        mask=paths["mask"],
        output=out / "FSC3D.mrc",
        limit_res=None,
        cone_sampling_angle=10.0,
        keep_highres=False,
        ncpus=None,
    )
    _demo_directional_summary(out / "FSC3D.mrc", paths, console)
    if settings is not None:
        _demo_correction(out, paths, settings, console)
    console.print(
        f"Demo finished in {time.perf_counter() - t0:.1f} s. "
        f"Outputs are in [bold]{out.resolve()}[/bold]"
    )


def _demo_directional_summary(fsc3d_path: Path, paths: dict[str, Path], console) -> None:
    """Print, along z (the view axis) and x, the 3D FSC and the W the correction uses."""
    import numpy as np
    from rich.table import Table

    from .correct import power_presence
    from .io import read_map

    fsc3d_map = read_map(fsc3d_path)
    vol, apix = fsc3d_map.data, fsc3d_map.voxel_size
    gate = power_presence(
        read_map(paths["half1"]).data, read_map(paths["half2"]).data, read_map(paths["mask"]).data
    )
    w = vol * gate
    n = vol.shape[0]
    c = n // 2
    shells = [s for s in (2, 4, 8, 12, 16, 24) if s < n - c]
    table = Table(title="Along the view axis (z) and across it (x)")
    table.add_column("shell")
    table.add_column("resolution (Å)")
    table.add_column("3D FSC along z", justify="right")
    table.add_column("3D FSC along x", justify="right")
    table.add_column("W along z", justify="right")
    table.add_column("W along x", justify="right")
    for s in shells:
        table.add_row(
            str(s),
            f"{n * apix / s:.1f}",
            *(f"{a[s]:.2f}" for a in (vol[c:, c, c], vol[c, c, c:], w[c:, c, c], w[c, c, c:])),
        )
    console.print(table)
    top = shells[-1] + 1
    console.print(
        f"Mean over shells 2–{shells[-1]}: W along z {np.mean(w[c + 2 : c + top, c, c]):.2f}, "
        f"along x {np.mean(w[c, c, c + 2 : c + top]):.2f}: the anisotropy spisonet corrects. "
        "The 3D FSC compares phases only and reads the mask's leak into the empty cone as "
        "agreement; W, the 3D FSC times a gate on the measured Fourier power, is what the "
        "correction uses (docs/method.md)."
    )


def _demo_correction(out: Path, paths, settings, console):
    """Demo step 3: correct the simulated pair, then compare with the ground truth."""
    from rich.table import Table

    from .correct import before_after_figure, ground_truth_metrics
    from .fsc import fsc
    from .io import read_map

    console.print(
        f"Correcting with the [bold]{settings.preset}[/bold] preset ({settings.epochs} epochs of "
        f"{settings.n_subvolume} cubes of {settings.cube_size}³, network widths "
        f"{'-'.join(map(str, settings.widths))})..."
    )
    outputs = _run_reconstruct(
        console,
        half1=paths["half1"],
        half2=paths["half2"],
        aniso_file=out / "FSC3D.mrc",
        mask=paths["mask"],
        output_dir=out / "isonet_maps",
        settings=settings,
    )
    gt = read_map(paths["gt"])
    h1, h2 = read_map(paths["half1"]).data, read_map(paths["half2"]).data
    mask = read_map(paths["mask"]).data
    raw = 0.5 * (h1 + h2)
    corrected = outputs.result.average
    metrics = ground_truth_metrics(
        gt.data, {"raw": raw, "corrected": corrected}, gt.voxel_size, mask
    )
    # like with like: the slices of both maps are low-passed at the same resolution, the
    # one a user would pick for the raw map (its half maps' 0.143 FSC resolution)
    cutoff = float(fsc(h1, h2, gt.voxel_size, mask).resolution_0143)
    figure = out / "before_after.png"
    before_after_figure(
        gt.data,
        raw,
        corrected,
        metrics,
        gt.voxel_size,
        figure,
        mask=mask,
        lowpass_resolution=cutoff,
    )
    n = gt.box
    table = Table(title="FSC with the ground truth (masked), the same computation for both")
    table.add_column("")
    table.add_column("before (raw average)", justify="right")
    table.add_column("after (corrected)", justify="right")
    table.add_row(
        f"mean FSC in the 20° cone around z (the missing cone), shells 2–{n // 4}",
        f"{metrics['raw']['cone_mean']:.3f}",
        f"{metrics['corrected']['cone_mean']:.3f}",
    )
    for key, label in (
        ("res0143_global", "global resolution at FSC 0.143 (Å)"),
        ("res05_global", "global resolution at FSC 0.5 (Å)"),
        ("res05_worst", "FSC-0.5 resolution, worst direction (Å)"),
        ("res05_best", "FSC-0.5 resolution, best direction (Å)"),
    ):
        table.add_row(label, f"{metrics['raw'][key]:.1f}", f"{metrics['corrected'][key]:.1f}")
    console.print(table)
    console.print(
        f"  wrote {figure}: slices of both maps low-passed at {cutoff:.1f} Å (the raw half "
        "maps' 0.143 resolution) and FSC with the truth, before / after; the training "
        f"losses are in {out / 'isonet_maps'}/loss_*.png"
    )


# --------------------------------------------------------------------------------------
# reconstruct (anisotropy correction)


#: Seconds between two plain progress lines when the output is not a terminal; the
#: environment variable SPISONET_PROGRESS_INTERVAL (seconds) overrides it.
PROGRESS_INTERVAL_S = 30.0


def _progress_interval() -> float:
    import os

    value = os.environ.get("SPISONET_PROGRESS_INTERVAL", "").strip()
    if not value:
        return PROGRESS_INTERVAL_S
    try:
        return max(float(value), 0.0)
    except ValueError:
        from .errors import InvalidValueError

        raise InvalidValueError(
            f"SPISONET_PROGRESS_INTERVAL={value!r}: expected a number of seconds"
        ) from None


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _PlainProgress:
    """Progress for log files: one plain line per training epoch and one every
    ``interval`` seconds (stage, epoch, step/total, loss, speed, elapsed, ETA)."""

    def __init__(self, console, interval: float) -> None:
        self.console = console
        self.interval = interval
        self.stage: str | None = None
        self.stage_start = self.last = time.monotonic()
        self.stage_done = False
        self.loss_sum, self.loss_n = 0.0, 0

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, stage: str, fraction: float, detail) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start, self.last, self.stage_done = stage, now, now, False
            self._line(f"{stage}: started")
        if detail is None:
            finished = fraction >= 1.0
            if finished and self.stage_done:
                return
            if finished or now - self.last >= self.interval:
                self.last, self.stage_done = now, finished
                elapsed = now - self.stage_start
                if finished:
                    self._line(f"{stage}: done, elapsed {_hms(elapsed)}")
                    return
                eta = f", ETA {_hms(elapsed * (1 - fraction) / fraction)}" if fraction > 0 else ""
                self._line(f"{stage}: {100 * fraction:.0f}%, elapsed {_hms(elapsed)}{eta}")
            return
        if detail.step == 1:
            self.loss_sum, self.loss_n = 0.0, 0
        self.loss_sum += detail.loss
        self.loss_n += 1
        end_of_epoch = detail.step == detail.steps_per_epoch
        if not (end_of_epoch or now - self.last >= self.interval):
            return
        self.last = now
        done = (detail.epoch - 1) * detail.steps_per_epoch + detail.step
        left = detail.epochs * detail.steps_per_epoch - done
        speed = detail.steps_per_second
        eta = _hms(left / speed) if speed > 0 else "?"
        where = f"epoch {detail.epoch}/{detail.epochs}"
        if end_of_epoch:
            what = f"{where} done, mean loss {self.loss_sum / max(self.loss_n, 1):.4f}"
        else:
            what = f"{where}, step {detail.step}/{detail.steps_per_epoch}, loss {detail.loss:.4f}"
        self._line(
            f"{stage}: {what}, {speed:.2f} steps/s, elapsed {_hms(detail.elapsed)}, ETA {eta}"
        )


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C during a correction, with the last training progress of each stage."""

    def __init__(self, seen: dict) -> None:
        super().__init__()
        self.seen = seen


def _resume_command_line() -> str:
    """This command line again, with ``--resume``."""
    import shlex

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


def _interrupted_message(seen: dict, distributed: bool) -> str:
    """Where the last checkpoint is and how to resume, after Ctrl-C."""
    import os

    if not seen:
        return "interrupted before the training started; nothing to resume, rerun the command"
    last = list(seen.values())[-1]
    saved = [d.checkpoint for d in seen.values() if d.checkpoint and Path(d.checkpoint).exists()]
    where = f"interrupted during epoch {last.epoch} of {last.epochs}"
    if not saved:
        return f"{where}, before the first checkpoint; nothing to resume, rerun the command"
    how = (
        "add --resume to the same launch command"
        if distributed
        else f"run, from {os.getcwd()}:\n  {_resume_command_line()}"
    )
    return (
        f"{where}; the last checkpoint (written after every epoch) is "
        f"{' and '.join(saved)}\nTo continue from it, {how}"
    )


@contextmanager
def _reconstruct_lock(output_dir: Path):
    """Hold --output-dir for this run (on rank 0 only: the ranks share one run), unless
    the process that launched this rank holds it already (``--gpus`` / ``--processes``)."""
    import os

    from ._outputs import output_lock
    from .nn.distributed import launched_world

    held = os.environ.get("SPISONET_HELD_OUTPUT_DIR")
    if not launched_world().is_main or held == str(Path(output_dir).resolve()):
        yield
        return
    with output_lock(output_dir, "reconstruct", "--output-dir"):
        yield


def _check_output_dir_early(output_dir: Path) -> None:
    """--output-dir writable and not held by another run, told in the first second. Only
    where this process would take the lock: not on ranks > 0 (torchrun, srun) nor in ranks
    whose launching process holds it."""
    import os

    from ._outputs import check_output_dir, check_output_lock

    check_output_dir(output_dir, "--output-dir")
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    if rank.strip() == "0" and not os.environ.get("SPISONET_HELD_OUTPUT_DIR"):
        check_output_lock(output_dir, "reconstruct", "--output-dir")


@contextmanager
def _lock_for_ranks(output_dir: Path):
    """``--gpus`` / ``--processes``: this launching process holds --output-dir for the
    ranks it starts (they inherit SPISONET_HELD_OUTPUT_DIR and do not lock it again)."""
    import os

    from ._outputs import output_lock

    with output_lock(output_dir, "reconstruct", "--output-dir") as folder:
        before = os.environ.get("SPISONET_HELD_OUTPUT_DIR")
        os.environ["SPISONET_HELD_OUTPUT_DIR"] = str(folder.resolve())
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("SPISONET_HELD_OUTPUT_DIR", None)
            else:
                os.environ["SPISONET_HELD_OUTPUT_DIR"] = before


@contextmanager
def _training_progress(console):
    """A rich bar for the correction; yields a ``(stage, fraction, detail)`` callback.

    When the output is not a terminal (a log file under nohup or SLURM), plain lines
    instead: see :class:`_PlainProgress`.
    """
    if not console.is_terminal:
        yield _PlainProgress(console, _progress_interval())
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, fraction: float, detail) -> None:
            if stage not in tasks:
                for t in tasks.values():
                    bar.update(t, completed=1.0)
                tasks[stage] = bar.add_task(stage, total=1.0, info="")
            info = ""
            if detail is not None:
                info = (
                    f"epoch {detail.epoch}/{detail.epochs} step {detail.step}/"
                    f"{detail.steps_per_epoch} loss {detail.loss:.4f} "
                    f"{detail.steps_per_second:.2f} steps/s"
                )
            bar.update(tasks[stage], completed=min(max(fraction, 0.0), 1.0), info=info)

        yield update
        for t in tasks.values():
            bar.update(t, completed=1.0)


def _run_reconstruct(console, **kwargs):
    """Call :func:`spisonet.correct.reconstruct` with a progress bar; print the summary."""
    from .correct import reconstruct

    seen: dict = {}  # stage -> its last TrainProgress

    with _reconstruct_lock(kwargs["output_dir"]), _training_progress(console) as bar:

        def update(stage: str, fraction: float, detail) -> None:
            bar(stage, fraction, detail)
            if detail is not None:
                if stage not in seen and detail.resumed_from_epoch:
                    console.print(
                        f"{stage}: resumed from epoch {detail.resumed_from_epoch} "
                        f"(checkpoint {detail.checkpoint})",
                        markup=False,
                    )
                seen[stage] = detail

        try:
            outputs = reconstruct(progress=update, **kwargs)
        except KeyboardInterrupt as exc:
            raise _Interrupted(seen) from exc
    res = outputs.result
    for note in res.notes:
        console.print(f"  • {note}")
    for t in res.train:
        if t.get("steps"):
            console.print(
                f"  trained {t['steps']} steps in {t['seconds']:.1f} s "
                f"({t['steps_per_second']:.2f} steps/s, {t['device']}, {t['dtype']})"
            )
        elif t.get("resumed_from_epoch"):
            console.print(
                f"  resumed from epoch {t['resumed_from_epoch']}: every epoch was already "
                "done, nothing left to train"
            )
    if res.trust is not None:
        colour = {"good": "green", "partial": "yellow", "low": "red"}.get(res.trust.verdict, "")
        score = "n/a" if res.trust.score is None else f"{round(100 * res.trust.score)} %"
        line = f"trust check: {score} ({res.trust.verdict})"
        console.print(f"  [bold {colour}]{line}[/] — {res.trust.message}" if colour else line)
    extra = [outputs.trust_figure] if outputs.trust_figure is not None else []
    extra += [outputs.fsc3d] if outputs.fsc3d is not None else []
    for p in [*outputs.corrected, *outputs.filtered, *outputs.models, *outputs.losses, *extra]:
        console.print(f"  wrote {p}")
    console.print(f"  wrote {outputs.report} (settings, decisions and timings)")
    return outputs


@app.command("reconstruct")
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
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="gpu (published defaults) | cpu (64³: ~9 min on a quiet 2-core CPU with "
            "native bf16, ~40 min on an AVX2-only one) | tiny (tests) | "
            "auto (gpu when a CUDA GPU is present, else cpu).",
        ),
    ] = "auto",
    limit_res: Annotated[
        float | None,
        typer.Option(
            "--limit-res",
            "--limit_res",
            help="Correct only below this resolution (Å); higher frequencies are kept.",
        ),
    ] = None,
    n_subvolume: Annotated[
        int | None,
        typer.Option("--n-subvolume", "--n_subvolume", help="Number of training cubes."),
    ] = None,
    cube_size: Annotated[
        int | None, typer.Option("--cube-size", "--cube_size", help="Training cube edge.")
    ] = None,
    predict_crop_size: Annotated[
        int | None,
        typer.Option(
            "--predict-crop-size", "--predict_crop_size", help="Tile edge for prediction."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "--batch_size", help="Cubes per step.")
    ] = None,
    acc_batches: Annotated[
        int | None,
        typer.Option(
            "--acc-batches", "--acc_batches", help="Micro-batches per step (accumulation)."
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", "--learning_rate", help="AdamW learning rate."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Passes over the training cubes (0 with --pretrained-model: predict)."),
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Weight of the equivariance loss.")] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of the Noise2Noise terms.")] = None,
    presence_threshold: Annotated[
        float | None,
        typer.Option(
            "--presence-threshold",
            "--presence_threshold",
            help="Count a Fourier region as measured only where its power reaches this "
            "fraction of its shell's 90th percentile (default 0.1; 0: the public tool's "
            "W, which reads a masked, unsampled cone as measured).",
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Reference map whose low frequencies replace the halves'."),
    ] = None,
    ref_resolution: Annotated[
        float | None,
        typer.Option(
            "--ref-resolution", "--ref_resolution", help="Å below which the reference is used."
        ),
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
    independent: Annotated[
        bool,
        typer.Option("--independent", help="One network per half map (gold-standard safe)."),
    ] = False,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda[:N].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="Use torch.compile (opt-in; slow start).")
    ] = False,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Train on these GPUs of this node, one process each (e.g. 0,1,2,3); "
            "spawned with torch's elastic launcher. Under torchrun, leave it out.",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            help="Train with this many CPU processes (gloo), spawned like --gpus.",
        ),
    ] = None,
    apix: ApixOption = None,
) -> None:
    """Correct preferred-orientation anisotropy: train the network and write corrected maps."""
    _check_output_dir_early(output_dir)  # before the slow imports (torch)
    from .nn.distributed import launched_world

    world = launched_world()
    if (gpus or processes) and not world.distributed:
        with _lock_for_ranks(output_dir):
            _launch_local(gpus, processes)
        return
    console = _console() if world.is_main else _quiet_console()
    import torch

    from .correct import preset_settings

    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
        console.print(
            f"Preset [bold]{preset}[/bold] "
            f"({'a CUDA GPU is present' if preset == 'gpu' else 'no CUDA GPU found'})"
        )
    settings = preset_settings(
        preset,
        limit_res=limit_res,
        n_subvolume=n_subvolume,
        cube_size=cube_size,
        predict_crop_size=predict_crop_size,
        batch_size=batch_size,
        acc_batches=acc_batches,
        learning_rate=learning_rate,
        epochs=epochs,
        alpha=alpha,
        beta=beta,
        presence_threshold=presence_threshold,
        ref_resolution=ref_resolution,
        device=device,
        seed=seed,
        independent=independent or None,
        compile=compile_model or None,
    )
    if reference is not None and ref_resolution is None:
        console.print(f"Reference below {settings.ref_resolution:g} Å (default)")
    from .nn.distributed import check_batch_layout, init_from_environment, shutdown
    from .nn.train import resolve_device

    if world.distributed:
        # one clear line before any work when the batch cannot be split over the ranks
        check_batch_layout(settings.batch_size, settings.acc_batches, world.size)
        init_from_environment(resolve_device(settings.device))
        console.print(
            f"Data-parallel training on {world.size} processes "
            f"(global batch {settings.batch_size}, {settings.batch_size // world.size} per "
            "process); rank 0 writes the outputs"
        )
    try:
        _run_reconstruct(
            console,
            half1=half1,
            half2=half2,
            aniso_file=aniso_file,
            mask=mask,
            output_dir=output_dir,
            settings=settings,
            reference=reference,
            pretrained_model=pretrained_model,
            resume=resume,
            voxel_size=apix,
        )
    except torch.cuda.OutOfMemoryError as exc:
        from .errors import DeviceMemoryError

        raise DeviceMemoryError(
            f"the GPU ran out of memory ({str(exc).splitlines()[0]}); lower --batch-size "
            "or raise --acc-batches (same result, less memory), or use a smaller "
            "--cube-size / --predict-crop-size; nothing was written"
        ) from exc
    except _Interrupted as stop:
        if world.is_main:
            print(_interrupted_message(stop.seen, world.distributed), file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    finally:
        shutdown()


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


def _launch_local(gpus: str | None, processes: int | None) -> None:
    """Start one training process per GPU (or CPU process) with torch's elastic launcher."""
    import os

    from .errors import InvalidValueError

    if gpus:
        try:
            ids = [int(g) for g in gpus.split(",") if g.strip() != ""]
        except ValueError as exc:
            raise InvalidValueError(
                f"--gpus must be a comma-separated list of GPU numbers, got {gpus!r}"
            ) from exc
        if not ids:
            raise InvalidValueError("--gpus is empty")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        n = len(ids)
    else:
        n = int(processes or 1)
        if n < 1:
            raise InvalidValueError(f"--processes must be ≥ 1, got {n}")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv = _argv_without(sys.argv[1:], ("--gpus", "--processes"))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"spisonet-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    elastic_launch(config, _worker)(argv)


def _argv_without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--x v`` or ``--x=v``)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options):
            continue
        out.append(a)
    return out


def _worker(argv: list[str]) -> None:
    """One rank started by :func:`_launch_local`: run the command line again."""
    from typer.main import get_command

    get_command(app)(args=argv, standalone_mode=False)


# --------------------------------------------------------------------------------------
# anisotropy diagnostics


def _report_paths(prefix: Path) -> tuple[Path, Path]:
    """``<prefix>_report.png`` and ``<prefix>_report.json``."""
    return (
        prefix.with_name(f"{prefix.name}_report.png"),
        prefix.with_name(f"{prefix.name}_report.json"),
    )


def _anisotropy_table(rep):
    """A rich table of the figures of an AnisotropyReport."""
    import math

    from rich.table import Table

    from .anisotropy import direction_to_relion

    table = Table(title="Anisotropy diagnostics", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    g = rep.global_fsc
    table.add_row(
        "global resolution at FSC 0.143 / 0.5", f"{g.resolution_0143:.2f} / {g.resolution_05:.2f} Å"
    )
    # "worst"/"best" always mean the named directions (centres of the worst/best regions);
    # the coarsest/finest single cones are shown as the single-cone range (docs/method.md)
    distinct = rep.directions_distinguishable
    for threshold in ("0.143", "0.5"):
        st = rep.stats(threshold)
        res = rep.resolution_0143 if threshold == "0.143" else rep.resolution_05
        if distinct:
            table.add_row(
                f"directional {threshold}: worst / best direction",
                f"{res[rep.worst_index]:.2f} / {res[rep.best_index]:.2f} Å",
            )
        table.add_row(
            f"directional {threshold}: single-cone range",
            f"{st['min']:.2f} – {st['max']:.2f} Å",
        )
        table.add_row(
            f"directional {threshold}: mean ± std", f"{st['mean']:.2f} ± {st['std']:.2f} Å"
        )
    sph = "undefined" if not math.isfinite(rep.sphericity) else f"{rep.sphericity:.3f}"
    table.add_row(f"sphericity (3DFSC binarised at {rep.sphericity_threshold:g})", sph)
    table.add_row("area ratio (worst / best cone)", f"{rep.area_ratio:.3f}")
    if not distinct:
        table.add_row("worst / best direction", rep.distinguishability_note())
        return table
    for name, idx in (("worst", rep.worst_index), ("best", rep.best_index)):
        v = rep.directions[idx]
        tilt, rot = direction_to_relion(v)
        table.add_row(f"{name} direction (x, y, z)", f"({v[0]:+.2f}, {v[1]:+.2f}, {v[2]:+.2f})")
        table.add_row(
            "  tilt / rot, resolution at 0.143",
            f"{float(tilt):.1f}° / {float(rot):.1f}°, {rep.resolution_0143[idx]:.2f} Å",
        )
    return table


def _anisotropy_outputs(h1, h2, m, prefix: Path, n_directions: int, cone_angle: float, console):
    """Run the diagnostics on loaded maps, write the PNG + JSON, print the table."""
    from .anisotropy import analyse_anisotropy
    from .report import anisotropy_figure, write_json

    t0 = time.perf_counter()
    with _progress("anisotropy") as update:
        rep = analyse_anisotropy(
            h1.data,
            h2.data,
            voxel_size=h1.voxel_size,
            mask=None if m is None else m.data,
            n_directions=n_directions,
            cone_angle_deg=cone_angle,
            progress=lambda stage, fraction: update(fraction),
        )
    png, js = _report_paths(prefix)
    anisotropy_figure(rep, png)
    data = rep.to_dict()
    data["inputs"] = {
        "half1": h1.name,
        "half2": h2.name,
        "mask": None if m is None else m.name,
    }
    write_json(js, data)
    console.print(_anisotropy_table(rep))
    console.print(
        f"{rep.n_directions} cones of {cone_angle:g}° in {time.perf_counter() - t0:.1f} s. "
        f"Wrote [bold]{png}[/bold] and [bold]{js}[/bold]"
    )
    return rep


@app.command("anisotropy")
def anisotropy_command(
    half1: Annotated[Path, typer.Argument(help="Half map 1 (MRC).")],
    half2: Annotated[Path, typer.Argument(help="Half map 2 (MRC).")],
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Soft mask (MRC).")] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            "--o",
            help="Prefix of the outputs: <PREFIX>_report.png and <PREFIX>_report.json.",
        ),
    ] = Path("anisotropy"),
    n_directions: Annotated[
        int,
        typer.Option(
            "--n-directions", "--n_directions", help="Cone directions over the half sphere."
        ),
    ] = 500,
    cone_angle: Annotated[
        float,
        typer.Option("--cone-angle", "--cone_angle", help="Cone half-angle in degrees."),
    ] = 20.0,
    apix: ApixOption = None,
) -> None:
    """Anisotropy diagnostics only: conical FSC, directional resolution, sphericity, report."""
    from ._outputs import check_output_file

    check_output_file(_report_paths(output)[0], "-o")
    console = _console()
    h1, h2, m = _load_pair(half1, half2, mask, apix)
    if m is None:
        console.print("[yellow]No mask given: using the whole box. A soft mask is recommended.")
    console.print(f"Box {h1.box}³ at {h1.voxel_size:.3f} Å/voxel (masked: {m is not None})")
    _anisotropy_outputs(h1, h2, m, output, n_directions, cone_angle, console)


# --------------------------------------------------------------------------------------
# fsd3d


@app.command("fsd3d")
def fsd3d_command(
    star: Annotated[Path, typer.Argument(help="RELION particles STAR file (3.0 or 3.1+).")],
    box: Annotated[
        int, typer.Option("--box", "--map-dim", "--map_dim", help="Box size in voxels.")
    ],
    apix: Annotated[float, typer.Option("--apix", "--voxel-size", help="Voxel size in Å.")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O or I.")] = "C1",
    output: Annotated[
        Path, typer.Option("--output", "-o", "--o", help="Output sampling-density map.")
    ] = Path("FSD3D.mrc"),
    low_res: Annotated[
        float | None,
        typer.Option("--low-res", "--low_res", help="Shells coarser than this (Å) are set to 1."),
    ] = None,
    high_res: Annotated[
        float | None,
        typer.Option(
            "--high-res",
            "--high_res",
            help="Shells finer than this (Å) are set to 0 (default: Nyquist).",
        ),
    ] = None,
) -> None:
    """Fourier sampling density (FSD3D.mrc) of a particle set, plus a sampling report."""
    from rich.table import Table

    from .fsd3d import direction_histogram, fourier_shell_density, scf_curve
    from .io import read_star_angles, write_map
    from .report import sampling_figure, write_json
    from .symmetry import group_order

    group_order(sym)  # refuse an unknown or oversized point group before reading anything
    from ._outputs import check_output_file

    check_output_file(output, "-o")
    console = _console()
    angles = read_star_angles(star)
    t0 = time.perf_counter()
    with _progress("FSD3D") as update:
        fsd = fourier_shell_density(
            angles, box, voxel_size=apix, sym=sym, low_res=low_res, high_res=high_res
        )
        update(0.5)
        raw = fourier_shell_density(angles, box, voxel_size=apix, sym=sym, normalize=False)
        update(0.9)
        hist = direction_histogram(angles, sym=sym)
        scf = scf_curve(raw)
    write_map(output, fsd, voxel_size=apix)
    png, js = _report_paths(output.with_suffix(""))
    sampling_figure(hist, scf, fsd, apix, png, sym=sym)
    shells = list(range(scf.size))
    write_json(
        js,
        {
            "star": str(star),
            "n_particles": hist.n_particles,
            "sym": sym,
            "group_order": hist.group_order,
            "box": int(box),
            "voxel_size_A": float(apix),
            "empty_direction_fraction": hist.empty_fraction,
            "direction_max_over_mean": hist.max_over_mean,
            "scf": {
                "shell": shells,
                "resolution_A": [box * apix / s if s else None for s in shells],
                "value": scf,
            },
            "directions": {
                "tilt_deg": hist.tilt_deg,
                "rot_deg": hist.rot_deg,
                "fraction": hist.fraction,
            },
        },
    )
    table = Table(title="Fourier sampling", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("particles × symmetry copies", f"{hist.n_particles} × {hist.group_order}")
    table.add_row(
        f"directions with no view ({hist.counts.size} over the half sphere)",
        f"{100 * hist.empty_fraction:.1f} %",
    )
    table.add_row("peak / mean views per direction", f"{hist.max_over_mean:.1f}")
    for s in sorted({max(1, box // 8), max(1, box // 4), max(1, 3 * box // 8)}):
        table.add_row(f"SCF-like figure at {box * apix / s:.1f} Å (1 = uniform)", f"{scf[s]:.3f}")
    console.print(table)
    console.print(
        f"Done in {time.perf_counter() - t0:.1f} s. Wrote [bold]{output}[/bold], "
        f"[bold]{png}[/bold] and [bold]{js}[/bold]"
    )


# --------------------------------------------------------------------------------------
# map tools


@app.command("whitening")
def whitening_command(
    input_map: Annotated[Path, typer.Argument(help="Map to whiten (MRC).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            "--o",
            "--output-map",
            "--output_map",
            help="Output map (default: <input>_whitened.mrc next to the input).",
        ),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Mask for the amplitude spectrum.")
    ] = None,
    low_res: Annotated[
        float, typer.Option("--low-res", "--low_res", help="Band start (Å).")
    ] = 10.0,
    high_res: Annotated[
        float, typer.Option("--high-res", "--high_res", help="Band end (Å).")
    ] = 3.0,
    apix: ApixOption = None,
) -> None:
    """Flatten the radial Fourier amplitude of a map between --low-res and --high-res."""
    from ._outputs import check_output_file
    from .io import check_mask, read_map, write_map
    from .maps import whiten

    if output is None:
        output = input_map.with_name(f"{input_map.stem}_whitened.mrc")
    check_output_file(output, "-o")
    console = _console()
    vol = read_map(input_map, voxel_size=apix)
    m = None
    if mask is not None:
        m = read_map(mask, voxel_size=apix)
        check_mask(m, vol)
    out = whiten(
        vol.data,
        vol.voxel_size,
        mask=None if m is None else m.data,
        low_res=low_res,
        high_res=high_res,
    )
    write_map(output, out, like=vol)
    console.print(
        f"Whitened {input_map} between {low_res:g} and {high_res:g} Å; wrote [bold]{output}[/bold]"
    )


@app.command("combine-map")
@app.command("combine_map", hidden=True)
def combine_map_command(
    low_map: Annotated[Path, typer.Argument(help="Map giving the low frequencies (MRC).")],
    high_map: Annotated[Path, typer.Argument(help="Map giving the high frequencies (MRC).")],
    out_map: Annotated[Path, typer.Argument(help="Output map (MRC).")],
    threshold_res: Annotated[float, typer.Argument(help="Hand-over resolution (Å).")],
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Mask for the amplitude spectra.")
    ] = None,
    apix: ApixOption = None,
) -> None:
    """Low frequencies (below THRESHOLD_RES) from LOW_MAP, the rest from HIGH_MAP."""
    import numpy as np

    from ._outputs import check_output_file
    from .errors import MapMismatchError
    from .io import check_mask, read_map, write_map
    from .maps import combine_map

    check_output_file(out_map, "OUT_MAP")
    console = _console()
    lo = read_map(low_map, voxel_size=apix)
    hi = read_map(high_map, voxel_size=apix)
    if lo.data.shape != hi.data.shape:
        raise MapMismatchError(
            f"{high_map}: shape {hi.data.shape} differs from {low_map} {lo.data.shape}; "
            "both maps must have the same box"
        )
    if not np.isclose(lo.voxel_size, hi.voxel_size, rtol=1e-3, atol=1e-4):
        raise MapMismatchError(
            f"{high_map}: voxel size {hi.voxel_size:.4f} Å differs from {low_map} "
            f"{lo.voxel_size:.4f} Å; both maps must have the same sampling"
        )
    m = None
    if mask is not None:
        m = read_map(mask, voxel_size=apix)
        check_mask(m, hi)
    out = combine_map(
        lo.data, hi.data, threshold_res, hi.voxel_size, mask=None if m is None else m.data
    )
    write_map(out_map, out, like=hi)
    console.print(
        f"Combined {low_map} (below {threshold_res:g} Å) with {high_map}; "
        f"wrote [bold]{out_map}[/bold]"
    )


# --------------------------------------------------------------------------------------
# relion-reconstruct (RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE)


@app.command("relion-reconstruct")
@app.command("relion_reconstruct", hidden=True)
def relion_reconstruct_command(
    star: Annotated[
        Path, typer.Argument(help="RELION's *_external_reconstruct.star (relative to the cwd).")
    ],
    no_correction: Annotated[
        bool,
        typer.Option(
            "--no-correction", "--no_correction", help="Write RELION's plain reconstruction."
        ),
    ] = False,
    keep_inputs: Annotated[
        bool,
        typer.Option(
            "--keep-inputs",
            "--keep_inputs",
            help="Keep RELION's data/weight MRC files (deleted by default after use).",
        ),
    ] = False,
) -> None:
    """Reconstruct one RELION external-reconstruction job (what relion_refine calls).

    Writes the map RELION reads back, exactly as relion_external_reconstruct would (plus
    the correction, when enabled). Exit code 0 unless even the plain map failed.
    """
    from .relion import resolve_correction, run_external_reconstruct

    run_external_reconstruct(
        star,
        correction=None if no_correction else resolve_correction(True),
        keep_inputs=keep_inputs,
    )


# --------------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 2."""
    from .errors import SpisonetError

    try:
        app()
    except SpisonetError as exc:
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold red]error:[/bold red] {exc}"
        )
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
