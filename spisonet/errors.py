"""Exceptions users see.

Every error spisonet raises on bad input is a :class:`SpisonetError`. The CLI prints
its message in one line and exits with code 2, so messages name the file, what was
expected and what was found.
"""

from __future__ import annotations

__all__ = [
    "DeviceMemoryError",
    "EmptyMaskError",
    "InvalidValueError",
    "MapFormatError",
    "MapMismatchError",
    "MapNotFoundError",
    "MapShapeError",
    "ModelFileError",
    "NonFiniteMapError",
    "SpisonetError",
    "StarFormatError",
]


class SpisonetError(Exception):
    """Base class of every error caused by the user's input or settings."""


class MapNotFoundError(SpisonetError, FileNotFoundError):
    """An input file does not exist."""


class MapFormatError(SpisonetError):
    """A file is not a readable MRC map (wrong format, truncated, unsupported mode)."""


class MapShapeError(SpisonetError):
    """A map has the wrong shape (not cubic, not 3D)."""


class MapMismatchError(SpisonetError):
    """Two maps that must match (half maps, map and mask) differ in shape or voxel size."""


class NonFiniteMapError(SpisonetError):
    """A map contains NaN or infinite values."""


class EmptyMaskError(SpisonetError):
    """A mask is zero everywhere."""


class StarFormatError(SpisonetError):
    """A STAR file is missing, unreadable or lacks the columns we need."""


class DeviceMemoryError(SpisonetError, MemoryError):
    """The GPU (or CPU) ran out of memory; the message says which setting to lower."""


class InvalidValueError(SpisonetError, ValueError):
    """An option has a value outside its valid range."""


class ModelFileError(SpisonetError):
    """A model/checkpoint file is missing, unreadable, unsafe or does not fit the run."""
