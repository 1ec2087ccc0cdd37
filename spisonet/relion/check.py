"""Is a RELION set-up ready for a long run? :func:`check_relion_setup` (``spisonet
relion-check``).

It looks at what ``spisonet-relion`` will meet inside ``relion_refine`` without running
RELION: the settings (file and environment, with their sources), the executable RELION
will run (``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE``, else ``spisonet-relion`` on the
``PATH``), the device torch would use and the preset ``auto`` becomes, and — given a run
(one of its ``*_external_reconstruct.star`` files, or its folder) — the mask and the
iteration from which the network would run, given the gates and the run's sampling and
resolution. The result is a typed report (:class:`RelionSetupReport`); the command line
only prints it. A finding of level ``problem`` means something would fail.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..correction.settings import resolve_preset
from ..errors import InvalidValueError, SpisonetError
from ..io import read_star_blocks
from ..io.relion_runs import (
    find_pixel_size,
    job_name_of_star,
    optimiser_command_option,
    parse_job_name,
    parse_run_file,
    positive_number,
    read_refine_header,
    read_star_value,
)
from .config import load_relion_settings
from .correction import trained_iterations
from .job import current_resolution, fsc_table_resolution, read_external_star, resolve_input
from .plain_map import refine_map_options
from .runner import _parse_args  # the parser spisonet-relion itself uses
from .settings import RelionCorrectionSettings, closed_gates

__all__ = [
    "DeviceInfo",
    "Finding",
    "GateRow",
    "RelionSetupReport",
    "check_relion_setup",
    "closed_gates",
    "probe_device",
]

#: The variable RELION reads the external reconstructor's command from.
EXECUTABLE_VARIABLE = "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE"

Level = Literal["ok", "note", "problem"]


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``topic`` (settings, executable, device, preset, run,
    mask), ``level`` (``problem``: something would fail) and what was found."""

    topic: str
    level: Level
    text: str


@dataclass(frozen=True)
class DeviceInfo:
    """The device torch would train on: ``kind`` ``"cuda"`` or ``"cpu"``, or None when
    torch cannot start (``text`` then holds the error)."""

    kind: str | None
    text: str


@dataclass(frozen=True)
class GateRow:
    """The gates as the reconstruction of ``iteration`` would see them.

    Attributes
    ----------
    iteration : the RELION iteration whose reconstruction this is.
    healpix_order, order_source : RELION's healpix order then, and the file it is from.
    resolution, resolution_source : the current resolution (Å) then, and where from.
    closed : why the gates are closed (empty: the network runs).
    """

    iteration: int
    healpix_order: int | None
    order_source: str
    resolution: float | None
    resolution_source: str
    closed: tuple[str, ...]

    @property
    def open(self) -> bool:
        """Whether the network runs in this iteration."""
        return not self.closed


@dataclass(frozen=True)
class RelionSetupReport:
    """What :func:`check_relion_setup` found.

    Attributes
    ----------
    settings : the settings ``spisonet-relion`` would use (None: they cannot be read).
    config : the settings file read (None: none).
    findings : one per check, in the order checked.
    run : the run looked at (``folder/root``; empty: none given).
    gates : the gates per iteration of the run (empty: no run).
    start_iteration : the first iteration whose gates are open (None: none so far).
    """

    settings: RelionCorrectionSettings | None
    config: str | None
    findings: tuple[Finding, ...]
    run: str = ""
    gates: tuple[GateRow, ...] = ()
    start_iteration: int | None = None

    @property
    def ok(self) -> bool:
        """No finding says something would fail."""
        return not any(f.level == "problem" for f in self.findings)


