"""spisonet: self-supervised correction of preferred-orientation anisotropy in cryo-EM.

The public API is re-exported here. Heavy modules (torch) are imported lazily so that
``import spisonet`` and ``spisonet --help`` stay fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spisonet")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .errors import SpisonetError
from .fsc import FSCResult, fsc
from .io import Map, read_map, read_star_angles, write_map

__all__ = [
    "FSCResult",
    "Map",
    "SpisonetError",
    "__version__",
    "fsc",
    "read_map",
    "read_star_angles",
    "write_map",
]
