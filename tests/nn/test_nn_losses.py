"""Tests of spisonet.nn.losses against hand computations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spisonet.errors import InvalidValueError, MapMismatchError, MapShapeError
from spisonet.nn.losses import correction_loss
from spisonet.nn.operators import cube_rotations, sampling_tensor
from spisonet.nn.unet import UNet3D

D = 6


class Affine(nn.Module):
    """f(x) = a·x + b with scalar parameters; counts its calls."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a * x + self.b


def p_w(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    ax = (-3, -2, -1)
    return np.real(np.fft.ifftn(np.fft.ifftshift(w) * np.fft.fftn(v, axes=ax), axes=ax))


def rot(v: np.ndarray, indices: list[int]) -> np.ndarray:
    """Rotate each sample: out[R c] = v[c], c relative to (D - 1) / 2, by index arithmetic."""
    out = np.empty_like(v)
    grid = np.stack(np.meshgrid(*[np.arange(D)] * 3, indexing="ij")).reshape(3, -1)
    h = (D - 1) / 2
    for k, i in enumerate(indices):
        dest = np.rint(cube_rotations()[i] @ (grid - h) + h).astype(int)
        out[k, 0][tuple(dest)] = v[k, 0][tuple(grid)]
    return out


def low_frequencies(max_freq: float) -> np.ndarray:
    """(D, D, D) bool on the fftshift-ed grid, voxel by voxel: |k| ≤ max_freq cycles/voxel."""
    low = np.zeros((D, D, D), dtype=bool)
    for i, j, k in np.ndindex(D, D, D):
        freq = np.sqrt((i - D // 2) ** 2 + (j - D // 2) ** 2 + (k - D // 2) ** 2)
        low[i, j, k] = freq / D <= max_freq
    return low


def turned_weight(w: np.ndarray, index: int) -> np.ndarray:
    """W(R⁻¹k) on the fftshift-ed grid, frequency by frequency (k taken modulo D)."""
    out = np.empty_like(w)
    r_inv = cube_rotations()[index].T
    c = D // 2
    for i in range(D):
        for j in range(D):
            for k in range(D):
                src = (r_inv @ np.array([i - c, j - c, k - c]) + c) % D
                out[i, j, k] = w[src[0], src[1], src[2]]
    return out


def equivariance_measured_mean(
    residual: np.ndarray, w: np.ndarray, idx: list[int], min_freq: float | None = None
) -> float:
    """Mean |P_M(residual)| with M = 1 − (1 − W)(1 − W(R⁻¹k)), each sample its own R;
    with ``min_freq``, M = 1 at |k| ≤ min_freq cycles/voxel."""
    kept = []
    for n, r in enumerate(idx):
        m = 1.0 - (1.0 - w) * (1.0 - turned_weight(w, r))
        if min_freq is not None:
            m[low_frequencies(min_freq)] = 1.0
        kept.append(p_w(residual[n], m))
    return float(np.mean(np.abs(np.stack(kept))))


def hand_loss(
    a,
    b,
    x1,
    x2,
    w,
    idx,
    alpha,
    beta,
    a_target=None,
    b_target=None,
    g=1.0,
    border=0,
    weighted=False,
    max_freq=None,
    measured_equivariance=False,
    equivariance_min_freq=None,
):
    """The four terms and the total of ALGORITHM.md §3 for f(x) = a·x + b.

    ``g``: the weight of L_c when the Noise2Noise terms are present (1 elsewhere).
    ``border``: voxels at each face left out of the consistency means (by explicit loops).
    ``weighted``: the consistency terms on P_W(f(x1) − x) instead of P_W(f(x1)) − x;
    with ``max_freq``, only at |k| ≤ max_freq cycles/voxel (the published form above).

    ``a_target``/``b_target``: the parameters used inside the targets y and R(f(x2))
    (equal to a, b unless the targets are held fixed).
    """
    at = a if a_target is None else a_target
    bt = b if b_target is None else b_target

    def f(x, a_, b_):
        return a_ * x + b_

    def interior_mean(v):
        kept = [
            v[n, 0, i, j, k]
            for n in range(v.shape[0])
            for i in range(D)
            for j in range(D)
            for k in range(D)
            if min(i, j, k) >= border and max(i, j, k) < D - border
        ]
        return np.mean(np.abs(kept))

    def consistency(x):
        if weighted and max_freq is not None:
            # split x by frequency voxel by voxel: the low part on the weighted residual
            spec = np.fft.fftshift(np.fft.fftn(x, axes=(-3, -2, -1)), axes=(-3, -2, -1))
            low = low_frequencies(max_freq)
            x_low = np.real(
                np.fft.ifftn(np.fft.ifftshift(spec * low, axes=(-3, -2, -1)), axes=(-3, -2, -1))
            )
            return interior_mean(p_w(f(x1, a, b) - x_low, w) - (x - x_low))
        if weighted:
            return interior_mean(p_w(f(x1, a, b) - x, w))
        return interior_mean(p_w(f(x1, a, b), w) - x)

    lc = consistency(x1)
    y_in = rot(f(x1, a, b), idx)
    y_tg = rot(f(x1, at, bt), idx)
    fpy = f(p_w(y_in, w), a, b)
    le = np.mean(np.abs(fpy - y_tg))
    if measured_equivariance:
        le = equivariance_measured_mean(fpy - y_tg, w, idx, equivariance_min_freq)
    parts = {"consistency": lc, "equivariance": le}
    with_pair = x2 is not None and beta > 0
    total = alpha * le + (g if with_pair else 1.0) * lc
    if with_pair:
        lc2 = consistency(x2)
        le2 = np.mean(np.abs(fpy - rot(f(x2, at, bt), idx)))
        if measured_equivariance:
            le2 = equivariance_measured_mean(
                fpy - rot(f(x2, at, bt), idx), w, idx, equivariance_min_freq
            )
        total += beta * (alpha * le2 + lc2)
        parts |= {"consistency2": lc2, "equivariance2": le2}
    parts["total"] = total
    return total, parts


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((3, 1, D, D, D))
    x2 = x1 + 0.5 * rng.standard_normal((3, 1, D, D, D))
    w = rng.random((D, D, D))
    return x1, x2, w, [5, 0, 19]


@pytest.mark.parametrize("with_x2", [True, False])
def test_loss_values_match_hand_computation(batch, with_x2: bool) -> None:
    x1, x2, w, idx = batch
    x2 = x2 if with_x2 else None
    model = Affine(0.8, 0.1)
    total, parts = correction_loss(
        model,
        torch.from_numpy(x1),
        None if x2 is None else torch.from_numpy(x2),
        sampling_tensor(w, dtype=torch.float64),
        idx,
        alpha=0.7,
        beta=0.3,
    )
    exp_total, exp_parts = hand_loss(0.8, 0.1, x1, x2, w, idx, 0.7, 0.3)
    assert set(parts) == set(exp_parts)
    for k, v in exp_parts.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-10), k
        assert not parts[k].requires_grad
    assert float(total.detach()) == pytest.approx(exp_total, rel=1e-10)
    assert model.calls == (3 if with_x2 else 2)


def test_beta_zero_drops_noise2noise_and_third_pass(batch) -> None:
    x1, x2, w, idx = batch
    model = Affine(1.2, -0.3)
    total, parts = correction_loss(
        model, torch.from_numpy(x1), torch.from_numpy(x2), sampling_tensor(w), idx, beta=0.0
    )
    assert set(parts) == {"consistency", "equivariance", "total"}
    assert model.calls == 2
    assert float(total.detach()) == pytest.approx(hand_loss(1.2, -0.3, x1, None, w, idx, 1.0, 0)[0])


@pytest.mark.parametrize("g", [0.0, 0.25])
def test_self_weight_scales_consistency_only_with_a_pair(batch, g: float) -> None:
    x1, x2, w, idx = batch
    ws = sampling_tensor(w, dtype=torch.float64)
    total, parts = correction_loss(
        Affine(0.9, 0.2), torch.from_numpy(x1), torch.from_numpy(x2), ws, idx, self_weight=g
    )
    exp_total, exp_parts = hand_loss(0.9, 0.2, x1, x2, w, idx, 1.0, 0.5, g=g)
    assert float(total.detach()) == pytest.approx(exp_total, rel=1e-10)
    assert float(parts["consistency"]) == pytest.approx(exp_parts["consistency"], rel=1e-10)
    published = hand_loss(0.9, 0.2, x1, x2, w, idx, 1.0, 0.5)[0]
    assert exp_total == pytest.approx(published - (1 - g) * exp_parts["consistency"])
    # without a pair, L_c is the only data term: the weight does not apply
    single, _ = correction_loss(
        Affine(0.9, 0.2), torch.from_numpy(x1), None, ws, idx, self_weight=g
    )
    assert float(single.detach()) == pytest.approx(
        hand_loss(0.9, 0.2, x1, None, w, idx, 1.0, 0.5)[0]
    )


def test_self_weight_zero_makes_the_measured_region_noise2noise() -> None:
    """With g = 0 and W = 1 (everything measured), the L1 optimum of f(x) = a·x over the
    scale a is the Noise2Noise one (a < 1 for an independent noisy x2), while with the
    published g = 1 > beta it stays at the identity a = 1, whatever the noise."""
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((4, 1, D, D, D))
    x1 = torch.from_numpy(signal + rng.standard_normal(signal.shape))
    x2 = torch.from_numpy(signal + rng.standard_normal(signal.shape))
    ws = sampling_tensor(np.ones((D, D, D)), dtype=torch.float64)
    scales = np.linspace(0.2, 1.2, 51)

    def best(g: float) -> float:
        def loss(a: float) -> float:
            total, _ = correction_loss(Affine(a, 0.0), x1, x2, ws, [0] * 4, 0.0, self_weight=g)
            return float(total.detach())

        return float(scales[int(np.argmin([loss(a) for a in scales]))])

    assert best(1.0) == pytest.approx(1.0)
    assert 0.3 < best(0.0) < 0.8


def numeric_grad(fun, a: float, b: float, h: float = 1e-6) -> tuple[float, float]:
    return (
        (fun(a + h, b) - fun(a - h, b)) / (2 * h),
        (fun(a, b + h) - fun(a, b - h)) / (2 * h),
    )


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_matches_finite_differences(batch, detach: bool) -> None:
    x1, x2, w, idx = batch
    a0, b0 = 0.9, 0.2
    model = Affine(a0, b0)
    total, _ = correction_loss(
        model,
        torch.from_numpy(x1),
        torch.from_numpy(x2),
        sampling_tensor(w, dtype=torch.float64),
        idx,
        alpha=1.0,
        beta=0.5,
        detach_targets=detach,
    )
    total.backward()

    def fun(a: float, b: float) -> float:
        if detach:  # the targets y and R(f(x2)) stay at the current parameters
            return hand_loss(a, b, x1, x2, w, idx, 1.0, 0.5, a_target=a0, b_target=b0)[0]
        return hand_loss(a, b, x1, x2, w, idx, 1.0, 0.5)[0]

    ga, gb = numeric_grad(fun, a0, b0)
    assert float(model.a.grad) == pytest.approx(ga, rel=1e-5, abs=1e-8)
    assert float(model.b.grad) == pytest.approx(gb, rel=1e-5, abs=1e-8)


def test_detached_and_attached_gradients_differ(batch) -> None:
    x1, x2, w, idx = batch
    grads = []
    for detach in (False, True):
        model = Affine(0.9, 0.2)
        correction_loss(
            model,
            torch.from_numpy(x1),
            torch.from_numpy(x2),
            sampling_tensor(w, dtype=torch.float64),
            idx,
            detach_targets=detach,
        )[0].backward()
        grads.append(float(model.a.grad))
    assert abs(grads[0] - grads[1]) > 1e-3


def test_loss_with_unet_is_finite_and_trains_every_parameter() -> None:
    torch.manual_seed(0)
    model = UNet3D((4, 8, 16, 32))
    x1 = torch.randn(2, 1, 16, 16, 16)
    x2 = x1 + 0.3 * torch.randn_like(x1)
    w = sampling_tensor(np.random.default_rng(1).random((16, 16, 16)))
    total, parts = correction_loss(model, x1, x2, w, [3, 11])
    assert total.shape == () and torch.isfinite(total)
    assert float(parts["total"]) == pytest.approx(float(total.detach()))
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("border", [1, 2])
def test_consistency_border_leaves_the_faces_out_of_the_consistency_terms(batch, border) -> None:
    x1, x2, w, idx = batch
    ws = sampling_tensor(w, dtype=torch.float64)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    total, parts = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, border=border)
    exp_total, exp_parts = hand_loss(0.8, 0.1, x1, x2, w, idx, 1.0, 0.5, border=border)
    for k, v in exp_parts.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-10), k
    assert float(total.detach()) == pytest.approx(exp_total, rel=1e-10)
    # the faces did count without a border, and the equivariance terms keep the whole cube
    _, whole = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx)
    assert float(whole["consistency"]) != pytest.approx(float(parts["consistency"]), rel=1e-6)
    assert float(whole["equivariance"]) == pytest.approx(float(parts["equivariance"]), rel=1e-12)


