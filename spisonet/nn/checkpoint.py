"""Model files: checkpoints written atomically and read safely.

The one module of :mod:`spisonet.nn` that touches files (docs/architecture.md). A
checkpoint is a dict of tensors and plain values (model, optimiser and scheduler states,
epoch, loss history, settings, RNG state) under the marker :data:`CHECKPOINT_FORMAT`. It is
read with ``torch.load(weights_only=True)``: a file that would run code when unpickled is
refused with :class:`spisonet.errors.ModelFileError`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from ..io import atomic_path
from .unet import WIDTH_PRESETS, UNet3D

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "model_from_checkpoint", "save_checkpoint"]

#: Marker stored in every checkpoint written here.
CHECKPOINT_FORMAT = "spisonet-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temporary file, then rename).

    ``state`` must hold only tensors, numbers, strings, lists, tuples and dicts so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    final = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Uses ``torch.load(weights_only=True)`` on the CPU: only tensors and plain containers
    are unpickled, so a crafted file cannot execute code.

    Raises
    ------
    ModelFileError
        The file is missing, not a PyTorch file, holds anything but weights (e.g. a
        pickle that would run code), or is not a spisonet checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: model file not found")
    with open(p, "rb") as f:
        head = f.read(1024)
    # torch.save writes a zip archive (PK..), older versions a pickle (0x80 protocol byte)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelFileError(
            f"{p}: not a PyTorch model file (expected a checkpoint such as the "
            f"model_<half>.pt that spisonet reconstruct writes); found {_describe_file(head)}"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in first.lower():
            raise ModelFileError(
                f"{p}: refused to load: it holds Python objects besides weights, and "
                "unpickling them could run code (only tensors and plain containers are "
                "loaded); use a checkpoint written by spisonet"
            ) from exc
        raise ModelFileError(
            f"{p}: a PyTorch file that cannot be read (truncated or corrupt?): {first}"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{p}: not a spisonet checkpoint (expected a dict with format "
            f"{CHECKPOINT_FORMAT!r}); found {type(obj).__name__}"
        )
    for key in ("model", "settings", "epoch"):
        if key not in obj:
            raise ModelFileError(f"{p}: checkpoint lacks its '{key}' entry")
    return obj


def _describe_file(head: bytes) -> str:
    """What the first bytes of a file say it is (for error messages)."""
    if not head:
        return "an empty file"
    if len(head) >= 212 and head[208:211] == b"MAP":
        return "an MRC map"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if b"\x00" in head:
        return f"a binary file of another format (starts with {head[:8].hex(' ')})"
    text = head.decode("utf-8", "replace")
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file (starting {first!r})"


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "<checkpoint>") -> UNet3D:
    """Build the network stored in a loaded checkpoint (widths from its settings)."""
    widths = tuple(int(w) for w in ckpt["settings"].get("widths", WIDTH_PRESETS["large"]))
    model = UNet3D(widths)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: the weights do not fit a U-Net of widths {widths}") from exc
    return model
