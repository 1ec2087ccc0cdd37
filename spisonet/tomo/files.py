"""``spisonet tomo``'s steps from files to files (the edge where tomograms are read and
written; the numerics live in the sibling modules).

Every step takes the tomogram list (:mod:`spisonet.io.tomograms`) and an output folder;
``deconv`` and ``make-mask`` write the paths of what they made back into the list, so the
next step finds them. Outputs are written atomically; ``refine`` checkpoints after every
epoch and resumes with ``resume=True``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._outputs import check_output_dir
from ..correction.settings import CorrectionSettings
from ..errors import InvalidValueError, MapMismatchError
from ..io.mrc import map_slab_writer, open_map_mmap, read_map, write_map
from ..io.tomograms import (
    TomogramEntry,
    import_relion_tomograms,
    read_tomogram_list,
    update_entry,
    write_tomogram_list,
)
from ..progress import Progress, report

__all__ = [
    "CTF_HANDOVER",
    "RefineOutputs",
    "ctf_handover",
    "deconv_tomograms",
    "make_masks",
    "predict_tomograms",
    "prepare_list",
    "refine",
    "simulate_to_files",
]


def simulate_to_files(out_dir: str | os.PathLike, **options: Any) -> dict[str, Path]:
    """Simulate an even/odd tomogram pair with ground truth (:func:`simulate_tomograms`)
    and write ``truth.mrc``, ``even.mrc``, ``odd.mrc``, ``tomograms.toml`` (the list
    the next steps read) and ``simulation.json`` (tilts, noise, the molecules' centres in
    voxels (z, y, x), the vesicle) to ``out_dir``."""
    from .simulate import simulate_tomograms

    out = check_output_dir(out_dir)
    sim = simulate_tomograms(**options)
    paths = {}
    for name in ("truth", "even", "odd"):
        paths[name] = write_map(out / f"{name}.mrc", getattr(sim, name), sim.voxel_size)
    angles = np.asarray(sim.tilt_angles, dtype=float)
    entry = TomogramEntry(
        name="simulated",
        voxel_size=float(sim.voxel_size),
        even=str(paths["even"].resolve()),
        odd=str(paths["odd"].resolve()),
        tilt_min=float(angles.min()),
        tilt_max=float(angles.max()),
        defocus=options.get("defocus"),
    )
    paths["list"] = write_tomogram_list(out / "tomograms.toml", [entry])
    from ..report.json_file import write_json

    paths["simulation"] = out / "simulation.json"
    write_json(
        paths["simulation"],
        {
            "shape": list(sim.truth.shape),
            "voxel_size": float(sim.voxel_size),
            "tilt_angles": angles.tolist(),
            "snr": float(sim.snr),
            "defocus": sim.defocus,
            "noise_sigma": float(sim.noise_sigma),
            "molecule_positions_zyx": np.asarray(sim.positions).tolist(),
            "molecule_index": np.asarray(sim.molecule_index).tolist(),
            "membrane_center_zyx": None
            if sim.membrane_center is None
            else np.asarray(sim.membrane_center).tolist(),
            "membrane_radius": sim.membrane_radius,
        },
    )
    return paths


def prepare_list(
    list_path: str | os.PathLike,
    *,
    entries: list[TomogramEntry] | None = None,
    star: str | os.PathLike | None = None,
    append: bool = False,
) -> tuple[list[TomogramEntry], list[str]]:
    """Write the tomogram list from ``entries`` and/or a RELION 5 ``tomograms.star``.

    With ``append`` the entries are added to an existing list. Every tomogram is opened
    (header only) to check it exists, that even and odd match, and to take the voxel size
    from the header when the entry has none (0). Returns (entries written, notes).
    """
    notes: list[str] = []
    new = list(entries or [])
    if star is not None:
        imported, star_notes = import_relion_tomograms(star)
        new += imported
        notes += star_notes
    if not new:
        raise InvalidValueError(
            "no tomogram given: pass --even and --odd, --tomogram, or --star tomograms.star"
        )
    checked = [_check_entry(e) for e in new]
    p = Path(list_path)
    old = read_tomogram_list(p) if append and p.exists() else []
    written = old + checked
    write_tomogram_list(p, written)
    return written, notes


def _check_entry(e: TomogramEntry) -> TomogramEntry:
    shapes = []
    for path in e.inputs(deconvolved=False):
        with open_map_mmap(path) as m:
            shapes.append(m.shape)
            header_voxel = m.voxel_size
    if len(shapes) == 2 and shapes[0] != shapes[1]:
        raise MapMismatchError(
            f"tomogram {e.name!r}: even {shapes[0]} and odd {shapes[1]} differ in shape "
            "(z, y, x); they must be two reconstructions of the same area"
        )
    if abs(header_voxel - e.voxel_size) > 1e-3 * e.voxel_size:
        raise InvalidValueError(
            f"tomogram {e.name!r}: the header says {header_voxel:g} Å per voxel, the list "
            f"{e.voxel_size:g} Å; fix the header or the --voxel-size"
        )
    return e


def _voxel_or_header(path: str | os.PathLike) -> float:
    with open_map_mmap(path) as m:
        return m.voxel_size


def _default_name(path: Path) -> str:
    """A tomogram's name from its file: ``TS_01_even.mrc`` → ``TS_01``; a file named only
    ``even.mrc`` (or half1, …) takes its folder's name."""
    stem = path.stem
    for tail in ("_even", "_half1", "_odd", "_half2"):
        stem = stem.removesuffix(tail)
    if stem.lower() in ("even", "odd", "half1", "half2", ""):
        stem = path.resolve().parent.name or "tomogram"
    return stem


