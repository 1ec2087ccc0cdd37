"""``spisonet tomo ...``: missing-wedge correction and denoising of cryo-ET tomograms.

The steps, each a command over the tomogram list (docs/tomo.md): ``simulate`` (test data
with ground truth), ``prepare`` (write the list), ``deconv`` (CTF deconvolution),
``make-mask`` (where to train), ``refine`` (train), ``predict`` (correct whole tomograms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidValueError
from . import launch
from ._app import _Group, app, make_console
from ._options import int_list
from ._progress import console_progress

__all__ = ["tomo_app"]

tomo_app = typer.Typer(
    name="tomo",
    help="Cryo-ET tomograms: correct the missing wedge and denoise (IsoNet's method).",
    cls=_Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(tomo_app, name="tomo")

ListArgument = Annotated[
    Path, typer.Argument(help="The tomogram list (TOML) written by spisonet tomo prepare.")
]


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise InvalidValueError(
            f"{what} must be two numbers separated by a comma (e.g. -60,60); got {text!r}"
        ) from exc
    return lo, hi


@tomo_app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "tomo_simulated"
    ),
    shape: Annotated[
        str, typer.Option(help="Tomogram size Z,Y,X in voxels (Z: the thickness).")
    ] = "64,128,128",
    voxel_size: Annotated[float, typer.Option("--voxel-size", help="Å per voxel.")] = 10.0,
    tilt_range: Annotated[
        str, typer.Option("--tilt-range", help="Tilt range min,max in degrees.")
    ] = "-60,60",
    tilt_step: Annotated[float, typer.Option("--tilt-step", help="Tilt step, degrees.")] = 3.0,
    snr: Annotated[float, typer.Option(help="Signal-to-noise ratio per tilt image.")] = 0.5,
    defocus: Annotated[
        float | None, typer.Option(help="Defocus in µm (underfocus): adds a CTF.")
    ] = None,
    membrane: Annotated[bool, typer.Option(help="Add a vesicle membrane.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Simulate an even/odd tomogram pair with its ground truth (real projection and
    back-projection over the tilt range) and the tomogram list for the next steps."""
    from ..tomo.files import simulate_to_files

    console = make_console()
    lo, hi = _pair(tilt_range, "--tilt-range")
    dims = int_list(shape)
    if len(dims) != 3:
        raise InvalidValueError(f"--shape must be Z,Y,X (three numbers); got {shape!r}")
    with console_progress(console) as progress:
        paths = simulate_to_files(
            out,
            shape=dims,
            voxel_size=voxel_size,
            tilt_min=lo,
            tilt_max=hi,
            tilt_step=tilt_step,
            snr=snr,
            defocus=defocus,
            membrane=membrane,
            seed=seed,
            progress=progress,
        )
    for p in paths.values():
        console.print(f"  wrote {p}")
    console.print(f"next: spisonet tomo make-mask {paths['list']} -o {out}")


@tomo_app.command("prepare")
def prepare_command(
    tomogram_list: ListArgument = Path("tomograms.toml"),
    even: Annotated[Path | None, typer.Option(help="Even tomogram (MRC).")] = None,
    odd: Annotated[Path | None, typer.Option(help="Odd tomogram (MRC) of the same area.")] = None,
    tomogram: Annotated[
        Path | None, typer.Option(help="A single tomogram (no Noise2Noise) instead.")
    ] = None,
    star: Annotated[
        Path | None, typer.Option(help="Import a RELION 5 tomograms.star instead.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name (default: the file's).")] = None,
    voxel_size: Annotated[
        float | None, typer.Option("--voxel-size", help="Å per voxel (default: the header's).")
    ] = None,
    tilt_range: Annotated[
        str, typer.Option("--tilt-range", help="Tilt range min,max in degrees.")
    ] = "-60,60",
    tilt_axis: Annotated[
        float, typer.Option("--tilt-axis", help="Tilt axis, degrees from y towards x.")
    ] = 0.0,
    defocus: Annotated[
        float | None, typer.Option(help="Defocus in µm (underfocus), for deconv.")
    ] = None,
    voltage: Annotated[float, typer.Option(help="kV.")] = 300.0,
    cs: Annotated[float, typer.Option("--cs", help="Spherical aberration, mm.")] = 2.7,
    amplitude_contrast: Annotated[
        float, typer.Option("--amplitude-contrast", help="Amplitude contrast.")
    ] = 0.07,
    append: Annotated[bool, typer.Option(help="Add to an existing list.")] = False,
) -> None:
    """Write (or extend) the tomogram list: even/odd pairs or single tomograms, their
    voxel size, tilt range and axis, defocus; or import a RELION 5 tomograms.star."""
    from ..tomo.files import entry_from_options, prepare_list

    console = make_console()
    entries = []
    if even is not None or odd is not None or tomogram is not None:
        lo, hi = _pair(tilt_range, "--tilt-range")
        entries.append(
            entry_from_options(
                name,
                even=even,
                odd=odd,
                tomogram=tomogram,
                voxel_size=voxel_size,
                tilt_min=lo,
                tilt_max=hi,
                tilt_axis=tilt_axis,
                defocus=defocus,
                voltage=voltage,
                spherical_aberration=cs,
                amplitude_contrast=amplitude_contrast,
            )
        )
    written, notes = prepare_list(tomogram_list, entries=entries, star=star, append=append)
    for note in notes:
        console.print(f"  • {note}")
    for e in written:
        kind = "even/odd" if e.paired else "single"
        console.print(
            f"  {e.name}: {kind}, {e.voxel_size:g} Å, tilts {e.tilt_min:g}…{e.tilt_max:g}°"
            + (f", defocus {e.defocus:g} µm" if e.defocus is not None else "")
        )
    console.print(f"  wrote {tomogram_list}")


