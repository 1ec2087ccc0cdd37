"""The tomogram list of ``spisonet tomo``: a small TOML file, one table per tomogram.

``spisonet tomo prepare`` writes it; ``deconv`` and ``make-mask`` add the paths they
write to each entry; ``refine`` and ``predict`` read it. A RELION 5 tomography STAR
(``tomograms.star``) can be imported. Paths are stored absolute, so the file can be used
from any folder. The file format (decision, docs/tomo.md)::

    # spisonet tomogram list
    [[tomogram]]
    name = "TS_01"
    even = "/data/TS_01_even.mrc"    # or: tomogram = "/data/TS_01.mrc" (no Noise2Noise)
    odd = "/data/TS_01_odd.mrc"
    voxel_size = 10.0                # Å
    tilt_min = -60.0                 # degrees
    tilt_max = 60.0
    tilt_axis = 0.0                  # degrees from y towards x (0: the y axis)
    defocus = 3.0                    # µm underfocus, optional (deconv needs it)
    voltage = 300.0                  # kV
    spherical_aberration = 2.7       # mm
    amplitude_contrast = 0.07
    deconv_even = "..."              # written by deconv
    mask = "..."                     # written by make-mask
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError, StarFormatError
from .atomic import atomic_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "TomogramEntry",
    "import_relion_tomograms",
    "read_tomogram_list",
    "write_tomogram_list",
]


@dataclass(frozen=True)
class TomogramEntry:
    """One tomogram (or even/odd pair) of the list, with its acquisition parameters.

    Either ``even`` and ``odd`` (two independent tomograms of the same area: Noise2Noise)
    or ``tomogram`` (a single one) is set. Units: Å, degrees, µm (defocus), kV, mm (Cs).
    """

    name: str
    voxel_size: float
    even: str | None = None
    odd: str | None = None
    tomogram: str | None = None
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_axis: float = 0.0
    defocus: float | None = None
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.07
    deconv_even: str | None = None
    deconv_odd: str | None = None
    deconv_tomogram: str | None = None
    mask: str | None = None

    def __post_init__(self) -> None:
        where = f"tomogram {self.name!r}"
        if not self.name or not str(self.name).strip():
            raise InvalidValueError("every tomogram needs a non-empty name")
        paired = self.even is not None or self.odd is not None
        if paired and (self.even is None or self.odd is None):
            raise InvalidValueError(f"{where}: give both even and odd, or a single tomogram")
        if paired == (self.tomogram is not None):
            raise InvalidValueError(
                f"{where}: give either even + odd (two independent tomograms) or one "
                "tomogram, not both and not neither"
            )
        for key in ("voxel_size", "tilt_min", "tilt_max", "tilt_axis", "voltage"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidValueError(f"{where}: {key} must be a number; got {v!r}")
        if self.voxel_size <= 0:
            raise InvalidValueError(f"{where}: voxel_size must be > 0 Å; got {self.voxel_size}")
        if not -90.0 <= self.tilt_min < self.tilt_max <= 90.0:
            raise InvalidValueError(
                f"{where}: the tilt range must satisfy −90 ≤ min < max ≤ 90 degrees; got "
                f"{self.tilt_min:g} … {self.tilt_max:g}"
            )
        if self.defocus is not None and not (
            isinstance(self.defocus, int | float) and math.isfinite(self.defocus)
        ):
            raise InvalidValueError(
                f"{where}: defocus must be a number of µm; got {self.defocus!r}"
            )

    @property
    def paired(self) -> bool:
        """Whether the entry has two independent tomograms (even/odd)."""
        return self.even is not None

    def inputs(self, deconvolved: bool = True) -> list[str]:
        """The tomogram path(s) to train on / predict: deconvolved ones when present."""
        if self.paired:
            if deconvolved and self.deconv_even and self.deconv_odd:
                return [self.deconv_even, self.deconv_odd]
            return [str(self.even), str(self.odd)]
        if deconvolved and self.deconv_tomogram:
            return [self.deconv_tomogram]
        return [str(self.tomogram)]


_FIELDS = {f.name for f in fields(TomogramEntry)}
_PATHS = ("even", "odd", "tomogram", "deconv_even", "deconv_odd", "deconv_tomogram", "mask")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_tomogram_list(path: str | os.PathLike, entries: list[TomogramEntry]) -> Path:
    """Write the list as TOML (atomically); keys left unset are omitted."""
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidValueError(f"tomogram names must be unique; repeated: {', '.join(dup)}")
    lines = ["# spisonet tomogram list (spisonet tomo prepare; docs/tomo.md)", ""]
    for e in entries:
        lines.append("[[tomogram]]")
        for key, value in asdict(e).items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    final = Path(path)
    with atomic_path(final) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return final


def read_tomogram_list(path: str | os.PathLike) -> list[TomogramEntry]:
    """Read a tomogram list written by :func:`write_tomogram_list` (or by hand).

    Relative paths inside are taken relative to the list's folder.

    Raises
    ------
    InvalidValueError
        Missing file, not TOML, no ``[[tomogram]]`` table, unknown keys, bad values.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidValueError(
            f"{p}: tomogram list not found (make one with spisonet tomo prepare)"
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"{p}: not a readable TOML tomogram list ({exc})") from exc
    tables = data.get("tomogram")
    if not isinstance(tables, list) or not tables:
        raise InvalidValueError(f"{p}: no [[tomogram]] table; expected at least one tomogram")
    out = []
    for i, table in enumerate(tables):
        unknown = sorted(set(table) - _FIELDS)
        if unknown:
            raise InvalidValueError(
                f"{p}: tomogram {i + 1}: unknown key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_FIELDS))}"
            )
        if "name" not in table or "voxel_size" not in table:
            raise InvalidValueError(f"{p}: tomogram {i + 1}: needs a name and a voxel_size")
        values = dict(table)
        for key in _PATHS:
            if key in values:
                q = Path(str(values[key])).expanduser()
                values[key] = str(q if q.is_absolute() else (p.parent / q).resolve())
        try:
            out.append(TomogramEntry(**values))
        except InvalidValueError as exc:
            raise InvalidValueError(f"{p}: {exc}") from exc
        except TypeError as exc:
            raise InvalidValueError(f"{p}: tomogram {i + 1}: {exc}") from exc
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise InvalidValueError(f"{p}: tomogram names must be unique")
    return out


