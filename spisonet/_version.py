"""The installed version of spisonet (written into every JSON report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spisonet")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