def probe_device() -> DeviceInfo:
    """The device torch would use (CUDA when it sees a GPU), or why torch cannot start."""
    try:
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            more = f" (+{count - 1} more)" if count > 1 else ""
            return DeviceInfo("cuda", f"CUDA: {torch.cuda.get_device_name(0)}{more}")
        return DeviceInfo(
            "cpu", f"CPU, {os.cpu_count()} cores (torch {torch.__version__} sees no CUDA GPU)"
        )
    except Exception as exc:  # e.g. no /dev/urandom in a chroot: report, do not crash
        return DeviceInfo(None, f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------
# The executable


def _executable(
    environ: Mapping[str, str], which: Callable[[str], str | None]
) -> tuple[list[Finding], str | None]:
    """Findings about what RELION will run, and the settings file its variable names."""
    raw = environ.get(EXECUTABLE_VARIABLE, "")
    if not raw.strip():
        found = which("spisonet-relion")
        if found is None:
            return [
                Finding("executable", "problem", "spisonet-relion is not on the PATH"),
            ], None
        return [
            Finding("executable", "ok", f"spisonet-relion: {found}"),
            Finding(
                "executable",
                "note",
                f"{EXECUTABLE_VARIABLE} is not set: RELION would run its own "
                "relion_external_reconstruct; set it to spisonet-relion before starting "
                "relion_refine or the RELION GUI",
            ),
        ], None
    where = f"{EXECUTABLE_VARIABLE}={raw!r}"
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        return [Finding("executable", "problem", f"{where}: {exc}")], None
    found = which(words[0])
    if found is None:
        return [
            Finding(
                "executable",
                "problem",
                f"{where}: {words[0]!r} is not an executable on the PATH; RELION would stop "
                "at its first reconstruction",
            )
        ], None
    findings = [Finding("executable", "ok", f"{where} runs {found}")]
    if Path(words[0]).name != "spisonet-relion":
        findings.append(Finding("executable", "note", f"{where} does not name spisonet-relion"))
        return findings, None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = _parse_args([*words[1:], "run_it001_half1_class001_external_reconstruct.star"])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        refused = Finding(
            "executable",
            "problem",
            f"{where}: spisonet-relion refuses its options "
            f"({message[-1] if message else 'usage error'}); RELION would stop",
        )
        return [*findings, refused], _config_word(words)
    return findings, args.config


def _config_word(words: list[str]) -> str | None:
    """The ``--config`` value among a command's words (when the parser refused them, the
    file is still worth checking)."""
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------------------
# The run


def _run_root(folder: Path) -> tuple[str, int] | None:
    """(root, digits) of the run in ``folder`` with the newest sampling/optimiser file."""
    best: tuple[float, str, int] | None = None
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            jn = parse_run_file(entry.name)
            if jn is None or jn.half is not None or jn.kind is not None:
                continue
            if jn.suffix not in ("_sampling.star", "_optimiser.star"):
                continue
            mtime = entry.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, jn.root, jn.digits)
    return None if best is None else (best[1], best[2])


def _iteration_files(folder: Path, root: str, suffix: str) -> dict[int, Path]:
    """``<root>_it<MMM><suffix>`` files of ``folder`` (no half, no class), by MMM."""
    out: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            jn = parse_run_file(name)
            if jn and jn.root == root and jn.suffix == suffix and jn.half is None:
                if jn.kind is None:
                    out[jn.iteration] = folder / name
    return out


def _order(path: Path | None) -> tuple[int | None, str]:
    if path is None:
        return None, "no sampling file"
    raw = read_star_value(path, "rlnHealpixOrder")
    try:
        return int(float(raw)), path.name  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, f"{path.name} has no rlnHealpixOrder"


def _model_resolution(model: Path) -> tuple[float | None, str]:
    """(resolution in Å, its source) of a RELION ``_model.star``, by the rule the correction
    applies to the job's STAR (:func:`~spisonet.relion.job.current_resolution`: the first
    shell >= 1 whose ``rlnGoldStandardFsc`` falls below 0.143); RELION's own
    ``rlnCurrentResolution`` (a coarser estimate, often 2x worse) only when the FSC
    column cannot be read."""
    try:
        blocks = read_star_blocks(model)
        general, table = blocks["model_general"], blocks["model_class_1"]
        box = int(general["rlnOriginalImageSize"])  # type: ignore[index]
        pixel = positive_number(general.get("rlnPixelSize"))  # type: ignore[union-attr]
        index = table["rlnSpectralIndex"].to_numpy(dtype=int)  # type: ignore[index]
        values = table["rlnGoldStandardFsc"].to_numpy(dtype=float)  # type: ignore[index]
        if pixel is None or index.size < 2:
            raise ValueError("no pixel size or FSC")
        res = fsc_table_resolution(index, values, box, pixel)
        return res, f"rlnGoldStandardFsc in {model.name}"
    except Exception:  # an odd model file: RELION's own estimate, else nothing
        res = positive_number(read_star_value(model, "rlnCurrentResolution"))
        return res, f"rlnCurrentResolution in {model.name}"


