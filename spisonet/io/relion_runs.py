"""RELION run files: the names relion_refine gives them and what they say about the run.

relion_refine names every file of a run ``<root>_it<NNN>[_half<h>][_class<CCC>]<suffix>``
(``run_it012_half1_class001_external_reconstruct.star``, ``run_it011_sampling.star``,
``run_it011_half2_model.star``, ``run_it011_half1_class001.mrc``); the root may hold
underscores. :func:`parse_run_file` is the one parser of those names, :func:`parse_job_name`
its strict form for a job's name (``<root>_it<NNN>[_half<h>]_class<CCC>``).

The job names RELION gives its external reconstructor (``MlOptimiser::maximization`` and
``MlOptimiserMpi::maximization``, RELION 3.1 to 5.0, all alike): ``<o>_it<NNN>``, then
``_half1``/``_half2`` while the halves of an auto-refine are apart (not in the last, joined
iteration, and not in 3D classification), then ``_body<BBB>`` in multi-body refinement,
else ``_class<CCC>`` (``class002``... in 3D classification). :attr:`JobName.layout` names
these cases.

The lookups read only files of the same run (same root, iteration <= the job's) in the
folder of the job's STAR: the pixel size (:func:`find_pixel_size`), the healpix order
(:func:`healpix_order_of_run`), one label's value (:func:`read_star_value`) and the options
of the command line RELION writes atop ``_optimiser.star``
(:func:`optimiser_command_option`). None of them raises on a missing or odd file: they
return None (with a reason where the caller logs one).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpisonetError
from .mrc import read_map

__all__ = [
    "EXTERNAL_STAR_SUFFIX",
    "JobName",
    "PixelSize",
    "RefineCommand",
    "find_pixel_size",
    "healpix_order_of_run",
    "job_name_of_star",
    "newest_iteration_file",
    "optimiser_command_option",
    "parse_job_name",
    "parse_run_file",
    "positive_number",
    "read_refine_command",
    "read_refine_header",
    "read_star_value",
    "run_has_halves",
]

#: What relion_refine appends to the job name of the STAR it hands the reconstructor.
EXTERNAL_STAR_SUFFIX = "_external_reconstruct.star"

# The root is greedy, so a root holding "_it<digits>" itself still splits at the last one.
_RUN_NAME = re.compile(
    r"^(?P<root>.+)_it(?P<it>\d{3,})(?:_half(?P<half>\d+))?"
    r"(?:_(?P<kind>class|body)(?P<number>\d{3,}))?(?P<suffix>.*)$"
)


@dataclass(frozen=True)
class JobName:
    """The parts of a RELION run-file name ``<root>_it<NNN>[_half<h>][_<kind><CCC>]<suffix>``.

    Attributes
    ----------
    root : everything before the last ``_it<NNN>`` (may hold underscores).
    iteration : NNN as a number; ``digits`` is how many digits RELION wrote (3, or more).
    half : h, or None (the joined iteration, or a file of both halves).
    kind, number : ``class``/``body`` and CCC as written (None when absent).
    suffix : the rest (``""`` for a job name, ``"_sampling.star"``, ``".mrc"`` ...).
    """

    root: str
    iteration: int
    digits: int
    half: int | None
    kind: str | None
    number: str | None
    suffix: str = ""

    def name(self, half: int | None = None, iteration: int | None = None) -> str:
        """The job name (no suffix) for another half and/or iteration."""
        h = self.half if half is None else half
        it = self.iteration if iteration is None else iteration
        mid = f"_half{h}" if h is not None else ""
        cls = f"_{self.kind}{self.number}" if self.kind is not None else ""
        return f"{self.root}_it{it:0{self.digits}d}{mid}{cls}"

    @property
    def layout(self) -> str:
        """Which of RELION's jobs this name is: ``half`` (one half of an auto-refine
        iteration, class 001), ``joined`` (no half, class 001: the last iteration of an
        auto-refine, or a one-class 3D classification), ``body`` (multi-body), ``class``
        (class 002 or later), ``unknown`` (no class or body part)."""
        if self.kind == "body":
            return "body"
        if self.kind != "class" or self.number is None:
            return "unknown"
        if int(self.number) != 1:
            return "class"
        return "joined" if self.half is None else "half"

    @property
    def tail(self) -> str:
        """Everything after ``_it<NNN>``: ``[_half<h>][_<kind><CCC>]<suffix>``."""
        mid = f"_half{self.half}" if self.half is not None else ""
        cls = f"_{self.kind}{self.number}" if self.kind is not None else ""
        return f"{mid}{cls}{self.suffix}"


def parse_run_file(name: str) -> JobName | None:
    """Split a RELION run-file name (no folder); None if it has no ``_it<NNN>`` part."""
    m = _RUN_NAME.match(name)
    if m is None:
        return None
    return JobName(
        root=m.group("root"),
        iteration=int(m.group("it")),
        digits=len(m.group("it")),
        half=int(m.group("half")) if m.group("half") is not None else None,
        kind=m.group("kind"),
        number=m.group("number"),
        suffix=m.group("suffix"),
    )


def parse_job_name(name: str) -> JobName | None:
    """Split a job name (the STAR name without ``_external_reconstruct.star``); None if it
    does not follow RELION's iteration naming. Roots with underscores are fine."""
    jn = parse_run_file(name)
    if jn is None or jn.kind is None or jn.suffix:
        return None
    return jn


