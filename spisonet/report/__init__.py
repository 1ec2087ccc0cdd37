"""Figures (PNG) and JSON reports.

By subject: :mod:`~spisonet.report.resolution` (FSC curves, the anisotropy report),
:mod:`~spisonet.report.sampling` (Fourier sampling of a particle set),
:mod:`~spisonet.report.correction` (training loss, trust check),
:mod:`~spisonet.report.before_after` (a correction against a known ground truth) and
:mod:`~spisonet.report.json_file` (JSON reports); shared drawing helpers in
``_plot``. Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg
canvas, never through ``pyplot``, so no global state leaks into the caller's session;
matplotlib is imported only when a figure is drawn. Every file is written atomically
through :func:`spisonet.io.atomic_path`.
"""

from __future__ import annotations

from ._plot import _resolution_axis as _resolution_axis
from .before_after import FSC_THRESHOLD_LABELS, before_after_figure
from .correction import (
    LOSS_CAPTION,
    LOSS_LABELS,
    loss_figure,
    measured_check_figure,
    trust_figure,
)
from .json_file import write_json
from .resolution import _summary_text as _summary_text
from .resolution import anisotropy_figure, fsc_figure
from .sampling import sampling_figure

# _resolution_axis and _summary_text are private but imported from here by the tests.
__all__ = [
    "FSC_THRESHOLD_LABELS",
    "LOSS_CAPTION",
    "LOSS_LABELS",
    "anisotropy_figure",
    "before_after_figure",
    "fsc_figure",
    "loss_figure",
    "measured_check_figure",
    "sampling_figure",
    "trust_figure",
    "write_json",
]
