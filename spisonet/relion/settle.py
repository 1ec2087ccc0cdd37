"""Fewer training steps once the network has settled (issue 15, point 7).

Inside RELION the network continues from the previous iteration's model, so after a few
iterations one more epoch barely changes what it puts in the missing cone. Each trained
call measures that: the relative change of the missing-cone content between the
previous model's prediction and the newly trained one's, on the same input
(:func:`missing_change`), and leaves it in a small JSON record beside the model
(:class:`SettleRecord`). The next call reads the previous record; when the change,
scaled to a full iteration's steps, is below ``settle_change``, it trains only
``settled_fraction`` of the steps (:func:`is_settled`). A change measured on a shortened
training is scaled up by the steps it missed, so a network that starts moving again
(RELION's resolution jumps) is trained in full from the next iteration on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..fourier import frequency_radius

__all__ = ["RECORD_SUFFIX", "SettleRecord", "is_settled", "missing_change"]

#: What follows the job name in the name of a half's record (beside ``_spisonet.pt``).
RECORD_SUFFIX = "_spisonet.json"


def missing_change(
    before: np.ndarray, after: np.ndarray, measured: np.ndarray, max_radius: float
) -> float:
    """Relative change of the missing-cone content from ``before`` to ``after``.

    ``sqrt(Σ (1-m)|A-B|²) / sqrt(Σ (1-m)|A|²)`` over the Fourier voxels with radius
    ``<= max_radius`` (Fourier voxels), where A, B are the full FFTs of the two
    (n, n, n) maps and ``m`` the measured weight (fftshift-ed, in [0, 1], 1 where
    measured, e.g. :func:`spisonet.weights.measured_weight`). 0 when nothing is missing
    or ``after`` is empty there.
    """
    if before.shape != after.shape or measured.shape != after.shape:
        raise ValueError(
            f"shapes differ: before {before.shape}, after {after.shape}, measured {measured.shape}"
        )
    n = after.shape[0]
    inside = np.fft.ifftshift(frequency_radius(n) <= max_radius)
    missing = np.fft.ifftshift(1.0 - np.clip(measured, 0.0, 1.0)) * inside
    fa = np.fft.fftn(after.astype(np.float64))
    fb = np.fft.fftn(before.astype(np.float64))
    top = float(np.sum(missing * np.abs(fa - fb) ** 2))
    bottom = float(np.sum(missing * np.abs(fa) ** 2))
    return math.sqrt(top / bottom) if bottom > 0 else 0.0


@dataclass(frozen=True)
class SettleRecord:
    """What one call's training did to the network's missing-cone content.

    ``change``: :func:`missing_change` between the previous model's prediction and the
    new one's (None when there was no previous model); ``steps``: the steps trained;
    ``full_steps``: the steps of a full iteration (the settings' epochs × cubes / batch).
    """

    change: float | None
    steps: int
    full_steps: int

    @property
    def full_change(self) -> float | None:
        """``change`` scaled to a full iteration's steps (linear in the steps: a shortened
        training that still moved the network is not mistaken for a settled one)."""
        if self.change is None:
            return None
        if self.steps <= 0:
            return math.inf if self.change > 0 else 0.0
        return self.change * max(1.0, self.full_steps / self.steps)

    def write(self, path: Path) -> None:
        """Write the record as JSON (atomically: a temporary file, then a rename)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> SettleRecord | None:
        """The record at ``path``, or None when it is missing or unreadable (then the
        next call simply trains in full)."""
        try:
            raw = json.loads(path.read_text())
            change = raw["change"]
            return cls(
                change=None if change is None else float(change),
                steps=int(raw["steps"]),
                full_steps=int(raw["full_steps"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def is_settled(record: SettleRecord | None, threshold: float) -> bool:
    """Whether the previous call's record says the network has settled: its change
    scaled to a full iteration below ``threshold`` (> 0; 0 turns the rule off)."""
    if threshold <= 0 or record is None:
        return False
    full = record.full_change
    return full is not None and full < threshold
