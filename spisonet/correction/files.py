"""A correction from files to files: what ``spisonet reconstruct`` runs.

:func:`reconstruct` reads the maps (checking them by file name), runs
:func:`spisonet.correction.pipeline.correct_anisotropy` and writes every output
atomically: the corrected maps, model checkpoints, loss and trust figures and
``reconstruct.json`` (settings, inputs, decisions, timings).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .._checks import check_contrast, check_fsc3d_volume
from ..errors import MapMismatchError
from ..progress import Progress
from .pipeline import CorrectionResult, correct_anisotropy
from .settings import PRESETS, CorrectionSettings

__all__ = ["ReconstructOutputs", "reconstruct"]


@dataclass(frozen=True)
class ReconstructOutputs:
    """Files written by :func:`reconstruct` and the in-memory result."""

    corrected: list[Path]
    filtered: list[Path]
    models: list[Path]
    losses: list[Path]
    report: Path
    result: CorrectionResult
    trust_figure: Path | None = None
    fsc3d: Path | None = None  # FSC3D.mrc, when computed here (no aniso_file given)


def _base(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in (".mrc.gz", ".mrc", ".map", ".rec", ".mrcs"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _plot_loss(history: dict[str, list[float]], path: Path) -> None:
    from ..report import loss_figure

    loss_figure(history, path)


def reconstruct(
    half1: str | os.PathLike,
    half2: str | os.PathLike | None = None,
    *,
    aniso_file: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "isonet_maps",
    settings: CorrectionSettings | None = None,
    reference: str | os.PathLike | None = None,
    pretrained_model: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    voxel_size: float | None = None,
) -> ReconstructOutputs:
    """Read the maps, run :func:`correct_anisotropy`, write every output.

    ``voxel_size`` (Å) replaces the voxel size of every input map's header (needed when
    a header has none). The corrected maps carry half 1's voxel size, origin and
    nxstart/nystart/nzstart, so they overlay the input.

    Outputs in ``output_dir`` (``b`` = each input's name without extension):
    ``corrected_<b>.mrc``; ``corrected_<b>_filtered.mrc`` with ``limit_res``;
    ``model_<b>.pt`` (checkpoint after every epoch; one per half when independent,
    else named after half 1); ``loss_<b>.png``; ``reconstruct.json`` (settings, inputs,
    decisions, timings, losses); ``FSC3D.mrc`` when computed here.

    Raises
    ------
    OutputPathError
        ``output_dir`` is a file or cannot be created or written (checked before the work).
    """
    from .._outputs import check_output_dir
    from ..io import check_half_maps, check_mask, read_map, write_map
    from ..report import write_json

    s = settings if settings is not None else PRESETS["gpu"]
    t0 = time.perf_counter()
    m1 = read_map(half1, voxel_size=voxel_size)
    m2 = read_map(half2, voxel_size=voxel_size) if half2 is not None else None
    if m2 is not None:
        check_half_maps(m1, m2)
    mk = None
    if mask is not None:
        mk = read_map(mask, voxel_size=voxel_size)
        check_mask(mk, m1)
    for h in (m1, m2):  # named by file here; correct_anisotropy repeats it for arrays
        if h is not None:
            check_contrast(h.data, h.name, None if mk is None else mk.data)
    aniso = read_map(aniso_file, voxel_size=voxel_size) if aniso_file is not None else None
    if aniso is not None and aniso.data.shape != m1.data.shape:
        raise MapMismatchError(
            f"{aniso.name}: 3D FSC shape {aniso.data.shape} differs from the half maps' "
            f"{m1.data.shape} ({m1.name}); compute it from these half maps"
        )
    if aniso is not None:
        check_fsc3d_volume(aniso.data, aniso.name)
    ref = read_map(reference, voxel_size=voxel_size) if reference is not None else None
    if ref is not None and ref.data.shape != m1.data.shape:
        raise MapMismatchError(
            f"{ref.name}: reference shape {ref.data.shape} differs from the half maps' "
            f"{m1.data.shape}"
        )
    out = check_output_dir(output_dir)  # before the work, not after the first epoch
    bases = [_base(half1)] + ([_base(half2)] if half2 is not None else [])
    if len(bases) == 2 and bases[0] == bases[1]:
        bases = [bases[0] + "_1", bases[1] + "_2"]
    n_nets = 2 if s.independent else 1
    model_paths = [out / f"model_{b}.pt" for b in bases[:n_nets]]
    t_read = time.perf_counter() - t0
    result = correct_anisotropy(
        m1.data,
        None if m2 is None else m2.data,
        None if aniso is None else aniso.data,
        None if mk is None else mk.data,
        voxel_size=m1.voxel_size,
        settings=s,
        reference=None if ref is None else ref.data,
        pretrained=pretrained_model,
        checkpoints=tuple(model_paths) if s.epochs > 0 else None,
        resume=resume,
        progress=progress,
    )
    from ..nn.distributed import current_world

    t = time.perf_counter()
    corrected, filtered, losses = [], [], []
    if not current_world().is_main:
        # several ranks: only rank 0 writes; the others return the in-memory result
        return ReconstructOutputs([], [], model_paths, [], out / "reconstruct.json", result)
    for i, b in enumerate(bases):
        corrected.append(write_map(out / f"corrected_{b}.mrc", result.corrected[i], like=m1))
        if result.filtered is not None:
            filtered.append(
                write_map(
                    out / f"corrected_{b}_filtered.mrc",
                    result.filtered[i],
                    like=m1,
                )
            )
    for b, hist in zip(bases[:n_nets], result.histories, strict=True):
        if hist:
            p = out / f"loss_{b}.png"
            _plot_loss(hist, p)
            losses.append(p)
    fsc3d_path = None
    if aniso is None and result.fsc3d_volume is not None:
        fsc3d_path = write_map(out / "FSC3D.mrc", result.fsc3d_volume, m1.voxel_size)
    trust_png = None
    if result.trust is not None:
        from ..report import trust_figure

        trust_png = out / "trust.png"
        trust_figure(result.trust, m1.voxel_size, m1.box, trust_png)
    result.timings["read"] = t_read
    result.timings["write"] = time.perf_counter() - t
    report = out / "reconstruct.json"
    write_json(
        report,
        {
            "inputs": {
                "half1": str(half1),
                "half2": None if half2 is None else str(half2),
                "aniso_file": None if aniso_file is None else str(aniso_file),
                "mask": None if mask is None else str(mask),
                "reference": None if reference is None else str(reference),
                "pretrained_model": None if pretrained_model is None else str(pretrained_model),
                "box": m1.box,
                "voxel_size": m1.voxel_size,
            },
            "settings": result.settings.to_dict(),
            "resume": resume,
            "notes": result.notes,
            "timings_s": result.timings,
            "training": [t.to_dict() for t in result.train],
            "loss_history": result.histories,
            "trust_check": None if result.trust is None else result.trust.to_dict(),
            "outputs": {
                "corrected": [str(p) for p in corrected],
                "filtered": [str(p) for p in filtered],
                "models": [str(p) for p in model_paths if p.exists()],
                "loss_figures": [str(p) for p in losses],
                "trust_figure": None if trust_png is None else str(trust_png),
                "fsc3d": str(out / "FSC3D.mrc")
                if aniso is None and result.fsc3d_volume is not None
                else None,
            },
        },
    )
    return ReconstructOutputs(
        corrected=corrected,
        filtered=filtered,
        models=[p for p in model_paths if p.exists()],
        losses=losses,
        report=report,
        result=result,
        trust_figure=trust_png,
        fsc3d=fsc3d_path,
    )
