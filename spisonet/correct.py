"""The anisotropy-correction pipeline (ALGORITHM.md §3): prepare → train → predict → combine.

:func:`correct_anisotropy` works on arrays and returns arrays (it writes only the per-epoch
training checkpoints it is given paths for); :func:`reconstruct` reads the files, runs it
and writes the outputs (what ``spisonet reconstruct`` and the RELION hook call).

Steps
-----
1. Check every input before any work (shapes, voxel size, mask, 3D FSC box, sizes).
2. ``reference`` (optional): both halves' content below ``ref_resolution`` is replaced by
   the reference's (:func:`spisonet.maps.combine_map`) and W is set to 1 inside that sphere.
3. ``limit_res`` (optional): both halves are low-passed to it (sphere of radius
   ``n·voxel/limit_res``, 3-shell linear fall-off); then each is z-scored.
4. W: the 3D FSC (given, or computed from the two halves with :func:`spisonet.fsc3d.fsc3d`)
   resized to the cube, negatives to 0, min-max scaled; a single map without a 3D FSC gets
   W = 1 (denoising only). With ``presence_threshold`` (0.1 in every preset) the 3D FSC is
   first multiplied by :func:`power_presence`, which zeroes regions that hold no measured
   power (the phase-only 3D FSC reads high there from mask leakage).
5. Training cubes at the same mask-drawn centres in both halves; one network trained on
   both halves (Noise2Noise terms on), or with ``independent`` one network per half, each
   seeing only its own half.
6. Tiled prediction of each (low-passed, z-scored) half.
7. Output scaling. Unlike the public tool, which leaves its outputs in z-score units, the
   outputs here are in the input's units: with ``limit_res``, ``filtered`` is the network
   output rescaled to the mean/std of the low-passed input, and ``corrected`` is
   ``combine_map(network output, original, limit_res)``, which keeps the original above
   ``limit_res`` and ends at the original's mean/std; without ``limit_res``, ``corrected``
   is the network output rescaled to the original's mean and standard deviation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_contrast, check_fsc3d_volume, check_limit_res, check_mask_values
from .errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)
from .fourier import frequency_radius, lowpass

__all__ = [
    "PRESETS",
    "CorrectionResult",
    "CorrectionSettings",
    "ReconstructOutputs",
    "before_after_figure",
    "correct_anisotropy",
    "ground_truth_metrics",
    "power_presence",
    "preset_settings",
    "reconstruct",
    "shell_percentile",
]

#: progress(stage, fraction of that stage 0–1, training detail or None)
Progress = Callable[[str, float, Any], None]


@dataclass(frozen=True)
class CorrectionSettings:
    """Every setting of a correction run (public-tool names where they exist).

    Attributes
    ----------
    preset : name of the preset these came from (informative).
    widths : U-Net channel widths per level.
    cube_size : training cube edge (voxels); a multiple of ``2**depth``.
    predict_crop_size : tile edge for prediction; ≥ ``cube_size + 2·predict_edge``.
    predict_edge : half-width of the blended overlap between tiles (7).
    n_subvolume : number of training cubes.
    epochs, batch_size, acc_batches, learning_rate, alpha, beta : training (§3).
    schedule : ``"constant"`` (published) or ``"onecycle"``.
    amp : ``"auto"``, ``"bf16"`` or ``"off"`` (see :mod:`spisonet.nn.train`).
    limit_res : Å; correct only below this resolution (None: the whole band).
    ref_resolution : Å; with a reference, its content below this replaces the halves'.
    independent : one network per half map (keeps the gold-standard FSC honest).
    fsc3d_cone_angle : θ (degrees) when the 3D FSC is computed here.
    presence_threshold : gate W by measured power (see :func:`power_presence`): W is
        multiplied by ``clip(P / (t · P90_shell), 0, 1)``; 0.1 in every preset (a fix of
        the published W, which reads a masked, unsampled cone as measured); None or 0:
        off (the published W).
    compile, seed, device : see :class:`spisonet.nn.train.TrainSettings`.
    """

    preset: str = "gpu"
    widths: tuple[int, ...] = (64, 128, 256, 320)
    cube_size: int = 64
    predict_crop_size: int = 80
    predict_edge: int = 7
    n_subvolume: int = 1000
    epochs: int = 30
    batch_size: int = 4
    acc_batches: int = 2
    learning_rate: float = 3e-4
    alpha: float = 1.0
    beta: float = 0.5
    schedule: str = "constant"
    amp: str = "auto"
    limit_res: float | None = None
    ref_resolution: float = 10.0
    independent: bool = False
    fsc3d_cone_angle: float = 10.0
    presence_threshold: float | None = 0.1
    compile: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name in ("cube_size", "predict_crop_size", "n_subvolume"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InvalidValueError(f"{name} must be a positive integer; got {v!r}")
        m = 2 ** (len(self.widths) - 1)
        for name in ("cube_size", "predict_crop_size"):
            v = getattr(self, name)
            if v % m:
                raise InvalidValueError(
                    f"{name} must be a multiple of {m} for a U-Net with {len(self.widths)} "
                    f"levels; got {v}"
                )
        if not 0 <= self.predict_edge <= self.cube_size // 2:
            raise InvalidValueError(
                f"predict_edge must be in 0 … cube_size/2 = {self.cube_size // 2}; "
                f"got {self.predict_edge}"
            )
        if self.predict_crop_size < self.cube_size + 2 * self.predict_edge:
            raise InvalidValueError(
                f"predict_crop_size must be at least cube_size + 2·{self.predict_edge} = "
                f"{self.cube_size + 2 * self.predict_edge}; got {self.predict_crop_size}"
            )
        if self.limit_res is not None and not self.limit_res > 0:
            raise InvalidValueError(f"limit_res must be a resolution > 0 Å; got {self.limit_res}")
        if self.presence_threshold is not None and not 0 <= self.presence_threshold <= 1:
            raise InvalidValueError(
                f"presence_threshold must be in [0, 1] (0 or None: off); "
                f"got {self.presence_threshold}"
            )
        if not self.ref_resolution > 0:
            raise InvalidValueError(
                f"ref_resolution must be a resolution > 0 Å; got {self.ref_resolution}"
            )

    def train_settings(self):
        """The :class:`spisonet.nn.train.TrainSettings` of this run."""
        from .nn.train import TrainSettings

        return TrainSettings(
            widths=self.widths,
            epochs=self.epochs,
            batch_size=self.batch_size,
            acc_batches=self.acc_batches,
            learning_rate=self.learning_rate,
            alpha=self.alpha,
            beta=self.beta,
            schedule=self.schedule,
            amp=self.amp,
            compile=self.compile,
            seed=self.seed,
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


#: ``gpu``: the published defaults. ``cpu``: the best we found for 2 CPU cores (a 4-level
#: 16…128 network on 32³ cubes, bf16 where the CPU has it natively, one-cycle rate, 600
#: steps: 9 min with native bf16, ~40 min in float32 on an AVX2-only CPU). Every preset
#: gates W by measured power (:func:`power_presence`, threshold 0.1); 0 turns it off.
#: ``tiny``: seconds, for tests.
PRESETS: dict[str, CorrectionSettings] = {
    "gpu": CorrectionSettings(preset="gpu"),
    "cpu": CorrectionSettings(
        preset="cpu",
        widths=(16, 32, 64, 128),
        cube_size=32,
        predict_crop_size=48,
        predict_edge=7,
        n_subvolume=200,
        epochs=12,
        batch_size=4,
        acc_batches=1,
        learning_rate=1e-3,
        schedule="onecycle",
        amp="auto",  # bf16 only where the CPU has it natively (emulated bf16 is 39× slower)
        device="auto",
    ),
    "tiny": CorrectionSettings(
        preset="tiny",
        widths=(4, 8, 16),
        cube_size=16,
        predict_crop_size=24,
        predict_edge=4,
        n_subvolume=4,
        epochs=1,
        batch_size=2,
        acc_batches=1,
        learning_rate=1e-3,
        schedule="constant",
        amp="off",
        device="cpu",
    ),
}


def preset_settings(name: str = "gpu", **overrides: Any) -> CorrectionSettings:
    """The settings of preset ``name`` with some fields replaced (None values are ignored).

    Raises
    ------
    InvalidValueError
        Unknown preset or field.
    """
    if name not in PRESETS:
        raise InvalidValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    known = set(asdict(base))
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise InvalidValueError(f"unknown setting(s) {', '.join(unknown)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "cube_size" in changes and "predict_crop_size" not in changes:
        # keep the preset's margin: the smallest valid tile around the new cube
        cube = int(changes["cube_size"])
        edge = int(changes.get("predict_edge", base.predict_edge))
        edge = min(edge, cube // 2)
        mult = 2 ** (len(changes.get("widths", base.widths)) - 1)
        changes["predict_edge"] = edge
        changes["predict_crop_size"] = -(-(cube + 2 * edge) // mult) * mult
    out = replace(base, **changes)
    out.train_settings()  # validates the training part (imports torch)
    return out


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
    histories : per-epoch loss history of each network (one, or two when independent).
    train : per-network training summary (steps, seconds, steps/s, device, dtype).
    timings : seconds per stage.
    notes : human-readable decisions taken (what was computed, what was assumed).
    settings : the settings used.
    models : the trained networks (torch modules), one or two.
    trust : the trust check (:mod:`spisonet.trust`): how much measured data, hidden the
        way W hides the missing cone, the (first) network restores; None when it was not
        run (``trust=False``, or W = 1).
    """

    corrected: list[np.ndarray]
    filtered: list[np.ndarray] | None
    weight: np.ndarray
    fsc3d_volume: np.ndarray | None
    histories: list[dict[str, list[float]]]
    train: list[dict[str, Any]]
    timings: dict[str, float]
    notes: list[str]
    settings: CorrectionSettings
    models: list[Any] = field(default_factory=list)
    trust: Any = None

    @property
    def average(self) -> np.ndarray:
        """Mean of the corrected maps (the corrected map itself for a single input)."""
        return np.mean(self.corrected, axis=0).astype(np.float32)


