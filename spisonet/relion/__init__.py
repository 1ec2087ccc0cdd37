"""RELION external reconstruction: rebuild RELION's map exactly, correct it, never stop RELION.

``relion_refine --external_reconstruct`` hands each half of each iteration to
``$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE`` (``spisonet-relion``, :func:`console_main`).
The modules, in the order a job flows through them:

- :mod:`.job` – the STAR RELION writes (:func:`read_external_star`), the job's files
  (:func:`reconstruct`, :func:`write_result_star`) and its log;
- :mod:`.backprojector` – the float64 port of RELION's ``BackProjector::reconstruct``
  (:func:`reconstruct_arrays`), pure numerics;
- :mod:`.plain_map` – the options of the map the run's ``relion_refine`` would make itself
  (its ``--minres_map`` and its release's gridding default; :func:`plain_map_options`);
- :mod:`.settings` – the correction's settings, from a settings file's table and
  ``SPISONET_*`` / ``ISONET_*`` environment variables (:func:`correction_settings`);
- :mod:`.config` – the settings file, ``spisonet-relion --config relion.toml``
  (:func:`load_relion_settings`);
- :mod:`.rendezvous` – the two halves hand each other their unregularised maps
  (:func:`wait_for_partner`);
- :mod:`.correction` – the misalignment correction step (:class:`RelionCorrection`);
- :mod:`.runner` – :func:`run_external_reconstruct`, the one place that keeps RELION
  running whatever the correction does, and the console entry;
- :mod:`.check` – is a set-up ready for a long run? (:func:`check_relion_setup`,
  ``spisonet relion-check``).

The run's other files (names, pixel size, healpix order) are read by
:mod:`spisonet.io.relion_runs`. See docs/relion.md.
"""

from __future__ import annotations

from ..io.relion_runs import (
    JobName,
    PixelSize,
    find_pixel_size,
    healpix_order_of_run,
    parse_job_name,
)
from .backprojector import blob_fourier_table, reconstruct_arrays
from .check import RelionSetupReport, check_relion_setup
from .config import load_relion_settings, read_settings_file
from .correction import RelionCorrection
from .job import (
    ExternalReconstructJob,
    current_resolution,
    read_external_star,
    reconstruct,
    write_result_star,
)
from .plain_map import PlainMapOptions, plain_map_options
from .rendezvous import RendezvousResult, wait_for_partner
from .runner import (
    Correction,
    console_main,
    resolve_correction,
    run_external_reconstruct,
    run_job,
)
from .settings import (
    RelionCorrectionSettings,
    check_relion_settings,
    correction_settings,
    correction_settings_from_env,
)

__all__ = [
    "Correction",
    "ExternalReconstructJob",
    "JobName",
    "PixelSize",
    "PlainMapOptions",
    "RelionCorrection",
    "RelionCorrectionSettings",
    "RelionSetupReport",
    "RendezvousResult",
    "blob_fourier_table",
    "check_relion_settings",
    "check_relion_setup",
    "console_main",
    "correction_settings",
    "correction_settings_from_env",
    "current_resolution",
    "find_pixel_size",
    "healpix_order_of_run",
    "load_relion_settings",
    "parse_job_name",
    "plain_map_options",
    "read_external_star",
    "read_settings_file",
    "reconstruct",
    "reconstruct_arrays",
    "resolve_correction",
    "run_external_reconstruct",
    "run_job",
    "wait_for_partner",
    "write_result_star",
]
