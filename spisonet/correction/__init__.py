"""The anisotropy correction: settings, the pipeline on arrays, files in and out, scoring.

- :mod:`.settings` – :class:`CorrectionSettings` (each setting declared once), presets.
- :mod:`.pipeline` – :func:`correct_anisotropy`: check → prepare → W → train → predict →
  restore units, on arrays.
- :mod:`.files` – :func:`reconstruct`: paths in, files out (what the CLI runs).
- :mod:`.coverage` – which directions the halves measured: the largest unmeasured cone.
- :mod:`.trust` – the trust check: how much hidden measured data the network restores.
- :mod:`.evaluate` – scores against a known ground truth (simulations, benchmarks).

Importing this package does not import torch; the steps that train or predict do.
"""

from __future__ import annotations

from .evaluate import ConeScore, ground_truth_metrics, score_correction, worst_cone
from .files import ReconstructOutputs, reconstruct
from .pipeline import CorrectionResult, TrainSummary, correct_anisotropy
from .settings import PRESETS, CorrectionSettings, preset_settings, resolve_preset
from .trust import TrustCheck, trust_check

__all__ = [
    "PRESETS",
    "ConeScore",
    "CorrectionResult",
    "CorrectionSettings",
    "ReconstructOutputs",
    "TrainSummary",
    "TrustCheck",
    "correct_anisotropy",
    "ground_truth_metrics",
    "preset_settings",
    "reconstruct",
    "resolve_preset",
    "score_correction",
    "trust_check",
    "worst_cone",
]
