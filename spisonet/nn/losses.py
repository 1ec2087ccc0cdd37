"""The self-supervised losses of the anisotropy correction (ALGORITHM.md §3).

For a network ``f``, the sampling operator ``P_W`` and per-sample cube rotations ``R``
(all L1 means over every voxel of the batch)::

    consistency     L_c  = |P_W(f(x1)) - x1|
    equivariance    y = R(f(x1));  L_e = |f(P_W(y)) - y|
    Noise2Noise     L_c2 = |P_W(f(x1)) - x2|
                    L_e2 = |f(P_W(y)) - R(f(x2))|      (f(x2): a third forward pass)
    total           alpha·L_e + g·L_c + beta·(alpha·L_e2 + L_c2)

``border`` > 0 leaves that many voxels at each face of the cube out of the consistency
means L_c and L_c2 (the equivariance terms keep the whole cube). Why: the data cube is a
window of the map, which W sampled as a whole, while ``P_W`` acts on the cube
periodically; near the faces the two disagree, and the consistency term asks the
network's measured content to cancel what the window leaks of its own fill. Opt-in
(default 0, the published loss): it helped the base `tilt:20` cell and took the `top`
cells' low-resolution fill away (benchmarks/RESULTS.md, session 16).

``g`` (``self_weight``) is 1 in the published method. With a Noise2Noise pair it may be
lowered: L_c asks the measured region to reproduce x1 *with its noise*, L_c2 to predict x2;
under L1 with g = 1 > beta the optimum is x1 itself, so the network never denoises. With
g = 0 the measured region is pure Noise2Noise (as IsoNet2 trains on even/odd tomograms).
Without a pair L_c is the only data term and keeps weight 1 whatever ``self_weight`` is.

``weighted_residual=True`` compares ``P_W(f(x1))`` with ``P_W(x)`` instead of ``x``
(with ``residual_max_freq``, only up to that frequency: ``P_W'(x)`` with W' = W there
and 1 above):
the residual is weighted by W rather than the prediction alone. The two agree where W is
0 or 1; they differ where W lies between. A half map is not attenuated there (a
normalised reconstruction divides by the sampling density, so the signal keeps its
amplitude and only the noise grows), but ``W·f = x`` asks the network for ``x / W``, an
amplitude raised by 1/W; ``W·(f − x) = 0`` asks for ``x`` and weighs the voxel by how well
it was measured. The `cpu` preset takes it up to :data:`LOW_RESIDUAL_MAX_FREQ` (docs/method.md).

``equivariance_measured=True`` filters the equivariance residuals in Fourier space by
``M_R(k) = 1 − (1 − W(k))·(1 − W(R⁻¹k))`` before the L1 mean. The target ``y = R f(x1)``
holds at ``k`` what the network put at ``R⁻¹k``: measured data where ``W(R⁻¹k)`` is 1,
the network's own fill where it is 0. Where the input ``P_W(y)`` also lacks ``k``
(``W(k)`` = 0) the published term asks the network to restore its own fill from nothing
new, a pull that a weak fill satisfies as well as a strong one; ``M_R`` drops exactly that
part and keeps the rest (the input's pass-through and the measured data moved into the
hidden region).

Gradients: like the public spIsoNet tool (its training step builds ``y`` from the
network output without ``detach`` and also back-propagates through ``f(x2)``), the
gradient flows through every occurrence of ``f``: through ``y`` as the network's input
``P_W(y)``, through ``y`` as the target, and through ``R(f(x2))``. This is the default
here. ``detach_targets=True`` instead treats ``y`` and ``R(f(x2))`` as fixed targets
(a stop-gradient, as in some equivariant-imaging variants); the gradient through the
input ``P_W(y)`` is kept either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .._checks import check_nonnegative_int
from ..errors import InvalidValueError, MapMismatchError, MapShapeError
from ..fourier import frequency_radius
from .operators import apply_sampling, rotate_batch, rotate_sampling

__all__ = ["LOW_RESIDUAL_MAX_FREQ", "correction_loss"]

#: The frequency (cycles per voxel of the training cube) up to which the ``"low"`` setting
#: of ``consistency_residual`` takes the consistency on the W-weighted residual: the cube's
#: lowest shells, where the 3D FSC resampled to the cube is partial in every direction and
#: the published form's x/W demand showed as a global FSC drop (benchmarks/RESULTS.md,
#: session 32).
LOW_RESIDUAL_MAX_FREQ = 0.125


@lru_cache(maxsize=8)
def _low_frequencies(d: int, max_freq: float) -> np.ndarray:
    """(d, d, d) bool, unshifted (zero frequency at index 0): |k| ≤ max_freq cycles/voxel.

    Cached: the training loop asks for the same cube size at every step."""
    return np.fft.ifftshift(frequency_radius(d) / d <= max_freq)


def correction_loss(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    w_shifted: torch.Tensor,
    rotation_indices: Sequence[int] | np.ndarray | torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.5,
    detach_targets: bool = False,
    self_weight: float = 1.0,
    border: int = 0,
    weighted_residual: bool = False,
    residual_max_freq: float | None = None,
    equivariance_measured: bool = False,
    equivariance_min_freq: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total training loss of one (micro-)batch and its parts.

    Parameters
    ----------
    model : nn.Module
        The network ``f`` (e.g. :class:`~spisonet.nn.UNet3D`), (B, 1, D, D, D) → same.
    x1, x2 : (B, 1, D, D, D) tensors
        Paired cubes of the two half maps at the same positions (already randomly
        swapped per sample). ``x2=None`` (a single map) or ``beta=0`` drops the
        Noise2Noise terms and the third forward pass.
    w_shifted : (D, D, D) tensor
        ``ifftshift(W)`` from :func:`~spisonet.nn.sampling_tensor`.
    rotation_indices : B integers in 0 … 23
        The rotation ``R`` of each sample (see :func:`~spisonet.nn.cube_rotations`).
    alpha, beta : float
        Weights of the equivariance and Noise2Noise terms (≥ 0).
    detach_targets : bool
        Stop the gradient through the targets ``y`` and ``R(f(x2))`` (default False, as
        the public tool). See the module docstring.
    self_weight : float
        Weight of L_c when a Noise2Noise pair is used (≥ 0; 1 = published). Ignored
        without a pair. See the module docstring.
    border : int
        Voxels at each face left out of the consistency terms (0: none; 2·border < D).
    weighted_residual : bool
        Consistency terms on ``P_W(f(x1) - x)`` instead of ``P_W(f(x1)) - x`` (False:
        published). See the module docstring.
    residual_max_freq : float or None
        With ``weighted_residual``: use the weighted form only at frequencies
        ``|k| ≤ residual_max_freq`` (cycles per voxel of the cube) and the published form
        above (None: at every frequency).
    equivariance_measured : bool
        Take the equivariance terms on the residual filtered by
        ``M_R(k) = 1 − (1 − W(k))·(1 − W(R⁻¹k))`` (False: unfiltered, published). See the
        module docstring.
    equivariance_min_freq : float or None
        With ``equivariance_measured``: filter only at ``|k| > equivariance_min_freq``
        (cycles per voxel of the cube) and keep the whole residual at and below it (None:
        filter at every frequency).

    Returns
    -------
    total : scalar tensor with gradient (float32; float64 for float64 input).
    parts : dict of detached scalar tensors: ``consistency``, ``equivariance`` and, with
        Noise2Noise terms, ``consistency2`` and ``equivariance2``; ``total`` too. They are
        tensors, not floats, so that logging does not force a device synchronisation.
    """
    if x1.ndim != 5 or x1.shape[1] != 1:
        raise MapShapeError(f"x1 must be a (B, 1, D, D, D) batch; found {tuple(x1.shape)}")
    if x2 is not None and x2.shape != x1.shape:
        raise MapMismatchError(
            f"x1 and x2 must have the same shape; found {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    if not (alpha >= 0 and beta >= 0 and self_weight >= 0):
        raise InvalidValueError(
            f"alpha, beta and self_weight must be ≥ 0; got alpha={alpha}, beta={beta}, "
            f"self_weight={self_weight}"
        )
    d = x1.shape[-1]
    border = check_nonnegative_int(border, "border", (d + 1) // 2, f"0 ≤ 2·border < {d}")
    inner = (Ellipsis,) + (slice(border, d - border),) * 3
    use_n2n = x2 is not None and beta > 0
    g = float(self_weight) if use_n2n else 1.0

    f1 = model(x1)
    p1 = apply_sampling(f1, w_shifted)  # float32 (float64 for float64 input)
    real = p1.dtype  # losses are computed in this precision, also under autocast

    w_target = None
    if weighted_residual:
        # the target is P_W'(x): W' = W where the weighted form applies, 1 elsewhere
        w_target = w_shifted
        if residual_max_freq is not None:
            low = torch.from_numpy(_low_frequencies(d, float(residual_max_freq)))
            low = low.to(w_shifted.device)
            w_target = torch.where(low, w_shifted, torch.ones_like(w_shifted))

    def residual(x: torch.Tensor) -> torch.Tensor:
        # P_W is linear: P_W(f1 - x) = p1 - P_W(x)
        target = apply_sampling(x, w_target) if w_target is not None else x.to(real)
        return (p1 - target)[inner].abs().mean()

    loss_c = residual(x1)
    y = rotate_batch(f1.to(real), rotation_indices)
    y_target = y.detach() if detach_targets else y
    f_py = model(apply_sampling(y, w_shifted)).to(real)

    if equivariance_measured:
        w_real = w_shifted.to(device=f_py.device, dtype=real)
        keep = 1.0 - (1.0 - w_real) * (1.0 - rotate_sampling(w_real, rotation_indices))
        if equivariance_min_freq is not None:
            low = torch.from_numpy(_low_frequencies(d, float(equivariance_min_freq)))
            keep = torch.where(low.to(keep.device), torch.ones_like(keep), keep)
        keep = keep.unsqueeze(1)  # (B, 1, D, D, D): one filter per sample

        def equivariance(target: torch.Tensor) -> torch.Tensor:
            return apply_sampling(f_py - target, keep).abs().mean()

    else:

        def equivariance(target: torch.Tensor) -> torch.Tensor:
            return (f_py - target).abs().mean()

    loss_e = equivariance(y_target)
    total = alpha * loss_e + g * loss_c
    parts = {"consistency": loss_c.detach(), "equivariance": loss_e.detach()}
    if use_n2n:
        assert x2 is not None
        loss_c2 = residual(x2)
        if detach_targets:
            with torch.no_grad():  # a fixed target: no graph, less memory
                f2r = rotate_batch(model(x2).to(real), rotation_indices)
        else:
            f2r = rotate_batch(model(x2).to(real), rotation_indices)
        loss_e2 = equivariance(f2r)
        total = total + beta * (alpha * loss_e2 + loss_c2)
        parts["consistency2"] = loss_c2.detach()
        parts["equivariance2"] = loss_e2.detach()
    parts["total"] = total.detach()
    return total, parts