def entry_from_options(
    name: str | None,
    *,
    even: str | os.PathLike | None = None,
    odd: str | os.PathLike | None = None,
    tomogram: str | os.PathLike | None = None,
    voxel_size: float | None = None,
    **acquisition: Any,
) -> TomogramEntry:
    """A list entry from command-line options; the voxel size defaults to the header's."""
    first = even if even is not None else tomogram
    if first is None:
        raise InvalidValueError("give --even and --odd, or --tomogram")
    first_path = Path(first)
    voxel = voxel_size if voxel_size is not None else _voxel_or_header(first_path)

    def absolute(p: str | os.PathLike | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    kw = {k: v for k, v in acquisition.items() if v is not None}
    return TomogramEntry(
        name=name or _default_name(first_path),
        voxel_size=float(voxel),
        even=absolute(even),
        odd=absolute(odd),
        tomogram=absolute(tomogram),
        **kw,
    )


def deconv_tomograms(
    list_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    snr_falloff: float = 1.0,
    deconv_strength: float = 1.0,
    highpass_nyquist: float = 0.02,
    phase_shift: float = 0.0,
    progress: Progress | None = None,
) -> tuple[list[Path], list[str]]:
    """CTF-deconvolve every tomogram of the list that has a defocus
    (:func:`~spisonet.tomo.deconv.deconvolve`), write ``<name>_<half>_deconv.mrc`` and
    record them in the list. Returns (files written, notes)."""
    from .deconv import deconvolve

    entries = read_tomogram_list(list_path)
    out = check_output_dir(out_dir)
    todo = [e for e in entries if e.defocus is not None]
    notes = [
        f"{e.name}: no defocus in the list; not deconvolved" for e in entries if e.defocus is None
    ]
    if not todo:
        raise InvalidValueError(
            f"{list_path}: no tomogram has a defocus; add defocus = <µm> to the list "
            "(or spisonet tomo prepare --defocus) — or skip deconv"
        )
    written = []
    total = sum(len(e.inputs(deconvolved=False)) for e in todo)
    for e in todo:
        halves = ["even", "odd"] if e.paired else ["tomogram"]
        made = {}
        for half, path in zip(halves, e.inputs(deconvolved=False), strict=True):
            m = read_map(path, require_cubic=False, voxel_size=e.voxel_size)
            data = deconvolve(
                m.data,
                e.voxel_size,
                float(e.defocus),
                voltage=e.voltage,
                spherical_aberration=e.spherical_aberration,
                amplitude_contrast=e.amplitude_contrast,
                phase_shift=phase_shift,
                snr_falloff=snr_falloff,
                deconv_strength=deconv_strength,
                highpass_nyquist=highpass_nyquist,
            )
            target = out / f"{e.name}_{half}_deconv.mrc"
            written.append(write_map(target, data, like=m))
            made[f"deconv_{half}"] = str(target.resolve())
            report(progress, "deconv", len(written), total)
        entries = update_entry(entries, e.name, **made)
    write_tomogram_list(list_path, entries)
    return written, notes


def make_masks(
    list_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    density_percentage: float = 50.0,
    std_percentage: float = 50.0,
    patch_size: int = 4,
    z_crop: float = 0.0,
    smooth: float = 2.0,
    progress: Progress | None = None,
) -> list[tuple[Path, float]]:
    """A training mask per tomogram (:func:`~spisonet.tomo.mask.tomogram_mask`) on the
    (deconvolved, when present) tomogram, even and odd averaged; writes
    ``<name>_mask.mrc`` and records it in the list. Returns (path, fraction kept)."""
    from .mask import tomogram_mask

    entries = read_tomogram_list(list_path)
    out = check_output_dir(out_dir)
    done = []
    for i, e in enumerate(entries):
        maps = [read_map(p, require_cubic=False, voxel_size=e.voxel_size) for p in e.inputs()]
        mean = maps[0].data if len(maps) == 1 else (maps[0].data + maps[1].data) / 2
        mask = tomogram_mask(
            mean,
            density_percentage=density_percentage,
            std_percentage=std_percentage,
            patch_size=patch_size,
            z_crop=z_crop,
            smooth=smooth,
        )
        target = write_map(out / f"{e.name}_mask.mrc", mask.astype(np.float32), like=maps[0])
        entries = update_entry(entries, e.name, mask=str(target.resolve()))
        done.append((target, float(np.count_nonzero(mask)) / mask.size))
        report(progress, "make-mask", i + 1, len(entries))
    write_tomogram_list(list_path, entries)
    return done


@dataclass
class RefineOutputs:
    """What :func:`refine` wrote and how training went."""

    model: Path
    loss_figure: Path | None
    report: Path
    history: dict[str, list[float]]
    steps: int
    seconds: float
    n_cubes: int
    paired: bool
    notes: list[str] = field(default_factory=list)


@contextmanager
def _mapped(entries: list[TomogramEntry]) -> Iterator[list[tuple[list[np.ndarray], Any]]]:
    """Each entry's input tomograms memory-mapped, and its mask read (None if none)."""
    with ExitStack() as stack:
        out = []
        for e in entries:
            vols = [
                stack.enter_context(open_map_mmap(p, voxel_size=e.voxel_size)) for p in e.inputs()
            ]
            shapes = {m.shape for m in vols}
            if len(shapes) != 1:
                raise MapMismatchError(
                    f"tomogram {e.name!r}: even and odd differ in shape: "
                    f"{' and '.join(map(str, shapes))}"
                )
            mask = None
            if e.mask is not None:
                mask = read_map(e.mask, require_cubic=False, voxel_size=e.voxel_size).data
            out.append(([m.data for m in vols], mask))
        yield out


def _slab_reader(path: str, voxel_size: float) -> Callable[[int, int], np.ndarray]:
    """Rows y0 … y1 − 1 of a tomogram, mapped only while they are copied out (so the
    pages read do not pile up in memory)."""

    def read(y0: int, y1: int) -> np.ndarray:
        with open_map_mmap(path, voxel_size=voxel_size) as m:
            return np.array(m.data[:, y0:y1], dtype=np.float32)

    return read


def _views(readers: list[Callable[[int, int], np.ndarray]], shape: tuple[int, int, int]):
    """The figure's views of the mean of ``readers``' tomograms, read slab by slab."""
    from ..report.tomo import TomogramViews
    from .network import _rows_per_slab

    nz, ny, nx = shape
    step = _rows_per_slab(shape, 256.0)
    zs = slice(max(nz // 2 - 1, 0), nz // 2 + 2)
    y_mid = slice(max(ny // 2 - 1, 0), ny // 2 + 2)
    xy = np.zeros((ny, nx), np.float64)
    xz = np.zeros((nz, nx), np.float64)
    proj = np.zeros((nz, nx), np.float64)
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        slab = sum(np.asarray(r(y0, y1), dtype=np.float64) for r in readers) / len(readers)
        xy[y0:y1] = slab[zs].mean(axis=0)
        proj += slab.sum(axis=1)
        lo, hi = max(y_mid.start, y0), min(y_mid.stop, y1)
        if lo < hi:
            xz += slab[:, lo - y0 : hi - y0].sum(axis=1) / (y_mid.stop - y_mid.start)
    return TomogramViews(xy.astype(np.float32), xz.astype(np.float32), proj.astype(np.float32))


def refine(
    list_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: CorrectionSettings,
    *,
    soft_edge: float = 0.0,
    resume: bool = False,
    pretrained: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> RefineOutputs | None:
    """Train one network on every tomogram of the list (inside their masks) with the
    missing wedge as W; writes ``model.pt`` (checkpoint after every epoch), ``loss.png``
    and ``refine.json`` to ``out_dir``. Under data-parallel training every rank trains
    and only rank 0 writes and returns the outputs (the others return None)."""
    from ..report.correction import loss_figure
    from ..report.json_file import write_json
    from .network import combined_wedge, tomogram_stats, train_tomo_network, training_cubes

    t0 = time.perf_counter()
    entries = read_tomogram_list(list_path)
    out = check_output_dir(out_dir)
    notes = []
    if not any(e.mask for e in entries):
        notes.append("no mask in the list: training cubes are drawn from the whole tomogram")
    stats = []
    for e in entries:
        per = []
        for p in e.inputs():
            with open_map_mmap(p, voxel_size=e.voxel_size) as m:
                shape = m.shape
            per.append(tomogram_stats(_slab_reader(p, e.voxel_size), shape))
        stats.append(per)
    ranges = [(e.tilt_min, e.tilt_max, e.tilt_axis) for e in entries]
    if len(set(ranges)) > 1:
        notes.append("the tomograms' tilt ranges differ: W is measured only where all measured")
    weight = combined_wedge(settings.cube_size, ranges, soft_edge)
    with _mapped(entries) as mapped:
        # one (mean, std) per entry: even and odd of a pair are z-scored alike
        pair_stats = [
            (float(np.mean([m for m, _ in s])), float(np.mean([d for _, d in s]))) for s in stats
        ]
        c1, c2 = training_cubes(
            [vols for vols, _ in mapped],
            [mask for _, mask in mapped],
            pair_stats,
            settings.n_subvolume,
            settings.cube_size,
            seed=settings.seed,
        )
    if c2 is None:
        notes.append("single tomograms: no Noise2Noise (give even/odd pairs to denoise too)")
    model_path = out / "model.pt"
    run = train_tomo_network(
        c1,
        c2,
        weight,
        settings,
        checkpoint=model_path,
        resume=resume,
        pretrained=pretrained,
        progress=progress,
    )
    from ..nn.distributed import current_world

    if not current_world().is_main:
        return None
    figure = None
    if run.history:
        figure = out / "loss.png"
        loss_figure(run.history, figure)
    report_path = out / "refine.json"
    write_json(
        report_path,
        {
            "tomogram_list": str(Path(list_path).resolve()),
            "tomograms": [e.name for e in entries],
            "settings": settings.to_dict(),
            "wedge": {"ranges": ranges, "soft_edge": soft_edge},
            "notes": notes,
            "training": run.summary.to_dict(),
            "loss_history": run.history,
            "seconds_total": time.perf_counter() - t0,
            "outputs": {"model": str(model_path), "loss_figure": str(figure) if figure else None},
        },
    )
    return RefineOutputs(
        model_path,
        figure,
        report_path,
        run.history,
        run.summary.steps,
        run.summary.seconds,
        run.summary.n_cubes,
        run.summary.paired,
        notes,
    )


#: With a defocus, the measured components from this fraction of the CTF's first zero
#: up are taken from the input (docs/tomo.md, "Decision: the CTF's first zero").
CTF_HANDOVER = 0.8


def ctf_handover(entry: TomogramEntry) -> float | None:
    """Where (cycles/voxel) ``predict`` starts taking the measured components from the
    input because of the CTF: :data:`CTF_HANDOVER` × the first zero of the entry's CTF;
    None without a defocus or when the CTF has no zero below Nyquist."""
    if entry.defocus is None:
        return None
    from .deconv import first_ctf_zero

    k0 = first_ctf_zero(
        entry.voxel_size,
        entry.defocus,
        entry.voltage,
        entry.spherical_aberration,
        entry.amplitude_contrast,
    )
    return None if k0 is None else CTF_HANDOVER * k0


def predict_tomograms(
    list_path: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: CorrectionSettings,
    *,
    budget_mib: float = 1024.0,
    names: list[str] | None = None,
    keep_measured_low: bool = True,
    progress: Progress | None = None,
) -> list[Path]:
    """Run the trained network over every tomogram of the list (or those in ``names``),
    streaming slab by slab; writes ``corrected_<name>.mrc`` (the input's voxel size,
    origin and nstart) and ``corrected_<name>.png`` (central slices and the kx–kz power
    spectrum before and after) to ``out_dir``. Even and odd are each corrected and
    averaged. With ``keep_measured_low`` (default) the measured frequencies longer than
    the training cube are taken from the input
    (:func:`~spisonet.tomo.network.measured_low_frequencies`), and with a defocus in the
    list also those beyond :func:`ctf_handover`. Memory: the whole
    corrected tomogram is held once (plus the slabs, and twice more for that step).
    Returns the files written."""
    from ..nn.train import load_checkpoint, model_from_checkpoint, resolve_device
    from .network import (
        _rows_per_slab,
        measured_low_frequencies,
        predict_tomogram,
        tomogram_stats,
    )

    entries = read_tomogram_list(list_path)
    if names:
        unknown = sorted(set(names) - {e.name for e in entries})
        if unknown:
            raise InvalidValueError(f"{list_path}: no tomogram named {', '.join(unknown)}")
        entries = [e for e in entries if e.name in names]
    out = check_output_dir(out_dir)
    saved = load_checkpoint(model_path)
    model = model_from_checkpoint(saved, model_path)
    trained = saved.get("settings", {})
    # the tiles must match the training cube; the checkpoint knows it
    cube = int(trained.get("cube_size", settings.cube_size))
    if cube != settings.cube_size:
        settings = replace(
            settings,
            cube_size=cube,
            predict_crop_size=cube + (settings.predict_crop_size - settings.cube_size),
        )
    model = model.to(resolve_device(settings.device))
    written = []
    for k, e in enumerate(entries):
        paths = e.inputs()
        with open_map_mmap(paths[0], voxel_size=e.voxel_size) as m:
            shape, origin, nstart = m.shape, m.origin, m.nstart
        readers = [_slab_reader(p, e.voxel_size) for p in paths]
        stats = [tomogram_stats(r, shape) for r in readers]
        mean = float(np.mean([s[0] for s in stats]))
        std = float(np.mean([s[1] for s in stats]))
        target = out / f"corrected_{e.name}.mrc"

        def per_tomogram(stage: str, done: float, total: float, info: Any = None, k0: int = k):
            report(progress, "predict", k0 * total + done, len(entries) * total)

        result = np.empty(shape, dtype=np.float32)

        def keep(y0: int, y1: int, slab: np.ndarray, into: np.ndarray = result) -> None:
            into[:, y0:y1] = slab

        predict_tomogram(
            model,
            readers,
            [(mean, std)] * len(readers),
            shape,
            keep,
            settings,
            budget_mib=budget_mib,
            progress=per_tomogram if progress is not None else None,
        )
        step = _rows_per_slab(shape, budget_mib)
        if keep_measured_low:
            diff = np.empty(shape, dtype=np.float32)
            for y0 in range(0, shape[1], step):
                y1 = min(shape[1], y0 + step)
                slab = sum(r(y0, y1) for r in readers) / len(readers)
                diff[:, y0:y1] = slab - result[:, y0:y1]
            result += measured_low_frequencies(
                diff,
                settings.cube_size,
                e.tilt_min,
                e.tilt_max,
                e.tilt_axis,
                high_from=ctf_handover(e),
            )
            del diff
        with map_slab_writer(
            target, shape, voxel_size=e.voxel_size, origin=origin, nstart=nstart
        ) as write:
            for y0 in range(0, shape[1], step):
                write(y0, min(shape[1], y0 + step), result[:, y0 : y0 + step])
        del result
        written.append(target)
        from ..report.tomo import tomogram_figure

        before = _views(readers, shape)
        after = _views([_slab_reader(str(target), e.voxel_size)], shape)
        label = "input (even + odd) / 2" if len(readers) == 2 else "input"
        figure = out / f"corrected_{e.name}.png"
        tomogram_figure({label: before, "corrected": after}, figure, title=e.name)
        written.append(figure)
    return written
