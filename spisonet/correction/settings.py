"""The settings of a correction run: one declaration per setting, the presets, ``auto``.

Every field of :class:`CorrectionSettings` is declared with :func:`spisonet._settings.setting`
(help, unit, command-line spellings); ``spisonet reconstruct`` builds its options from
these declarations, ``reconstruct.json`` records them and ``docs/settings.md`` is
generated from them (``python -m spisonet.correction > docs/settings.md``). No torch
here: the training part is validated by :class:`spisonet.nn.train.TrainSettings`,
imported when needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .._checks import check_nonnegative_int
from .._settings import markdown_table, setting
from ..errors import InvalidValueError

__all__ = [
    "PRESETS",
    "PRESET_CHOICES",
    "CorrectionSettings",
    "preset_settings",
    "resolve_preset",
    "settings_markdown",
]

#: What ``--preset`` accepts; ``auto`` is resolved by :func:`resolve_preset`.
PRESET_CHOICES = ("auto", "gpu", "cpu", "tiny")


@dataclass(frozen=True)
class CorrectionSettings:
    """Every setting of a correction run (public-tool names where they exist).

    Each field's meaning, unit and option are in its declaration (and in
    ``docs/settings.md``). ``widths`` must have ``cube_size`` and ``predict_crop_size``
    as multiples of ``2**(len(widths) - 1)``; ``predict_crop_size ≥ cube_size +
    2·predict_edge``.
    """

    preset: str = setting(
        "gpu",
        "gpu: the published network and training length; cpu: a small network, 64³ in ~9 min "
        "on a quiet 2-core CPU with native bf16, ~40 min on an AVX2-only one (reconstruct "
        "averages three: --ensemble); tiny: seconds, to check an installation; auto: gpu when "
        "a CUDA GPU is present, else cpu",
        cli=("--preset",),
        env="PRESET",
        choices=PRESET_CHOICES,
    )
    widths: tuple[int, ...] = setting(
        (64, 128, 256, 320),
        "U-Net channel widths per level, comma-separated",
        cli=("--widths",),
    )
    cube_size: int = setting(
        64, "Training cube edge", unit="voxels", cli=("--cube-size", "--cube_size")
    )
    predict_crop_size: int = setting(
        80,
        "Tile edge for prediction",
        unit="voxels",
        cli=("--predict-crop-size", "--predict_crop_size"),
    )
    predict_edge: int = setting(
        7,
        "Half-width of the blended overlap between prediction tiles",
        unit="voxels",
        cli=("--predict-edge", "--predict_edge"),
    )
    n_subvolume: int = setting(
        1000, "Number of training cubes", cli=("--n-subvolume", "--n_subvolume")
    )
    epochs: int = setting(
        30,
        "Passes over the training cubes (0 with --pretrained-model: predict only)",
        cli=("--epochs",),
        env="EPOCHS",
    )
    batch_size: int = setting(4, "Cubes per optimiser step", cli=("--batch-size", "--batch_size"))
    acc_batches: int = setting(
        2,
        "Micro-batches per step (gradient accumulation: same result, less memory)",
        cli=("--acc-batches", "--acc_batches"),
        env="ACC_BATCHES",
    )
    learning_rate: float = setting(
        3e-4, "AdamW learning rate", cli=("--learning-rate", "--learning_rate")
    )
    alpha: float = setting(1.0, "Weight of the equivariance loss", cli=("--alpha",), env="ALPHA")
    beta: float = setting(0.5, "Weight of the Noise2Noise terms", cli=("--beta",), env="BETA")
    self_weight: float = setting(
        1.0,
        "With two half maps: weight of the consistency with the input half itself (1: "
        "published; 0: the measured region learns from the other half only, pure Noise2Noise)",
        cli=("--self-weight", "--self_weight"),
    )
    consistency_border: int = setting(
        0,
        "Voxels at each face of a training cube left out of the consistency terms (0: the "
        "whole cube, as published). The cube is a window of the map while W acts on it "
        "periodically, so the two disagree near the faces; opt-in: it cost top-view maps their "
        "low-resolution fill",
        unit="voxels",
        cli=("--consistency-border",),
    )
    consistency_residual: str = setting(
        "off",
        "Where the consistency is taken on the W-weighted residual P_W(f(x) − x) instead of "
        "P_W(f(x)) − x: off (published), low (the training cube's lowest frequencies, up to "
        "1/8 cycle per voxel) or all. A half map keeps its amplitude where it was "
        "measured only partly (only its noise grows), and the published form asks the "
        "network there for x/W",
        cli=("--consistency-residual",),
        choices=("off", "low", "all"),
    )
    equivariance_weight: str = setting(
        "all",
        "Which part of the equivariance residual is scored: all (published), measured "
        "(filtered in Fourier space by 1 − (1 − W(k))·(1 − W(R⁻¹k)): left out is where the "
        "rotated target holds only the network's own fill and the input lacks it) or high "
        "(filtered only above 1/8 cycle per voxel of the training cube)",
        cli=("--equivariance-weight",),
        choices=("all", "measured", "high"),
    )
    equivariance_rotations: str = setting(
        "informative",
        "Rotations of the equivariance term: informative (each of the 24 cube rotations drawn "
        "in proportion to the measured data it moves into the region W hides, so never one "
        "that maps the missing cone onto itself) or uniform (all 24 alike, the published "
        "tool's)",
        cli=("--equivariance-rotations",),
        choices=("uniform", "informative"),
    )
    schedule: str = setting(
        "constant",
        "Learning-rate schedule: constant (published) or onecycle",
        cli=("--schedule",),
        choices=("constant", "onecycle"),
    )
    amp: str = setting(
        "auto",
        "Mixed precision: auto (bf16 on GPUs and CPUs that have it natively), bf16 or off",
        cli=("--amp",),
        choices=("auto", "bf16", "off"),
    )
    limit_res: float | None = setting(
        None,
        "Correct only below this resolution; higher frequencies are kept",
        unit="Å",
        cli=("--limit-res", "--limit_res"),
    )
    correct_beyond_limit: bool = setting(
        False,
        "Let the network's output stand beyond the 3D FSC's resolution limit too (default: "
        "the corrected map keeps the original's frequencies there, where W holds no data, "
        "with a 5-shell hand-over below the limit)",
        cli=("--correct-beyond-limit",),
    )
    network_only: bool = setting(
        False,
        "Let the network's output stand where Fourier space was measured even where the half "
        "maps say the data are better (default: per shell, over the measured directions, the "
        "mix of network and data the half maps estimate to correlate best with the truth, "
        "where it beats the network alone by 0.02, or at all where nothing is missing)",
        cli=("--network-only",),
    )
    ref_resolution: float = setting(
        10.0,
        "With --reference: the reference's content below this resolution replaces the halves'",
        unit="Å",
        cli=("--ref-resolution", "--ref_resolution"),
    )
    independent: bool = setting(
        False,
        "One network per half map (keeps the gold-standard FSC honest)",
        cli=("--independent",),
    )
    ensemble: int = setting(
        1,
        "Networks trained per half-map pair from seeds seed, seed+1, … (each its own training "
        "cubes and start), their outputs averaged: the fill varies less from one seed to the "
        "next, at ensemble× the training and prediction time",
        cli=("--ensemble",),
    )
    fsc3d_cone_angle: float = setting(
        10.0,
        "Cone half-angle of the 3D FSC when it is computed here (no --aniso-file)",
        unit="°",
        cli=("--fsc3d-cone-angle", "--fsc3d_cone_angle"),
    )
    presence_threshold: float | None = setting(
        0.1,
        "Count a Fourier region as measured only where its power reaches this fraction of "
        "its shell's 90th percentile (0: the public tool's W, which reads a masked, "
        "unsampled cone as measured)",
        cli=("--presence-threshold", "--presence_threshold"),
    )
    presence_unmasked: bool = setting(
        True,
        "Count a Fourier region as measured only where the unmasked half maps hold power "
        "there too: a mask spreads each measured frequency's power into its neighbours, "
        "unsampled ones included, and the masked maps alone read that as measured",
        cli=("--presence-unmasked",),
    )
    filter_input: bool | None = setting(
        None,
        "Multiply each half's Fourier transform by the measured-power gate before the network "
        "sees it (training and prediction): what an unsampled region holds (a reconstruction's "
        "interpolation) is not shown to a network trained to fill empty regions. Default "
        "(none): on when ≥ 0.5 % of the two halves' agreed power at shells 2 … n/4 lies where "
        "the gate reads unmeasured, off otherwise and for a single map",
        cli=("--filter-input",),
    )
    fill_floor: float = setting(
        0.0,
        "Raise the network's fill where the gate reads unmeasured, per shell, to at least this "
        "fraction of the signal amplitude the two halves show where measured (0: off; the "
        "network fills at about a tenth of the truth's amplitude). Skipped where the measured "
        "band is thin or cannot be read. Opt-in: on the evaluation matrix it lifted cells whose "
        "fill is right (+0.14 → +0.42 at 0.3) and cost those whose fill is poor (up to −0.013), "
        "docs/method.md; needs two halves and a 3D FSC",
        cli=("--fill-floor",),
    )
    coarse_pass: bool = setting(
        False,
        "Also train, per ensemble member, a network on the whole box binned by 2 and let its "
        "output stand at the box's lowest shells (up to n/12, handed over to the main network "
        "by n/6) in the directions the data did not measure, shells the main network's cubes "
        "hold as their own shells 1 … 4 (boxes over twice cube_size are binned to cube_size). "
        "Opt-in: on the evaluation matrix it halved the worst global drops of the RELION-noise "
        "cells at an unchanged mean worst-cone gain, for 40–80 % more training "
        "(docs/method.md); needs two halves and training",
        cli=("--coarse-pass",),
    )
    predict_rotations: str = setting(
        "off",
        "Average each network's prediction over the cube rotations that map the sampling "
        "pattern W onto itself (turns about the axis of a missing cone: up to 8, those whose "
        "W differs from the original by at most half of W's own spread, "
        "spisonet.nn.symmetry_rotations): the network saw that same pattern in training, so "
        "each turned copy is an equally valid prediction. Costs that many predictions "
        "(training unchanged); the trust check uses the same average (off | auto)",
        cli=("--predict-rotations",),
        choices=("off", "auto"),
    )
    compile: bool = setting(False, "Use torch.compile (opt-in; slow start)", cli=("--compile",))
    seed: int = setting(0, "Random seed", cli=("--seed",))
    device: str = setting(
        "auto", "Where to train: auto (CUDA when present), cpu, cuda or cuda:N", cli=("--device",)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name in ("cube_size", "predict_crop_size", "n_subvolume", "ensemble"):
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
        check_nonnegative_int(
            self.consistency_border,
            "consistency_border",
            (self.cube_size + 1) // 2,
            f"0 ≤ 2·border < cube_size = {self.cube_size}",
        )
        if self.limit_res is not None and not self.limit_res > 0:
            raise InvalidValueError(f"limit_res must be a resolution > 0 Å; got {self.limit_res}")
        if self.presence_threshold is not None and not 0 <= self.presence_threshold <= 1:
            raise InvalidValueError(
                f"presence_threshold must be in [0, 1] (0 or None: off); "
                f"got {self.presence_threshold}"
            )
        if not 0 <= self.fill_floor <= 1:
            raise InvalidValueError(f"fill_floor must be in [0, 1] (0: off); got {self.fill_floor}")
        if not self.ref_resolution > 0:
            raise InvalidValueError(
                f"ref_resolution must be a resolution > 0 Å; got {self.ref_resolution}"
            )

    def train_settings(self):
        """The :class:`spisonet.nn.train.TrainSettings` of this run (validates them).

        Every field of TrainSettings that is also a field here is taken from here; the
        others keep TrainSettings' defaults.
        """
        from ..nn.train import TrainSettings

        ours = {f.name for f in dataclasses.fields(self)}
        shared = [f.name for f in dataclasses.fields(TrainSettings) if f.name in ours]
        return TrainSettings(**{name: getattr(self, name) for name in shared})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


#: ``gpu``: the published network and training length. ``cpu``: the best we found for 2 CPU
#: cores (a 4-level 16…128 network on 32³ cubes, bf16 where the CPU has it natively,
#: one-cycle rate, 600 steps: 9 min per network with native bf16, ~40 min in float32 on an
#: AVX2-only CPU), three networks from seeds s, s+1, s+2 averaged: on this preset the
#: training seed alone moved a cell's cone gain over +0.06 … +0.23 and decided whether a
#: global shell lost more than 0.02; every average of three kept both failing cells of the
#: evaluation matrix within 0.02 (docs/method.md, benchmarks/RESULTS.md session 17). Three
#: networks of 4 epochs each (same time as one) lost 0.14 of the base cell's gain. Every
#: preset gates W by measured power (:func:`power_presence`, threshold 0.1); 0 turns it off.
#: The ``cpu`` preset takes the consistency on the W-weighted residual at the training cube's
#: lowest frequencies (``consistency_residual="low"``): it removed the RELION CFTR cell's
#: global drop at 48³ and kept the cones at 48³ and 64³ (RESULTS.md session 32); the ``gpu``
#: preset keeps the published form until it is measured on a GPU.
#: ``tiny``: seconds, to check an installation (and for the tests).
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
        ensemble=3,
        consistency_residual="low",
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


def resolve_preset(name: str, cuda_available: bool | None = None) -> tuple[str, str]:
    """``(preset, reason)``: ``auto`` becomes ``gpu`` when a CUDA GPU is present, else
    ``cpu``; any other name is returned as it is (reason ``""``).

    ``cuda_available`` None asks torch (imported only then).
    """
    if name != "auto":
        return name, ""
    if cuda_available is None:
        import torch

        cuda_available = bool(torch.cuda.is_available())
    if cuda_available:
        return "gpu", "a CUDA GPU is present"
    return "cpu", "no CUDA GPU found"


def smallest_tile(cube: int, edge: int, widths: tuple[int, ...]) -> int:
    """The smallest valid ``predict_crop_size`` around a ``cube``-voxel cube with blended
    edges of ``edge`` voxels: cube + 2·edge rounded up to the U-Net's 2^(levels − 1)."""
    mult = 2 ** (len(widths) - 1)
    return -(-(cube + 2 * edge) // mult) * mult


def preset_settings(name: str = "gpu", **overrides: Any) -> CorrectionSettings:
    """The settings of preset ``name`` with some fields replaced (None values are ignored).

    ``name`` may be ``auto`` (:func:`resolve_preset`).

    Raises
    ------
    InvalidValueError
        Unknown preset or field.
    """
    name, _ = resolve_preset(name)
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
        changes["predict_edge"] = edge
        changes["predict_crop_size"] = smallest_tile(cube, edge, changes.get("widths", base.widths))
    if "widths" in changes:
        changes["widths"] = tuple(int(w) for w in changes["widths"])
    out = replace(base, **changes)
    out.train_settings()  # validates the training part (imports torch)
    return out


def settings_markdown() -> str:
    """``docs/settings.md``: every setting with its option, default per preset and meaning."""
    lines = [
        "# Settings of `spisonet reconstruct`",
        "",
        "Generated from `spisonet/correction/settings.py` by "
        "`python -m spisonet.correction > docs/settings.md`; a test checks that "
        "this page is in step. Defaults are the `gpu` preset's; the other presets differ in:",
        "",
    ]
    base = asdict(PRESETS["gpu"])
    for name, preset in PRESETS.items():
        if name == "gpu":
            continue
        diff = {k: v for k, v in asdict(preset).items() if v != base[k] and k != "preset"}
        shown = ", ".join(
            f"`{k}` {','.join(map(str, v)) if isinstance(v, tuple | list) else v}"
            for k, v in diff.items()
        )
        lines.append(f"- `{name}`: {shown}")
    lines += ["", markdown_table(CorrectionSettings)]
    return "\n".join(lines)