@pytest.mark.parametrize("border, max_freq", [(0, None), (1, None), (0, 0.2), (1, 0.35)])
def test_weighted_residual_puts_w_on_the_residual(batch, border, max_freq) -> None:
    # with max_freq: the weighted form on the low frequencies of x, the published one above
    x1, x2, w, idx = batch
    ws = sampling_tensor(w, dtype=torch.float64)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    total, parts = correction_loss(
        Affine(0.8, 0.1),
        t1,
        t2,
        ws,
        idx,
        border=border,
        weighted_residual=True,
        residual_max_freq=max_freq,
    )
    exp_total, exp_parts = hand_loss(
        0.8, 0.1, x1, x2, w, idx, 1.0, 0.5, border=border, weighted=True, max_freq=max_freq
    )
    for k, v in exp_parts.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-10), k
    assert float(total.detach()) == pytest.approx(exp_total, rel=1e-10)
    _, published = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, border=border)
    assert float(published["consistency"]) != pytest.approx(float(parts["consistency"]), rel=1e-6)
    assert float(published["equivariance"]) == pytest.approx(float(parts["equivariance"]))
    if max_freq is not None:  # and it is not the weighted form at every frequency either
        _, whole = correction_loss(
            Affine(0.8, 0.1), t1, t2, ws, idx, border=border, weighted_residual=True
        )
        assert float(whole["consistency"]) != pytest.approx(float(parts["consistency"]), rel=1e-6)


