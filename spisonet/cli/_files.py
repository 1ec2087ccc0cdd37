"""Files several commands share: a checked pair of half maps with its mask, a mask checked
against its map, and the names of the report files."""

from __future__ import annotations

from pathlib import Path

from .._checks import check_contrast
from ..io import Map, check_half_maps, check_mask, read_map

__all__ = ["load_pair", "read_mask", "report_paths"]


def read_mask(mask: Path | None, like: Map, apix: float | None = None) -> Map | None:
    """The mask at ``mask`` (None: none), checked against the map ``like``."""
    if mask is None:
        return None
    m = read_map(mask, voxel_size=apix)
    check_mask(m, like)
    return m


def load_pair(
    half1: Path, half2: Path, mask: Path | None, apix: float | None = None
) -> tuple[Map, Map, Map | None]:
    """Two half maps and an optional mask, checked against each other; ``apix`` (Å)
    replaces the voxel size of every header when given."""
    h1 = read_map(half1, voxel_size=apix)
    h2 = read_map(half2, voxel_size=apix)
    check_half_maps(h1, h2)
    m = read_mask(mask, h1, apix)
    for h in (h1, h2):  # before any work: a flat map gives confident, meaningless numbers
        check_contrast(h.data, h.name, None if m is None else m.data)
    return h1, h2, m


def report_paths(prefix: Path) -> tuple[Path, Path]:
    """``<prefix>_report.png`` and ``<prefix>_report.json``."""
    return (
        prefix.with_name(f"{prefix.name}_report.png"),
        prefix.with_name(f"{prefix.name}_report.json"),
    )