def update_entry(entries: list[TomogramEntry], name: str, **changes: Any) -> list[TomogramEntry]:
    """A copy of ``entries`` with the entry ``name`` changed."""
    return [replace(e, **changes) if e.name == name else e for e in entries]


def _column(table: Any, *names: str) -> Any:
    for n in names:
        if n in getattr(table, "columns", ()):
            return table[n]
    return None


def _tilt_series_info(path: Path) -> tuple[float | None, float | None, float | None]:
    """(tilt min, tilt max, defocus µm of the least tilted image) from a RELION 5 tilt
    series STAR; Nones where the columns are missing."""
    from .star import read_star_blocks

    blocks = read_star_blocks(path)
    for table in blocks.values():
        tilts = _column(table, "rlnTomoNominalStageTiltAngle", "rlnTomoYTilt")
        if tilts is None:
            continue
        t = [float(x) for x in tilts]
        lo, hi = min(t), max(t)
        du = _column(table, "rlnDefocusU")
        dv = _column(table, "rlnDefocusV")
        defocus = None
        if du is not None:
            i0 = min(range(len(t)), key=lambda i: abs(t[i]))
            d = float(du.iloc[i0]) if dv is None else (float(du.iloc[i0]) + float(dv.iloc[i0])) / 2
            defocus = d / 1e4  # Å → µm
        return lo, hi, defocus
    return None, None, None


def import_relion_tomograms(path: str | os.PathLike) -> tuple[list[TomogramEntry], list[str]]:
    """Entries from a RELION 5 tomography STAR (``tomograms.star``), and notes.

    Reads ``rlnTomoName``; the tomograms from ``rlnTomoReconstructedTomogramHalf1/2``
    (even/odd) or ``rlnTomoReconstructedTomogram``; the voxel size from
    ``rlnTomoTiltSeriesPixelSize`` × ``rlnTomoTomogramBinning``; ``rlnVoltage``,
    ``rlnSphericalAberration``, ``rlnAmplitudeContrast``; the tilt range and the defocus
    of the least tilted image from each ``rlnTomoTiltSeriesStarFile`` when it exists
    (else −60…60° and no defocus, with a note).

    Raises
    ------
    StarFormatError
        Unreadable file or no block with ``rlnTomoName`` and a tomogram column.
    """
    from .star import read_star_blocks

    p = Path(path)
    blocks = read_star_blocks(p)
    table = next((t for t in blocks.values() if "rlnTomoName" in getattr(t, "columns", ())), None)
    if table is None:
        raise StarFormatError(f"{p}: no block with rlnTomoName; expected RELION 5's tomograms.star")
    half1 = _column(table, "rlnTomoReconstructedTomogramHalf1")
    half2 = _column(table, "rlnTomoReconstructedTomogramHalf2")
    single = _column(table, "rlnTomoReconstructedTomogram")
    if half1 is None and single is None:
        raise StarFormatError(
            f"{p}: no rlnTomoReconstructedTomogram(Half1/Half2) column: reconstruct the "
            "tomograms in RELION first (or list them with spisonet tomo prepare --even/--odd)"
        )
    pixel = _column(table, "rlnTomoTiltSeriesPixelSize")
    binning = _column(table, "rlnTomoTomogramBinning")
    if pixel is None:
        raise StarFormatError(f"{p}: no rlnTomoTiltSeriesPixelSize column")

    def rel(v: Any) -> str:
        q = Path(str(v))
        return str(q if q.is_absolute() else (p.parent / q).resolve())

    entries, notes = [], []
    for i in range(len(table)):
        name = str(table["rlnTomoName"].iloc[i])
        voxel = float(pixel.iloc[i]) * (float(binning.iloc[i]) if binning is not None else 1.0)
        kw: dict[str, Any] = {"name": name, "voxel_size": voxel}
        if half1 is not None and half2 is not None:
            kw["even"], kw["odd"] = rel(half1.iloc[i]), rel(half2.iloc[i])
        else:
            kw["tomogram"] = rel(single.iloc[i])
        for key, col in (
            ("voltage", "rlnVoltage"),
            ("spherical_aberration", "rlnSphericalAberration"),
            ("amplitude_contrast", "rlnAmplitudeContrast"),
        ):
            c = _column(table, col)
            if c is not None:
                kw[key] = float(c.iloc[i])
        series = _column(table, "rlnTomoTiltSeriesStarFile")
        lo = hi = defocus = None
        if series is not None and Path(rel(series.iloc[i])).is_file():
            lo, hi, defocus = _tilt_series_info(Path(rel(series.iloc[i])))
        if lo is None or hi is None or not lo < hi:
            notes.append(f"{name}: no tilt angles found; assumed −60…60° (edit the list)")
        else:
            kw["tilt_min"], kw["tilt_max"] = lo, hi
        if defocus is not None:
            kw["defocus"] = defocus
        entries.append(TomogramEntry(**kw))
    return entries, notes
