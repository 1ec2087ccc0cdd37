"""The one progress protocol: ``progress(stage, done, total, info=None)``.

Every long computation (3D FSC, anisotropy analysis, training, tiled prediction, the
trust check, a whole correction) takes an optional ``progress`` callable and calls it as
``progress(stage, done, total)``: ``stage`` a short name (``"fsc3d"``, ``"train"``,
``"predict"`` …), ``done`` of ``total`` units of that stage finished (shells, steps,
tiles), and for training ``info`` a :class:`spisonet.nn.train.TrainProgress` (epoch,
loss, speed). The CLI turns these calls into rich bars or plain log lines
(:mod:`spisonet.cli._progress`); the API never prints.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Progress", "fraction", "relabel", "report"]


class Progress(Protocol):
    """Called with the stage, the units done, the units in all, and optional details."""

    def __call__(self, stage: str, done: float, total: float, info: Any = None) -> None: ...


def fraction(done: float, total: float) -> float:
    """``done / total`` clipped to [0, 1] (1 when ``total`` is 0)."""
    if total <= 0:
        return 1.0
    return min(max(done / total, 0.0), 1.0)


def report(progress: Progress | None, stage: str, done: float, total: float, info: Any = None):
    """Call ``progress`` when there is one (saves an ``if`` at every call site)."""
    if progress is not None:
        progress(stage, done, total, info)


def relabel(progress: Progress | None, stage: str) -> Progress | None:
    """``progress`` with every call's stage replaced by ``stage`` (None stays None)."""
    if progress is None:
        return None

    def relabelled(_stage: str, done: float, total: float, info: Any = None) -> None:
        progress(stage, done, total, info)

    return relabelled
