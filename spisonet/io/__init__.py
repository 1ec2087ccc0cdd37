"""Files in and out: MRC maps, RELION STAR files, atomic writes.

Reading and writing MRC and STAR files belongs here. Maps travel as :class:`Map`: a
float32 array indexed ``[z, y, x]`` plus the voxel size in Å and the origin in Å. The
modules: :mod:`~spisonet.io.mrc` (maps and their header checks),
:mod:`~spisonet.io.star` (STAR blocks and particle angles), :mod:`~spisonet.io.atomic`
(write to a temporary file, rename on success), :mod:`~spisonet.io.relion_runs` (a RELION
run's file names, pixel size, healpix order). Import from here:
``from spisonet.io import read_map``.
"""

from __future__ import annotations

from .atomic import atomic_path
from .cryosparc import read_cs_angles
from .mrc import (
    SUPPORTED_MODES,
    Map,
    MappedMap,
    check_half_maps,
    check_mask,
    map_slab_writer,
    open_map_mmap,
    read_map,
    write_map,
)
from .relion_runs import JobName, PixelSize, find_pixel_size, healpix_order_of_run, parse_job_name
from .star import read_star_angles, read_star_blocks

__all__ = [
    "SUPPORTED_MODES",
    "JobName",
    "Map",
    "MappedMap",
    "PixelSize",
    "atomic_path",
    "check_half_maps",
    "check_mask",
    "find_pixel_size",
    "healpix_order_of_run",
    "map_slab_writer",
    "open_map_mmap",
    "parse_job_name",
    "read_cs_angles",
    "read_map",
    "read_star_angles",
    "read_star_blocks",
    "write_map",
]
