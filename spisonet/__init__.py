"""spisonet: self-supervised correction of preferred-orientation anisotropy in cryo-EM.

The public API is re-exported here. Modules that need torch (``spisonet.nn``,
``spisonet.correction``) are imported lazily, on first use of their names, so that
``import spisonet`` and ``spisonet --help`` stay fast. The 3D FSC lives in its module
(``from spisonet.fsc3d import fsc3d``): a package attribute of the same name as a
submodule would change meaning once the submodule is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import SpisonetError
from .fsc_shells import FSCResult, fsc
from .io import Map, read_map, read_star_angles, write_map

#: name -> module for the lazily imported part of the API
_LAZY = {
    "FSC3DResult": "spisonet.fsc3d",
    "analyse_anisotropy": "spisonet.anisotropy",
    "AnisotropyReport": "spisonet.anisotropy",
    "conical_fsc": "spisonet.anisotropy",
    "fourier_shell_density": "spisonet.fsd3d",
    "point_group": "spisonet.symmetry",
    "whiten": "spisonet.maps",
    "combine_map": "spisonet.maps",
    "fsc_weight": "spisonet.maps",
    "soft_mask": "spisonet.masks",
    "spherical_mask": "spisonet.masks",
    "make_molecule": "spisonet.simulate",
    "simulate_half_maps": "spisonet.simulate",
    "simulate_dataset": "spisonet.simulate",
    "SimulatedData": "spisonet.simulate",
    "correct_anisotropy": "spisonet.correction",
    "CorrectionSettings": "spisonet.correction",
    "CorrectionResult": "spisonet.correction",
    "preset_settings": "spisonet.correction",
    "reconstruct": "spisonet.correction",
}

__all__ = [
    "FSCResult",
    "Map",
    "SpisonetError",
    "__version__",
    "fsc",
    "read_map",
    "read_star_angles",
    "write_map",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spisonet' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
