"""The anisotropy-correction pipeline on arrays (ALGORITHM.md §3).

:func:`correct_anisotropy` runs five named steps, each a function with a typed result:

1. :func:`check_inputs` – every input checked before any work (shapes, voxel size, mask,
   3D FSC box, sizes).
2. :func:`prepare_maps` – ``reference`` (optional): both halves' content below
   ``ref_resolution`` is replaced by the reference's (:func:`spisonet.maps.combine_map`);
   ``limit_res`` (optional): both halves low-passed to it (3-shell linear fall-off); then
   each is z-scored.
3. :func:`sampling_weight` – W: the 3D FSC (given, or computed from the two halves with
   :func:`spisonet.fsc3d.fsc3d`), gated by measured power
   (:func:`spisonet.weights.power_presence`, with ``presence_threshold``; with
   ``presence_unmasked``, the smaller of the masked and unmasked halves' gates), resized to the
   cube, negatives to 0, min-max scaled; 1 inside the reference's sphere; a single map
   without a 3D FSC gets W = 1 (denoising only). The gate also says which directions were
   measured (:func:`spisonet.correction.coverage.measured_band`: the largest unmeasured
   cone, in the notes and the trust check). :func:`decide_filter_input`: with
   ``filter_input`` (by default when the two halves agree on content where the gate reads
   unmeasured) each half's network input is multiplied by the gate
   (:func:`filter_network_input`).
4. :func:`train_networks` – training cubes at the same mask-drawn centres in both halves;
   one network trained on both halves (Noise2Noise terms on), or with ``independent`` one
   network per half, each seeing only its own half.
5. :func:`predict_maps` and :func:`restore_units` – tiled prediction of each prepared
   half; outputs back in the input's units (unlike the public tool, which leaves z-scores):
   with ``limit_res``, ``filtered`` is the network output at the low-passed input's
   mean/std and ``corrected`` is ``combine_map(network output, original, limit_res)``;
   without, ``corrected`` is ``combine_map(network output, original, L)`` with ``L`` the
   3D FSC's own resolution limit (:func:`spisonet.fsc3d.support_limit`: beyond it W holds
   no data), or, with ``correct_beyond_limit`` or W = 1, the network output at the
   original's mean/std. Then, with two halves and a 3D FSC (no reference),
   :func:`spisonet.correction.measured.keep_measured_data` mixes each half's measured data
   back in, per shell over the measured directions, in the share the halves estimate to
   correlate best with the truth, where that beats the network alone (off with
   ``network_only``).

After training, the trust check (:mod:`spisonet.correction.trust`) hides measured data as W
hides the missing cone and scores what the network restores (where the measured band is
thin, :attr:`~spisonet.correction.coverage.MeasuredBand.thin`, it cannot vouch). This
module writes nothing but the training checkpoints it is given paths for;
:mod:`spisonet.correction.files` reads and writes the files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .._checks import (
    check_contrast,
    check_cubic_map,
    check_fsc3d_volume,
    check_limit_res,
    check_mask_array,
)
from ..errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    NonFiniteMapError,
)
from ..fourier import frequency_radius, lowpass
from ..progress import Progress, relabel, report
from ..weights import power_presence
from .coarse import blend_coarse, coarse_applies, coarse_box, coarse_outputs
from .coverage import MeasuredBand, measured_band
from .measured import LOSS_MARGIN
from .settings import PRESETS, CorrectionSettings

#: Below this share of shells 2 … n/4 read as unmeasured by the power gate, the data have
#: no missing region and the measured-data step mixes without its margin
#: (:func:`measured_data_step`).
MISSING_SHARE_FOR_MARGIN = 0.01

__all__ = [
    "AUTO_FILTER_SHARE",
    "CheckedInputs",
    "CorrectionResult",
    "PreparedMaps",
    "SamplingWeight",
    "TrainSummary",
    "check_inputs",
    "correct_anisotropy",
    "decide_filter_input",
    "filter_network_input",
    "measured_data_step",
    "measured_weights",
    "predict_maps",
    "prediction_rotations",
    "prepare_maps",
    "restore_units",
    "sampling_weight",
    "train_networks",
    "unmeasured_share",
]


@dataclass(frozen=True)
class TrainSummary:
    """How one network's training went.

    Attributes
    ----------
    steps : optimiser steps run here (0: prediction only, or every epoch already done).
    seconds : wall time of the training (s).
    steps_per_second : ``steps / seconds``.
    device : where it ran (``"cpu"``, ``"cuda:0"`` …).
    dtype : the autocast dtype (``"bfloat16"``) or ``"float32"``.
    resumed_from_epoch : epochs done in the checkpoint this run resumed from (0: none).
    n_cubes : training cubes.
    paired : both half maps in each cube pair (Noise2Noise terms on).
    """

    steps: int
    seconds: float
    device: str
    steps_per_second: float = 0.0
    dtype: str = "float32"
    resumed_from_epoch: int = 0
    n_cubes: int = 0
    paired: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe)."""
        return asdict(self)

    @classmethod
    def of(cls, run: Any, pairs: Any) -> TrainSummary:
        """The summary of a :class:`spisonet.nn.train.TrainResult` on these cube pairs."""
        return cls(
            steps=run.steps_run,
            seconds=run.seconds,
            steps_per_second=run.steps_per_second,
            device=str(run.device),
            dtype=str(run.amp_dtype),
            resumed_from_epoch=run.resumed_from_epoch,
            n_cubes=len(pairs),
            paired=pairs.paired,
        )