def job_name_of_star(name: str) -> str:
    """The job name of an external-reconstruction STAR file name (its stem otherwise)."""
    if name.endswith(EXTERNAL_STAR_SUFFIX):
        return name[: -len(EXTERNAL_STAR_SUFFIX)]
    return Path(name).stem


def _run_files(folder: Path, root: str) -> list[tuple[JobName, str]]:
    """The parsed names of the files of run ``root`` in ``folder`` (sorted by name)."""
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return []
    out = []
    for name in names:
        jn = parse_run_file(name)
        if jn is not None and jn.root == root:
            out.append((jn, name))
    return out


def run_has_halves(folder: Path, root: str) -> bool:
    """Whether run ``root`` in ``folder`` has any ``_half<h>`` file (an auto-refine does,
    from its first iteration; a 3D classification never does)."""
    return any(jn.half is not None for jn, _ in _run_files(folder, root))


def newest_iteration_file(folder: Path, jn: JobName, tail: str, *, before: bool) -> Path | None:
    """Newest ``<root>_it<MMM><tail>`` in ``folder`` with MMM <= NNN (< NNN if ``before``).

    ``tail`` is what follows ``_it<MMM>``, e.g. ``"_sampling.star"`` or
    ``"_half1_class001_spisonet.pt"``.
    """
    best: tuple[int, str] | None = None
    for other, name in _run_files(folder, jn.root):
        if other.tail != tail:
            continue
        if other.iteration > jn.iteration or (before and other.iteration == jn.iteration):
            continue
        if best is None or other.iteration > best[0]:
            best = (other.iteration, name)
    return None if best is None else folder / best[1]


# --------------------------------------------------------------------------------------
# Reading values from STAR files


def positive_number(text: str | float | None) -> float | None:
    """``text`` as a finite number > 0, else None."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _star_values(path: Path) -> Iterator[tuple[str, str]]:
    """(label, value text) of every list-block entry and of the first row of every loop,
    in file order; nothing when the file cannot be read.

    A line scanner rather than :func:`spisonet.io.read_star_blocks`: the values wanted
    here sit near the top, and a run's ``_data.star`` can hold millions of particle rows
    that a full parse would read for nothing.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            loop_labels: list[str] = []
            in_loop_header = False
            for raw in fh:
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("data_") or line.startswith("loop_"):
                    loop_labels, in_loop_header = [], line.startswith("loop_")
                    continue
                if line.startswith("_"):
                    parts = line.split()
                    if in_loop_header:
                        loop_labels.append(parts[0][1:])
                    elif len(parts) > 1:
                        yield parts[0][1:], parts[1]
                    continue
                if in_loop_header:  # the loop's first row; the other rows are skipped
                    in_loop_header = False
                    yield from zip(loop_labels, line.split(), strict=False)
                    loop_labels = []
    except OSError:
        return


