"""Cryo-electron tomography: the missing wedge as the sampling weight W (more to come:
deconvolution, masks, sub-tomograms, refine, predict; issue 12)."""

from .wedge import tilt_of_voxels, wedge_weight

__all__ = ["tilt_of_voxels", "wedge_weight"]