@dataclass
class CorrectionResult:
    """Outcome of :func:`correct_anisotropy`.

    Attributes
    ----------
    corrected : list of (n, n, n) float32 corrected maps, one per input half, in the
        input's units.
    filtered : list of the network outputs (low-passed band) with ``limit_res``, else None.
    weight : (D, D, D) float32, the sampling weight W used (fftshift-ed).
    fsc3d_volume : (n, n, n) float32 3D FSC used (None when W = 1).
    histories : per-epoch loss history of each network (one, or two when independent;
        ``ensemble`` times that, half 1's networks first).
    train : per-network :class:`TrainSummary`, in the same order.
    timings : seconds per step.
    notes : human-readable decisions taken (what was computed, what was assumed).
    settings : the settings used.
    models : the trained networks (torch modules), in the same order.
    trust : the :class:`spisonet.correction.trust.TrustCheck` of the (first) network;
        None when it was not run (``trust=False``, or W = 1).
    measured_check : what the measured-data step saw, per shell (lists, JSON-ready):
        ``network_share`` α over the measured directions (1: the network's output kept, 0:
        the measured data kept) and the halves' estimates ``rho_network`` / ``rho_raw`` of
        each map's correlation with the truth there, and ``margin`` (a number: the margin
        the mix was held to, 0 where the gate found nothing missing); None when the step
        did not run.
    """

    corrected: list[np.ndarray]
    filtered: list[np.ndarray] | None
    weight: np.ndarray
    fsc3d_volume: np.ndarray | None
    histories: list[dict[str, list[float]]]
    train: list[TrainSummary]
    timings: dict[str, float]
    notes: list[str]
    settings: CorrectionSettings
    models: list[Any] = field(default_factory=list)
    trust: Any = None
    measured_check: dict[str, Any] | None = None

    @property
    def average(self) -> np.ndarray:
        """Mean of the corrected maps (the corrected map itself for a single input)."""
        return np.mean(self.corrected, axis=0).astype(np.float32)