@pytest.mark.parametrize("with_x2, min_freq", [(True, None), (False, None), (True, 0.2)])
def test_equivariance_measured_filters_the_residual(batch, with_x2: bool, min_freq) -> None:
    # min_freq: the whole residual at |k| ≤ min_freq, the filtered one above
    x1, x2, w, idx = batch
    x2 = x2 if with_x2 else None
    ws = sampling_tensor(w, dtype=torch.float64)
    t1 = torch.from_numpy(x1)
    t2 = None if x2 is None else torch.from_numpy(x2)
    kw = {"alpha": 0.7, "beta": 0.3}
    filtered = {"equivariance_measured": True, "equivariance_min_freq": min_freq}
    total, parts = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, **kw, **filtered)
    exp_total, exp_parts = hand_loss(
        0.8,
        0.1,
        x1,
        x2,
        w,
        idx,
        0.7,
        0.3,
        measured_equivariance=True,
        equivariance_min_freq=min_freq,
    )
    assert set(parts) == set(exp_parts)
    for k, v in exp_parts.items():
        assert float(parts[k]) == pytest.approx(v, rel=1e-10), k
    assert float(total.detach()) == pytest.approx(exp_total, rel=1e-10)
    _, published = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, alpha=0.7, beta=0.3)
    assert float(published["consistency"]) == pytest.approx(float(parts["consistency"]))
    assert float(published["equivariance"]) != pytest.approx(float(parts["equivariance"]), rel=1e-6)
    if min_freq is not None:  # and it is not the filter at every frequency either
        _, whole = correction_loss(
            Affine(0.8, 0.1), t1, t2, ws, idx, equivariance_measured=True, **kw
        )
        assert float(whole["equivariance"]) != pytest.approx(float(parts["equivariance"]), rel=1e-6)


