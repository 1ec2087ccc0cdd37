"""Exceptions users see.

Every error spisonet raises on bad input is a :class:`SpisonetError`. The CLI prints
its message in one line and exits with code 2, so messages name the file, what was
expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "CsFormatError",
    "DeviceMemoryError",
    "EmptyMaskError",
    "FlatMapError",
    "InvalidValueError",
    "MapFormatError",
    "MapMismatchError",
    "MapNotFoundError",
    "MapShapeError",
    "ModelFileError",
    "NonFiniteMapError",
    "OutputLockedError",
    "OutputPathError",
    "SpisonetError",
    "StarFormatError",
    "VoxelSizeError",
]


class SpisonetError(Exception):
    """Base class of every error caused by the user's input or settings."""


class MapNotFoundError(SpisonetError, FileNotFoundError):
    """An input file does not exist."""


class MapFormatError(SpisonetError):
    """A file is not a readable MRC map (wrong format, truncated, unsupported mode)."""


class VoxelSizeError(MapFormatError):
    """A map's header gives no usable voxel size (zero, negative or not a number)."""


class MapShapeError(SpisonetError):
    """A map has the wrong shape (not cubic, not 3D)."""


class MapMismatchError(SpisonetError):
    """Two maps that must match (half maps, map and mask) differ in shape or voxel size."""


class NonFiniteMapError(SpisonetError):
    """A map contains NaN or infinite values."""


class EmptyMaskError(SpisonetError):
    """A mask is zero everywhere."""


class CsFormatError(SpisonetError):
    """A cryoSPARC ``.cs`` file is missing, unreadable, pickled or lacks 3D poses."""


class StarFormatError(SpisonetError):
    """A STAR file is missing, unreadable or lacks the columns we need."""


class DeviceMemoryError(SpisonetError, MemoryError):
    """The GPU (or CPU) ran out of memory; the message says which setting to lower."""


class InvalidValueError(SpisonetError, ValueError):
    """An option has a value outside its valid range."""


class FlatMapError(InvalidValueError):
    """A map (or a 3D FSC) is constant or zero: it holds no signal to measure or correct."""


class ModelFileError(SpisonetError):
    """A model/checkpoint file is missing, unreadable, unsafe or does not fit the run."""


class OutputPathError(SpisonetError):
    """An output file or folder cannot be written (checked before any work starts)."""


class OutputLockedError(SpisonetError):
    """Another spisonet run holds the lock on the output folder."""
