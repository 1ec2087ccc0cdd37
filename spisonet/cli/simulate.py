"""``spisonet simulate``: half maps with a known ground truth and a chosen orientation
distribution (``gt.mrc``, ``half1.mrc``, ``half2.mrc``, ``mask.mrc``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._outputs import check_output_dir
from ..io import read_map, read_star_angles, write_map
from ._app import app, make_console

__all__ = ["simulate_command", "simulate_to"]


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
    check_output_dir(out, "--out")
    console = make_console()
    paths = simulate_to(out, box, voxel_size, distribution, n_views, snr, seed, from_map, bin_to)
    console.print(f"Wrote {', '.join(str(p) for p in paths.values())}")


def simulate_to(
    out: Path,
    box: int,
    voxel_size: float,
    distribution: str,
    n_views: int,
    snr: float,
    seed: int,
    from_map: Path | None = None,
    bin_to: int | None = None,
) -> dict[str, Path]:
    """Simulate and write ``gt``, ``half1``, ``half2`` and ``mask`` (``.mrc``) into ``out``;
    returns their paths by name. ``distribution`` may name a STAR file (its angles)."""
    # numba kernels: compiled on first import
    from ..simulate import fourier_crop, make_molecule, simulate_half_maps

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