# --------------------------------------------------------------------------- validation


def _as_map(a: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(a)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise MapShapeError(f"{name}: expected a cubic 3D map (n×n×n); found shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise MapShapeError(f"{name}: expected real numbers; found dtype {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise NonFiniteMapError(f"{name}: contains NaN or infinite values")
    return v.astype(np.float32, copy=False)


def _validate(
    half1: np.ndarray,
    half2: np.ndarray | None,
    fsc3d_volume: np.ndarray | None,
    mask: np.ndarray | None,
    reference: np.ndarray | None,
    voxel_size: float,
    s: CorrectionSettings,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    h1 = _as_map(half1, "half map 1")
    n = h1.shape[0]
    h2 = None
    if half2 is not None:
        h2 = _as_map(half2, "half map 2")
        if h2.shape != h1.shape:
            raise MapMismatchError(
                f"half map 2 has shape {h2.shape} but half map 1 has {h1.shape}; "
                "both half maps must have the same box"
            )
    if s.independent and h2 is None:
        raise InvalidValueError("independent needs two half maps; only one was given")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InvalidValueError(f"voxel_size must be > 0 Å; got {voxel_size}")
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
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != h1.shape:
            raise MapMismatchError(
                f"the mask has shape {m.shape} but the half maps have {h1.shape}"
            )
        if not np.all(np.isfinite(m)):
            raise NonFiniteMapError("the mask contains NaN or infinite values")
        if not np.any(m > 0):
            raise EmptyMaskError("the mask is zero everywhere; expected a non-empty mask")
        check_mask_values(m, "the mask")
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
        ref = _as_map(reference, "reference")
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
    return h2, m, ref, (None if fsc3d_volume is None else np.asarray(fsc3d_volume))


# --------------------------------------------------------------------------- W


def power_presence(
    half1: np.ndarray,
    half2: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float = 0.1,
    percentile: float = 90.0,
) -> np.ndarray:
    """Where Fourier space holds measured power: a gate in [0, 1] for the sampling weight W.

    The per-voxel phase agreement behind the 3D FSC is blind to amplitude. Where no view
    sampled a frequency, both masked half maps hold only what the mask leaks there from
    sampled neighbours, and that leak is the same signal in both halves, so the 3D FSC
    reads high (≈ 0.7 inside a simulated 20° missing cone) although nothing was measured.
    This gate looks at the amplitude instead: P(k) = |F1(k)|·|F2(k)| (|F1|² for a single
    map) of the z-scored, masked maps, averaged over the 3×3×3 Fourier neighbourhood, is
    divided by the ``percentile``-th percentile of P on its shell (round(|k|)), and the
    ratio is ramped linearly to 1 at ``threshold``. Measured regions give 1 (also for
    isotropic data); unmeasured ones, whose leaked power is 10⁻² … 10⁻⁴ of the shell's,
    give ≈ 0.

    Parameters
    ----------
    half1, half2 : (n, n, n) maps (half2 optional).
    mask : (n, n, n) soft mask applied after z-scoring, as for the 3D FSC (None: none).
    threshold : ratio to the shell's reference power at which the gate reaches 1, (0, 1].
    percentile : which percentile of the shell's power is the reference, (0, 100].

    Returns
    -------
    (n, n, n) float32, fftshift-ed like the 3D FSC.
    """
    import scipy.fft
    from scipy.ndimage import uniform_filter

    h1 = _as_map(half1, "half map 1")
    n = h1.shape[0]
    if not 0 < threshold <= 1:
        raise InvalidValueError(f"threshold must be in (0, 1]; got {threshold}")
    if not 0 < percentile <= 100:
        raise InvalidValueError(f"percentile must be in (0, 100]; got {percentile}")
    m = None if mask is None else np.asarray(mask, dtype=np.float32)

    def amplitude(v: np.ndarray) -> np.ndarray:
        z = v.astype(np.float32)
        sd = float(z.std())
        z = (z - z.mean()) / (sd if sd > 0 else 1.0)
        if m is not None:
            z = z * m
        return np.abs(scipy.fft.rfftn(z, workers=-1)).astype(np.float32)

    p = amplitude(h1)
    p = p * (amplitude(_as_map(half2, "half map 2")) if half2 is not None else p)
    # Friedel-expand the half spectrum to the full grid (fft order), then smooth and shift
    neg = p[np.r_[0, n - 1 : 0 : -1]][:, np.r_[0, n - 1 : 0 : -1]]
    full = np.empty((n, n, n), dtype=np.float32)
    full[:, :, : p.shape[2]] = p
    full[:, :, n // 2 + 1 :] = neg[:, :, n - n // 2 - 1 : 0 : -1]
    del p, neg
    full = np.fft.fftshift(uniform_filter(full, size=3, mode="wrap"))
    gate = shell_percentile(full, percentile)
    gate *= threshold
    np.divide(full, gate, out=gate)
    return np.clip(gate, 0.0, 1.0, out=gate)


def shell_percentile(volume: np.ndarray, percentile: float) -> np.ndarray:
    """The ``percentile``-th percentile of ``volume`` over each Fourier shell, per voxel.

    ``volume`` is an fftshift-ed (n, n, n) grid; shells are round(|k|). Returns an
    (n, n, n) float32 grid whose every voxel holds its shell's percentile (computed in
    float64), floored at the smallest positive float32 so it can divide.
    """
    n = volume.shape[0]
    # int16 shells (|k| < 32768 for any box we accept) keep a 512³ grid's labels at 0.25 GiB
    shell = np.rint(frequency_radius(n, np.float32)).astype(np.int16).ravel()
    order = np.argsort(shell, kind="stable")
    counts = np.bincount(shell)
    ref = np.empty(counts.size, dtype=np.float64)
    flat = np.asarray(volume).ravel()[order]
    del order
    start = 0
    for i, c in enumerate(counts):
        ref[i] = np.percentile(flat[start : start + c], percentile) if c else 1.0
        start += c
    del flat
    ref = np.maximum(ref, np.finfo(np.float32).tiny).astype(np.float32)
    return ref[shell].reshape(volume.shape)


# --------------------------------------------------------------------------- pipeline


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
        Default: the ``gpu`` preset (the published defaults).
    reference : (n, n, n) array, optional
        Replaces the halves' content below ``settings.ref_resolution``.
    pretrained : path, optional
        A model file to start from (its widths are used); with ``epochs = 0`` it only
        predicts. With ``independent`` both networks start from it.
    checkpoints : paths, optional
        Where each network's checkpoint is written after every epoch (one path, two when
        independent).
    resume : bool
        Continue an interrupted run from ``checkpoints``.
    progress : callable ``(stage, fraction, detail)``, optional
        ``stage`` is ``"fsc3d"``, ``"train"`` (``detail``: a
        :class:`spisonet.nn.train.TrainProgress`; ``"train half 2"`` for the second
        independent network), ``"predict"`` or ``"trust"``.
    trust : bool
        Run the trust check after training (:func:`spisonet.trust.trust_check`: one more
        prediction of the whole map); skipped when W = 1.

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
    from .fsc3d import fsc3d
    from .maps import combine_map, match_mean_std, zscore
    from .nn.data import CubePairs, extract_cubes, sample_cube_centres
    from .nn.distributed import current_world
    from .nn.operators import prepare_sampling_weight
    from .nn.predict import predict_map
    from .nn.train import (
        build_model,
        load_checkpoint,
        model_from_checkpoint,
        resolve_amp,
        resolve_device,
        train_network,
    )

    s = settings if settings is not None else PRESETS["gpu"]
    s.train_settings()  # validates the training settings before any work
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    h1 = _as_map(half1, "half map 1")
    h2, m, ref, fvol = _validate(half1, half2, fsc3d_volume, mask, reference, voxel_size, s)
    halves = [h1] if h2 is None else [h1, h2]
    n_nets = 2 if s.independent else 1
    ckpts = tuple(checkpoints) if checkpoints is not None else None
    if ckpts is not None and len(ckpts) != n_nets:
        raise InvalidValueError(f"need {n_nets} checkpoint path(s); got {len(ckpts)}")
    if resume and s.epochs == 0:
        raise InvalidValueError("resume needs epochs > 0 (nothing to continue with epochs 0)")
    if resume and ckpts is None:
        raise InvalidValueError("resume needs the checkpoint path(s) of the interrupted run")
    device = resolve_device(s.device)
    amp_dtype = resolve_amp(s.amp, device)
    pre_model = None
    if pretrained is not None:
        ck = load_checkpoint(pretrained)
        pre_model = model_from_checkpoint(ck, pretrained)
        if tuple(pre_model.widths) != s.widths:
            notes.append(
                f"widths {list(pre_model.widths)} taken from the pretrained model "
                f"(settings said {list(s.widths)})"
            )
            s = replace(s, widths=tuple(pre_model.widths))
        notes.append(f"started from the pretrained model {pretrained}")
    elif s.epochs == 0:
        raise InvalidValueError("epochs 0 (prediction only) needs a pretrained model")

    # --- preparation
    t = time.perf_counter()
    if m is None:
        notes.append("no mask given: training cubes are drawn from the whole box")
    originals = list(halves)
    work = list(halves)
    if ref is not None:
        work = [combine_map(ref, h, s.ref_resolution, voxel_size, m) for h in work]
        notes.append(f"content below {s.ref_resolution} Å replaced by the reference; W = 1 there")
    if s.limit_res is not None:
        work = [lowpass(h, s.limit_res, voxel_size, falloff=3) for h in work]
        notes.append(
            f"correction limited to {s.limit_res} Å: the maps were low-passed before "
            "training and the original's higher frequencies are kept"
        )
    lowpassed = list(work)
    work = [zscore(h) for h in work]
    timings["prepare"] = time.perf_counter() - t

    # --- W
    t = time.perf_counter()
    if fvol is None and h2 is not None:
        notes.append(
            "no 3D FSC given: computed from the two half maps (spIsoNet flavour, "
            f"cone {s.fsc3d_cone_angle:g}°, 0.143 limit)"
        )
        res = fsc3d(
            h1,
            h2,
            voxel_size=voxel_size,
            mask=None if m is None else m.astype(np.float32),
            cone_sampling_angle=s.fsc3d_cone_angle,
            progress=None if progress is None else (lambda f: progress("fsc3d", f, None)),
        )
        fvol = res.volume
    if fvol is None:
        notes.append("single map without a 3D FSC: W = 1 (denoising only)")
        weight = np.ones((s.cube_size,) * 3, dtype=np.float32)
    else:
        wvol = np.asarray(fvol)
        if s.presence_threshold:
            gate = power_presence(h1, h2, m, s.presence_threshold)
            wvol = wvol * gate
            notes.append(
                "W gated by measured power (presence threshold "
                f"{s.presence_threshold:g}): {100 * float(np.mean(gate < 0.5)):.0f} % of "
                "Fourier space reads as unmeasured"
            )
        weight = prepare_sampling_weight(wvol, s.cube_size)
    if ref is not None:
        r_cube = s.cube_size * voxel_size / s.ref_resolution
        weight = np.where(frequency_radius(s.cube_size) <= r_cube, 1.0, weight).astype(np.float32)
    timings["fsc3d"] = time.perf_counter() - t

    # --- cubes
    t = time.perf_counter()
    sample_mask = m if m is not None else np.ones(h1.shape, dtype=np.float32)
    centres = sample_cube_centres(sample_mask, s.n_subvolume, s.cube_size, rng=s.seed)
    cubes = [extract_cubes(w, centres, s.cube_size) for w in work]
    if s.independent:
        datasets = [CubePairs(cubes[0], None, seed=s.seed), CubePairs(cubes[1], None, seed=s.seed)]
    else:
        datasets = [CubePairs(cubes[0], cubes[1] if len(cubes) > 1 else None, seed=s.seed)]
    timings["cubes"] = time.perf_counter() - t

    # --- training
    t = time.perf_counter()
    ts = s.train_settings()
    models, histories, summaries = [], [], []
    for i, pairs in enumerate(datasets):
        stage = "train" if i == 0 else "train half 2"
        if pre_model is not None and not resume:
            model = model_from_checkpoint(load_checkpoint(pretrained), pretrained)
        else:
            model = build_model(s.widths, s.seed) if not resume else None
        cb = None
        if progress is not None:
            cb = (lambda st: lambda p: progress(st, p.fraction, p))(stage)
        if s.epochs > 0:
            out = train_network(
                pairs,
                weight,
                ts,
                model=model,
                checkpoint=None if ckpts is None else ckpts[i],
                resume=resume,
                progress=cb,
            )
            models.append(out.model)
            histories.append(out.history)
            summaries.append(
                {
                    "steps": out.steps_run,
                    "seconds": out.seconds,
                    "steps_per_second": out.steps_per_second,
                    "device": out.device,
                    "dtype": out.amp_dtype,
                    "resumed_from_epoch": out.resumed_from_epoch,
                    "n_cubes": len(pairs),
                    "paired": pairs.paired,
                }
            )
        else:
            assert model is not None
            models.append(model.to(device).eval())
            histories.append({})
            summaries.append({"steps": 0, "seconds": 0.0, "device": str(device)})
    timings["train"] = time.perf_counter() - t

    # --- prediction
    t = time.perf_counter()

    def run_network(model: Any, v: np.ndarray, cb: Any = None) -> np.ndarray:
        return predict_map(
            model,
            v,
            cube_size=s.cube_size,
            crop_size=s.predict_crop_size,
            edge=s.predict_edge,
            batch_size=s.batch_size,
            device=device,
            amp_dtype=amp_dtype,
            progress=cb,
            world=current_world(),
        )

    outs = []
    for i, z in enumerate(work):
        model = models[i if s.independent else 0]
        cb2 = None
        if progress is not None:
            cb2 = (lambda i0: lambda d, tot: progress("predict", (i0 + d / tot) / len(work), None))(
                i
            )
        outs.append(run_network(model, z, cb2))
    timings["predict"] = time.perf_counter() - t

    # --- trust check: hide measured data as W hides the missing cone; what comes back?
    trust_result = None
    if trust and fvol is not None:
        from .trust import trust_check

        t = time.perf_counter()
        w_full = prepare_sampling_weight(wvol, h1.shape[0])
        if ref is not None:  # as for the training W: the reference fixes the low band
            r_full = h1.shape[0] * voxel_size / s.ref_resolution
            w_full = np.where(frequency_radius(h1.shape[0]) <= r_full, 1.0, w_full)

        second = work[1] if len(work) > 1 else None
        trust_result = trust_check(
            work[0], second, w_full, lambda v: run_network(models[0], v)
        )
        if progress is not None:
            progress("trust", 1.0, None)
        notes.append(f"trust check: {trust_result.message}")
        timings["trust"] = time.perf_counter() - t

    # --- outputs in the input's units
    t = time.perf_counter()
    if s.limit_res is not None:
        filtered = [match_mean_std(o, lp) for o, lp in zip(outs, lowpassed, strict=True)]
        corrected = [
            combine_map(o, orig, s.limit_res, voxel_size, m)
            for o, orig in zip(outs, originals, strict=True)
        ]
    else:
        filtered = None
        corrected = [match_mean_std(o, orig) for o, orig in zip(outs, originals, strict=True)]
    notes.append("outputs rescaled to the input maps' mean and standard deviation")
    timings["combine"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return CorrectionResult(
        corrected=corrected,
        filtered=filtered,
        weight=weight,
        fsc3d_volume=None if fvol is None else np.asarray(fvol, dtype=np.float32),
        histories=histories,
        train=summaries,
        timings=timings,
        notes=notes,
        settings=s,
        models=models,
        trust=trust_result,
    )


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ReconstructOutputs:
    """Files written by :func:`reconstruct` and the in-memory result."""

    corrected: list[Path]
    filtered: list[Path]
    models: list[Path]
    losses: list[Path]
    report: Path
    result: CorrectionResult
    trust_figure: Path | None = None
    fsc3d: Path | None = None  # FSC3D.mrc, when computed here (no aniso_file given)


def _base(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in (".mrc.gz", ".mrc", ".map", ".rec", ".mrcs"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _plot_loss(history: dict[str, list[float]], path: Path) -> None:
    from .report import loss_figure

    loss_figure(history, path)


def reconstruct(
    half1: str | os.PathLike,
    half2: str | os.PathLike | None = None,
    *,
    aniso_file: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "isonet_maps",
    settings: CorrectionSettings | None = None,
    reference: str | os.PathLike | None = None,
    pretrained_model: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    voxel_size: float | None = None,
) -> ReconstructOutputs:
    """Read the maps, run :func:`correct_anisotropy`, write every output.

    ``voxel_size`` (Å) replaces the voxel size of every input map's header (needed when
    a header has none). The corrected maps carry half 1's voxel size, origin and
    nxstart/nystart/nzstart, so they overlay the input.

    Outputs in ``output_dir`` (``b`` = each input's name without extension):
    ``corrected_<b>.mrc``; ``corrected_<b>_filtered.mrc`` with ``limit_res``;
    ``model_<b>.pt`` (checkpoint after every epoch; one per half when independent,
    else named after half 1); ``loss_<b>.png``; ``reconstruct.json`` (settings, inputs,
    decisions, timings, losses); ``FSC3D.mrc`` when computed here.

    Raises
    ------
    OutputPathError
        ``output_dir`` is a file or cannot be created or written (checked before the work).
    """
    from ._outputs import check_output_dir
    from .io import check_half_maps, check_mask, read_map, write_map
    from .report import write_json

    s = settings if settings is not None else PRESETS["gpu"]
    t0 = time.perf_counter()
    m1 = read_map(half1, voxel_size=voxel_size)
    m2 = read_map(half2, voxel_size=voxel_size) if half2 is not None else None
    if m2 is not None:
        check_half_maps(m1, m2)
    mk = None
    if mask is not None:
        mk = read_map(mask, voxel_size=voxel_size)
        check_mask(mk, m1)
    for h in (m1, m2):  # named by file here; correct_anisotropy repeats it for arrays
        if h is not None:
            check_contrast(h.data, h.name, None if mk is None else mk.data)
    aniso = read_map(aniso_file, voxel_size=voxel_size) if aniso_file is not None else None
    if aniso is not None and aniso.data.shape != m1.data.shape:
        raise MapMismatchError(
            f"{aniso.name}: 3D FSC shape {aniso.data.shape} differs from the half maps' "
            f"{m1.data.shape} ({m1.name}); compute it from these half maps"
        )
    if aniso is not None:
        check_fsc3d_volume(aniso.data, aniso.name)
    ref = read_map(reference, voxel_size=voxel_size) if reference is not None else None
    if ref is not None and ref.data.shape != m1.data.shape:
        raise MapMismatchError(
            f"{ref.name}: reference shape {ref.data.shape} differs from the half maps' "
            f"{m1.data.shape}"
        )
    out = check_output_dir(output_dir)  # before the work, not after the first epoch
    bases = [_base(half1)] + ([_base(half2)] if half2 is not None else [])
    if len(bases) == 2 and bases[0] == bases[1]:
        bases = [bases[0] + "_1", bases[1] + "_2"]
    n_nets = 2 if s.independent else 1
    model_paths = [out / f"model_{b}.pt" for b in bases[:n_nets]]
    t_read = time.perf_counter() - t0
    result = correct_anisotropy(
        m1.data,
        None if m2 is None else m2.data,
        None if aniso is None else aniso.data,
        None if mk is None else mk.data,
        voxel_size=m1.voxel_size,
        settings=s,
        reference=None if ref is None else ref.data,
        pretrained=pretrained_model,
        checkpoints=tuple(model_paths) if s.epochs > 0 else None,
        resume=resume,
        progress=progress,
    )
    from .nn.distributed import current_world

    t = time.perf_counter()
    corrected, filtered, losses = [], [], []
    if not current_world().is_main:
        # several ranks: only rank 0 writes; the others return the in-memory result
        return ReconstructOutputs([], [], model_paths, [], out / "reconstruct.json", result)
    for i, b in enumerate(bases):
        corrected.append(
            write_map(out / f"corrected_{b}.mrc", result.corrected[i], like=m1)
        )
        if result.filtered is not None:
            filtered.append(
                write_map(
                    out / f"corrected_{b}_filtered.mrc",
                    result.filtered[i],
                    like=m1,
                )
            )
    for b, hist in zip(bases[:n_nets], result.histories, strict=True):
        if hist:
            p = out / f"loss_{b}.png"
            _plot_loss(hist, p)
            losses.append(p)
    fsc3d_path = None
    if aniso is None and result.fsc3d_volume is not None:
        fsc3d_path = write_map(out / "FSC3D.mrc", result.fsc3d_volume, m1.voxel_size)
    trust_png = None
    if result.trust is not None:
        from .report import trust_figure

        trust_png = out / "trust.png"
        trust_figure(result.trust, m1.voxel_size, m1.box, trust_png)
    result.timings["read"] = t_read
    result.timings["write"] = time.perf_counter() - t
    report = out / "reconstruct.json"
    write_json(
        report,
        {
            "inputs": {
                "half1": str(half1),
                "half2": None if half2 is None else str(half2),
                "aniso_file": None if aniso_file is None else str(aniso_file),
                "mask": None if mask is None else str(mask),
                "reference": None if reference is None else str(reference),
                "pretrained_model": None if pretrained_model is None else str(pretrained_model),
                "box": m1.box,
                "voxel_size": m1.voxel_size,
            },
            "settings": result.settings.to_dict(),
            "resume": resume,
            "notes": result.notes,
            "timings_s": result.timings,
            "training": result.train,
            "loss_history": result.histories,
            "trust_check": None if result.trust is None else result.trust.to_dict(),
            "outputs": {
                "corrected": [str(p) for p in corrected],
                "filtered": [str(p) for p in filtered],
                "models": [str(p) for p in model_paths if p.exists()],
                "loss_figures": [str(p) for p in losses],
                "trust_figure": None if trust_png is None else str(trust_png),
                "fsc3d": str(out / "FSC3D.mrc")
                if aniso is None and result.fsc3d_volume is not None
                else None,
            },
        },
    )
    return ReconstructOutputs(
        corrected=corrected,
        filtered=filtered,
        models=[p for p in model_paths if p.exists()],
        losses=losses,
        report=report,
        result=result,
        trust_figure=trust_png,
        fsc3d=fsc3d_path,
    )


# --------------------------------------------------------------------------- evaluation


def ground_truth_metrics(
    ground_truth: np.ndarray,
    maps: dict[str, np.ndarray],
    voxel_size: float,
    mask: np.ndarray | None = None,
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
    cone_angle_deg: float = 20.0,
    n_directions: int = 200,
) -> dict[str, dict[str, Any]]:
    """Compare maps with a known ground truth (simulations, benchmarks, the demo).

    For each map: the global FSC vs the ground truth (masked), the cone FSC inside
    ``cone_angle_deg`` of ``axis`` (x, y, z; the view axis of a preferred-orientation
    simulation), its mean over shells 2 … n/4 (``cone_mean``), and the 0.5-FSC
    resolution along the worst and best of ``n_directions`` Fibonacci directions (cone
    FSC vs the ground truth, same cone angle) and globally.

    Returns
    -------
    ``{name: {"global_fsc": (n//2+1,), "axis_fsc": (n//2+1,), "cone_mean": float,
    "res05_global": Å, "res0143_global": Å, "res05_worst": Å, "res05_best": Å,
    "worst_direction": (3,),
    "best_direction": (3,), "worst_fsc": (n//2+1,), "best_fsc": (n//2+1,)}}``
    """
    from .anisotropy import conical_fsc, directional_resolution, fibonacci_directions
    from .fsc import fsc

    gt = _as_map(ground_truth, "ground truth")
    n = gt.shape[0]
    u = np.asarray(axis, dtype=np.float64)[None]
    dirs = fibonacci_directions(n_directions)
    out: dict[str, dict[str, Any]] = {}
    for name, vol in maps.items():
        v = _as_map(vol, name)
        g = fsc(v, gt, voxel_size, mask)
        ax = conical_fsc(v, gt, mask, u, cone_angle_deg)[0]
        cones = conical_fsc(v, gt, mask, dirs, cone_angle_deg)
        res = directional_resolution(cones, 0.5, voxel_size, n)
        iw, ib = int(np.argmax(res)), int(np.argmin(res))
        out[name] = {
            "global_fsc": g.fsc,
            "axis_fsc": ax,
            "cone_mean": float(np.nanmean(ax[2 : n // 4 + 1])),
            "res05_global": float(g.resolution_05),
            "res0143_global": float(g.resolution_0143),
            "res05_worst": float(res[iw]),
            "res05_best": float(res[ib]),
            "worst_direction": dirs[iw],
            "best_direction": dirs[ib],
            "worst_fsc": cones[iw],
            "best_fsc": cones[ib],
        }
    return out


#: Legend labels of the FSC thresholds in :func:`before_after_figure`.
FSC_THRESHOLD_LABELS = {0.143: "FSC = 0.143", 0.5: "FSC = 0.5"}


def before_after_figure(
    ground_truth: np.ndarray,
    raw: np.ndarray,
    corrected: np.ndarray,
    metrics: dict[str, dict[str, Any]],
    voxel_size: float,
    path: str | os.PathLike,
    *,
    mask: np.ndarray | None = None,
    lowpass_resolution: float | None = None,
):
    """A PNG comparing the ground truth, the map before correction and after, like with like.

    Top rows: the central z-y slice (x = n/2, the view axis z pointing up, so a missing
    cone around z shows as smearing along z) and x-y slice of the three maps, each
    low-passed at the same ``lowpass_resolution`` Å (None: unfiltered; the demo uses the
    raw half maps' 0.143 FSC resolution), z-scored inside ``mask`` and drawn on one grey
    scale. Bottom row: FSC with the ground truth, computed the same way for both maps:
    global, in the 20° cone around the view axis and along the best direction, with the
    FSC = 0.143 and 0.5 lines in the legends; a caption says all this under the panels.
    ``metrics`` is :func:`ground_truth_metrics`' output with keys ``"raw"`` and
    ``"corrected"``.

    Returns
    -------
    The :class:`matplotlib.figure.Figure` (already written to ``path``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import atomic_path
    from .report import _resolution_axis

    n = np.asarray(ground_truth).shape[0]
    c = n // 2
    inside = np.ones((n, n, n), bool) if mask is None else np.asarray(mask) > 0.5
    if not inside.any():
        inside[:] = True

    def shown(vol: np.ndarray) -> np.ndarray:
        v = np.asarray(vol, dtype=np.float32)
        if lowpass_resolution is not None:
            v = lowpass(v, lowpass_resolution, voxel_size)
        sd = float(v[inside].std())
        return (v - float(v[inside].mean())) / (sd if sd > 0 else 1.0)

    maps = {
        "ground truth": shown(ground_truth),
        "before (raw half-map average)": shown(raw),
        "after (corrected)": shown(corrected),
    }
    truth_slices = np.concatenate([maps["ground truth"][:, :, c], maps["ground truth"][c]])
    vmin, vmax = np.percentile(truth_slices, [0.5, 99.5])
    fig = Figure(figsize=(12, 11.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, 3, height_ratios=[1, 1, 1.15, 0.28])
    for col, (name, v) in enumerate(maps.items()):
        for row, (sl, label) in enumerate(((v[:, :, c], "z-y slice (z up)"), (v[c], "x-y slice"))):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    shells = np.arange(n // 2 + 1)
    freq = shells / (n * voxel_size)
    before, after = metrics["raw"], metrics["corrected"]
    panels = (
        (
            f"global; 0.143: {before['res0143_global']:.1f} → {after['res0143_global']:.1f} Å, "
            f"0.5: {before['res05_global']:.1f} → {after['res05_global']:.1f} Å",
            "global_fsc",
        ),
        (
            f"20° cone around the view axis z; mean (shells 2–{n // 4}) "
            f"{before['cone_mean']:.2f} → {after['cone_mean']:.2f}",
            "axis_fsc",
        ),
        ("20° cone along the best-measured direction", "best_fsc"),
    )
    for col, (title, key) in enumerate(panels):
        ax = fig.add_subplot(grid[2, col])
        for m, label, style, colour in (
            (before, "before (raw average)", "--", "tab:blue"),
            (after, "after (corrected)", "-", "tab:green"),
        ):
            curve = np.asarray(m[key])
            ax.plot(freq[: curve.size], curve, style, color=colour, lw=1.5, label=label)
        for level, colour, ls in ((0.143, "tab:red", "--"), (0.5, "tab:orange", ":")):
            ax.axhline(level, color=colour, lw=0.9, ls=ls, label=FSC_THRESHOLD_LABELS[level])
        if lowpass_resolution is not None:
            ax.axvline(
                1.0 / lowpass_resolution,
                color="0.4",
                lw=0.8,
                ls="-.",
                label=f"slices low-passed at {lowpass_resolution:.1f} Å",
            )
        ax.axhline(0.0, color="0.6", lw=0.6)
        lowest = min(float(np.nanmin(np.asarray(m[key])[1:])) for m in (before, after))
        ax.set_ylim(max(-1.0, min(-0.1, lowest - 0.05)), 1.05)
        ax.set_xlim(0, freq[-1])
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC with the ground truth")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        _resolution_axis(ax)
    filtered = (
        f"low-passed at {lowpass_resolution:.1f} Å (the raw half maps' 0.143 FSC resolution)"
        if lowpass_resolution is not None
        else "unfiltered"
    )
    caption = (
        f"Slices: every map {filtered}, z-scored inside the mask, one grey scale. Curves: FSC "
        "of each whole map with the ground truth inside the mask, computed the same way "
        "before and after. In the cone around the view axis z no view measured the data; "
        "along the best direction they were measured."
    )
    cap = fig.add_subplot(grid[3, :])
    cap.axis("off")
    handles, labels = fig.axes[-2].get_legend_handles_labels()  # the last FSC panel's
    cap.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    cap.text(0.0, 0.45, caption, va="top", ha="left", fontsize=9.5, wrap=True)
    fig.suptitle("spisonet: before / after anisotropy correction", fontweight="bold")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return fig