# --------------------------------------------------------------------------- 1. inputs


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs of a correction, checked: float32 arrays, or None where not given."""

    halves: list[np.ndarray]
    mask: np.ndarray | None
    reference: np.ndarray | None
    fsc3d_volume: np.ndarray | None


def check_inputs(
    half1: np.ndarray,
    half2: np.ndarray | None,
    fsc3d_volume: np.ndarray | None,
    mask: np.ndarray | None,
    reference: np.ndarray | None,
    voxel_size: float,
    s: CorrectionSettings,
) -> CheckedInputs:
    """Check every input of :func:`correct_anisotropy` before any work.

    Raises
    ------
    MapShapeError, MapMismatchError, NonFiniteMapError, EmptyMaskError, InvalidValueError
        Naming the input, what was expected and what was found.
    """
    h1 = check_cubic_map(half1, "half map 1")
    n = h1.shape[0]
    h2 = None
    if half2 is not None:
        h2 = check_cubic_map(half2, "half map 2")
        if h2.shape != h1.shape:
            raise MapMismatchError(
                f"half map 2 has shape {h2.shape} but half map 1 has {h1.shape}; "
                "both half maps must have the same box"
            )
    if s.independent and h2 is None:
        raise InvalidValueError("independent needs two half maps; only one was given")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InvalidValueError(f"voxel_size must be > 0 Å; got {voxel_size}")
    f = None
    if fsc3d_volume is not None:
        f = np.asarray(fsc3d_volume)
        if f.shape != h1.shape:
            raise MapMismatchError(
                f"the 3D FSC (aniso file) has shape {f.shape} but the half maps have "
                f"{h1.shape}; compute it from these half maps"
            )
        if not np.all(np.isfinite(f)):
            raise NonFiniteMapError("the 3D FSC (aniso file) contains NaN or infinite values")
        check_fsc3d_volume(f, "the 3D FSC (aniso file)")
    m = None if mask is None else check_mask_array(mask, h1.shape)
    if s.cube_size > n:
        raise InvalidValueError(
            f"cube_size {s.cube_size} is larger than the {n}³ map; choose a cube_size of at "
            f"most {n - n % 2 ** (len(s.widths) - 1)}"
        )
    if m is not None:
        lo, d = s.cube_size // 2, s.cube_size
        inner = m[lo : n - d + lo + 1, lo : n - d + lo + 1, lo : n - d + lo + 1]
        if not np.any(inner > 0):
            raise EmptyMaskError(
                f"no mask voxel lies where a whole {d}³ training cube fits in the {n}³ map; "
                "use a smaller cube_size or a larger mask"
            )
    for h, name in ((h1, "half map 1"), (h2, "half map 2")):
        if h is not None:
            check_contrast(h, name, m)
    ref = None
    if reference is not None:
        ref = check_cubic_map(reference, "reference")
        if ref.shape != h1.shape:
            raise MapMismatchError(
                f"the reference has shape {ref.shape} but the half maps have {h1.shape}"
            )
        if n * voxel_size / s.ref_resolution < 1:
            raise InvalidValueError(
                f"ref_resolution {s.ref_resolution} Å is coarser than the box "
                f"({n * voxel_size:.1f} Å): nothing would be taken from the reference"
            )
    if s.limit_res is not None:  # the same rule as fsc3d: 2·voxel ≤ limit_res ≤ n·voxel
        check_limit_res(s.limit_res, voxel_size, n)
    return CheckedInputs([h1] if h2 is None else [h1, h2], m, ref, f)


# --------------------------------------------------------------------------- 2. maps


@dataclass(frozen=True)
class PreparedMaps:
    """The halves at each stage of the preparation (one entry per half).

    Attributes
    ----------
    originals : as given (float32).
    lowpassed : after the reference and ``limit_res`` steps (the originals when neither).
    network_input : ``lowpassed`` z-scored: what the network trains on and predicts.
    """

    originals: list[np.ndarray]
    lowpassed: list[np.ndarray]
    network_input: list[np.ndarray]


def prepare_maps(
    inputs: CheckedInputs, voxel_size: float, s: CorrectionSettings, notes: list[str]
) -> PreparedMaps:
    """Reference swap, ``limit_res`` low-pass and z-scoring of each half (step 2)."""
    from ..maps import combine_map, zscore

    if inputs.mask is None:
        notes.append("no mask given: training cubes are drawn from the whole box")
    work = list(inputs.halves)
    if inputs.reference is not None:
        work = [
            combine_map(inputs.reference, h, s.ref_resolution, voxel_size, inputs.mask)
            for h in work
        ]
        notes.append(f"content below {s.ref_resolution} Å replaced by the reference; W = 1 there")
    if s.limit_res is not None:
        work = [lowpass(h, s.limit_res, voxel_size, falloff=3) for h in work]
        notes.append(
            f"correction limited to {s.limit_res} Å: the maps were low-passed before "
            "training and the original's higher frequencies are kept"
        )
    return PreparedMaps(list(inputs.halves), work, [zscore(h) for h in work])


# --------------------------------------------------------------------------- 3. W


@dataclass(frozen=True)
class SamplingWeight:
    """The sampling weight W and where it came from.

    Attributes
    ----------
    cube : (D, D, D) float32 W at the training-cube size (fftshift-ed), what training uses.
    fsc3d_volume : (n, n, n) 3D FSC used (given or computed here); None when W = 1.
    gated : (n, n, n) 3D FSC times the measured-power gate (None when W = 1): the source
        of W at any size (:func:`full_box`).
    presence : (n, n, n) the measured-power gate itself (None when not computed).
    band : which directions the gate reads measured (:mod:`.coverage`; None without a gate).
    """

    cube: np.ndarray
    fsc3d_volume: np.ndarray | None
    gated: np.ndarray | None
    presence: np.ndarray | None = None
    band: MeasuredBand | None = None

    def full_box(self, n: int, voxel_size: float, s: CorrectionSettings, reference: bool):
        """W at the map's box (n, n, n), as training's W (1 inside the reference sphere)."""
        from ..nn.operators import prepare_sampling_weight

        if self.gated is None:
            return np.ones((n, n, n), dtype=np.float32)
        w = prepare_sampling_weight(self.gated, n)
        if reference:
            w = _one_below(w, voxel_size, s.ref_resolution)
        return w.astype(np.float32)


def _one_below(weight: np.ndarray, voxel_size: float, resolution: float) -> np.ndarray:
    """``weight`` (fftshift-ed cube) set to 1 below ``resolution`` Å, where the reference
    supplies the data; float32."""
    n = weight.shape[0]
    inside = frequency_radius(n) <= n * voxel_size / resolution
    return np.where(inside, 1.0, weight).astype(np.float32)


def sampling_weight(
    inputs: CheckedInputs,
    voxel_size: float,
    s: CorrectionSettings,
    notes: list[str],
    progress: Progress | None = None,
) -> SamplingWeight:
    """W from the given or computed 3D FSC, gated by measured power (step 3)."""
    from ..fsc3d import fsc3d
    from ..nn.operators import prepare_sampling_weight

    h1 = inputs.halves[0]
    h2 = inputs.halves[1] if len(inputs.halves) > 1 else None
    m = inputs.mask
    fvol = inputs.fsc3d_volume
    if fvol is None and h2 is not None:
        notes.append(
            "no 3D FSC given: computed from the two half maps (spIsoNet flavour, "
            f"cone {s.fsc3d_cone_angle:g}°, 0.143 limit)"
        )
        fvol = fsc3d(
            h1,
            h2,
            voxel_size=voxel_size,
            mask=None if m is None else m.astype(np.float32),
            cone_angle=s.fsc3d_cone_angle,
            progress=progress,
        ).volume
    if fvol is None:
        notes.append("single map without a 3D FSC: W = 1 (denoising only)")
        return SamplingWeight(np.ones((s.cube_size,) * 3, dtype=np.float32), None, None)
    gated = np.asarray(fvol)
    gate = None
    if s.presence_threshold:
        gate = power_presence(h1, h2, m, s.presence_threshold, also_unmasked=s.presence_unmasked)
        gated = gated * gate
        notes.append(
            "W gated by measured power (presence threshold "
            f"{s.presence_threshold:g}"
            + (", masked and unmasked halves" if s.presence_unmasked and m is not None else "")
            + f"): {100 * float(np.mean(gate < 0.5)):.0f} % of "
            "Fourier space reads as unmeasured"
        )
    band = None
    if gate is not None:
        band = measured_band(gate)
        notes.append(band.describe())
    cube = prepare_sampling_weight(gated, s.cube_size)
    if inputs.reference is not None:
        cube = _one_below(cube, voxel_size, s.ref_resolution)
    return SamplingWeight(cube, np.asarray(fvol, dtype=np.float32), gated, gate, band)


#: ``filter_input``'s default turns the filter on above this share of the halves' agreed
#: power at shells 2 … n/4 lying where the gate reads unmeasured. Measured on the matrix's
#: inputs (benchmarks/RESULTS.md, session 24): ``relion_reconstruct`` halves 0.95 … 1.0 %;
#: the Fourier simulator's ≤ 0.02 %, its ``top+uniform`` cell 0.22 % (weakly measured data).
AUTO_FILTER_SHARE = 0.005


def decide_filter_input(
    inputs: CheckedInputs, weight: SamplingWeight, s: CorrectionSettings, notes: list[str]
) -> CorrectionSettings:
    """``s`` with ``filter_input`` decided (True/False) and the reason appended to ``notes``.

    Given on or off, it is kept. By default (None) the filter is on when two halves agree,
    by at least :data:`AUTO_FILTER_SHARE` of their agreed low-resolution power, on content
    where the measured-power gate reads unmeasured (:func:`spisonet.weights.unmeasured_agreement`):
    content no view measured but both reconstructions hold, which a network trained to fill
    empty regions would pass through. With one map or no gate it is off.
    """
    from ..weights import unmeasured_agreement

    h1, h2 = inputs.halves[0], inputs.halves[1] if len(inputs.halves) > 1 else None
    if weight.presence is None:
        if s.filter_input:
            notes.append("--filter-input ignored: no measured-power gate")
        return replace(s, filter_input=False)
    if s.filter_input is not None:
        if s.filter_input:
            notes.append("network input: each half filtered by the measured-power gate")
        return s
    if h2 is None:
        return replace(s, filter_input=False)
    share = unmeasured_agreement(h1, h2, weight.presence)
    on = share >= AUTO_FILTER_SHARE
    notes.append(
        f"{100 * share:.2f} % of the halves' agreed low-resolution power lies where the gate "
        f"reads unmeasured ({'≥' if on else '<'} {100 * AUTO_FILTER_SHARE:g} %): network input "
        + ("filtered by the measured-power gate" if on else "not filtered")
    )
    return replace(s, filter_input=on)


def filter_network_input(maps: PreparedMaps, weight: SamplingWeight) -> PreparedMaps:
    """``maps`` with each half's network input multiplied in Fourier space by the
    measured-power gate and z-scored again (``filter_input``); unchanged without a gate.

    Why: training's equivariance inputs are W·(rotated prediction), exactly empty where W
    is 0, but a real half map holds something there (a mask's leakage; a reconstruction's
    interpolation and real-space crop of its padded box, identical in both halves). Shown
    that content at prediction, a network taught to fill empty regions passes it through.
    """
    from ..fourier import fourier_blend
    from ..maps import zscore

    if weight.presence is None:
        return maps
    gate = weight.presence
    filtered = [zscore(fourier_blend(np.zeros_like(h), h, gate)) for h in maps.lowpassed]
    return replace(maps, network_input=filtered)


# --------------------------------------------------------------------------- 4. training


@dataclass
class TrainedNetworks:
    """The networks of a run (one, or two when independent) and how training went."""

    models: list[Any]  # group-major: group g's member k at g * ensemble + k
    histories: list[dict[str, list[float]]]
    summaries: list[TrainSummary]
    settings: CorrectionSettings  # widths may come from the pretrained model

    def group(self, g: int) -> list[Any]:
        """The ensemble of group ``g`` (0; 1 for half 2's own networks when independent)."""
        e = self.settings.ensemble
        return self.models[g * e : (g + 1) * e]


def train_networks(
    maps: PreparedMaps,
    mask: np.ndarray | None,
    weight: SamplingWeight,
    s: CorrectionSettings,
    notes: list[str],
    *,
    pretrained: str | os.PathLike | None = None,
    checkpoints: tuple[str | os.PathLike, ...] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainedNetworks:
    """Cut the training cubes and train (or load) the network(s) (step 4)."""
    from ..nn.data import CubePairs, extract_cubes, sample_cube_centres
    from ..nn.operators import rotation_information
    from ..nn.train import (
        build_model,
        load_checkpoint,
        model_from_checkpoint,
        resolve_device,
        train_network,
    )

    n_groups = 2 if s.independent else 1
    n_nets = n_groups * s.ensemble
    if checkpoints is not None and len(checkpoints) != n_nets:
        raise InvalidValueError(f"need {n_nets} checkpoint path(s); got {len(checkpoints)}")
    if resume and s.epochs == 0:
        raise InvalidValueError("resume needs epochs > 0 (nothing to continue with epochs 0)")
    if resume and checkpoints is None:
        raise InvalidValueError("resume needs the checkpoint path(s) of the interrupted run")
    if s.ensemble > 1 and s.epochs == 0:
        raise InvalidValueError(
            f"ensemble {s.ensemble} needs training (epochs > 0): its networks differ only by "
            "the seeds of their training"
        )
    device = resolve_device(s.device)
    pre_model = None
    if pretrained is not None:
        saved = load_checkpoint(pretrained)  # read once; each network is built from it
        pre_model = model_from_checkpoint(saved, pretrained)
        if tuple(pre_model.widths) != s.widths:
            notes.append(
                f"widths {list(pre_model.widths)} taken from the pretrained model "
                f"(settings said {list(s.widths)})"
            )
            s = replace(s, widths=tuple(pre_model.widths))
        notes.append(f"started from the pretrained model {pretrained}")
    elif s.epochs == 0:
        raise InvalidValueError("epochs 0 (prediction only) needs a pretrained model")

    work = maps.network_input
    sample_mask = mask if mask is not None else np.ones(work[0].shape, dtype=np.float32)
    rotation_weights = None
    if s.equivariance_rotations == "informative":
        rotation_weights = rotation_information(weight.cube)
        idle = int(np.sum(rotation_weights <= 1e-3 * rotation_weights.max()))
        if rotation_weights.max() > 0 and idle:
            notes.append(
                f"equivariance: {idle} of the 24 cube rotations move (almost) no measured data "
                "into the region W hides and are not drawn (--equivariance-rotations)"
            )

    def datasets(seed: int) -> list[Any]:
        """The cube pairs of one ensemble member: its own centres, swaps and rotations."""
        centres = sample_cube_centres(sample_mask, s.n_subvolume, s.cube_size, rng=seed)
        cubes = [extract_cubes(w, centres, s.cube_size) for w in work]
        if s.independent:
            return [CubePairs(c, None, seed, rotation_weights=rotation_weights) for c in cubes]
        second = cubes[1] if len(cubes) > 1 else None
        return [CubePairs(cubes[0], second, seed, rotation_weights=rotation_weights)]

    if s.ensemble > 1:
        notes.append(
            f"ensemble: {s.ensemble} networks per half-map pair (seeds {s.seed} … "
            f"{s.seed + s.ensemble - 1}), their outputs averaged"
        )
    ts = s.train_settings()
    out = TrainedNetworks([], [], [], s)
    members = [datasets(s.seed + k) for k in range(s.ensemble)]
    for g in range(n_groups):  # models in group-major order: index g * ensemble + k
        for k in range(s.ensemble):
            pairs, seed = members[k][g], s.seed + k
            stage = "train" if g == 0 else "train half 2"
            if s.ensemble > 1:
                stage += f" ({k + 1}/{s.ensemble})"
            if pre_model is not None and not resume:
                model = model_from_checkpoint(saved, pretrained)
            else:
                model = build_model(s.widths, seed) if not resume else None
            if s.epochs == 0:
                assert model is not None
                out.models.append(model.to(device).eval())
                out.histories.append({})
                out.summaries.append(TrainSummary(steps=0, seconds=0.0, device=str(device)))
                continue
            run = train_network(
                pairs,
                weight.cube,
                replace(ts, seed=seed),
                model=model,
                checkpoint=None if checkpoints is None else checkpoints[g * s.ensemble + k],
                resume=resume,
                progress=relabel(progress, stage),
            )
            out.models.append(run.model)
            out.histories.append(run.history)
            out.summaries.append(TrainSummary.of(run, pairs))
    return out


# --------------------------------------------------------------------------- 5. prediction


def network_on_map(model: Any, s: CorrectionSettings, progress: Progress | None = None):
    """A function running ``model`` tile by tile on a whole (n, n, n) map."""
    from ..nn.distributed import current_world
    from ..nn.predict import predict_map
    from ..nn.train import resolve_amp, resolve_device

    device = resolve_device(s.device)
    amp_dtype = resolve_amp(s.amp, device)

    def run(volume: np.ndarray) -> np.ndarray:
        return predict_map(
            model,
            volume,
            cube_size=s.cube_size,
            crop_size=s.predict_crop_size,
            edge=s.predict_edge,
            batch_size=s.batch_size,
            device=device,
            amp_dtype=amp_dtype,
            progress=progress,
            world=current_world(),
        )

    return run


def predict_maps(
    maps: PreparedMaps,
    nets: TrainedNetworks,
    progress: Progress | None = None,
    rotations: Sequence[int] = (0,),
) -> list[np.ndarray]:
    """Each prepared half through its network (step 5); z-score units. ``rotations``: cube
    rotations whose predictions are averaged (:func:`prediction_rotations`)."""
    s = nets.settings
    runs = len(maps.network_input) * s.ensemble

    def part(j: int) -> Progress:
        def report_run(stage: str, done: float, size: float, info: Any = None) -> None:
            # every (half, member) run shares one bar: run j covers [j, j + 1] of it
            report(progress, "predict", j * size + done, runs * size)

        return report_run

    outs = []
    for i, z in enumerate(maps.network_input):
        members = nets.group(i if s.independent else 0)
        first = i * s.ensemble
        parts = (lambda k, first=first: part(first + k)) if progress else None
        outs.append(ensemble_on_map(members, s, parts, rotations)(z))
    return outs


def ensemble_on_map(
    models: list[Any],
    s: CorrectionSettings,
    progress_of=None,
    rotations: Sequence[int] = (0,),
):
    """A function running every network of an ensemble on a whole (n, n, n) map and returning
    the mean of their outputs (float32, summed in float64); ``progress_of(k)``: member k's
    progress callback. With several ``rotations`` (cube rotation indices) each network also
    runs on the map turned by each, its output turned back, and all are averaged."""
    from .._cube import rotate_array
    from ..nn.operators import inverse_rotation

    rotations = tuple(int(r) for r in rotations) or (0,)
    runs = [
        network_on_map(m, s, None if progress_of is None else progress_of(k))
        for k, m in enumerate(models)
    ]

    def run(volume: np.ndarray) -> np.ndarray:
        total = np.zeros(np.shape(volume), dtype=np.float64)
        for one in runs:
            for r in rotations:
                if r == 0:
                    total += one(volume)
                else:
                    turned = one(rotate_array(np.asarray(volume), r))
                    total += rotate_array(turned, inverse_rotation(r))
        return (total / (len(runs) * len(rotations))).astype(np.float32)

    return run


def prediction_rotations(weight: SamplingWeight, s: CorrectionSettings) -> tuple[int, ...]:
    """The cube rotations whose predictions are averaged: the identity alone unless
    ``predict_rotations`` is ``auto`` and W has a direction pattern
    (:func:`spisonet.nn.symmetry_rotations` of the training W)."""
    if s.predict_rotations == "off" or weight.gated is None:
        return (0,)
    from ..nn.operators import symmetry_rotations

    return symmetry_rotations(weight.cube)


def restore_units(
    outputs: list[np.ndarray],
    maps: PreparedMaps,
    mask: np.ndarray | None,
    voxel_size: float,
    s: CorrectionSettings,
    notes: list[str],
    weight: SamplingWeight | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """``(corrected, filtered)`` in the input's units (see the module docstring)."""
    from ..maps import combine_map, match_mean_std

    keep = None if s.limit_res is not None else _kept_beyond(weight, voxel_size, s)
    if keep is not None:
        corrected = [
            combine_map(o, orig, keep, voxel_size, mask)
            for o, orig in zip(outputs, maps.originals, strict=True)
        ]
        notes.append(
            f"beyond {keep:.2f} Å, the 3D FSC's resolution limit (W holds no data there), "
            "the corrected map keeps the original's frequencies, with a 5-shell hand-over "
            "below it (--correct-beyond-limit turns this off)"
        )
        return corrected, None
    if s.limit_res is not None:
        filtered = [match_mean_std(o, lp) for o, lp in zip(outputs, maps.lowpassed, strict=True)]
        corrected = [
            combine_map(o, orig, s.limit_res, voxel_size, mask)
            for o, orig in zip(outputs, maps.originals, strict=True)
        ]
    else:
        filtered = None
        corrected = [
            match_mean_std(o, orig) for o, orig in zip(outputs, maps.originals, strict=True)
        ]
    notes.append("outputs rescaled to the input maps' mean and standard deviation")
    return corrected, filtered


def _kept_beyond(
    weight: SamplingWeight | None, voxel_size: float, s: CorrectionSettings
) -> float | None:
    """The resolution (Å) beyond which the original map is kept: the 3D FSC's limit.

    Why: beyond it W is 0, so training never asked the network to agree with the data
    there, and the evaluation matrix (benchmarks/RESULTS.md, 2026-11-29) found the network's
    output losing measured signal at those shells (global FSC drops up to 0.12 with the
    truth). None (keep nothing) with ``correct_beyond_limit`` or without a 3D FSC.
    """
    from ..fsc3d import support_limit

    if s.correct_beyond_limit or weight is None or weight.fsc3d_volume is None:
        return None
    return support_limit(weight.fsc3d_volume, voxel_size)


# --------------------------------------------------------------------------- the whole


def correct_anisotropy(
    half1: np.ndarray,
    half2: np.ndarray | None = None,
    fsc3d_volume: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    voxel_size: float = 1.0,
    settings: CorrectionSettings | None = None,
    *,
    reference: np.ndarray | None = None,
    pretrained: str | os.PathLike | None = None,
    checkpoints: tuple[str | os.PathLike, ...] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    trust: bool = True,
) -> CorrectionResult:
    """Correct the anisotropy of one map or a pair of half maps.

    Parameters
    ----------
    half1 : (n, n, n) array
        Half map 1 (or the single map).
    half2 : (n, n, n) array, optional
        Half map 2; enables the Noise2Noise terms (or, with ``independent``, its own
        network). Without it the single map is corrected alone.
    fsc3d_volume : (n, n, n) array, optional
        The 3D FSC (fftshift-ed, e.g. ``FSC3D.mrc``). None: computed here from the two
        halves with :func:`spisonet.fsc3d.fsc3d`; for a single map W = 1 (denoising only).
    mask : (n, n, n) array, optional
        Where training cubes are cut (voxels > 0). None: the whole box. The output is
        never masked.
    voxel_size : float
        Å per voxel.
    settings : CorrectionSettings
        Default: the ``gpu`` preset (the published network and training length).
    reference : (n, n, n) array, optional
        Replaces the halves' content below ``settings.ref_resolution``.
    pretrained : path, optional
        A model file to start from (its widths are used); with ``epochs = 0`` it only
        predicts. With ``independent`` both networks start from it.
    checkpoints : paths, optional
        Where each network's checkpoint is written after every epoch (one path, two when
        independent; ``ensemble`` times that, half 1's networks first).
    resume : bool
        Continue an interrupted run from ``checkpoints``.
    progress : :class:`spisonet.progress.Progress`, optional
        Stages ``"fsc3d"``, ``"train"`` (info: a :class:`spisonet.nn.train.TrainProgress`;
        ``"train half 2"`` for the second independent network; with ``ensemble`` > 1 each
        followed by `` (k/ensemble)``), ``"predict"``, ``"trust"``.
    trust : bool
        Run the trust check after training (one more prediction of the whole map);
        skipped when W = 1.

    Returns
    -------
    CorrectionResult

    Raises
    ------
    MapShapeError, MapMismatchError, NonFiniteMapError, EmptyMaskError, InvalidValueError
        Bad input, reported before any training starts.
    ModelFileError
        An unreadable, unsafe or mismatched ``pretrained`` model or checkpoint.
    """
    s = settings if settings is not None else PRESETS["gpu"]
    s.train_settings()  # validates the training settings before any work
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []

    def timed(name: str, fn, *args, **kwargs):
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t
        return value

    inputs = check_inputs(half1, half2, fsc3d_volume, mask, reference, voxel_size, s)
    ckpts = tuple(checkpoints) if checkpoints is not None else None
    maps = timed("prepare", prepare_maps, inputs, voxel_size, s, notes)
    weight = timed("fsc3d", sampling_weight, inputs, voxel_size, s, notes, progress)
    s = decide_filter_input(inputs, weight, s, notes)
    if s.filter_input:
        maps = filter_network_input(maps, weight)
    nets = timed(
        "train",
        train_networks,
        maps,
        inputs.mask,
        weight,
        s,
        notes,
        pretrained=pretrained,
        checkpoints=ckpts,
        resume=resume,
        progress=progress,
    )
    s = nets.settings
    rotations = prediction_rotations(weight, s)
    if len(rotations) > 1:
        notes.append(
            f"prediction averaged over {len(rotations)} cube rotations that map W onto itself "
            f"(--predict-rotations): {list(rotations)}"
        )
    outputs = timed("predict", predict_maps, maps, nets, progress, rotations)
    coarse_on, why = coarse_applies(s, len(outputs) == 2, pretrained is not None)
    s = replace(s, coarse_pass=coarse_on)
    if why:
        notes.append(why)
    if coarse_on:
        coarse = timed(
            "coarse",
            coarse_outputs,
            maps.network_input,
            weight.gated,
            s,
            voxel_size,
            notes,
            progress,
        )
        measured = None
        if weight.fsc3d_volume is not None:
            measured = measured_weights(
                inputs.halves[0], inputs.halves[1], inputs.mask, weight.fsc3d_volume
            )[2]
        outputs = blend_coarse(outputs, coarse, coarse_box(outputs[0].shape[0], s), measured)
    trust_result = None
    if trust and weight.gated is not None:
        trust_result = timed(
            "trust", _trust, maps, inputs, weight, nets, voxel_size, progress, rotations
        )
        notes.append(f"trust check: {trust_result.message}")
    corrected, filtered = timed(
        "combine", restore_units, outputs, maps, inputs.mask, voxel_size, s, notes, weight
    )
    check = None
    if len(corrected) == 2 and weight.fsc3d_volume is not None and inputs.reference is None:
        if s.network_only:
            notes.append("--network-only: the measured-data step was skipped")
        elif s.independent:
            notes.append(
                "independent networks: the measured-data step (which reads both halves) was "
                "skipped to keep the halves independent"
            )
        else:
            handover = (
                s.limit_res if s.limit_res is not None else _kept_beyond(weight, voxel_size, s)
            )
            blend = timed(
                "measured",
                measured_data_step,
                corrected,
                inputs.halves,
                inputs.mask,
                weight.fsc3d_volume,
                voxel_size,
                handover,
            )
            notes.append(_measured_note(blend, voxel_size, corrected[0].shape[0]))
            corrected, check = blend.maps, _check_of(blend)
    if s.fill_floor:
        corrected = _raise_fill(corrected, inputs, weight, s.fill_floor, notes)
    timings["total"] = time.perf_counter() - t_start
    return CorrectionResult(
        corrected=corrected,
        filtered=filtered,
        weight=weight.cube,
        fsc3d_volume=weight.fsc3d_volume,
        histories=nets.histories,
        train=nets.summaries,
        timings=timings,
        notes=notes,
        settings=s,
        models=nets.models,
        trust=trust_result,
        measured_check=check,
    )


def _raise_fill(
    corrected: list[np.ndarray],
    inputs: CheckedInputs,
    weight: SamplingWeight,
    floor: float,
    notes: list[str],
) -> list[np.ndarray]:
    """``corrected`` with the fill raised (:func:`spisonet.correction.fill.raise_fill`), or
    as it is, with the reason in ``notes``."""
    from .fill import raise_fill

    band = weight.band
    why = None
    if len(inputs.halves) != 2 or weight.presence is None or inputs.reference is not None:
        why = "it needs two half maps, the measured-power gate and no reference"
    elif band is None or not band.readable:
        why = "the measured band could not be read (box too small)"
    elif band.thin:
        why = f"the measured band is thin (±{band.band:.0f}°): a raised fill is a raised guess"
    if why:
        notes.append(f"--fill-floor skipped: {why}")
        return corrected
    raised = raise_fill(corrected, list(inputs.halves), weight.presence, floor)
    lifted = np.flatnonzero(raised.gain > 1.0)
    if lifted.size == 0:
        notes.append(f"--fill-floor {floor:g}: the fill already reached the floor on every shell")
    else:
        notes.append(
            f"--fill-floor {floor:g}: the fill where the gate reads unmeasured raised "
            f"×{raised.gain[lifted].min():.1f} … ×{raised.gain[lifted].max():.1f} on shells "
            f"{lifted.min()} … {lifted.max()} ({lifted.size} shells)"
        )
    return raised.maps


def measured_data_step(
    corrected: list[np.ndarray],
    halves: list[np.ndarray],
    mask: np.ndarray | None,
    fsc3d_volume: np.ndarray,
    voxel_size: float,
    handover: float | None,
    margin: float | None = LOSS_MARGIN,
):
    """The measured data mixed back in where the two halves say they beat the network.

    ``corrected``: both halves' corrected maps (after the hand-over at ``handover`` Å, the
    3D FSC's limit or ``limit_res``; None: none); ``halves``: the raw halves. The mix
    (:func:`spisonet.correction.measured.keep_measured_data`) runs over the directions
    :func:`spisonet.weights.measured_weight` calls measured: α is judged on its square
    (the well-measured directions) and applied with the weight itself, and only where the
    hand-over kept the network's output, so the original stays exactly as it was beyond the
    limit;
    ``margin`` as there (None: the mix at every shell); it is set to 0 where the
    measured-power gate finds no missing region (:func:`unmeasured_share` below
    ``MISSING_SHARE_FOR_MARGIN``). Returns the
    :class:`~spisonet.correction.measured.MeasuredBlend`.

    Why: on some maps (the evaluation matrix's ``cftr-z`` ``top`` cell, RESULTS.md) the
    network loses measured signal well inside the 3D FSC's limit, and only the two halves
    can tell where without a truth.
    """
    from ..maps import _falloff_sphere_per_shell
    from .measured import keep_measured_data

    h1, h2 = halves
    n = h1.shape[0]
    within = None
    if handover is not None:
        within = _falloff_sphere_per_shell(n * voxel_size / handover, n // 2 + 1)
    # α is judged on m² (the estimates assume the halves carry the whole truth, which holds
    # only where Fourier space was well measured) and applied with m: a direction measured
    # to the degree m gets that share of the data back. Applying with m² left the partly
    # measured directions to the network, which at high shells lost signal there
    # (RESULTS.md, session 14: cftr-z top cell, worst global drop 0.025 → 0.021, cone
    # gain +0.064 → +0.061, the 18 other saved cells within 0.005). At high shells the
    # 3D FSC's directional values are mostly noise, so the application weight is at least
    # m's pattern along the same direction at mid shells (n/8 … n/4): the views sampled
    # the same directions at every resolution (same cell, informative rotations: 0.035 →
    # 0.020; the other 23 saved cells within 0.001)
    presence, measured, applied = measured_weights(h1, h2, mask, fsc3d_volume)
    if margin is not None and unmeasured_share(presence) < MISSING_SHARE_FOR_MARGIN:
        # the margin protects the network's fill of a missing region from the measured
        # content a mix brings back; with no missing region there is nothing to protect and
        # it only keeps losses under 0.02 (RESULTS.md, session 19: the uniform EMD-3488
        # cell at SNR 0.003, ensemble worst drop 0.0235 → 0.0122; every cone cell's gate
        # reads 31–70 % of shells 2 … n/4 unmeasured, so none of them changes)
        margin = 0.0
    return keep_measured_data(
        corrected,
        [h1, h2],
        applied,
        mask,
        within=within,
        margin=margin,
        estimate_with=measured**2,
    )


def measured_weights(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray | None, fsc3d_volume: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the two halves say Fourier space was measured: (presence, m, applied), each
    (n, n, n) float32 fftshift-ed in [0, 1].

    ``presence``: the masked measured-power gate (:func:`spisonet.weights.power_presence`,
    threshold 0.1); ``m``: :func:`spisonet.weights.measured_weight` (the gated 3D FSC over
    its shell's 95th percentile); ``applied``: the larger of m and its mid-resolution
    directional pattern (:func:`spisonet.weights.directional_weight`). The measured-data
    step judges with m² and mixes with ``applied``; the coarse pass stands where
    ``applied`` is not.
    """
    from ..weights import directional_weight, measured_weight

    presence = power_presence(half1, half2, mask, 0.1)
    measured = measured_weight(fsc3d_volume, half1, half2, mask, presence=presence)
    return presence, measured, np.maximum(measured, directional_weight(measured))


def unmeasured_share(presence: np.ndarray) -> float:
    """The share of Fourier voxels in shells 2 … n/4 that the measured-power gate
    (:func:`spisonet.weights.power_presence`, fftshift-ed (n, n, n)) calls unmeasured
    (gate < 0.5): about 0.3 … 0.7 with a missing cone of ≥ 20°, 0 for isotropic views."""
    from ..fourier import shell_index
    from .evaluate import scored_shells

    n = presence.shape[0]
    lo, hi = scored_shells(n)
    shells = shell_index(n)
    band = (shells >= lo) & (shells <= hi)
    return float(np.mean(np.asarray(presence)[band] < 0.5))


def _check_of(blend) -> dict[str, Any]:
    """The per-shell figures of a measured-data step, rounded, NaN as None (JSON), and the
    margin it mixed with (0 where nothing was missing, None: none)."""

    def column(values) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 4) for v in values]

    return {
        "network_share": column(blend.network_weight),
        "rho_network": column(blend.rho_network),
        "rho_raw": column(blend.rho_raw),
        "margin": blend.margin,
    }


def _measured_note(blend, voxel_size: float, n: int) -> str:
    """One line for the notes on what the measured-data step did."""
    from ..fourier import shell_to_resolution

    mixed = np.flatnonzero(blend.network_weight < 1.0)
    if mixed.size == 0:
        return (
            "measured-data check: in no shell would mixing the measured data back in raise the "
            "half maps' estimate of the correlation with the truth (over the measured "
            f"directions) by more than {blend.margin or 0:g}: the network's output kept"
        )
    gain = float(np.max(blend.gain[mixed]))
    return (
        f"measured-data check: in {mixed.size} shell(s) between "
        f"{shell_to_resolution(mixed.min(), n, voxel_size):.1f} and "
        f"{shell_to_resolution(mixed.max(), n, voxel_size):.1f} Å the half maps estimate that "
        "mixing the measured data back in correlates better with the truth than the network "
        f"alone (by up to {gain:.2f}); mixed there (the network's share down to "
        f"{float(blend.network_weight.min()):.2f}; --network-only turns this off)"
    )


def _trust(
    maps: PreparedMaps,
    inputs: CheckedInputs,
    weight: SamplingWeight,
    nets: TrainedNetworks,
    voxel_size: float,
    progress: Progress | None,
    rotations: Sequence[int] = (0,),
):
    """The trust check of the first network (or ensemble) at the map's box."""
    from .trust import trust_check

    work = maps.network_input
    n = work[0].shape[0]
    w_full = weight.full_box(n, voxel_size, nets.settings, inputs.reference is not None)
    second = work[1] if len(work) > 1 else None
    # the check scores what the run's output is made of: the ensemble's mean
    predict = ensemble_on_map(nets.group(0), nets.settings, rotations=rotations)
    result = trust_check(work[0], second, w_full, predict, band=weight.band)
    report(progress, "trust", 1, 1)
    return result