def _history(
    folder: Path, root: str, digits: int, settings: RelionCorrectionSettings
) -> list[GateRow]:
    """The gates of each iteration after one whose files RELION wrote: iteration M+1
    sees M's healpix order (``_sampling.star``) and resolution (:func:`_model_resolution`
    of M's ``_half1_model.star`` or ``_model.star``: the correction's rule on M's FSC;
    the job's own STAR holds M+1's FSC, so its value may differ by a shell)."""
    rows = []
    opened = False  # once open, the resolution gate is held open (as the correction does)
    for m, sampling in sorted(_iteration_files(folder, root, "_sampling.star").items()):
        order, order_src = _order(sampling)
        res, res_src = None, "no model file"
        for tail in ("_half1_model.star", "_model.star"):
            model = folder / f"{root}_it{m:0{digits}d}{tail}"
            if model.exists():
                res, res_src = _model_resolution(model)
                break
        closed = closed_gates(
            order, res, settings.start_healpix, settings.start_resolution, held_open=opened
        )
        opened = opened or not closed
        rows.append(GateRow(m + 1, order, order_src, res, res_src, closed))
    return rows


def _job_row(
    star: Path, settings: RelionCorrectionSettings
) -> tuple[GateRow | None, list[Finding]]:
    """The gates exactly as the correction would see the job of ``star``."""
    try:
        job = read_external_star(star)
    except SpisonetError as exc:
        return None, [Finding("run", "problem", str(exc))]
    jn = parse_job_name(job.name)
    if jn is None:
        note = f"{job.name} does not follow RELION's iteration naming: RELION's map is kept"
        return None, [Finding("run", "note", note)]
    findings = []
    pixel = find_pixel_size(star, job.pixel_size)
    if pixel.value is None:
        findings.append(
            Finding("run", "note", f"pixel size not found ({pixel.source}); 1.0 Å is used")
        )
    res = current_resolution(job, pixel.value or 1.0)
    # at run time the job's own _sampling.star is not written yet: the newest before it
    samplings = _iteration_files(star.parent, jn.root, "_sampling.star")
    earlier = [m for m in samplings if m < jn.iteration]
    order, order_src = _order(samplings[max(earlier)] if earlier else None)
    resolution = res if math.isfinite(res) else None
    row = GateRow(
        jn.iteration,
        order,
        order_src,
        resolution,
        f"rlnGoldStandardFsc in {star.name}",
        closed_gates(
            order,
            resolution,
            settings.start_healpix,
            settings.start_resolution,
            held_open=bool(trained_iterations(star.parent, jn)),
        ),
    )
    return row, findings


def _mask_and_reference(
    folder: Path, root: str, settings: RelionCorrectionSettings
) -> list[Finding]:
    """The mask (``rlnParticleDiameter``) and, with ``keep_lowres``, the reference."""
    optimisers = _iteration_files(folder, root, "_optimiser.star")
    if not optimisers:
        return [Finding("mask", "note", f"no {root}_it<NNN>_optimiser.star: no mask")]
    optimiser = optimisers[max(optimisers)]
    diameter = positive_number(read_star_value(optimiser, "rlnParticleDiameter"))
    if diameter is None:
        out = [Finding("mask", "note", f"{optimiser.name} has no rlnParticleDiameter: no mask")]
    else:
        text = f"soft sphere of {diameter:g} Å (rlnParticleDiameter in {optimiser.name})"
        out = [Finding("mask", "ok", text)]
    plain = refine_map_options(read_refine_header(optimiser), minres_map=settings.minres_map)
    out.append(Finding("plain map", "ok", f"{plain.describe()}, as the run's own map"))
    if settings.keep_lowres:
        ref = optimiser_command_option(optimiser, "--ref")
        ini_high = positive_number(optimiser_command_option(optimiser, "--ini_high"))
        if ref is None or ini_high is None:
            text = f"keep_lowres: no --ref or --ini_high in {optimiser.name}'s command line"
            out.append(Finding("settings", "problem", text))
        elif not resolve_input(ref, optimiser).exists():
            out.append(Finding("settings", "problem", f"keep_lowres: {ref} not found"))
    return out