def test_equivariance_measured_is_the_published_term_when_w_hides_nothing(batch) -> None:
    x1, x2, _, idx = batch
    ws = sampling_tensor(np.ones((D, D, D)), dtype=torch.float64)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    _, a = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx)
    _, b = correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, equivariance_measured=True)
    for k in a:
        assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-10), k


def test_weighted_residual_does_not_ask_for_x_over_w(batch) -> None:
    # W = 0.5 everywhere (partly measured): the published consistency is 0 for f(x) = x / W,
    # the weighted residual for f(x) = x, the half map as it is
    x1, _, _, idx = batch
    t1 = torch.from_numpy(x1)
    ws = sampling_tensor(np.full((D, D, D), 0.5), dtype=torch.float64)

    def consistency(a, weighted):
        return float(
            correction_loss(Affine(a, 0.0), t1, None, ws, idx, weighted_residual=weighted)[1][
                "consistency"
            ]
        )

    assert consistency(2.0, False) == pytest.approx(0.0, abs=1e-12)
    assert consistency(1.0, False) > 0.1
    assert consistency(1.0, True) == pytest.approx(0.0, abs=1e-12)
    assert consistency(2.0, True) > 0.1


def test_loss_errors(batch) -> None:
    x1, x2, w, idx = batch
    t1, t2, ws = torch.from_numpy(x1), torch.from_numpy(x2), sampling_tensor(w)
    model = Affine(1.0, 0.0)
    with pytest.raises(MapMismatchError, match=r"same shape; found \(3, 1, 6, 6, 6\) and"):
        correction_loss(model, t1, t2[:2], ws, idx)
    with pytest.raises(MapShapeError, match=r"x1 must be a \(B, 1, D, D, D\) batch"):
        correction_loss(model, t1[:, 0], None, ws, idx)
    with pytest.raises(InvalidValueError, match="alpha, beta and self_weight must be ≥ 0; got al"):
        correction_loss(model, t1, t2, ws, idx, alpha=-1)
    with pytest.raises(InvalidValueError, match=r"self_weight=-0\.5"):
        correction_loss(model, t1, t2, ws, idx, self_weight=-0.5)
    for bad in (3, -1, 1.5, True):  # 2·3 = D leaves no interior
        with pytest.raises(InvalidValueError, match="border must be an integer"):
            correction_loss(model, t1, t2, ws, idx, border=bad)


def test_weighted_residual_frequency_limits(batch) -> None:
    # below the lowest frequency only k = 0 is weighted; above the corner, every frequency
    x1, x2, w, idx = batch
    ws = sampling_tensor(w, dtype=torch.float64)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)

    def parts(**kw):
        return correction_loss(Affine(0.8, 0.1), t1, t2, ws, idx, **kw)[1]

    whole = parts(weighted_residual=True)
    above = parts(weighted_residual=True, residual_max_freq=0.9)
    assert float(above["consistency"]) == pytest.approx(float(whole["consistency"]), rel=1e-12)
    dc_only = parts(weighted_residual=True, residual_max_freq=0.0)
    exp = hand_loss(0.8, 0.1, x1, x2, w, idx, 1.0, 0.5, weighted=True, max_freq=0.0)[1]
    assert float(dc_only["consistency"]) == pytest.approx(exp["consistency"], rel=1e-10)
    # without weighted_residual the limit changes nothing
    plain = parts(residual_max_freq=0.2)
    assert float(plain["consistency"]) == pytest.approx(float(parts()["consistency"]), rel=1e-12)
