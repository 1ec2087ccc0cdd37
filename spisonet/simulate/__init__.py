"""Synthetic test data with a known ground truth.

Three modules: :mod:`~spisonet.simulate.molecules` (a protein-like test molecule:
pseudo-atoms along random-walk chains, rendered as Gaussians with a B-factor),
:mod:`~spisonet.simulate.views` (projection directions from a named distribution, and
the Fourier sampling density they give) and :mod:`~spisonet.simulate.half_maps` (two
half maps as a reconstruction from those views would give them, and Fourier binning).
Import from here: ``from spisonet.simulate import make_molecule, simulate_half_maps``.

Conventions: maps are float32 (n, n, n) arrays indexed [z, y, x] with the box centre at
voxel n//2; directions and atom positions are (x, y, z); Fourier arrays are fftshift-ed
(zero frequency at n//2). Every random choice comes from ``numpy.random.default_rng``
seeded by the ``seed`` argument, so equal seeds give identical arrays.
"""

from __future__ import annotations

from .half_maps import (
    DEFAULT_SNR,
    REGULARISATION,
    SimulatedData,
    fourier_crop,
    simulate_dataset,
    simulate_half_maps,
)
from .molecules import (
    CA_STEP,
    FILL_FRACTION,
    MIN_CONTACT,
    RESIDUE_VOLUME,
    default_bfactor,
    make_molecule,
    pseudo_atoms,
    render_atoms,
)
from .views import (
    DEFAULT_VIEWS,
    DENSITY_CHUNKS,
    DISTRIBUTIONS,
    NARROW_ANGLE_DEG,
    draw_view_directions,
    sampling_density,
)

__all__ = [
    "CA_STEP",
    "DEFAULT_SNR",
    "DEFAULT_VIEWS",
    "DENSITY_CHUNKS",
    "DISTRIBUTIONS",
    "FILL_FRACTION",
    "MIN_CONTACT",
    "NARROW_ANGLE_DEG",
    "REGULARISATION",
    "RESIDUE_VOLUME",
    "SimulatedData",
    "default_bfactor",
    "draw_view_directions",
    "fourier_crop",
    "make_molecule",
    "pseudo_atoms",
    "render_atoms",
    "sampling_density",
    "simulate_dataset",
    "simulate_half_maps",
]


def __getattr__(name: str):
    # the old name of draw_view_directions (spisonet.fsd3d had another function of the
    # same name), kept so that existing scripts run
    if name == "view_directions":
        import warnings

        warnings.warn(
            "spisonet.simulate.view_directions is deprecated; use draw_view_directions",
            DeprecationWarning,
            stacklevel=2,
        )
        return draw_view_directions
    raise AttributeError(f"module 'spisonet.simulate' has no attribute {name!r}")