def _run_findings(
    rows: list[GateRow], folder: Path, root: str, settings: RelionCorrectionSettings
) -> tuple[list[Finding], int | None]:
    """The finding about the start iteration, and the start iteration."""
    start = next((r for r in rows if r.open), None)
    rule = (
        f"healpix order >= {settings.start_healpix} and resolution better than "
        f"{settings.start_resolution:g} Å"
    )
    if start is not None:
        text = (
            f"the network would start at iteration {start.iteration}: healpix order "
            f"{start.healpix_order} ({start.order_source}), resolution "
            f"{start.resolution:.2f} Å ({start.resolution_source}); gates: {rule}"
        )
        return [Finding("run", "ok", text)], start.iteration
    if not rows:
        text = f"no {root}_it<NNN>_sampling.star in {folder}: no iteration to look at yet"
        return [Finding("run", "note", text)], None
    orders = [r.healpix_order for r in rows if r.healpix_order is not None]
    resolutions = [r.resolution for r in rows if r.resolution is not None]
    seen = (
        f"up to iteration {rows[-1].iteration}: highest healpix order "
        f"{max(orders) if orders else '?'}, best resolution "
        + (f"{min(resolutions):.2f} Å" if resolutions else "?")
    )
    if (folder / f"{root}_model.star").exists():  # RELION's last, joined files: finished
        text = (
            f"the gates never opened in this run ({seen}; gates: {rule}): lower "
            "start_healpix or raise start_resolution for the network to run"
        )
    else:
        text = f"the gates are closed so far ({seen}); the network starts once {rule}"
    return [Finding("run", "note", text)], None


# --------------------------------------------------------------------------------------
# The whole check


def _settings(
    config: str | os.PathLike | None,
    variable_config: str | None,
    own_config: bool,
    environ: Mapping[str, str],
) -> tuple[list[Finding], RelionCorrectionSettings | None]:
    """Findings about the settings file and the settings, and the settings (None: they
    cannot be read). ``config`` is the file to read: the caller's own (``own_config``),
    else the one the variable names (``variable_config``)."""
    findings = []
    if variable_config is not None:
        if not own_config:
            text = f"settings file {config} (from {EXECUTABLE_VARIABLE})"
            findings.append(Finding("settings", "ok", text))
        elif Path(config).resolve() != Path(variable_config).resolve():  # type: ignore[arg-type]
            text = f"RELION will read {variable_config} ({EXECUTABLE_VARIABLE}), not {config}"
            findings.append(Finding("settings", "note", text))
        if not Path(variable_config).is_absolute():
            text = (
                f"--config {variable_config} is relative: RELION reads it from the folder "
                "relion_refine runs in; an absolute path is safer"
            )
            findings.append(Finding("settings", "note", text))
    try:
        settings = load_relion_settings(config, environ)
    except SpisonetError as exc:
        text = f"{exc} (inside RELION, every iteration would get RELION's plain map)"
        return [*findings, Finding("settings", "problem", text)], None
    from_file = 0
    if config is not None:  # a file's sources are "<file>:<key>"
        prefix = f"{os.fspath(config)}:"
        from_file = sum(s.startswith(prefix) for s in settings.sources.values())
    from_env = len(settings.sources) - from_file
    text = (
        f"{from_file} from {config}, " if config is not None else "no settings file; "
    ) + f"{from_env} from the environment, the others defaults"
    return [*findings, Finding("settings", "ok", text)], settings


