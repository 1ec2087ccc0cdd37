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

app = typer.Typer(
    name="spisonet",
    help="Correct preferred-orientation anisotropy in cryo-EM maps (self-supervised).",
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
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """spisonet: measure and correct preferred-orientation anisotropy in cryo-EM maps."""


# --------------------------------------------------------------------------------------
# fsc3d


def _load_pair(half1: Path, half2: Path, mask: Path | None):
    from .io import check_half_maps, check_mask, read_map

    h1 = read_map(half1)
    h2 = read_map(half2)
    check_half_maps(h1, h2)
    m = None
    if mask is not None:
        m = read_map(mask)
        check_mask(m, h1)
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
) -> None:
    """Compute the spIsoNet-flavour 3D FSC (FSC3D.mrc) of two half maps."""
    if mask_arg is not None and mask is not None and mask_arg != mask:
        from .errors import InvalidValueError

        raise InvalidValueError(f"two different masks given: {mask_arg} and {mask}; give one")
    mask = mask if mask is not None else mask_arg
    console = _console()
    if ncpus:
        import numba

        numba.set_num_threads(max(1, min(ncpus, numba.config.NUMBA_NUM_THREADS)))
    from .fsc import fsc
    from .fsc3d import fsc3d
    from .io import write_map

    h1, h2, m = _load_pair(half1, half2, mask)
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


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "spisonet_demo"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the pipeline on built-in example data (a simulated top-view-dominated dataset)."""
    console = _console()
    t0 = time.perf_counter()
    console.rule("spisonet demo")
    console.print(
        "Simulating a 64³ test molecule at 2 Å/voxel from 2000 particles, 90% of them top "
        "views (within 5° of the z axis), 10% in random orientations: the z direction of "
        "Fourier space is barely sampled..."
    )
    paths = _simulate_to(out, 64, 2.0, "top+uniform:0.1", 2000, 0.01, seed, None, None)
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
    _demo_directional_summary(out / "FSC3D.mrc", console)
    console.print(
        f"Demo finished in {time.perf_counter() - t0:.1f} s. "
        f"Outputs are in [bold]{out.resolve()}[/bold]"
    )


def _demo_directional_summary(fsc3d_path: Path, console) -> None:
    """Print the 3D FSC along z (the view axis) and along x, shell by shell."""
    import numpy as np

    from .io import read_map

    vol = read_map(fsc3d_path).data
    n = vol.shape[0]
    c = n // 2
    along_z = vol[c:, c, c]
    along_x = vol[c, c, c:]
    shells = [s for s in (2, 4, 8, 12, 16, 24) if s < len(along_z)]
    from rich.table import Table

    table = Table(title="3D FSC along the view axis (z) and across it (x)")
    table.add_column("shell")
    table.add_column("resolution (Å)")
    table.add_column("FSC along z", justify="right")
    table.add_column("FSC along x", justify="right")
    apix = read_map(fsc3d_path).voxel_size
    for s in shells:
        table.add_row(str(s), f"{n * apix / s:.1f}", f"{along_z[s]:.2f}", f"{along_x[s]:.2f}")
    console.print(table)
    console.print(
        f"Mean over shells 2–{shells[-1]}: along z {np.mean(along_z[2 : shells[-1] + 1]):.2f}, "
        f"along x {np.mean(along_x[2 : shells[-1] + 1]):.2f}: the anisotropy spisonet corrects."
    )


# --------------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 2."""
    from .errors import SpisonetError

    try:
        app()
    except SpisonetError as exc:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