def read_star_value(path: Path, label: str) -> str | None:
    """The first value of ``label`` in a STAR file (a list entry or a loop's first row)."""
    return next((value for lab, value in _star_values(path) if lab == label), None)


def optimiser_command_option(path: Path, option: str) -> str | None:
    """The value of ``option`` in the command line RELION writes atop ``_optimiser.star``."""
    command = read_refine_header(path)
    return command.value(option) if command is not None else None


@dataclass(frozen=True)
class RefineCommand:
    """What ``relion_refine`` wrote atop a run's ``_optimiser.star``: its release
    (``# RELION optimiser; version 5.1.0``) and its command line (``# --i ... --o ...``).

    ``major`` is the release's first number (3, 4, 5), None when the header has none;
    ``arguments`` the command line split at white space; ``source`` the file's name.
    """

    release: str | None
    major: int | None
    arguments: tuple[str, ...]
    source: str

    def has(self, option: str) -> bool:
        """Whether the command line holds the flag ``option`` (e.g. ``--skip_gridding``)."""
        return option in self.arguments

    def value(self, option: str) -> str | None:
        """The word after ``option`` on the command line, None when absent."""
        if option not in self.arguments:
            return None
        i = self.arguments.index(option)
        return self.arguments[i + 1] if i + 1 < len(self.arguments) else None


_RELEASE_LINE = re.compile(r"^#\s*RELION optimiser;\s*version\s+(\S+)")


def read_refine_header(path: str | os.PathLike) -> RefineCommand | None:
    """The :class:`RefineCommand` atop one ``_optimiser.star``; None when it has neither
    line or cannot be read."""
    path = Path(path)
    release, arguments = None, ()
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _ in range(5):
                line = fh.readline()
                m = _RELEASE_LINE.match(line)
                if m:
                    release = m.group(1)
                elif line.startswith("# --") or line.startswith("#--"):
                    arguments = tuple(line[1:].split())
    except OSError:
        return None
    if release is None and not arguments:
        return None
    major = None
    if release is not None:
        head = re.match(r"\d+", release)
        major = int(head.group()) if head else None
    return RefineCommand(release, major, arguments, path.name)


def read_refine_command(star_path: str | os.PathLike) -> RefineCommand | None:
    """The ``relion_refine`` release and command line of the run that wrote the job
    ``star_path``: from the run's newest ``<root>_it<MMM>_optimiser.star`` before the job's
    iteration (RELION writes ``_it000_`` before the first), else of the same iteration.
    None when the STAR's name is not RELION's or no such file can be read."""
    star = Path(star_path)
    jn = parse_job_name(job_name_of_star(star.name))
    if jn is None:
        return None
    for before in (True, False):
        path = newest_iteration_file(star.parent, jn, "_optimiser.star", before=before)
        if path is not None:
            command = read_refine_header(path)
            if command is not None:
                return command
    return None


def healpix_order_of_run(star_path: str | os.PathLike) -> tuple[int | None, str]:
    """RELION's current healpix order for the job of ``star_path``, from the run's newest
    ``<root>_it<MMM>_sampling.star`` (MMM <= the job's iteration) beside it.

    Returns (order or None, the file it came from or why there is none).
    """
    star = Path(star_path)
    name = job_name_of_star(star.name)
    jn = parse_job_name(name)
    if jn is None:
        return None, f"{name} does not follow RELION's iteration naming"
    path = newest_iteration_file(star.parent, jn, "_sampling.star", before=False)
    if path is None:
        return None, f"no {jn.root}_it<NNN>_sampling.star beside the job"
    raw = read_star_value(path, "rlnHealpixOrder")
    if raw is None:
        return None, f"{path.name} has no rlnHealpixOrder"
    try:
        return int(float(raw)), path.name
    except ValueError:
        return None, f"{path.name}: rlnHealpixOrder is {raw!r}"