def _device(device: DeviceInfo, settings: RelionCorrectionSettings | None) -> list[Finding]:
    """Findings about the device torch would use and the preset it gives."""
    if device.kind is None:
        text = f"torch cannot start ({device.text}): the correction would fail every iteration"
        return [Finding("device", "problem", text)]
    findings = [Finding("device", "ok", device.text)]
    if settings is not None:
        preset, why = resolve_preset(settings.preset, cuda_available=device.kind == "cuda")
        findings.append(
            Finding("preset", "ok", f"{settings.preset} -> {preset} ({why})" if why else preset)
        )
        if preset == "gpu" and device.kind != "cuda":
            text = "the gpu preset on a CPU takes hours per iteration; use cpu or auto"
            findings.append(Finding("preset", "note", text))
    return findings


def check_relion_setup(
    config: str | os.PathLike | None = None,
    *,
    star: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    device: DeviceInfo | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> RelionSetupReport:
    """Check a RELION set-up for ``spisonet-relion`` before a long run.

    Parameters
    ----------
    config : the settings file (None: the one ``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE``
        names with ``--config``, if any); relative to the cwd, as RELION would read it
        from its project folder.
    star : one of the run's ``*_external_reconstruct.star`` (its gates are computed as
        the correction would); the run's other iterations come from the files beside it.
    run_dir : a run's folder (its newest run's ``_sampling.star`` / ``_model.star`` /
        ``_optimiser.star`` files). Give ``star`` or ``run_dir``, or neither.
    environ : the environment RELION will run in (``os.environ`` when None).
    device : the device torch would use (None: :func:`probe_device`, which imports
        torch).
    which : finds an executable on the PATH (``shutil.which``).

    Raises
    ------
    InvalidValueError when both ``star`` and ``run_dir`` are given. Everything else
    becomes a finding.
    """
    if star is not None and run_dir is not None:
        raise InvalidValueError("give a run's STAR or its folder, not both")
    env = os.environ if environ is None else environ
    findings, variable_config = _executable(env, which)
    own_config = config is not None
    config = config if own_config else variable_config
    more, settings = _settings(config, variable_config, own_config, env)
    findings += more
    findings += _device(probe_device() if device is None else device, settings)
    run, rows, start = "", [], None
    if settings is not None and (star is not None or run_dir is not None):
        rows, start, run = _look_at_run(star, run_dir, settings, findings)
    elif star is None and run_dir is None:
        findings.append(Finding("run", "note", "no run given (a STAR or a run folder)"))
    config_name = None if config is None else os.fspath(config)
    return RelionSetupReport(settings, config_name, tuple(findings), run, tuple(rows), start)


def _look_at_run(
    star: str | os.PathLike | None,
    run_dir: str | os.PathLike | None,
    settings: RelionCorrectionSettings,
    findings: list[Finding],
) -> tuple[list[GateRow], int | None, str]:
    """(the gates per iteration, the start iteration, ``folder/root``); adds findings."""
    job_row = None
    if star is not None:
        path = Path(star)
        folder = path.parent
        job_row, more = _job_row(path, settings)
        findings.extend(more)
        jn = parse_job_name(job_name_of_star(path.name))
        if jn is None:
            return [], None, ""
        root, digits = jn.root, jn.digits
    else:
        folder = Path(run_dir)  # type: ignore[arg-type]
        if not folder.is_dir():
            findings.append(Finding("run", "problem", f"{folder}: not a folder"))
            return [], None, ""
        found = _run_root(folder)
        if found is None:
            text = f"{folder}: no RELION run files (<root>_it<NNN>_sampling.star)"
            findings.append(Finding("run", "problem", text))
            return [], None, ""
        root, digits = found
    rows = _history(folder, root, digits, settings)
    if job_row is not None:
        rows = [r for r in rows if r.iteration < job_row.iteration] + [job_row]
    more, start = _run_findings(rows, folder, root, settings)
    findings.extend(more)
    findings.extend(_mask_and_reference(folder, root, settings))
    return rows, start, f"{folder}/{root}"