@tomo_app.command("deconv")
def deconv_command(
    tomogram_list: ListArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("deconv"),
    snr_falloff: Annotated[
        float, typer.Option("--snr-falloff", help="How fast the assumed SNR falls.")
    ] = 1.0,
    deconv_strength: Annotated[
        float, typer.Option("--deconv-strength", help="Strength of the deconvolution.")
    ] = 1.0,
    highpass_nyquist: Annotated[
        float, typer.Option("--highpass-nyquist", help="High-pass up to this Nyquist fraction.")
    ] = 0.02,
    phase_shift: Annotated[float, typer.Option("--phase-shift", help="Degrees.")] = 0.0,
) -> None:
    """CTF-deconvolve each tomogram that has a defocus (a Wiener-like filter with an SNR
    fall-off, as IsoNet does); the list then points refine and predict at the results."""
    from ..tomo.files import deconv_tomograms

    console = make_console()
    with console_progress(console) as progress:
        written, notes = deconv_tomograms(
            tomogram_list,
            out,
            snr_falloff=snr_falloff,
            deconv_strength=deconv_strength,
            highpass_nyquist=highpass_nyquist,
            phase_shift=phase_shift,
            progress=progress,
        )
    for note in notes:
        console.print(f"  • {note}")
    for p in written:
        console.print(f"  wrote {p}")


@tomo_app.command("make-mask")
def make_mask_command(
    tomogram_list: ListArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("masks"),
    density_percentage: Annotated[
        float, typer.Option("--density-percentage", help="Keep this % by local density.")
    ] = 50.0,
    std_percentage: Annotated[
        float, typer.Option("--std-percentage", help="Keep this % by local std.")
    ] = 50.0,
    patch_size: Annotated[int, typer.Option("--patch-size", help="Local window, voxels.")] = 4,
    z_crop: Annotated[
        float, typer.Option("--z-crop", help="Fraction of Z left out at top and bottom.")
    ] = 0.0,
) -> None:
    """A training mask per tomogram: empty ice, carbon and gold are left out."""
    from ..tomo.files import make_masks

    console = make_console()
    with console_progress(console) as progress:
        done = make_masks(
            tomogram_list,
            out,
            density_percentage=density_percentage,
            std_percentage=std_percentage,
            patch_size=patch_size,
            z_crop=z_crop,
            progress=progress,
        )
    for path, kept in done:
        console.print(f"  wrote {path} ({100 * kept:.0f} % of the tomogram kept)")


