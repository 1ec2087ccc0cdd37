"""The anisotropy-correction network and its building blocks (the only place torch lives).

Modules: :mod:`~spisonet.nn.unet` (the 3D U-Net), :mod:`~spisonet.nn.operators` (the
Fourier sampling operator P_W and the 24 cube rotations), :mod:`~spisonet.nn.losses`
(consistency, equivariance and Noise2Noise losses), :mod:`~spisonet.nn.data` (in-memory
training cubes) and :mod:`~spisonet.nn.predict` (tiled, blended prediction of a whole map).
"""

from __future__ import annotations

from .data import CubeBatch, CubePairs, extract_cubes, sample_cube_centres
from .losses import correction_loss
from .operators import (
    apply_sampling,
    cube_rotations,
    inverse_rotation,
    prepare_sampling_weight,
    rotate,
    rotate_batch,
    rotation_asymmetry,
    rotation_index,
    rotation_information,
    sampling_tensor,
    symmetry_rotations,
)
from .predict import blend_ramp, predict_map
from .unet import WIDTH_PRESETS, UNet3D

__all__ = [
    "WIDTH_PRESETS",
    "CubeBatch",
    "CubePairs",
    "UNet3D",
    "apply_sampling",
    "blend_ramp",
    "correction_loss",
    "cube_rotations",
    "extract_cubes",
    "inverse_rotation",
    "predict_map",
    "prepare_sampling_weight",
    "rotate",
    "rotate_batch",
    "rotation_asymmetry",
    "rotation_index",
    "rotation_information",
    "sample_cube_centres",
    "sampling_tensor",
    "symmetry_rotations",
]