# --------------------------------------------------------------------------------------
# The pixel size


@dataclass(frozen=True)
class PixelSize:
    """A pixel size in Å and where it came from (None when nothing was found)."""

    value: float | None
    source: str


_PIXEL_LABELS = ("rlnPixelSize", "rlnImagePixelSize", "rlnMicrographPixelSize")
_OPTIMISER_REFERENCES = ("rlnModelStarFile", "rlnExperimentalDataStarFile", "rlnReferenceImage")
#: Run files that may state the pixel size, in the order they are tried per iteration.
_PIXEL_FILES = ("_model.star", "_data.star", "_optimiser.star")


def _pixel_in(path: Path) -> float | None:
    """The pixel size (Å) a STAR file or an MRC header states, else None."""
    if path.suffix == ".star":
        return next(
            (
                value
                for label, text in _star_values(path)
                if label in _PIXEL_LABELS and (value := positive_number(text)) is not None
            ),
            None,
        )
    with contextlib.suppress(SpisonetError, OSError):  # unreadable: try the next file
        return positive_number(read_map(path, require_cubic=False).voxel_size)
    return None


def _optimiser_references(path: Path) -> list[Path]:
    """Files an ``_optimiser.star`` names (model, data, reference), resolved like RELION."""
    refs: list[Path] = []
    for label, text in _star_values(path):
        if label not in _OPTIMISER_REFERENCES:
            continue
        p = Path(text)
        found = next((c for c in (p, Path.cwd() / p, path.parent / p.name) if c.exists()), None)
        if found is not None:
            refs.append(found)
    return refs


def _pixel_candidates(folder: Path, jn: JobName) -> list[Path]:
    """The run's files that may state the pixel size, in the order they are tried."""
    stars: list[tuple[int, int, int, str]] = []
    maps: list[tuple[int, str]] = []
    for other, name in _run_files(folder, jn.root):
        if other.iteration > jn.iteration:
            continue
        if other.kind is None and other.suffix in _PIXEL_FILES:
            other_half = int(other.half is not None and other.half != jn.half)
            order = _PIXEL_FILES.index(other.suffix)
            stars.append((-other.iteration, order, other_half, name))
        elif other.kind is not None and other.suffix == ".mrc":
            maps.append((-other.iteration, name))
    return [folder / name for *_, name in sorted(stars)] + [folder / n for _, n in sorted(maps)]


def find_pixel_size(star_path: str | os.PathLike, in_star: float | None = None) -> PixelSize:
    """The pixel size (Å) of the run that wrote the job ``star_path``, from its own files.

    Order: ``in_star`` (``rlnPixelSize`` in the STAR itself, RELION 5); then, when the
    STAR has RELION's iteration name (``<root>_it<NNN>[_half<h>]_class<CCC>`` followed by
    ``_external_reconstruct.star``), the same run's files beside it, newest iteration
    <= NNN first: ``<root>_it<MMM>[_half<h>]_model.star`` (``rlnPixelSize``),
    ``_data.star`` (optics ``rlnImagePixelSize``), ``_optimiser.star`` (and the model,
    data and reference files it names), then ``<root>_it<MMM>..._class<CCC>.mrc`` headers.
    Returns ``PixelSize(None, reason)`` when nothing is found.
    """
    star = Path(star_path)
    if in_star is not None:
        return PixelSize(in_star, f"rlnPixelSize in {star.name}")
    jn = parse_job_name(job_name_of_star(star.name))
    for path in _pixel_candidates(star.parent, jn) if jn is not None else []:
        value = _pixel_in(path)
        if value is not None:
            return PixelSize(value, path.name)
        if path.name.endswith("_optimiser.star"):
            for ref in _optimiser_references(path):
                value = _pixel_in(ref)
                if value is not None:
                    return PixelSize(value, f"{ref.name} (via {path.name})")
    return PixelSize(None, "no pixel size in the STAR or the run's model/data/optimiser files")