@tomo_app.command("refine")
def refine_command(
    tomogram_list: ListArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("tomo_refine"),
    preset: Annotated[
        str, typer.Option(help="gpu | cpu | tiny | auto (gpu with a CUDA GPU, else cpu).")
    ] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Passes over the cubes.")] = None,
    n_subvolume: Annotated[
        int | None, typer.Option("--n-subvolume", help="Training cubes.")
    ] = None,
    cube_size: Annotated[int | None, typer.Option("--cube-size", help="Cube edge.")] = None,
    widths: Annotated[
        str | None, typer.Option(help="U-Net channel widths per level, comma-separated.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Cubes per step.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="AdamW learning rate.")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Weight of equivariance.")] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of Noise2Noise.")] = None,
    self_weight: Annotated[
        float | None,
        typer.Option(
            "--self-weight",
            help="Even/odd: weight of each half's consistency with itself (1, the "
            "default, as spIsoNet; 0 = pure Noise2Noise in the measured region).",
        ),
    ] = None,
    soft_edge: Annotated[
        float, typer.Option("--soft-edge", help="Soft edge of the wedge, degrees.")
    ] = 0.0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    pretrained_model: Annotated[
        Path | None, typer.Option("--pretrained-model", help="Start from this model file.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Train on these GPUs of this node, one process each (e.g. 0,1); under "
            "torchrun, leave it out (docs/scaling.md).",
        ),
    ] = None,
    processes: Annotated[
        int | None, typer.Option("--processes", help="Train with this many CPU processes.")
    ] = None,
) -> None:
    """Train the network on the tomograms (inside their masks), the missing wedge as W;
    even/odd pairs also train Noise2Noise denoising."""
    from ..correction.settings import resolve_preset
    from ..tomo.files import refine
    from ..tomo.network import tomo_settings
    from .reconstruct import (
        Interrupted,
        _out_of_gpu_memory_as_user_error,
        _resume_hint_on_ctrl_c,
    )

    launch.check_output_dir_early(out)  # before the slow imports (torch)
    world = launch.launched_world()
    if (gpus or processes) and not world.distributed:
        launch.run_ranks(gpus, processes, out)  # the ranks run this command again
        return
    console = make_console(quiet=not world.is_main)
    name, why = resolve_preset(preset)
    if why:
        console.print(f"Preset [bold]{name}[/bold] ({why})")
    settings = tomo_settings(
        name,
        epochs=epochs,
        n_subvolume=n_subvolume,
        cube_size=cube_size,
        widths=int_list(widths) if widths else None,
        batch_size=batch_size,
        learning_rate=learning_rate,
        alpha=alpha,
        beta=beta,
        self_weight=self_weight,
        seed=seed,
        device=device,
    )
    with (
        launch.distributed_training(world, settings, console),
        _resume_hint_on_ctrl_c(world.is_main, world.distributed),
        _out_of_gpu_memory_as_user_error(),
        launch.output_dir_lock(out),
        console_progress(console) as progress,
    ):
        try:
            result = refine(
                tomogram_list,
                out,
                settings,
                soft_edge=soft_edge,
                resume=resume,
                pretrained=pretrained_model,
                progress=progress,
            )
        except KeyboardInterrupt as exc:
            raise Interrupted(progress.training) from exc
    if result is None:  # a rank other than 0: rank 0 reports
        return
    for note in result.notes:
        console.print(f"  • {note}")
    rate = result.steps / result.seconds if result.seconds > 0 else 0.0
    console.print(
        f"  trained {result.steps} steps on {result.n_cubes} cubes in {result.seconds:.1f} s "
        f"({rate:.2f} steps/s; {'even/odd Noise2Noise' if result.paired else 'single'})"
    )
    for p in (result.model, result.loss_figure, result.report):
        if p is not None:
            console.print(f"  wrote {p}")
    console.print(f"next: spisonet tomo predict {tomogram_list} {result.model} -o corrected")


@tomo_app.command("predict")
def predict_command(
    tomogram_list: ListArgument,
    model: Annotated[Path, typer.Argument(help="The model file written by refine.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("corrected"),
    preset: Annotated[
        str,
        typer.Option(help="Tile sizes and batch of this preset (the cube comes from the model)."),
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Only this tomogram (repeatable).")
    ] = None,
    memory: Annotated[
        float, typer.Option("--memory", help="MiB per input slab (peak ≈ 3 slabs per input).")
    ] = 1024.0,
    keep_measured_low: Annotated[
        bool,
        typer.Option(
            "--keep-measured-low/--network-low",
            help="Take the measured frequencies longer than the training cube (and, with a "
            "defocus, those from just below the CTF's first zero up; docs/tomo.md) from the "
            "input (default; the network never saw them whole / the data hold no signal "
            "there) or from the network.",
        ),
    ] = True,
) -> None:
    """Correct whole tomograms with the trained network, streaming slab by slab (a
    1000 × 1000 × 300 tomogram fits in a few GiB); outputs keep the input's header."""
    from ..correction.settings import resolve_preset
    from ..tomo.files import predict_tomograms
    from ..tomo.network import tomo_settings
    from .reconstruct import _out_of_gpu_memory_as_user_error

    console = make_console()
    preset_name, _ = resolve_preset(preset)
    settings = tomo_settings(preset_name, device=device)
    if not memory > 0:
        raise InvalidValueError(f"--memory must be > 0 MiB; got {memory}")
    launch.check_output_dir_early(out)
    with (
        _out_of_gpu_memory_as_user_error(),
        launch.output_dir_lock(out),
        console_progress(console) as progress,
    ):
        written = predict_tomograms(
            tomogram_list,
            model,
            out,
            settings,
            budget_mib=memory,
            names=name,
            keep_measured_low=keep_measured_low,
            progress=progress,
        )
    for p in written:
        console.print(f"  wrote {p}")
