"""Cryo-electron tomography: the missing wedge as the sampling weight W (more to come:
deconvolution, masks, sub-tomograms, refine, predict; issue 12)."""

from .deconv import ctf_1d, deconv_filter, deconvolve
from .mask import tomogram_mask
from .simulate import SimulatedTomograms, simulate_tomograms
from .wedge import tilt_of_voxels, wedge_weight

__all__ = [
    "SimulatedTomograms",
    "ctf_1d",
    "deconv_filter",
    "deconvolve",
    "simulate_tomograms",
    "tilt_of_voxels",
    "tomogram_mask",
    "wedge_weight",
]
