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
from typing import Any

from .._checks import check_contrast, check_fsc3d_volume
from .._outputs import check_output_dir
from ..errors import MapMismatchError
from ..io import Map, check_half_maps, check_mask, read_map, write_map
from ..progress import Progress
from ..report import loss_figure, measured_check_figure, trust_figure, write_json
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
    measured_figure: Path | None = None  # measured_check.png (two halves, a 3D FSC)


def _base(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in (".mrc.gz", ".mrc", ".map", ".rec", ".mrcs"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


@dataclass(frozen=True)
class _Inputs:
    """The maps of a run, read and checked by file name."""

    half1: Map
    half2: Map | None
    mask: Map | None
    fsc3d: Map | None
    reference: Map | None


def _read_inputs(
    half1: str | os.PathLike,
    half2: str | os.PathLike | None,
    aniso_file: str | os.PathLike | None,
    mask: str | os.PathLike | None,
    reference: str | os.PathLike | None,
    voxel_size: float | None,
) -> _Inputs:
    """Read every input map and check it, naming the file in each error."""
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
    return _Inputs(m1, m2, mk, aniso, ref)


def _output_bases(half1: str | os.PathLike, half2: str | os.PathLike | None) -> list[str]:
    """The name stem of each output, one per half (``_1``/``_2`` when the names clash)."""
    bases = [_base(half1)] + ([_base(half2)] if half2 is not None else [])
    if len(bases) == 2 and bases[0] == bases[1]:
        bases = [bases[0] + "_1", bases[1] + "_2"]
    return bases


def _model_paths(out: Path, bases: list[str], s: CorrectionSettings) -> list[Path]:
    """``model_<b>.pt`` per network group; an ensemble's further members
    ``model_<b>_seed<seed>.pt`` (the order of :func:`correct_anisotropy`'s checkpoints)."""
    paths = []
    for b in bases:
        paths.append(out / f"model_{b}.pt")
        paths += [out / f"model_{b}_seed{s.seed + k}.pt" for k in range(1, s.ensemble)]
    return paths


def _write_maps_and_figures(
    out: Path, bases: list[str], inputs: _Inputs, result: CorrectionResult
) -> dict[str, Any]:
    """The corrected (and filtered) maps, loss and trust figures, computed FSC3D.mrc."""
    m1 = inputs.half1
    written: dict[str, Any] = {"corrected": [], "filtered": [], "losses": []}
    for i, b in enumerate(bases):
        written["corrected"].append(
            write_map(out / f"corrected_{b}.mrc", result.corrected[i], like=m1)
        )
        if result.filtered is not None:
            written["filtered"].append(
                write_map(out / f"corrected_{b}_filtered.mrc", result.filtered[i], like=m1)
            )
    first_of_group = result.histories[:: result.settings.ensemble]  # one figure per group
    for b, hist in zip(bases, first_of_group, strict=False):
        if hist:
            loss_figure(hist, out / f"loss_{b}.png")
            written["losses"].append(out / f"loss_{b}.png")
    written["fsc3d"] = None
    if inputs.fsc3d is None and result.fsc3d_volume is not None:
        written["fsc3d"] = write_map(out / "FSC3D.mrc", result.fsc3d_volume, m1.voxel_size)
    written["trust_figure"] = None
    if result.trust is not None:
        written["trust_figure"] = out / "trust.png"
        trust_figure(result.trust, m1.voxel_size, m1.box, written["trust_figure"])
    written["measured_figure"] = None
    if result.measured_check is not None:
        written["measured_figure"] = out / "measured_check.png"
        measured_check_figure(
            result.measured_check, m1.voxel_size, m1.box, written["measured_figure"]
        )
    return written


def _report(
    path: Path,
    given: dict[str, str | os.PathLike | None],
    inputs: _Inputs,
    result: CorrectionResult,
    resume: bool,
    written: dict[str, Any],
    models: list[Path],
) -> None:
    """``reconstruct.json``: inputs, settings, decisions, timings, losses, outputs."""

    def text(v: Any) -> str | None:
        return None if v is None else str(v)

    write_json(
        path,
        {
            "inputs": {
                **{k: text(v) for k, v in given.items()},
                "box": inputs.half1.box,
                "voxel_size": inputs.half1.voxel_size,
            },
            "settings": result.settings.to_dict(),
            "resume": resume,
            "notes": result.notes,
            "timings_s": result.timings,
            "training": [t.to_dict() for t in result.train],
            "loss_history": result.histories,
            "trust_check": None if result.trust is None else result.trust.to_dict(),
            # per shell over the measured directions: the network's share (1: kept) and the
            # halves' estimates of the network's and the raw map's correlation with the truth
            "measured_check": result.measured_check,
            "outputs": {
                "corrected": [str(p) for p in written["corrected"]],
                "filtered": [str(p) for p in written["filtered"]],
                "models": [str(p) for p in models],
                "loss_figures": [str(p) for p in written["losses"]],
                "trust_figure": text(written["trust_figure"]),
                "measured_check_figure": text(written["measured_figure"]),
                "fsc3d": text(written["fsc3d"]),
            },
        },
    )


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
    else named after half 1; with ``ensemble`` > 1 also ``model_<b>_seed<seed>.pt`` for
    each further network); ``loss_<b>.png`` (the first network's); ``trust.png``;
    ``reconstruct.json`` (settings, inputs, decisions, timings, losses); ``FSC3D.mrc`` when
    computed here.

    Raises
    ------
    OutputPathError
        ``output_dir`` is a file or cannot be created or written (checked before the work).
    """
    s = settings if settings is not None else PRESETS["gpu"]
    t0 = time.perf_counter()
    inputs = _read_inputs(half1, half2, aniso_file, mask, reference, voxel_size)
    out = check_output_dir(output_dir)  # before the work, not after the first epoch
    bases = _output_bases(half1, half2)
    model_paths = _model_paths(out, bases[: 2 if s.independent else 1], s)
    t_read = time.perf_counter() - t0

    def data(m: Map | None):
        return None if m is None else m.data

    result = correct_anisotropy(
        inputs.half1.data,
        data(inputs.half2),
        data(inputs.fsc3d),
        data(inputs.mask),
        voxel_size=inputs.half1.voxel_size,
        settings=s,
        reference=data(inputs.reference),
        pretrained=pretrained_model,
        checkpoints=tuple(model_paths) if s.epochs > 0 else None,
        resume=resume,
        progress=progress,
    )
    from ..nn.distributed import current_world

    report = out / "reconstruct.json"
    if not current_world().is_main:
        # several ranks: only rank 0 writes; the others return the in-memory result
        return ReconstructOutputs([], [], model_paths, [], report, result)
    t = time.perf_counter()
    written = _write_maps_and_figures(out, bases, inputs, result)
    models = [p for p in model_paths if p.exists()]
    result.timings["read"] = t_read
    result.timings["write"] = time.perf_counter() - t
    given = {
        "half1": half1,
        "half2": half2,
        "aniso_file": aniso_file,
        "mask": mask,
        "reference": reference,
        "pretrained_model": pretrained_model,
    }
    _report(report, given, inputs, result, resume, written, models)
    return ReconstructOutputs(
        corrected=written["corrected"],
        filtered=written["filtered"],
        models=models,
        losses=written["losses"],
        report=report,
        result=result,
        trust_figure=written["trust_figure"],
        fsc3d=written["fsc3d"],
        measured_figure=written["measured_figure"],
    )
